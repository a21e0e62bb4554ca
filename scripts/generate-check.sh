#!/usr/bin/env bash
# Fails when the committed generated code under proto/ differs from what the
# pinned generators (tools/go.mod) make of the .proto files.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build-tools.sh" buf protoc-gen-go protoc-gen-go-grpc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/proto" "$tmp/proto"
mkdir -p "$tmp/bin"
cp "$root/bin/protoc-gen-go" "$root/bin/protoc-gen-go-grpc" "$tmp/bin/"
find "$tmp/proto" -name '*.pb.go' -delete
(cd "$tmp/proto" && "$root/bin/buf" generate)
if ! diff -r -q "$root/proto" "$tmp/proto" >/dev/null; then
	echo "generate-check: generated code under proto/ is stale; run 'make generate' and commit:" >&2
	diff -r "$root/proto" "$tmp/proto" | head -40 >&2
	exit 1
fi
echo "generate-check: proto/ generated code is up to date"
