// Command vault is the HashiCorp Vault server, built from its Go module at the
// version pinned in this directory's go.mod. transitca's tests start it in dev
// mode on a loopback port; it is never part of the daemon.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
