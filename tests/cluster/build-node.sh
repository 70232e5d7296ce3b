#!/usr/bin/env bash
# Build, once, what the real kubelet node (tests/cluster/kubeletnode.py) runs
# besides kubelet itself (kubelet comes from build.sh, with the control plane),
# and print the folder holding it (the only thing written to stdout):
#
#   bin/containerd, bin/ctr, bin/containerd-shim-runc-v2
#       upstream containerd $CONTAINERD_VERSION from the Go module proxy, static
#       (CGO_ENABLED=0), pinned by tests/cluster/containerd/go.mod and go.sum;
#   bin/runsc
#       the static runsc scripts/build-gvisor.sh builds (copied);
#   bin/containerd-shim-runsc-v1
#       gVisor's containerd shim at the same pinned version, static, with one
#       change of ours: tests/cluster/gvisor-shim-oom.sed (applied to a copy
#       of the module, built through a go.mod replace);
#   images/pause.tar, images/busybox.tar, images/kubeclient.tar
#       OCI archives, ours: the pod sandbox's pause process (pause/pause.c,
#       gcc -static), Debian's busybox-static, and a tiny static in-cluster API
#       client (kubeclient/main.go, Go standard library only); packed with umoci.
#
# Runc and the CNI plugins are Debian's (runc, containernetworking-plugins).
# Cached under ${XDG_CACHE_HOME:-~/.cache}/sigma0/node/<content key>, the key a
# hash of every input (this script, the go.mod/go.sum pins, the sed script,
# pause.c, the busybox-static package version, the go version); a marker written
# after a complete build makes a warm call return at once, a half-finished build
# is never used, and a flock keeps two builds apart.
#
# `build-node.sh --check` prints the folder if a complete build is cached and
# exits 1 otherwise, never building.
#
# Environment: SIGMA0_NODE_CACHE overrides the cache root; GO overrides the go
# command; SIGMA0_NODE_BUILD_NICE (default 10) is the niceness of the build.
set -euo pipefail

CONTAINERD_VERSION=v2.4.2 # keep in step with containerd/go.mod
PAUSE_REF=localhost/sigma0/pause:1
BUSYBOX_REF=docker.io/library/busybox:1.36 # the tag docs/install.md uses; the content is Debian's busybox-static
KUBECLIENT_REF=localhost/sigma0/kubeclient:1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
gvisor_mod="$repo/scripts/gvisor"
log() { printf 'tests/cluster/build-node.sh: %s\n' "$*" >&2; }
# shellcheck source=../../scripts/lib/build-cache.sh
source "$repo/scripts/lib/build-cache.sh"

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
busybox_version="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)"
for tool in gcc umoci runc; do
  command -v "$tool" >/dev/null || { log "no $tool: run scripts/setup.sh (as root) or apt-get install $tool"; exit 1; }
done
[[ -x /bin/busybox && -n "$busybox_version" ]] || { log "no Debian busybox-static: apt-get install busybox-static"; exit 1; }
[[ -x "$GO" ]] || { log "no go command (looked on PATH and at /usr/local/go/bin/go); install Go >= 1.26"; exit 1; }

key="$(
  {
    cat "${BASH_SOURCE[0]}" "$here/containerd/go.mod" "$here/containerd/go.sum" "$gvisor_mod/go.mod" \
      "$gvisor_mod/go.sum" "$here/gvisor-shim-oom.sed" "$here/pause/pause.c" \
      "$here/kubeclient/go.mod" "$here/kubeclient/main.go"
    printf '%s\n' "$busybox_version" "$("$GO" env GOVERSION)"
  } | sha256sum | cut -c1-16
)"
cache_root="${SIGMA0_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/node}"
cache="$cache_root/$key"
marker="$cache/.built"
outputs=(bin/containerd bin/ctr bin/containerd-shim-runc-v2 bin/runsc bin/containerd-shim-runsc-v1
  images/pause.tar images/busybox.tar images/kubeclient.tar images/images.json)

complete() {
  [[ -f "$marker" ]] || return 1
  local f
  for f in "${outputs[@]}"; do [[ -s "$cache/$f" ]] || return 1; done
}

use_cache_or_lock "$cache" "$cache" tests/cluster/build-node.sh "${1:-}"

start=$SECONDS
tmp="$cache/partial"
rm -rf "$tmp" "$marker"
mkdir -p "$tmp/bin" "$tmp/images" "$tmp/work"
nice=(nice -n "${SIGMA0_NODE_BUILD_NICE:-10}")
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

log "cold build of containerd $CONTAINERD_VERSION (static) with $("$GO" version) into $cache"
# -X version.Version as containerd's Makefile stamps a release: kubelet reports the node's runtime as containerd://2.4.2
ctr_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
(cd "$here/containerd" && "${nice[@]}" "$GO" build -trimpath -ldflags "$ctr_ldflags" -o "$tmp/bin/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)

runsc_dir="$(bash "$repo/scripts/build-gvisor.sh")"
cp "$runsc_dir/runsc" "$tmp/bin/runsc"

log "gVisor's containerd shim, patched by gvisor-shim-oom.sed"
gvisor_version="$(awk '$1 == "require" && $2 == "gvisor.dev/gvisor" { print $3 }' "$gvisor_mod/go.mod")"
src="$(cd "$gvisor_mod" && "$GO" mod download -json "gvisor.dev/gvisor@$gvisor_version" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
# A copy of the module (the module cache is read-only, and go build -overlay refuses files in it), the sed
# script applied to it, and a build module: scripts/gvisor's pins plus a replace pointing at the copy.
cp -r "$src" "$tmp/work/gvisor"
chmod -R u+w "$tmp/work/gvisor"
manager="$tmp/work/gvisor/pkg/shim/v1/manager.go"
sed -i.orig -f "$here/gvisor-shim-oom.sed" "$manager"
changed="$(diff "$manager.orig" "$manager" | grep -c '^>' || true)"
if [[ "$changed" != 1 ]]; then
  log "gvisor-shim-oom.sed changed $changed lines of pkg/shim/v1/manager.go, not 1: update it for gVisor $gvisor_version"
  exit 1
fi
mkdir "$tmp/work/shim"
cp "$gvisor_mod/go.sum" "$tmp/work/shim/"
{ cat "$gvisor_mod/go.mod"; printf '\nreplace gvisor.dev/gvisor => ../gvisor\n'; } >"$tmp/work/shim/go.mod"
(cd "$tmp/work/shim" && "${nice[@]}" "$GO" build -trimpath \
  -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$gvisor_version" \
  -o "$tmp/bin/containerd-shim-runsc-v1" gvisor.dev/gvisor/shim)

log "images: pause (pause/pause.c), busybox (Debian's busybox-static $busybox_version), kubeclient"
# image <archive> <ref> <entrypoint json> <files...>: an OCI archive of one layer holding the files
image() {
  local archive="$1" ref="$2" entrypoint="$3" layout="$tmp/work/layout" bundle="$tmp/work/bundle"
  shift 3
  rm -rf "$layout" "$bundle"
  umoci init --layout "$layout"
  umoci new --image "$layout:${ref##*:}"
  umoci unpack --rootless --image "$layout:${ref##*:}" "$bundle" >/dev/null
  "$@" "$bundle/rootfs"
  umoci repack --image "$layout:${ref##*:}" "$bundle"
  umoci config --image "$layout:${ref##*:}" --tag "${ref##*:}" --config.entrypoint "$entrypoint" \
    --config.env PATH=/bin:/usr/bin:/sbin:/usr/sbin --architecture amd64 --os linux
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$archive" .
}
pause_rootfs() { gcc -static -O2 -Wall -Wextra -Werror -o "$1/pause" "$here/pause/pause.c"; }
busybox_rootfs() {
  mkdir -p "$1/bin" "$1/tmp" "$1/etc"
  cp /bin/busybox "$1/bin/busybox"
  local applet
  for applet in $("$1/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$1/bin/$applet"
  done
  "$1/bin/busybox" tar --help >/dev/null 2>&1 || { log "Debian's busybox has no tar applet (kubectl cp needs it)"; exit 1; }
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$1/etc/group"
}
kubeclient_rootfs() {
  (cd "$here/kubeclient" && "${nice[@]}" "$GO" build -trimpath -ldflags "-s -w" -o "$1/kubeclient" .)
}
image "$tmp/images/pause.tar" "$PAUSE_REF" /pause pause_rootfs
image "$tmp/images/busybox.tar" "$BUSYBOX_REF" /bin/sh busybox_rootfs
image "$tmp/images/kubeclient.tar" "$KUBECLIENT_REF" /kubeclient kubeclient_rootfs
cat >"$tmp/images/images.json" <<JSON
[
  {"name": "pause", "ref": "$PAUSE_REF", "archive": "pause.tar"},
  {"name": "busybox", "ref": "$BUSYBOX_REF", "archive": "busybox.tar"},
  {"name": "kubeclient", "ref": "$KUBECLIENT_REF", "archive": "kubeclient.tar"}
]
JSON
rm -rf "$tmp/work"

for f in "${outputs[@]}"; do [[ -s "$tmp/$f" ]] || { log "missing $f after build"; exit 1; }; done
rm -rf "$cache/bin" "$cache/images"
mv "$tmp/bin" "$tmp/images" "$cache/"
rmdir "$tmp"
touch "$marker"
log "built in $((SECONDS - start)) s"
echo "$cache"
