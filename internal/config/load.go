package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// Load reads a configuration file over the defaults. An empty path returns
// the defaults.
func Load(path string) (*Config, error) {
	c := Default()
	if path == "" {
		c.applyPolicyDefaults()
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	if err := Decode(f, c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.applyPolicyDefaults()
	return c, nil
}

// Decode decodes YAML into c strictly: an unknown key is an error.
func Decode(r io.Reader, c *Config) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}
