#!/usr/bin/env bash
# Build, once, a current gVisor: runsc and containerd-shim-runsc-v1, statically
# linked, from the Go module proxy at the pseudo-version pinned by
# scripts/gvisor/go.mod (go.sum pins every dependency). Print the folder
# holding the two binaries (the only thing written to stdout).
#
# Why: Debian's runsc (2022) has only the ptrace platform here (kvm hangs);
# a current runsc runs the systrap platform, which scores HumanEval faster
# (BENCHMARKS.md). It must be static: a cgo build dies at boot with
# `error executing umounter: fork/exec /proc/self/exe: no such file or directory`.
#
# Binaries are cached under ${XDG_CACHE_HOME:-~/.cache}/sigma0/gvisor/<version>/bin;
# a marker written after a successful build (a hash of go.mod, go.sum and the
# flags) makes a warm call return at once, and a half-finished build is never
# used. After every build and on every warm call, the systrap platform is
# smoke-tested:
#     TMPDIR=<temp> runsc --root=<temp> --platform=systrap --network=none do /bin/true
# and only when it passes is <cache root>/runsc.json written, naming the runsc,
# the shim, the version and this kernel. sigma0's sandbox runner uses that runsc
# with --platform=systrap only while runsc.json exists and names this kernel;
# else Debian's runsc (on PATH) with --platform=ptrace. A failed smoke test
# removes runsc.json.
#
# `build-gvisor.sh --check` prints the folder if a complete build is cached and
# exits 1 otherwise, never building (nor smoke-testing).
#
# Environment: SIGMA0_GVISOR_CACHE overrides the cache root; GO overrides the go
# command; SIGMA0_GVISOR_BUILD_NICE (default 10) is the niceness of the build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
moddir="$here/gvisor"
GVISOR_VERSION="$(awk '$1 == "require" && $2 == "gvisor.dev/gvisor" { print $3 }' "$moddir/go.mod")"
cache_root="${SIGMA0_GVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/gvisor}"
cache="$cache_root/$GVISOR_VERSION"
bin="$cache/bin"
marker="$cache/.built"
record="$cache_root/runsc.json"
binaries=(runsc containerd-shim-runsc-v1)

log() { printf 'scripts/build-gvisor.sh: %s\n' "$*" >&2; }
# shellcheck source=lib/build-cache.sh
source "$here/lib/build-cache.sh"

if [[ -z "$GVISOR_VERSION" ]]; then
  log "no 'require gvisor.dev/gvisor VERSION' line in $moddir/go.mod"
  exit 1
fi
ldflags="-s -w -X gvisor.dev/gvisor/runsc/version.version=$GVISOR_VERSION"

stamp() {
  {
    cat "$moddir/go.mod" "$moddir/go.sum"
    printf '%s\n' "$GVISOR_VERSION" "$ldflags" CGO_ENABLED=0
  } | sha256sum | cut -d' ' -f1
}

complete() {
  [[ -f "$marker" && "$(cat "$marker")" == "$(stamp)" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

# Static or not, from the ELF itself: a dynamically linked executable has a PT_INTERP
# (program interpreter) header, the /lib64/ld-linux it needs at exec, and a DYNAMIC
# section; a static one has neither, and ldd calls it "not a dynamic executable".
static() {
  local headers
  headers="$(readelf -lW "$1" 2>/dev/null)" || return 1 # not an ELF file at all
  if grep -Eq '^ +(INTERP|DYNAMIC) ' <<<"$headers"; then
    return 1
  fi
  ! ldd "$1" >/dev/null 2>&1
}

# Does this runsc start a sandbox on the systrap platform here? Record it for sigma0's runner.
smoke() {
  local root out rc=0
  root="$(mktemp -d "${TMPDIR:-/tmp}/sigma0-runsc-smoke-XXXXXX")"
  # TMPDIR too: `runsc do` keeps its state in a runsc-do* folder under TMPDIR, whatever --root says.
  out="$(TMPDIR="$root" timeout 60 "$bin/runsc" --root="$root" --platform=systrap --network=none do /bin/true 2>&1)" ||
    rc=$?
  rm -rf "$root"
  if [[ $rc -ne 0 ]]; then
    rm -f "$record"
    log "runsc $GVISOR_VERSION does not start a systrap sandbox here (exit $rc): ${out: -400}"
    log "sigma0 keeps Debian's runsc with --platform=ptrace"
    return 0
  fi
  local tmp_record="$record.$$"
  cat >"$tmp_record" <<EOF
{
  "runsc": "$bin/runsc",
  "shim": "$bin/containerd-shim-runsc-v1",
  "version": "$GVISOR_VERSION",
  "platform": "systrap",
  "kernel": "$(uname -r)",
  "stamp": "$(stamp)"
}
EOF
  mv "$tmp_record" "$record"
  log "runsc $GVISOR_VERSION runs systrap sandboxes here: recorded in $record"
}

on_hit() { smoke; } # a cached runsc is checked to still run here
use_cache_or_lock "$cache" "$bin" scripts/build-gvisor.sh "${1:-}"

require_go 1.26
log "cold build of gVisor $GVISOR_VERSION (runsc, containerd-shim-runsc-v1) with $("$GO" version) into $bin"
log "(minutes: one go build of both commands; later calls hit the cache)"

begin_partial "$cache" "$marker"
start=$SECONDS
(
  cd "$moddir"
  # Static: CGO_ENABLED=0. -mod=readonly: go.mod and go.sum are the pin, never rewritten by a build.
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
  # Both commands in one go build so the packages they share compile once.
  nice -n "${SIGMA0_GVISOR_BUILD_NICE:-10}" "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    gvisor.dev/gvisor/runsc gvisor.dev/gvisor/shim
)
mv "$tmp/shim" "$tmp/containerd-shim-runsc-v1" # go names gvisor.dev/gvisor/shim's binary "shim"
for b in "${binaries[@]}"; do
  [[ -x "$tmp/$b" ]] || { log "missing $b after build"; exit 1; }
  static "$tmp/$b" || { log "$b is dynamically linked; sigma0 needs a static runsc (CGO_ENABLED=0)"; exit 1; }
done
rm -rf "$bin"
mv "$tmp" "$bin"
stamp >"$marker"
log "built in $((SECONDS - start)) s"
smoke
echo "$bin"
