# shellcheck shell=bash
# Sourced by the build scripts that cache what they build (scripts/build-gvisor.sh, tests/cluster/build.sh,
# tests/cluster/build-node.sh): the step before building, the same for each.
#
# use_cache_or_lock CACHE RESULT SCRIPT [--check]
#   The caller defines `complete` (true when the cache holds a whole build) and may define `on_hit` (run before a
#   hit is reported; not with --check). A whole build: print RESULT and exit 0. With --check: say how to build,
#   exit 1. Otherwise take CACHE/.lock (waiting for a build that holds it) and return, so that the caller builds,
#   unless the build that held the lock completed it meanwhile (then exit as on a hit). The lock stays held on fd 9
#   until the caller exits.
use_cache_or_lock() {
  local cache="$1" result="$2" script="$3" mode="${4:-}"
  if complete; then
    if [[ "$mode" != "--check" ]] && declare -F on_hit >/dev/null; then on_hit; fi
    echo "$result"
    exit 0
  fi
  if [[ "$mode" == "--check" ]]; then # report only, never build
    log "no complete build in $result: run bash $script"
    exit 1
  fi
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  if ! flock -n 9; then
    log "another build holds $cache/.lock; waiting for it"
    flock 9
  fi
  if complete; then # built by whoever held the lock
    if declare -F on_hit >/dev/null; then on_hit; fi
    echo "$result"
    exit 0
  fi
}

# require_go MIN_VERSION
#   Sets GO to the go command (GO if set, else go on PATH, else /usr/local/go/bin/go), or says to install Go and
#   exits 1.
require_go() {
  GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
  if [[ ! -x "$GO" ]]; then
    log "no go command at '$GO' (GO, else PATH, else /usr/local/go/bin/go); install Go >= $1"
    exit 1
  fi
}

# begin_partial CACHE MARKER
#   A build starts: sets tmp to an empty CACHE/bin.partial and removes MARKER, so that nothing half-built is ever
#   taken for a complete build.
begin_partial() {
  tmp="$1/bin.partial"
  rm -rf "$tmp" "$2"
  mkdir -p "$tmp"
}
