#!/usr/bin/env bash
# Installs the programs the tests run that are not built from Go modules:
# Debian packages, installed only when the command is missing. Needs root
# (or sudo) and apt-get when something is missing; says what is missing
# and fails otherwise.
set -euo pipefail

# command:package pairs
needed=(
	openssl:openssl   # the quickstart's local part (cmd/ca TestQuickstartLocalPart)
	jq:jq             # the evidence report's recomputing commands (cmd/ca TestReportEvidence)
	chromium:chromium # the evidence report rendered headless (cmd/ca TestReportEvidenceRendersInChromium)
)

missing=()
for pair in "${needed[@]}"; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-test-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-test-deps: missing ${missing[*]} and no apt-get: install them by hand" >&2
	exit 1
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
