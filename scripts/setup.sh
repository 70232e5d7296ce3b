#!/usr/bin/env bash
# Set up everything sigma0 needs on a fresh Debian machine: gVisor (runsc) from Debian's packages, a current gVisor
# built static from the Go module proxy for the faster systrap platform (scripts/build-gvisor.sh), chromium and its
# chromedriver for the dashboard's browser tests, and a virtual
# environment in .venv with sigma0 and its ML and test dependencies. Idempotent: a warm machine returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v runsc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing gVisor (runsc) from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
  else
    echo "setup: runsc (gVisor) is missing and this is not root: sandboxes fall back to plain processes" >&2
    echo "setup: install it with: sudo apt-get install runsc" >&2
  fi
fi

# A real headless browser for the dashboard's tests (tests/browser.py): Debian's chromium and its chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium and chromium-driver from Debian's packages (the dashboard's browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium or chromedriver is missing and this is not root: the dashboard's browser tests fail" >&2
    echo "setup: install them with: sudo apt-get install chromium chromium-driver" >&2
  fi
fi

# Debian's packages for the images and the cluster tests' real node. The images' builder (scripts/build-images.sh):
# buildah builds the Dockerfiles without a container engine over a base stood in by an mmdebstrap root filesystem
# (skopeo inspects the archives by hand). The kubelet node (tests/cluster/build-node.sh, kubeletnode.py): runc and the
# CNI plugins, busybox-static and gcc for the node's own images, umoci to pack and unpack images (the image tests run
# them with runc too), iptables for the Service DNAT.
debian_pkgs=(buildah mmdebstrap skopeo runc containernetworking-plugins busybox-static umoci iptables gcc libc6-dev)
missing_pkgs=()
for pkg in "${debian_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing_pkgs+=("$pkg")
done
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing_pkgs[*]} from Debian's packages (the images and the kubelet node)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
  else
    echo "setup: ${missing_pkgs[*]} missing and this is not root: make images and the kubelet node tests fail" >&2
    echo "setup: install them with: sudo apt-get install ${missing_pkgs[*]}" >&2
  fi
fi

# A current runsc, static, on the systrap platform: scores HumanEval in ~20 % less time and CPU than Debian's
# ptrace-only runsc (BENCHMARKS.md item 2). Built once (minutes) and cached; its smoke test records that it runs here, and sigma0 then uses it. Never
# fatal: without Go, the module proxy or a kernel that runs systrap, sigma0 keeps Debian's runsc on ptrace.
# SIGMA0_BUILD_GVISOR=0 skips it.
if [ "${SIGMA0_BUILD_GVISOR:-1}" != 0 ]; then
  if ! bash scripts/build-gvisor.sh >/dev/null; then
    echo "setup: no current gVisor (see above): sandboxes use Debian's runsc with --platform=ptrace" >&2
  fi
fi

stamp=.venv/.sigma0-installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing sigma0 and its dependencies into .venv (torch is large; pip caches it)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi
