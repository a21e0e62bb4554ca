package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// readmeConfig returns the YAML block of README.md's "## Configuration"
// section: the configuration reference operators read.
func readmeConfig(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(b, []byte("\n## Configuration\n"))
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	_, rest, ok = bytes.Cut(rest, []byte("```yaml\n"))
	if !ok {
		t.Fatal("README.md's Configuration section has no yaml block")
	}
	block, _, ok := bytes.Cut(rest, []byte("```"))
	if !ok {
		t.Fatal("README.md's yaml block is not closed")
	}
	return block
}

// The README's configuration reference cannot drift from the code: it
// decodes strictly (no key the daemon does not know), it names every key
// the daemon knows, and the defaults it shows are the defaults.
func TestREADMEConfigurationReference(t *testing.T) {
	block := readmeConfig(t)
	path := filepath.Join(t.TempDir(), "readme.yaml")
	if err := os.WriteFile(path, block, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatalf("README.md's configuration reference does not load: %v", err)
	}
	want, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	// Compared as YAML, where an empty list and no list read the same.
	gotY, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	wantY, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := strings.Split(string(gotY), "\n"), strings.Split(string(wantY), "\n"); !slices.Equal(g, w) {
		for i := range min(len(g), len(w)) {
			if g[i] != w[i] {
				t.Errorf("README.md's configuration reference shows other defaults than the code, first at line %d of the YAML:\nREADME: %s\ncode:   %s", i+1, g[i], w[i])
				break
			}
		}
		if len(g) != len(w) {
			t.Errorf("README.md's configuration reference: %d YAML lines, the code's defaults %d", len(g), len(w))
		}
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(block, &doc); err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	var walk func(prefix string, n *yaml.Node)
	walk = func(prefix string, n *yaml.Node) {
		if n.Kind == yaml.DocumentNode {
			for _, c := range n.Content {
				walk(prefix, c)
			}
			return
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := prefix + n.Content[i].Value
			shown[key] = true
			walk(key+".", n.Content[i+1])
		}
	}
	walk("", &doc)
	for _, key := range configKeys("", reflect.TypeOf(Config{})) {
		if !shown[key] {
			t.Errorf("README.md's configuration reference does not show %s", key)
		}
	}
}

// configKeys lists the YAML key paths of a config struct, down to the
// leaves; maps, lists and per-entry structs (tiers, policy rules) count as
// leaves.
func configKeys(prefix string, typ reflect.Type) []string {
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		out = append(out, key)
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Time{}) {
			out = append(out, configKeys(key+".", ft)...)
		}
	}
	return slices.Compact(out)
}
