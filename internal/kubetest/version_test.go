package kubetest

import (
	"os"
	"strings"
	"testing"
)

// The helper looks for binaries built from the versions pinned in test/kube,
// and the daemon's client-go is the release published with that server; all
// must agree.
func TestVersionsMatchPins(t *testing.T) {
	for _, tc := range []struct {
		name, gomod, line string
	}{
		{"kube-apiserver", "../../test/kube/kube-apiserver/go.mod", "k8s.io/kubernetes " + Version},
		{"etcd", "../../test/kube/etcd/go.mod", "go.etcd.io/etcd/server/v3 " + EtcdVersion},
		{"client-go", "../../go.mod", "k8s.io/client-go v0" + strings.TrimPrefix(Version, "v1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile(tc.gomod)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), tc.line+"\n") {
				t.Errorf("%s does not pin %s", tc.gomod, tc.line)
			}
		})
	}
}
