package deploy

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/transitca/transitca/internal/config"
)

// TestSchemaConfigMatchesDaemon checks that the config block of
// values.schema.json allows exactly the keys the daemon's configuration
// file has, at every level: a key the daemon added is missing from the
// schema, and a key the schema allows that the daemon does not know would
// pass the schema and stop the daemon at start.
func TestSchemaConfigMatchesDaemon(t *testing.T) {
	data, err := os.ReadFile(chartDir + "/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schemaNode
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	compareKeys(t, "config", s.Properties["config"], reflect.TypeFor[config.Config]())
}

type schemaNode struct {
	Type                 any                    `json:"type"`
	Properties           map[string]*schemaNode `json:"properties"`
	AdditionalProperties json.RawMessage        `json:"additionalProperties"`
	Items                *schemaNode            `json:"items"`
}

func compareKeys(t *testing.T, at string, s *schemaNode, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if s == nil {
		t.Errorf("%s: not in the schema", at)
		return
	}
	switch typ.Kind() {
	case reflect.Slice:
		if typ.Elem().Kind() == reflect.Struct {
			compareKeys(t, at+"[]", s.Items, typ.Elem())
		}
		return
	case reflect.Map:
		if typ.Elem().Kind() == reflect.Struct {
			var elem schemaNode
			if err := json.Unmarshal(s.AdditionalProperties, &elem); err != nil {
				t.Errorf("%s: additionalProperties is not a schema: %v", at, err)
				return
			}
			compareKeys(t, at+".*", &elem, typ.Elem())
		}
		return
	case reflect.Struct:
	default:
		return
	}
	if typ.NumField() == 0 || !typ.Field(0).IsExported() || typ.Field(0).Tag.Get("yaml") == "" {
		return // a value type such as config.Duration
	}
	if string(s.AdditionalProperties) != "false" {
		t.Errorf("%s: the schema allows unknown keys; the daemon refuses them", at)
	}
	var daemonKeys []string
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		daemonKeys = append(daemonKeys, name)
		compareKeys(t, at+"."+name, s.Properties[name], f.Type)
	}
	for name := range s.Properties {
		if !slices.Contains(daemonKeys, name) {
			t.Errorf("%s.%s: in the schema, unknown to the daemon", at, name)
		}
	}
}
