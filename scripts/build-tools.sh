#!/usr/bin/env bash
# Builds the developer tools pinned in tools/go.mod into bin/, when missing
# or older than tools/go.mod.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
declare -A pkg=(
	[buf]=github.com/bufbuild/buf/cmd/buf
	[protoc-gen-go]=google.golang.org/protobuf/cmd/protoc-gen-go
	[protoc-gen-go-grpc]=google.golang.org/grpc/cmd/protoc-gen-go-grpc
	[golangci-lint]=github.com/golangci/golangci-lint/v2/cmd/golangci-lint
)
mkdir -p "$root/bin"
for t in "$@"; do
	p=${pkg[$t]:?unknown tool $t}
	if [ ! -x "$root/bin/$t" ] || [ "$root/tools/go.mod" -nt "$root/bin/$t" ]; then
		echo "build-tools: building $t"
		(cd "$root/tools" && go build -o "$root/bin/$t" "$p")
	fi
done
