package promtest

import (
	"os"
	"strings"
	"testing"
)

// The binaries the tests look for are built from the version pinned in
// test/prometheus.
func TestVersionMatchesPin(t *testing.T) {
	data, err := os.ReadFile("../../test/prometheus/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "github.com/prometheus/prometheus "+Version+" ") && !strings.Contains(string(data), "github.com/prometheus/prometheus "+Version+"\n") {
		t.Errorf("test/prometheus/go.mod does not pin github.com/prometheus/prometheus %s", Version)
	}
}
