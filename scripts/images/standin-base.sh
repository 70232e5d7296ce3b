#!/usr/bin/env bash
# Stand in for the Dockerfiles' base image, python:3.11.15-slim-bookworm, where no registry is reachable: a Debian
# bookworm root filesystem (mmdebstrap, minbase) with Debian's python3.11, shaped like the official image, committed
# into buildah's storage under the official name so that `FROM python:3.11.15-slim-bookworm` resolves locally and the
# Dockerfiles build unchanged (with --pull=never). What differs from the published image: images/README.md.
#
#   bash scripts/images/standin-base.sh STORAGE_ROOT RUN_ROOT CACHE_DIR
#
# Cached by this script's content: the root filesystem's tarball under CACHE_DIR/<key>.tar, and the committed image
# carries the key as a label, so a second run with the same script returns at once.
set -euo pipefail

root=$1 runroot=$2 cache=$3
name=docker.io/library/python:3.11.15-slim-bookworm
key=$(sha256sum "$0" | cut -c1-16)
bah=(buildah --root "$root" --runroot "$runroot" --storage-driver "${SIGMA0_IMAGES_DRIVER:-overlay}")

have=$("${bah[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "dev.sigma0.standin"}}' "$name" \
  2>/dev/null || true)
if [ "$have" = "$key" ]; then
  exit 0
fi

mkdir -p "$cache"
tarball=$cache/$key.tar
if [ ! -s "$tarball" ]; then
  start=$SECONDS
  # The official image keeps its interpreter under /usr/local (python, python3, pip on PATH there; the stdlib in
  # /usr/local/lib/python3.11) with pip, setuptools and wheel installed and no EXTERNALLY-MANAGED marker. Debian's
  # interpreter lives under /usr, so: links in /usr/local/bin, /usr/local/lib/python3.11 a link to the stdlib
  # (so a Dockerfile's `rm -rf /usr/local/lib/python3.11/ensurepip` removes the real one), and pip, setuptools and
  # wheel installed from Debian's own wheels (python3-*-whl) into /usr/local, as `pip install` does there. Those
  # wheels (which Debian's ensurepip, and so `python -m venv`, reads from /usr/share/python-wheels) move into
  # ensurepip/_bundled, where the official image keeps its own, so removing ensurepip removes every installer.
  # An empty /etc/pip.conf: the mount point of build-images.sh's pip configuration (a bind mount onto a path that
  # does not exist would leave that path behind, empty, in the image's layer).
  # shellcheck disable=SC2016  # expanded inside the chroot
  export STANDIN_SHAPE='
    rm -rf /usr/local/lib/python3.11 /usr/lib/python3.11/EXTERNALLY-MANAGED
    mkdir -p /usr/lib/python3.11/dist-packages
    ln -s ../../lib/python3.11 /usr/local/lib/python3.11
    ln -s /usr/bin/python3.11 /usr/local/bin/python3.11
    ln -s python3.11 /usr/local/bin/python3
    ln -s python3 /usr/local/bin/python
    pip_wheel=$(ls /usr/share/python-wheels/pip-*.whl)
    python3.11 "$pip_wheel/pip" install --no-cache-dir --no-index --find-links /usr/share/python-wheels \
      pip setuptools wheel
    mv /usr/share/python-wheels /usr/lib/python3.11/ensurepip/_bundled
    ln -s ../lib/python3.11/ensurepip/_bundled /usr/share/python-wheels
    : > /etc/pip.conf
    rm -rf /root/.cache'
  mmdebstrap --variant=minbase --mode=root --format=tar --skip=output/dev \
    --include=python3.11,python3.11-venv,ca-certificates,python3-pip-whl,python3-setuptools-whl,python3-wheel-whl \
    --customize-hook='chroot "$1" env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh -eux -c "$STANDIN_SHAPE"' \
    bookworm "$tarball.partial" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mv "$tarball.partial" "$tarball"
  find "$cache" -maxdepth 1 -name '*.tar*' ! -name "$key.tar" -delete  # earlier versions of this script's
  echo "standin-base: root filesystem in $((SECONDS - start)) s ($(du -h "$tarball" | cut -f1))"
fi

ctr=$("${bah[@]}" from --pull=never scratch)
trap '"${bah[@]}" rm "$ctr" >/dev/null' EXIT
"${bah[@]}" add --quiet "$ctr" "$tarball" / >/dev/null
# The official image's configuration, with Debian's interpreter version.
"${bah[@]}" config \
  --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --env PYTHON_VERSION="$(tar -xOf "$tarball" ./var/lib/dpkg/status | awk '
      $0 == "Package: python3.11-minimal" { p = 1 } p && /^Version:/ { print $2; exit }')" \
  --cmd python3 \
  --label dev.sigma0.standin="$key" \
  --label org.opencontainers.image.description="Stand-in for $name: Debian bookworm's python3.11 (scripts/images/standin-base.sh)" \
  "$ctr"
"${bah[@]}" commit --quiet --rm "$ctr" "$name" >/dev/null
trap - EXIT
"${bah[@]}" rmi --prune >/dev/null 2>&1 || true  # the previous stand-in, now unnamed (layers in use stay)
echo "standin-base: $name (stand-in $key)"
