#!/bin/sh
# Prepares a Vault for transitca, with the vault CLI and a token allowed to
# mount engines and write policies and auth roles (VAULT_ADDR, VAULT_TOKEN
# and the usual VAULT_* settings). Safe to run again: it adds only what is
# missing and rewrites the policies and the role to the shipped ones.
#
#   1. a Transit engine at transit/ and a KV version 2 engine at secret/
#      (the configuration defaults), when nothing is mounted there;
#   2. the policies transitca (the daemon) and transitca-init (ca init);
#   3. the Kubernetes auth role transitca, when Kubernetes auth is enabled
#      at auth/$TRANSITCA_K8S_AUTH_MOUNT (default kubernetes).
#
# The keys are made afterwards by "ca init", with a transitca-init token.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
k8s_mount=${TRANSITCA_K8S_AUTH_MOUNT:-kubernetes}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# mount_type PATH prints the type of the engine mounted at PATH, or nothing.
mount_type() {
	vault read -field=type "sys/mounts/$1" 2>/dev/null || true
}

# Transit.
case $(mount_type transit) in
transit) say "transit secrets engine at transit/: present" ;;
"")
	vault secrets enable -path=transit transit >/dev/null
	say "transit secrets engine at transit/: enabled"
	;;
*) die "transit/ holds a $(mount_type transit) engine, not transit; move it or change the paths in transitca.hcl" ;;
esac

# KV version 2.
case $(mount_type secret) in
kv)
	if vault read -field=options sys/mounts/secret | grep -q 'version:2'; then
		say "kv version 2 secrets engine at secret/: present"
	else
		die "secret/ is kv version 1; transitca needs version 2 (check-and-set): vault kv enable-versioning secret"
	fi
	;;
"")
	vault secrets enable -path=secret -version=2 kv >/dev/null
	say "kv version 2 secrets engine at secret/: enabled"
	;;
*) die "secret/ holds a $(mount_type secret) engine, not kv version 2" ;;
esac

# Policies.
vault policy write transitca "$here/transitca.hcl" >/dev/null
say "policy transitca: written from transitca.hcl"
vault policy write transitca-init "$here/transitca-init.hcl" >/dev/null
say "policy transitca-init: written from transitca-init.hcl"

# Kubernetes auth role.
if [ "$(vault read -field=type "sys/auth/$k8s_mount" 2>/dev/null || true)" = kubernetes ]; then
	vault write "auth/$k8s_mount/role/transitca" @"$here/kubernetes-role.json" >/dev/null
	say "kubernetes auth role auth/$k8s_mount/role/transitca: written from kubernetes-role.json"
else
	say "no kubernetes auth at auth/$k8s_mount: role skipped (enable it and configure it, then run this again)"
fi
