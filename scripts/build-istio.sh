#!/usr/bin/env bash
# Builds Istio's own programs the tests run as processes: pilot-agent
# (istio-agent) and pilot-discovery (istiod), from the istio.io/istio module
# pinned in test/e2e/go.mod, where both are listed as tools. The binaries are
# cached outside the clone, so each is built once per machine and per pinned
# version; they are stamped with the pin and a cached binary is used only if
# it reports it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/transitca
mod="$root/test/e2e/go.mod"

pin=$(grep -oE "^[[:space:]]*(require )?istio.io/istio v[0-9][^ ]*" "$mod" | head -1 | awk '{print $NF}')
if [ -z "$pin" ]; then
	echo "build-istio: no istio.io/istio pin in test/e2e/go.mod" >&2
	exit 1
fi
for tool in pilot-agent pilot-discovery; do
	if ! grep -qE "^[[:space:]]*(tool )?istio.io/istio/pilot/cmd/$tool\$" "$mod"; then
		echo "build-istio: test/e2e/go.mod has no tool directive for istio.io/istio/pilot/cmd/$tool" >&2
		exit 1
	fi
done

# build <tool> <out> <override>: builds istio.io/istio/pilot/cmd/<tool> into
# <out> unless <out> already runs and reports the pinned version; a binary
# named by an override (<override> set) is used as it is if it runs at all.
build() {
	local tool=$1 out=$2 override=$3
	local have=""
	[ -x "$out" ] && have=$("$out" version --short 2>/dev/null) || true
	have=${have#client version: }
	if [ -n "$have" ] && { [ -n "$override" ] || [ "$have" = "$pin" ]; }; then
		echo "build-istio: using cached $out ($have)"
		return
	fi
	mkdir -p "$(dirname "$out")"
	echo "build-istio: building $tool of istio.io/istio $pin into $out (the first build takes many minutes)"
	local start
	start=$(date +%s)
	(cd "$root/test/e2e" && CGO_ENABLED=0 go build -trimpath \
		-ldflags="-s -w -X istio.io/istio/pkg/version.buildVersion=$pin -X istio.io/istio/pkg/version.buildGitRevision=${pin##*-} -X istio.io/istio/pkg/version.buildStatus=Clean" \
		-o "$out.tmp" "istio.io/istio/pilot/cmd/$tool")
	mv "$out.tmp" "$out"
	echo "build-istio: built $tool $("$out" version --short 2>/dev/null | sed 's/^client version: //') in $(($(date +%s) - start))s ($(du -m "$out" | cut -f1) MiB)"
}

# One after the other: on a small machine two links at once only compete.
build pilot-agent "${TRANSITCA_PILOT_AGENT_BIN:-$cache/pilot-agent-$pin}" "${TRANSITCA_PILOT_AGENT_BIN:-}"
build pilot-discovery "${TRANSITCA_PILOT_DISCOVERY_BIN:-$cache/pilot-discovery-$pin}" "${TRANSITCA_PILOT_DISCOVERY_BIN:-}"
