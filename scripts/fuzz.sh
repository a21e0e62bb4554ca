#!/bin/sh
# Runs every fuzz target of the module (func FuzzXxx in a _test.go file)
# for FUZZTIME each (default 2m), one after the other; stops at the first
# failure, which leaves the failing input under the package's
# testdata/fuzz/FuzzXxx/ (commit it: "go test" then runs it as a seed).
# Usage: scripts/fuzz.sh [package pattern...]   e.g. scripts/fuzz.sh ./store
set -eu
FUZZTIME="${FUZZTIME:-2m}"
GO="${GO:-go}"
cd "$(dirname "$0")/.."
pkgs="${*:-./...}"
found=0
for dir in $($GO list -f '{{.Dir}}' $pkgs); do
	for name in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		found=$((found + 1))
		echo "== $name in $dir for $FUZZTIME"
		(cd "$dir" && $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" .)
	done
done
echo "fuzzed $found targets for $FUZZTIME each"
