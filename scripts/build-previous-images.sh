#!/usr/bin/env bash
# Build, once, the images of the previous release (helm/previous-release.json: its version and commit), for the e2e
# test that upgrades a running install of it to this tree's chart (tests/e2e/test_chart.py). Prints the folder of that
# release's source tree, whose build/images/images.json names its three images (the only thing written to stdout).
#
# The commit is checked out from this repository (a clone of it: it needs the history, as `git clone` gives it) into
# ${XDG_CACHE_HOME:-~/.cache}/sigma0/previous/<commit>/src, and that tree's own scripts/build-images.sh builds its
# images there, exactly as they were built then. Both are cached: a warm call only checks that the archives are there.
#
#   bash scripts/build-previous-images.sh [--check]     (--check: print the folder if built, else exit 1)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
log() { echo "build-previous-images: $*" >&2; }
# shellcheck source=scripts/lib/build-cache.sh
source "$here/lib/build-cache.sh"

record="$repo/helm/previous-release.json"
read -r version commit < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["version"], r["commit"])' "$record")
cache="${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/previous/$commit"
src="$cache/src"
marker="$cache/.built"

complete() {
  [[ -f "$marker" && -f "$src/build/images/images.json" ]] || return 1
  local archive
  for archive in operator sandbox trainer; do [[ -f "$src/build/images/$archive.oci.tar" ]] || return 1; done
}

use_cache_or_lock "$cache" "$src" "$0" "${1:-}"

if ! git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null; then
  log "commit $commit (release $version, $record) is not in this repository: a shallow clone? run git fetch --unshallow"
  exit 1
fi
rm -rf "$src"
git clone --quiet --no-checkout "$repo" "$src"
git -C "$src" -c advice.detachedHead=false checkout --quiet "$commit"
log "building the images of release $version ($commit) in $src"
python="${SIGMA0_PYTHON:-}"
if [[ -z "$python" && -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; fi
SIGMA0_PYTHON="${python:-python3}" bash "$src/scripts/build-images.sh" >&2
touch "$marker"
echo "$src"
