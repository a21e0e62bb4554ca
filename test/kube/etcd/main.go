// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3
// module at the version pinned in test/kube/go.mod. transitca's tests run it
// on loopback with a temporary data directory as the storage of their
// kube-apiserver; it is never part of the daemon.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
