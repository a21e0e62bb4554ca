package meshtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The daemon reads Istio's objects with the istio.io/client-go that the
// pinned istio.io/istio (whose CRDs the tests install) is built with.
func TestClientGoMatchesIstioPin(t *testing.T) {
	crds := CRDFile(t)
	istioMod, err := os.ReadFile(filepath.Join(filepath.Dir(crds), "..", "..", "..", "..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	rootMod, err := os.ReadFile(filepath.Join(repoRoot(), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for line := range strings.Lines(string(istioMod)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "istio.io/client-go" {
			want = f[1]
		}
	}
	if want == "" {
		t.Fatal("the pinned istio.io/istio does not require istio.io/client-go")
	}
	if !strings.Contains(string(rootMod), "istio.io/client-go "+want+"\n") {
		t.Errorf("go.mod does not require istio.io/client-go %s, the version the pinned istio.io/istio is built with", want)
	}
}
