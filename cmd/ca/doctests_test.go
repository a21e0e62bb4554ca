package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docTestCommand matches the test commands the docs give to reproduce
// what they report: an optional "cd DIR && ", "go test", an optional
// package, and -run with its pattern (quoted or not).
var docTestCommand = regexp.MustCompile("(?:cd ([\\w./-]+) && )?go test(?: (\\./[\\w./-]*))? -run (?:'([^']+)'|([^\\s`]+))")

// Every test that docs/reliability.md names to reproduce a row exists
// where the row says, so that a reader who runs the command runs what the
// row reports, not nothing ("go test -run" of a missing name passes).
func TestReliabilityDocNamesRealTests(t *testing.T) {
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, "docs", "reliability.md"))
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, m := range docTestCommand.FindAllStringSubmatch(string(b), -1) {
		dir := filepath.Join(root, m[1], m[2])
		pattern := m[3] + m[4]
		pattern = strings.ReplaceAll(pattern, `\|`, "|")
		names := testNames(t, dir)
		for _, alt := range strings.Split(pattern, "|") {
			if alt == "" {
				continue
			}
			found++
			re, err := regexp.Compile(alt)
			if err != nil {
				t.Errorf("docs/reliability.md: %q: %v", m[0], err)
				continue
			}
			if !slices.ContainsFunc(names, re.MatchString) {
				t.Errorf("docs/reliability.md: %q: %s matches no test that a _test.go file in %s defines", m[0], alt, dir)
			}
		}
	}
	if found < 20 {
		t.Fatalf("found %d test names in docs/reliability.md; the pattern no longer reads its commands", found)
	}
}

// testNames returns the tests, benchmarks and fuzz targets the _test.go
// files of dir define.
func testNames(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range testFunc.FindAllStringSubmatch(string(b), -1) {
			names = append(names, m[1])
		}
	}
	return names
}

var testFunc = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)\w*)\(`)
