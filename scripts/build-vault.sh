#!/usr/bin/env bash
# Builds the Vault server the tests run against, from the hashicorp/vault Go
# module pinned in test/vault/go.mod, and caches the binary outside the clone
# so that it is built once per machine and per pinned version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(grep -oE 'github.com/hashicorp/vault v[0-9][^ ]*' "$root/test/vault/go.mod" | head -1 | awk '{print $2}')
if [ -z "$version" ]; then
	echo "build-vault: no hashicorp/vault version pinned in test/vault/go.mod" >&2
	exit 1
fi
out=${TRANSITCA_VAULT_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/transitca/vault-$version}
if [ -x "$out" ] && "$out" version >/dev/null 2>&1; then
	echo "build-vault: using cached $out ($("$out" version | head -1))"
	exit 0
fi
mkdir -p "$(dirname "$out")"
echo "build-vault: building hashicorp/vault $version into $out (the first build takes many minutes)"
start=$(date +%s)
(cd "$root/test/vault" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "build-vault: built $("$out" version | head -1) in $(( $(date +%s) - start ))s"
