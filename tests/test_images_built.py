"""The built images, run for real without a container engine, as a pod runs them.

scripts/build-images.sh (`make images`, which `make test` runs first) writes build/images/*.oci.tar and
build/images/images.json. Each archive is unpacked with umoci (cached by its content key under
${XDG_CACHE_HOME:-~/.cache}/sigma0/images/unpacked/) and run with runc the way the chart and the Job builder run it:
as uid/gid 65532, on a read-only root filesystem, with a tmpfs at /tmp, volumes bind-mounted, and the environment the
operator's Job builder gives the stage. These tests fail, never skip, when the images were not built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import sigma0
from sigma0 import plan
from sigma0.kube import jobs
from sigma0.spec import parse_manifest

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "build" / "images" / "images.json"
UNPACKED = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sigma0" / "images" / "unpacked"
NAMES = ("operator", "sandbox", "trainer")
SETTINGS = jobs.PodSettings()
UID = SETTINGS.run_as_user


@cache
def built() -> dict[str, dict[str, Any]]:
    assert INDEX.is_file(), (f"{INDEX.relative_to(ROOT)} is missing: build the images first "
                             "(`make images`, or `bash scripts/build-images.sh` as root)")
    return {image["name"]: image for image in json.loads(INDEX.read_text())}


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def _manifest_digest(index: Path) -> str | None:
    """The digest of the one manifest in an OCI index.json (None without one)."""
    manifests = json.loads(index.read_text())["manifests"] if index.is_file() else []
    return manifests[0]["digest"] if len(manifests) == 1 else None


@dataclass(frozen=True)
class Unpacked:
    rootfs: Path
    config: dict[str, Any]  # runc's config.json, as umoci generated it from the image's configuration
    image_config: dict[str, Any]  # the OCI image configuration (Entrypoint, Cmd, Env, User, ...)
    index: dict[str, Any]  # the archive's index.json
    layer_types: list[str]


@cache
def unpacked(name: str) -> Unpacked:
    """The image's root filesystem and runtime configuration, unpacked once per content key."""
    image = built()[name]
    archive = ROOT / image["archive"]
    assert archive.is_file(), f"{archive} is missing: rebuild the images (bash scripts/build-images.sh)"
    target = UNPACKED / image["contentKey"]
    if not (target / "done").is_file() or _manifest_digest(target / "index.json") != image["manifestDigest"]:
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        layout = partial / "layout"
        with tarfile.open(archive) as tar:  # an OCI archive is an OCI image layout in a tar
            tar.extractall(layout, filter="tar")
        index = json.loads((layout / "index.json").read_text())
        (manifest,) = index["manifests"]
        manifest_body = json.loads(_blob(layout, manifest["digest"]))
        (partial / "index.json").write_text(json.dumps(index))
        (partial / "image-config.json").write_bytes(_blob(layout, manifest_body["config"]["digest"]))
        (partial / "layers.json").write_text(json.dumps([layer["mediaType"] for layer in manifest_body["layers"]]))
        # umoci picks the image by a plain tag; the archive names it by its full reference
        manifest.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "image"
        (layout / "index.json").write_text(json.dumps(index))
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:image", str(partial / "bundle")],
                       check=True, capture_output=True, timeout=1800)
        shutil.rmtree(layout)
        (partial / "name").write_text(name)
        for older in UNPACKED.glob("*/name"):  # earlier builds of this image: gigabytes each for the trainer
            if older.parent != partial and older.read_text() == name:
                shutil.rmtree(older.parent)
        partial.rename(target)
        (target / "done").touch()
    return Unpacked(target / "bundle" / "rootfs", json.loads((target / "bundle" / "config.json").read_text()),
                    json.loads((target / "image-config.json").read_text()),
                    json.loads((target / "index.json").read_text()),
                    json.loads((target / "layers.json").read_text()))


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str
    termination: str  # what the container wrote to /dev/termination-log (the operator reads a stage's summary there)


@dataclass(frozen=True)
class Security:
    """Who a stage pod's container runs as: its pod's runAsUser/runAsGroup and the capabilities it adds after
    dropping ALL (allowPrivilegeEscalation: false, i.e. no_new_privs, in every case)."""

    uid: int = UID
    capabilities: tuple[str, ...] = ()


def run(name: str, args: list[str] | None, tmp_path: Path, *, env: dict[str, str] | None = None,
        volumes: dict[str, Path] | None = None, timeout: float = 120, security: Security = Security()) -> Ran:
    """Run the image as a stage pod would: uid/gid 65532 (or `security`'s user and capabilities), read-only root,
    tmpfs /tmp, a writable /dev/termination-log (kubelet's terminationMessagePath), `volumes` bind-mounted
    read-write, `env` over the image's. `args` None: the image's own entrypoint and command."""
    image = unpacked(name)
    config = json.loads(json.dumps(image.config))
    process = config["process"]
    if args is not None:
        process["args"] = args
    process["user"] = {"uid": security.uid, "gid": security.uid}
    granted = [f"CAP_{name}" for name in security.capabilities]
    process["capabilities"] = {key: granted for key in ("bounding", "effective", "permitted")}
    process["noNewPrivileges"] = True
    process["terminal"] = False
    merged = dict(item.split("=", 1) for item in process["env"])
    merged.update(env or {})
    process["env"] = [f"{key}={value}" for key, value in merged.items()]
    config["root"] = {"path": str(image.rootfs), "readonly": True}
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/tmp"] + [
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}]
    for destination, source in (volumes or {}).items():
        config["mounts"].append({"destination": destination, "type": "bind", "source": str(source),
                                 "options": ["rbind", "rw"]})
    bundle = tmp_path / f"bundle-{uuid.uuid4().hex[:8]}"
    bundle.mkdir()
    termination = bundle / "termination-log"
    termination.touch()
    os.chown(termination, security.uid, security.uid)
    config["mounts"].append({"destination": "/dev/termination-log", "type": "bind", "source": str(termination),
                             "options": ["bind", "rw"]})
    (bundle / "config.json").write_text(json.dumps(config))
    container = f"sigma0-test-{name}-{uuid.uuid4().hex[:12]}"
    try:
        done = subprocess.run(["runc", "run", "--bundle", str(bundle), container], capture_output=True, text=True,
                              timeout=timeout, check=False)
    finally:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True, check=False)
    return Ran(done.returncode, done.stdout, done.stderr, termination.read_text())


def python(name: str, code: str, tmp_path: Path, **kwargs: Any) -> Ran:
    done = run(name, ["python", "-c", code], tmp_path, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def job_env(stage: str) -> dict[str, str]:
    """The environment the operator's Job builder gives the pod of `stage` (artifacts on a volume at /artifacts)."""
    return {e["name"]: e["value"] for e in _job_pod(stage)["containers"][0]["env"]}


def job_security(stage: str) -> Security:
    """The user and capabilities the operator's Job builder gives the pod of `stage` (a verify or score pod under
    the gvisor RuntimeClass runs as root with the slot users' capabilities only)."""
    pod = _job_pod(stage)
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    added = container["securityContext"]["capabilities"].get("add", ())
    return Security(pod["securityContext"]["runAsUser"], tuple(added))


def _job_pod(stage: str) -> dict[str, Any]:
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c"},
                "spec": {"release": "r", "baseModel": {"name": "tiny://llama"},
                         "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}}}
    spec = parse_manifest(document).spec
    ref = jobs.CycleRef("c", "ns", "0123456789abcdef", "r")
    layout = jobs.layout(ref, spec, SETTINGS)
    (step,) = [s for s in plan.steps(spec, plan.CycleState(True, None, {}), layout) if s.stage == stage]
    job = jobs.build_job(step, cycle=ref, spec=spec, settings=SETTINGS, attempt=1, active_deadline_seconds=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    image = "trainer" if step.kind == "gpu" else "sandbox"
    assert container["image"].split("/")[-1] == f"{image}:{sigma0.__version__}"
    return job["spec"]["template"]["spec"]


# The archives ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_archive_holds_the_image_images_json_names(name: str) -> None:
    assert sorted(built()) == sorted(NAMES), f"{INDEX} lists {sorted(built())}"
    image = built()[name]
    assert image["ref"] == f"localhost/sigma0/{name}:{sigma0.__version__}"
    assert image["contentRef"] == f"localhost/sigma0/{name}:{image['contentKey']}"
    assert image["archive"] == f"build/images/{name}.oci.tar"
    found = unpacked(name)
    (manifest,) = found.index["manifests"]
    assert manifest["digest"] == image["manifestDigest"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == image["ref"]
    assert found.layer_types and all(t == "application/vnd.oci.image.layer.v1.tar+gzip" for t in found.layer_types)
    # the Job builder's and the chart's user, the same in the image itself
    assert found.image_config["config"]["User"] == f"{UID}:{UID}"
    assert found.image_config["architecture"] == "amd64"
    # built over the stand-in base (scripts/images/standin-base.sh), and saying so
    assert found.image_config["config"]["Labels"]["dev.sigma0.standin"]


def test_the_three_images_share_their_base_layers() -> None:
    """One base under all three: a node that pulled one image pulls only the others' own layers."""
    operator, *others = [unpacked(name).image_config["rootfs"]["diff_ids"] for name in NAMES]
    shared = 0
    while shared + 1 < len(operator) and all(
            len(layers) > shared + 1 and layers[shared] == operator[shared] for layers in others):
        shared += 1
    assert shared >= 1, "the images share no layer"
    assert shared == len(operator) - 1, "the operator image is its base plus one layer (its venv)"


@pytest.mark.parametrize("name", NAMES)
def test_no_trace_of_the_build_is_left_in_an_image(name: str, tmp_path: Path) -> None:
    """The build mounts its wheels at /mnt and its pip configuration at /etc/pip.conf (scripts/build-images.sh);
    the build stage's sources stay in the build stage."""
    found = python(name, (
        "import os\n"
        "conf = open('/etc/pip.conf').read() if os.path.exists('/etc/pip.conf') else ''\n"
        "print(os.listdir('/mnt'), os.path.exists('/wheels'), os.path.exists('/src'), repr(conf))\n"), tmp_path)
    assert found.stdout.split() == ["[]", "False", "False", "''"]


# The operator -----------------------------------------------------------------------------------------------------


def test_the_operator_image_starts_its_entrypoint_and_reads_its_crds(tmp_path: Path) -> None:
    image = unpacked("operator").image_config["config"]
    assert image["Entrypoint"] == ["sigma0", "operator"]
    done = run("operator", [*image["Entrypoint"], "--help"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--metrics-port" in done.stdout
    # the CRDs the package reads at runtime, byte for byte those in crds/
    shipped = json.loads(python("operator", (
        "import json; from importlib import resources; from sigma0 import spec\n"
        "files = resources.files('sigma0').joinpath('crds')\n"
        "print(json.dumps({p.name: p.read_text() for p in files.iterdir()}))\n"
        "assert spec.crd('TrainingCycle')['spec']['names']['kind'] == 'TrainingCycle'\n"), tmp_path).stdout)
    assert shipped == {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    # the CronJob's command too
    done = run("operator", ["sigma0", "cycle", "create", "--help"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# The sandbox ------------------------------------------------------------------------------------------------------


def test_the_sandbox_image_carries_no_installer_anywhere(tmp_path: Path) -> None:
    found = python("sandbox", (
        "import importlib.util, os, shutil\n"
        "for module in ('pip', 'ensurepip', 'setuptools', 'wheel'):\n"
        "    print('module', module, importlib.util.find_spec(module))\n"
        "for tool in ('pip', 'pip3', 'pip3.11', 'easy_install', 'wheel'):\n"
        "    print('tool', tool, shutil.which(tool))\n"
        "for top, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ('/proc', '/sys', '/dev', '/tmp')]\n"
        "    for f in dirs + files:\n"
        "        if f == 'ensurepip' or f.startswith(('pip-', 'setuptools-')) or f in ('pip', 'get-pip.py'):\n"
        "            print('found', os.path.join(top, f))\n"), tmp_path).stdout.splitlines()
    assert [line for line in found if not line.endswith(" None")] == [], found


ROWS = [
    {"id": "good", "fn": "add", "instruction": "Add.", "code": "def add(a, b):\n    return a + b\n",
     "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
    {"id": "bad", "fn": "add", "instruction": "Add.", "code": "def add(a, b):\n    return a - b\n",
     "asserts": ["assert add(1, 2) == 3"]},
    # leaves files behind in a folder it made unreadable, which the worker must still remove
    {"id": "litter", "fn": "add", "instruction": "Add.",
     "code": "def add(a, b):\n    return a + b\n\nimport os\nos.makedirs('d/e')\nopen('d/e/x', 'w').write('x')\n"
             "os.chmod('d/e', 0)\nos.chmod('d', 0)\n",
     "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
]


def test_the_sandbox_image_verifies_a_corpus_as_a_verify_pod(tmp_path: Path) -> None:
    """As the gvisor verify pod runs it: root with the slot users' capabilities only, no_new_privs (gVisor itself
    aside: tests/e2e runs the same pod under runsc). The tests/e2e run found every candidate crashing here, since
    such a root may not enter a slot user's folder; and the worker must still remove what candidates leave."""
    security = job_security("verify")
    assert security == Security(0, ("CHOWN", "KILL", "SETGID", "SETUID"))
    artifacts = tmp_path / "artifacts"
    (artifacts / "out").mkdir(parents=True)
    (artifacts / "candidates.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    os.chown(artifacts / "out", security.uid, security.uid)
    verify = ("sigma0 stage verify --input /artifacts/candidates.jsonl --output /artifacts/out/verified.jsonl "
              "--report /artifacts/out/report.json --sandbox process && echo left: $(ls -A /tmp)")
    done = run("sandbox", ["sh", "-c", verify], tmp_path, env=job_env("verify"), volumes={"/artifacts": artifacts},
               security=security)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.termination)["stage"] == "verify"
    report = json.loads((artifacts / "out" / "report.json").read_text())
    verified = [json.loads(line) for line in (artifacts / "out" / "verified.jsonl").read_text().splitlines()]
    assert [row["id"] for row in verified] == ["good", "litter"], report["verdicts"]
    assert done.stdout.splitlines()[-1] == "left:", done.stdout  # the candidates' folders are gone from /tmp


# The trainer ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_trainer_image_imports_its_ml_stack_and_caches_models_on_the_volume(tmp_path: Path) -> None:
    env = job_env("train")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    os.chown(artifacts, UID, UID)
    done = python("trainer", (
        "import bitsandbytes, peft, torch, transformers\n"
        "from huggingface_hub import constants\n"
        "from sigma0.ml import models\n"
        "print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__)\n"
        "print(constants.HF_HOME, constants.HF_HUB_CACHE, models.model_cache_root())\n"
        "print(models.materialise_tiny(models.parse_tiny('tiny://llama')))\n"),
        tmp_path, env=env, volumes={"/artifacts": artifacts}, timeout=300)
    versions, caches, tiny = done.stdout.splitlines()[-3:]
    assert versions.split()[0].startswith("2.15.0")
    hf_home, hub_cache, model_cache = caches.split()
    assert hf_home == "/artifacts/models/hf" and hub_cache.startswith("/artifacts/models/hf/")
    assert model_cache == "/artifacts/models" and tiny.startswith("/artifacts/models/")
    # the model landed on the volume, written by uid 65532
    saved = artifacts / Path(tiny).relative_to("/artifacts")
    assert any(saved.rglob("*.safetensors")) and saved.stat().st_uid == UID


@pytest.mark.slow
def test_the_trainer_image_runs_a_tiny_train_stage_on_cpu(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "train.jsonl").write_text("".join(
        json.dumps({"prompt": f"def f{i}():\n", "completion": "    return 0\n"}) + "\n" for i in range(4)))
    os.chown(artifacts, UID, UID)
    done = run("trainer", ["sigma0", "stage", "train", "--base-model", "tiny://llama",
                           "--dataset", "/artifacts/train.jsonl", "--output-dir", "/artifacts/adapter",
                           "--report", "/artifacts/train.json", "--device", "cpu", "--steps", "2"],
               tmp_path, env=job_env("train"), volumes={"/artifacts": artifacts}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (artifacts / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((artifacts / "train.json").read_text())["steps"] == 2
    # the summary the operator reads from the pod's termination message
    summary = json.loads(done.termination)
    assert summary["stage"] == "train" and summary["adapter_digest"].startswith("sha256:")
