#!/usr/bin/env bash
# Builds the Prometheus server and promtool the tests run, from the
# github.com/prometheus/prometheus Go module pinned in test/prometheus/go.mod
# (cmd/prometheus and cmd/promtool), and caches the binaries outside the
# clone, so that each is built once per machine and per pinned version.
# TRANSITCA_PROMETHEUS_BIN and TRANSITCA_PROMTOOL_BIN name other paths (an
# existing binary there is used as it is).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/transitca

module=$(grep -oE '^[[:space:]]*(require )?github.com/prometheus/prometheus v0\.[0-9]+\.[0-9]+[^ ]*' "$root/test/prometheus/go.mod" | head -1 | awk '{print $NF}')
if [ -z "$module" ]; then
	echo "build-prometheus: no github.com/prometheus/prometheus pin in test/prometheus/go.mod" >&2
	exit 1
fi
# The module's v0.MMM.P tags are Prometheus releases 3.MM.P (v0.316.0 is
# 3.16.0); the binaries report that release, as the project's own builds do.
minor=${module#v0.}
minor=${minor%%.*}
patch=${module##*.}
release="$((10#${minor} / 100)).$((10#${minor} % 100)).$patch"

# build <name> <package> <out> <want>: builds the pinned command into <out>
# unless <out> already runs and its --version output contains <want>.
build() {
	local name=$1 pkg=$2 out=$3 want=$4
	local have=""
	[ -x "$out" ] && have=$("$out" --version 2>&1) || true
	if [ -n "$have" ] && [[ $have == *"$want"* ]]; then
		echo "build-prometheus: using cached $out (${have%%$'\n'*})"
		return
	fi
	mkdir -p "$(dirname "$out")"
	echo "build-prometheus: building $name $release ($module) into $out (the first build takes many minutes)"
	local start
	start=$(date +%s)
	(cd "$root/test/prometheus" && CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Branch=$module -X github.com/prometheus/common/version.Revision=$module" \
		-o "$out.tmp" "$pkg")
	mv "$out.tmp" "$out"
	echo "build-prometheus: built $("$out" --version 2>&1 | head -1) in $(($(date +%s) - start))s"
}

want="version $release"
[ -z "${TRANSITCA_PROMETHEUS_BIN:-}" ] || want="version"
build prometheus github.com/prometheus/prometheus/cmd/prometheus \
	"${TRANSITCA_PROMETHEUS_BIN:-$cache/prometheus-$module}" "$want"
want="version $release"
[ -z "${TRANSITCA_PROMTOOL_BIN:-}" ] || want="version"
build promtool github.com/prometheus/prometheus/cmd/promtool \
	"${TRANSITCA_PROMTOOL_BIN:-$cache/promtool-$module}" "$want"
