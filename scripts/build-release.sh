#!/bin/sh
# Builds the release binary of ca: static (no cgo), stripped, with no local
# paths in it, and with its version and commit stamped in. The Dockerfile
# runs this script, and cmd/ca's TestReleaseBuild builds with it too, so
# the flags live here and nowhere else.
#
# usage: VERSION=v1.2.3 COMMIT=abc123 scripts/build-release.sh OUT
set -eu
out=${1:?usage: VERSION=v1.2.3 COMMIT=abc123 $0 OUT}
version=${VERSION:-dev}
commit=${COMMIT:-unknown}
cd "$(dirname "$0")/.."
CGO_ENABLED=0 exec go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=${version} -X main.commit=${commit}" \
	-o "$out" ./cmd/ca
