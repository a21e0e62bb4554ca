#!/usr/bin/env bash
# Builds the Kubernetes API server and the etcd it stores in, which the tests
# run against, from the Go modules pinned in test/kube/kube-apiserver/go.mod
# (k8s.io/kubernetes) and test/kube/etcd/go.mod (go.etcd.io/etcd/server/v3).
# The binaries are cached outside the clone, so each is built once per machine
# and per pinned version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/transitca

pin() { # pin <go.mod> <module>: the version <go.mod> requires of <module>
	grep -oE "^[[:space:]]*(require )?$2 v[0-9][^ ]*" "$1" | head -1 | awk '{print $NF}'
}

kube_version=$(pin "$root/test/kube/kube-apiserver/go.mod" k8s.io/kubernetes)
etcd_version=$(pin "$root/test/kube/etcd/go.mod" go.etcd.io/etcd/server/v3)
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
	echo "build-kube: no k8s.io/kubernetes pin in test/kube/kube-apiserver/go.mod or no go.etcd.io/etcd/server/v3 pin in test/kube/etcd/go.mod" >&2
	exit 1
fi

# build <name> <dir> <out> <want> <go build flags...>: builds the main package
# in <dir> into <out> unless <out> already runs and its --version output
# contains <want>.
build() {
	local name=$1 dir=$2 out=$3 want=$4
	shift 4
	local have=""
	[ -x "$out" ] && have=$("$out" --version 2>/dev/null) || true
	if [ -n "$have" ] && [[ $have == *"$want"* ]]; then
		echo "build-kube: using cached $out (${have%%$'\n'*})"
		return
	fi
	mkdir -p "$(dirname "$out")"
	echo "build-kube: building $name into $out (the first build takes many minutes)"
	local start
	start=$(date +%s)
	(cd "$dir" && CGO_ENABLED=0 go build -trimpath "$@" -o "$out.tmp" .)
	mv "$out.tmp" "$out"
	echo "build-kube: built $("$out" --version | head -1) in $(($(date +%s) - start))s"
}

# A binary named by an override is used as it is, whatever its version.
kube_want="Kubernetes $kube_version" etcd_want="etcd Version: ${etcd_version#v}"
[ -z "${TRANSITCA_KUBE_APISERVER_BIN:-}" ] || kube_want="Kubernetes"
[ -z "${TRANSITCA_ETCD_BIN:-}" ] || etcd_want="etcd Version"

# kube-apiserver reports the version it is stamped with, as a release build
# does; unstamped it would call itself v0.0.0-master.
minor=${kube_version#v1.}
minor=${minor%%.*}
build "k8s.io/kubernetes $kube_version kube-apiserver" "$root/test/kube/kube-apiserver" \
	"${TRANSITCA_KUBE_APISERVER_BIN:-$cache/kube-apiserver-$kube_version}" "$kube_want" \
	-ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
build "go.etcd.io/etcd/server/v3 $etcd_version etcd" "$root/test/kube/etcd" \
	"${TRANSITCA_ETCD_BIN:-$cache/etcd-$etcd_version}" "$etcd_want" \
	-ldflags='-s -w'
