package vaulttest

import (
	"os"
	"strings"
	"testing"
)

// The helper looks for the binary built from the version pinned in
// test/vault/go.mod; the two must agree.
func TestVersionMatchesPin(t *testing.T) {
	data, err := os.ReadFile("../../test/vault/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "github.com/hashicorp/vault "+Version+"\n") {
		t.Fatalf("test/vault/go.mod does not pin github.com/hashicorp/vault %s", Version)
	}
}
