#!/usr/bin/env bash
# Build, once, the upstream Kubernetes control plane the cluster tests run on,
# and print the folder holding the binaries (the only thing written to stdout).
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet
#       from k8s.io/kubernetes $K8S_VERSION, consumed as a Go module with every
#       k8s.io/* staging module pinned by replace directives (build/go.mod);
#   etcd
#       from go.etcd.io/etcd/server/v3 $ETCD_VERSION (the etcd server command:
#       etcd's own build script builds its binary from that package), the
#       version k8s.io/kubernetes $K8S_VERSION itself pins in its go.mod.
#
# Sources come only from the Go module proxy; build/go.sum pins every module.
# Binaries are cached under ${XDG_CACHE_HOME:-~/.cache}/sigma0/kubernetes/
# <k8s-version>-etcd<etcd-version>/bin; a marker written after a successful
# build (holding a hash of go.mod, go.sum and the flags) makes a warm call
# return at once, and a half-finished build is never used.
#
# `build.sh --check` prints the folder if a complete build is cached and
# exits 1 otherwise, never building.
#
# Environment: SIGMA0_K8S_CACHE overrides the cache root; GO overrides the go
# command; SIGMA0_K8S_BUILD_NICE (default 10) is the niceness of the build.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.8

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
moddir="$here/build"
cache_root="${SIGMA0_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/kubernetes}"
cache="$cache_root/${K8S_VERSION}-etcd${ETCD_VERSION}"
bin="$cache/bin"
marker="$cache/.built"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

log() { printf 'tests/cluster/build.sh: %s\n' "$*" >&2; }
# shellcheck source=../../scripts/lib/build-cache.sh
source "$here/../../scripts/lib/build-cache.sh"

major_minor="${K8S_VERSION#v}"
k8s_major="${major_minor%%.*}"
k8s_minor="${major_minor#*.}"; k8s_minor="${k8s_minor%%.*}"
tags="selinux,notest,grpcnotrace" # the tags hack/lib/golang.sh builds release binaries with
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  # what hack/lib/version.sh stamps into release binaries
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

stamp() {
  {
    cat "$moddir/go.mod" "$moddir/go.sum"
    printf '%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$tags" "$ldflags"
  } | sha256sum | cut -d' ' -f1
}

complete() {
  [[ -f "$marker" && "$(cat "$marker")" == "$(stamp)" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

use_cache_or_lock "$cache" "$bin" tests/cluster/build.sh "${1:-}"

require_go 1.26
log "cold build of Kubernetes $K8S_VERSION and etcd $ETCD_VERSION with $("$GO" version) into $bin"
log "(minutes: one go build of all six commands; later calls hit the cache)"

begin_partial "$cache" "$marker"
start=$SECONDS
(
  cd "$moddir"
  export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
  # Six commands in one go build so the packages they share compile once.
  nice -n "${SIGMA0_K8S_BUILD_NICE:-10}" "$GO" build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    go.etcd.io/etcd/server/v3
)
mv "$tmp/server" "$tmp/etcd" # go names go.etcd.io/etcd/server/v3's binary "server"
for b in "${binaries[@]}"; do [[ -x "$tmp/$b" ]] || { log "missing $b after build"; exit 1; }; done
rm -rf "$bin"
mv "$tmp" "$bin"
stamp >"$marker"
log "built in $((SECONDS - start)) s"
echo "$bin"
