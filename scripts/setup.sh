#!/usr/bin/env bash
# Set up everything sigma0 needs on a fresh Debian machine: gVisor (runsc) from Debian's packages, and a virtual
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
