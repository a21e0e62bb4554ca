// Package kubetest starts a real Kubernetes API server for tests: a
// kube-apiserver backed by its own etcd, both on loopback ports, with RBAC
// authorization, an admin token in system:masters, and a service account
// issuer whose tokens the TokenRequest and TokenReview APIs mint and check.
// No kubelet, scheduler or controller manager runs: pods are objects that
// name their node in spec.nodeName, and namespaces get no default service
// account.
//
// The binaries are built from the modules pinned in test/kube (make kube):
// kube-apiserver from k8s.io/kubernetes and etcd from go.etcd.io/etcd/server.
// They are found at $TRANSITCA_KUBE_APISERVER_BIN and $TRANSITCA_ETCD_BIN, or
// else at ${XDG_CACHE_HOME:-$HOME/.cache}/transitca/kube-apiserver-<version>
// and etcd-<version>. Tests that need them fail, with a message that says how
// to build them, when a binary is missing or the server does not start: they
// never skip.
//
// A test package starts one server, on first use, and stops it when its
// tests end:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
//	func TestX(t *testing.T) {
//		env := kubetest.New(t) // a fresh namespace on the package's server
//		sa := env.ServiceAccount(t, "web")
//		pod := env.Pod(t, "web-0", sa.Name, "node-a")
//		token := env.Token(t, sa.Name, kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
//		...
//	}
//
// The processes are killed with the test binary even when it is killed
// itself.
package kubetest
