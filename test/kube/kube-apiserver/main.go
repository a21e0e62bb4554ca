// Command kube-apiserver is the Kubernetes API server, built from the
// k8s.io/kubernetes module at the version pinned in test/kube/go.mod.
// transitca's tests start it on a loopback port against a throwaway etcd; it
// is never part of the daemon.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
