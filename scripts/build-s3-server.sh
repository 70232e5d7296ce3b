#!/usr/bin/env bash
# Build, once, the S3 server that the tests use where signatures must be checked: versitygw, the Versity S3 Gateway
# (https://github.com/versity/versitygw), from the Go module proxy at the exact release pinned below, statically
# linked. Print the path of the versitygw binary (the only thing written to stdout).
#
# Why: moto's server, which the tests used before, does not check presigned URLs at all (a presigned GET URL with
# its key edited is accepted). versitygw checks AWS SigV4 as S3 does, presigned (query-string) URLs included: the
# key, the method and the expiry are all signed, and an unsigned request is refused (tests/test_s3server_signed.py
# proves it). tests/s3server.py's S3Server runs it on its POSIX backend (a folder).
#
# The pin: `go install MODULE/cmd/versitygw@VERSION` builds that release with exactly the dependency versions of its
# own go.mod, each checked against its go.sum (and the release itself against the Go checksum database): the Go
# counterpart of `cargo install --locked`. No go.mod of ours is involved.
#
# The binary is cached under ${XDG_CACHE_HOME:-~/.cache}/sigma0/versitygw/<version>/bin; a marker written after a
# successful build (a hash of the version and the flags) makes a warm call return at once, and a half-finished
# build is never used. About 1.5 minutes cold on 2 cores (a 45 MB static binary); under a second warm.
#
# `build-s3-server.sh --check` prints the binary's path if a complete build is cached and exits 1 otherwise, never
# building.
#
# Environment: SIGMA0_S3_SERVER_CACHE overrides the cache root; GO overrides the go command (Go >= 1.25);
# SIGMA0_S3_SERVER_BUILD_NICE (default 10) is the niceness of the build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSITYGW_MODULE=github.com/versity/versitygw
VERSITYGW_VERSION=v1.8.0
cache_root="${SIGMA0_S3_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/versitygw}"
cache="$cache_root/$VERSITYGW_VERSION"
bin="$cache/bin"
binary="$bin/versitygw"
marker="$cache/.built"
ldflags="-s -w -X main.Version=$VERSITYGW_VERSION -X main.Build=$VERSITYGW_VERSION"

log() { printf 'scripts/build-s3-server.sh: %s\n' "$*" >&2; }
# shellcheck source=lib/build-cache.sh
source "$here/lib/build-cache.sh"

stamp() {
  printf '%s\n' "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION" "$ldflags" CGO_ENABLED=0 -trimpath |
    sha256sum | cut -d' ' -f1
}

complete() {
  [[ -f "$marker" && "$(cat "$marker")" == "$(stamp)" && -x "$binary" ]]
}

use_cache_or_lock "$cache" "$binary" scripts/build-s3-server.sh "${1:-}"

require_go 1.25
log "cold build of versitygw $VERSITYGW_VERSION with $("$GO" version) into $bin"
log "(about 1.5 minutes on 2 cores: one go install from the module proxy; later calls hit the cache)"

begin_partial "$cache" "$marker"
start=$SECONDS
(
  # Outside any module of ours: `go install X@VERSION` builds X's own module graph whatever the current folder is,
  # but a go.work here or above would still be refused.
  cd "$cache"
  export CGO_ENABLED=0 GOBIN="$tmp" GOWORK=off GOFLAGS="-buildvcs=false"
  nice -n "${SIGMA0_S3_SERVER_BUILD_NICE:-10}" "$GO" install -trimpath -ldflags "$ldflags" \
    "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION"
)
[[ -x "$tmp/versitygw" ]] || { log "missing versitygw after go install"; exit 1; }
version="$("$tmp/versitygw" --version 2>&1 | head -1)" || { log "the built versitygw does not run: $version"; exit 1; }
rm -rf "$bin"
mv "$tmp" "$bin"
stamp >"$marker"
log "built versitygw ($version) in $((SECONDS - start)) s"
echo "$binary"
