"""The manifests: one schema (the CRDs in crds/), checked the same way locally and by the API server.

`load_manifest(path)` reads a YAML manifest, applies the CRD's defaults, validates it against the CRD's OpenAPI
schema (unknown fields rejected, as `kubectl apply` does with strict field validation), checks the rules the API
server would check with CEL, and returns a typed `TrainingCycle`. Every problem is reported with the field's path.

`validate_file(path)` (what `sigma0 validate` runs) checks every document of a file, TrainingCycle or
AdapterRelease, each against its own CRD. A document that names the same object as an earlier one in the file is
an edit of it, as `kubectl apply -f` would apply it: the CRD's transition rules (immutable fields, a revision that
never decreases) are checked between the two.
"""

from __future__ import annotations

import copy
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "sigma0.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ManifestError(ValueError):
    """A manifest that cannot run; `problems` holds one 'field: what is wrong' line each."""

    def __init__(self, source: str, problems: list[str], kind: str = "TrainingCycle") -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid {kind}:\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------------------------------------------
# The schema, read from the CRD files


@cache
def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition for `kind` (TrainingCycle or AdapterRelease), as shipped in crds/."""
    plural = {"TrainingCycle": "trainingcycles", "AdapterRelease": "adapterreleases"}[kind]
    text = resources.files("sigma0").joinpath("crds", f"{plural}.{GROUP}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def openapi_schema(kind: str) -> dict[str, Any]:
    (version,) = [v for v in crd(kind)["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in defaults the way the API server does for a structural schema: missing fields with a default get it,
    and defaults are then defaulted further (so `train: {}` gains `train.lora.r`)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as a JSON Schema (draft 4, whose boolean exclusiveMinimum matches OpenAPI 3.0) that rejects
    unknown fields wherever the API server would prune them."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    return schema


@cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_strict(openapi_schema(kind)))


def _field_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem, each starting with the path of the field it is about (as the API server names it)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = ", ".join(_field_path([*path, name]) for name in extra)
        return [f"{_field_path(path)}: unknown field(s) {', '.join(extra)} (not in the schema: {unknown}; "
                f"known: {known})"]
    if error.validator == "required":  # one error per object: name each missing field by its own path
        missing = [name for name in error.validator_value if name not in error.instance]
        return [f"{_field_path([*path, name])}: {name!r} is a required property" for name in missing]
    return [f"{_field_path(path)}: {error.message}"]


# ---------------------------------------------------------------------------------------------------------------
# The typed spec (mirrors the CRD; tests/test_spec.py checks that every CRD field has a field here and back)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class BaseModelRef(_Model):
    name: str


class Source(_Model):
    path: str


class HarvestSpec(_Model):
    sources: tuple[Source, ...]
    exclude_suites: tuple[str, ...] = ("humaneval",)


Sandbox = Literal["auto", "gvisor", "process"]


class VerifySpec(_Model):
    sandbox: Sandbox = "auto"
    timeout_seconds: float = 10
    workers: int = 2
    memory_mb: int = Field(1024, alias="memoryMB")


class DatasetSpec(_Model):
    base: str | None = None


class LoraSpec(_Model):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class TrainSpec(_Model):
    steps: int = 30
    learning_rate: float = 2e-4
    max_seq_length: int = 512
    batch_size: int = 4
    gradient_accumulation: int = 1
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    checkpoint_every: int = 100
    seed: int = 0
    quantization: Literal["nf4", "none"] = "nf4"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    lora: LoraSpec = LoraSpec()


class EvalSpec(_Model):
    suite: str = "humaneval"
    report_suites: tuple[str, ...] = ()
    subset: str = "all"
    max_new_tokens: int = 256
    batch_size: int = 8
    sandbox: Sandbox = "auto"
    timeout_seconds: float = 10
    workers: int = 2


class CandidateSpec(_Model):
    """An adapter trained elsewhere, gated instead of a trained one: where it is and the digest it must have."""

    uri: str
    digest: str


# The stages a dry run may stop after (spec.stopAfter): the CRD's enum.
StopAfter = Literal["verify", "dataset"]


class PromoteSpec(_Model):
    margin: float = 0.0
    min_pass_at1: float = Field(0.0, alias="minPassAt1")
    significance: float | None = None


class PvcRef(_Model):
    claim_name: str
    sub_path: str | None = None


class ArtifactsSpec(_Model):
    path: str | None = None
    uri: str | None = None
    pvc: PvcRef | None = None


DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"  # a placement's gpuResource when unset (the CRD's rules say it too)


class Resources(_Model):
    """A GPU pod's container resources: core/v1 ResourceRequirements, quantities as written."""

    limits: dict[str, int | str] | None = None
    requests: dict[str, int | str] | None = None
    claims: tuple[dict[str, Any], ...] | None = None

    def as_container_resources(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class GpuPlacement(_Model):
    """One place GPU pods can run (a GPU pool), with its optional weekly GPU-hour budget (sigma0.placement)."""

    name: str = "default"
    gpus: int | None = None
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    resources: Resources | None = None
    node_selector: dict[str, str] | None = None
    tolerations: tuple[dict[str, Any], ...] | None = None
    priority_class_name: str | None = None
    weekly_gpu_hours: float | None = Field(None, alias="weeklyGPUHours")
    unschedulable_seconds: int = 600


class GpuPlacements(GpuPlacement):
    """A GPU stage's setting: one placement inline (the simple form), or `placements`, tried in order."""

    placements: tuple[GpuPlacement, ...] = ()

    def ordered(self) -> tuple[GpuPlacement, ...]:
        if self.placements:
            return self.placements
        return (GpuPlacement.model_validate(self.model_dump(exclude={"placements"})),)


class SandboxPlacement(_Model):
    runtime_class_name: str = "gvisor"
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: tuple[dict[str, Any], ...] | None = None


class PlacementSpec(_Model):
    train: GpuPlacements | None = None
    eval: GpuPlacements | None = None
    sandbox: SandboxPlacement = SandboxPlacement()


class StageTimeouts(_Model):
    """How long each stage may run, in seconds (unset: only the cycle's deadline bounds it)."""

    harvest: int | None = None
    verify: int | None = None
    dataset: int | None = None
    train: int | None = None
    generate: int | None = None
    score: int | None = None
    decide: int | None = None

    def of(self, stage: str) -> int | None:
        found = getattr(self, stage, None)
        return found if isinstance(found, int) else None


class CycleSpec(_Model):
    release: str
    base_model: BaseModelRef
    harvest: HarvestSpec | None = None  # None only with `candidate` (CEL rules in the CRD)
    candidate: CandidateSpec | None = None
    stop_after: StopAfter | None = None
    verify: VerifySpec = VerifySpec()
    dataset: DatasetSpec = DatasetSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    promote: PromoteSpec = PromoteSpec()
    artifacts: ArtifactsSpec = ArtifactsSpec()
    placement: PlacementSpec = PlacementSpec()
    deadline_seconds: int = 86400
    stage_timeouts: StageTimeouts = StageTimeouts()
    suspend: bool = False
    ttl_seconds_after_finished: int | None = None  # the janitor deletes the finished cycle after it (sigma0.retention)


class TrainingCycle(BaseModel):
    """A validated manifest: its name (or generateName), namespace, and typed spec."""

    model_config = ConfigDict(frozen=True)

    name: str | None
    generate_name: str | None
    namespace: str | None
    spec: CycleSpec
    raw: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Loading


KINDS = ("TrainingCycle", "AdapterRelease")

# What a cycle that imports its candidate (spec.candidate) cannot have: the settings of training it here.
CANDIDATE_EXCLUDES = ("harvest", "verify", "dataset", "train", "placement.train")
# What cannot be added to or removed from a cycle once it exists (each one present is immutable itself).
PRESENCE_FIXED = ("harvest", "verify", "dataset", "train", "candidate", "stopAfter")

# A pod gets at most one GPU (train and generate are one process on one device): `gpus` is capped by the schema, and a
# GPU count asked for in resources by these rules (one per part), unless `gpus` overrides it.
GPU_RESOURCE_PARTS = ("limits", "requests")
_GPU = f"(has(self.gpuResource) ? self.gpuResource : '{DEFAULT_GPU_RESOURCE}')"
GPU_RESOURCE_RULES = {
    part: f"has(self.gpus) || !has(self.resources) || !has(self.resources.{part}) "
    f"|| !({_GPU} in self.resources.{part}) || string(self.resources.{part}[{_GPU}]) in ['0', '1']"
    for part in GPU_RESOURCE_PARTS
}

# The CRDs' CEL rules, in Python (tests/test_bad_input.py checks that every rule in crds/ is one of these).
# Rules that only look at the new object: checked by _cel_equivalents, after the schema holds.
CEL_RULES = {
    "TrainingCycle": (
        "[has(self.path), has(self.pvc), has(self.uri)].filter(x, x).size() <= 1",
        "!has(self.placements) || [has(self.name), has(self.gpus), has(self.gpuResource), has(self.resources), "
        "has(self.nodeSelector), has(self.tolerations), has(self.priorityClassName), has(self.weeklyGPUHours), "
        "has(self.unschedulableSeconds)].all(x, !x)",
        "has(self.harvest) || has(self.candidate)",
        *(f"!has(self.candidate) || !has(self.{name})" for name in CANDIDATE_EXCLUDES if "." not in name),
        "!has(self.candidate) || !has(self.placement) || !has(self.placement.train)",
        "!has(self.candidate) || !has(self.stopAfter)",
        "!has(self.warmupSteps) || !has(self.steps) || self.warmupSteps <= self.steps",
        *GPU_RESOURCE_RULES.values(),
    ),
    "AdapterRelease": ("!has(self.passed) || !has(self.total) || self.passed <= self.total",
                       "!has(self.shortDigest) || self.shortDigest == self.digest.substring(0, 19)"),
}
# Transition rules (they read oldSelf): checked on an edit, between the object as it is and as it will be.
TRANSITION_RULES: dict[str, Callable[[Any, Any], bool]] = {  # rule → predicate(self, oldSelf)
    "self == oldSelf": operator.eq,
    "self >= oldSelf": operator.ge,
    " && ".join(f"has(self.{name}) == has(oldSelf.{name})" for name in PRESENCE_FIXED):
        lambda new, old: all((name in new) == (name in old) for name in PRESENCE_FIXED),
}


def _rule_message(kind: str, rule: str) -> str:
    """The CRD's own message for a rule on the spec (so both sides say the same words)."""
    spec = openapi_schema(kind)["properties"]["spec"]
    return next(r["message"] for r in spec.get("x-kubernetes-validations", []) if " ".join(r["rule"].split()) == rule)


def _cel_equivalents(kind: str, spec: dict[str, Any]) -> list[str]:
    """The CEL rules in the CRD that a plain JSON Schema cannot express, other than transition rules."""
    if kind == "AdapterRelease":
        pointers = [("spec.current", spec.get("current"))]
        pointers += [(f"spec.history[{index}]", item) for index, item in enumerate(spec.get("history") or [])]
        problems = [f"{where}: passed cannot exceed total (passed {pointer['passed']}, total {pointer['total']})"
                    for where, pointer in pointers
                    if pointer and "passed" in pointer and "total" in pointer and pointer["passed"] > pointer["total"]]
        problems += [f"{where}: shortDigest must be the first 19 characters of digest (shortDigest "
                     f"{pointer['shortDigest']!r}, digest {pointer['digest']!r})"
                     for where, pointer in pointers
                     if pointer and "shortDigest" in pointer and pointer["shortDigest"] != pointer["digest"][:19]]
        return problems
    problems = []
    if "harvest" not in spec and "candidate" not in spec:
        problems.append(f"spec.harvest: {_rule_message(kind, 'has(self.harvest) || has(self.candidate)')}")
    if "candidate" in spec:
        for name in (*CANDIDATE_EXCLUDES, "stopAfter"):
            parent, _, child = name.rpartition(".")
            holder = (spec.get(parent) or {}) if parent else spec
            if child in holder:
                rule = (f"!has(self.candidate) || !has(self.{parent}) || !has(self.{name})" if parent
                        else f"!has(self.candidate) || !has(self.{name})")
                problems.append(f"spec.{name}: {_rule_message(kind, rule)}")
    artifacts = spec.get("artifacts") or {}
    chosen = [key for key in ("path", "pvc", "uri") if key in artifacts]
    if len(chosen) > 1:
        problems.append(f"spec.artifacts: set at most one of artifacts.path, artifacts.pvc, artifacts.uri "
                        f"(got {chosen})")
    train = spec.get("train") or {}
    if "warmupSteps" in train and "steps" in train and train["warmupSteps"] > train["steps"]:
        problems.append(f"spec.train: train.warmupSteps cannot exceed train.steps (warmupSteps "
                        f"{train['warmupSteps']}, steps {train['steps']})")
    for stage in ("train", "eval"):
        setting = (spec.get("placement") or {}).get(stage) or {}
        each = [(f"spec.placement.{stage}", setting)]
        each += [(f"spec.placement.{stage}.placements[{index}]", item)
                 for index, item in enumerate(setting.get("placements") or [])]
        for where, one in each:
            problems += [f"{where}: resources.{part} asks for more than one GPU (gpuResource): train and generate "
                         "run as one process on one device, so a second GPU would be held and never used"
                         for part in GPU_RESOURCE_PARTS if _asks_for_gpus(one, part) not in (None, "0", "1")]
        if "placements" not in setting:
            continue
        inline = sorted(set(setting) - {"placements"})
        if inline:
            problems.append(f"spec.placement.{stage}: set one placement at this level or a list in placements, "
                            f"not both (got {', '.join(inline)} beside placements)")
        names = [p.get("name") for p in setting["placements"]]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # x-kubernetes-list-type: map, keyed by name
            problems.append(f"spec.placement.{stage}.placements: duplicate name(s) {', '.join(twice)}")
    return problems


def _asks_for_gpus(placement: dict[str, Any], part: str) -> str | None:
    """The GPU count a placement's resources.<part> asks for, as CEL's string() writes it, where `gpus` does not
    override it (None: it asks for none)."""
    if "gpus" in placement:
        return None
    value = ((placement.get("resources") or {}).get(part) or {}).get(placement.get("gpuResource", DEFAULT_GPU_RESOURCE))
    return None if value is None else str(value)


def transition_problems(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The CRD's transition rules between two defaulted objects, as the API server checks them on an update: a
    rule on a field applies only where the old and the new object both have it. Only object fields are walked, not
    list items or map values: the CRDs have no transition rule there."""
    problems = []

    def walk(schema: dict[str, Any], old: Any, new: Any, path: list[str]) -> None:
        for rule in schema.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"] and not TRANSITION_RULES[" ".join(rule["rule"].split())](new, old):
                changed = "; ".join(_changes(old, new, path)[:3])
                problems.append(f"{_field_path(path)}: {rule['message']} ({changed})")
        if isinstance(old, dict) and isinstance(new, dict):
            for name, sub in schema.get("properties", {}).items():
                if name in old and name in new:
                    walk(sub, old[name], new[name], [*path, name])

    walk(openapi_schema(kind), old, new, [])
    return problems


def _changes(old: Any, new: Any, path: list[Any]) -> list[str]:
    """What an edit changed, one 'field: old → new' line per changed value (recursing into objects)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(old.keys() | new.keys(), key=str)
                for line in _changes(old.get(key), new.get(key), [*path, key])]
    if old == new:
        return []
    return [f"{_field_path(path)}: {_short(old)} → {_short(new)}"]


def _short(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:59] + "…"


def _metadata_problems(metadata: Any) -> list[str]:
    if not isinstance(metadata, dict):
        return ["metadata: required, with a name or a generateName"]
    name, generate_name = metadata.get("name"), metadata.get("generateName")
    if not name and not generate_name:
        return ["metadata: set metadata.name or metadata.generateName"]
    problems = []
    if name is not None and (not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 63):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label (lower-case letters, digits and '-')")
    if generate_name is not None and (
        not isinstance(generate_name, str) or not DNS_LABEL.match(generate_name.rstrip("-") or "-")
    ):
        problems.append(f"metadata.generateName: {generate_name!r} is not a valid prefix")
    return problems


def _problems(document: Any, kind: str) -> tuple[list[str], dict[str, Any]]:
    """Everything wrong with one document as a `kind`, each line naming its field; and the defaulted document."""
    if not isinstance(document, dict):
        return [f"(top level): a {kind} manifest must be a YAML mapping"], {}
    problems: list[str] = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION}, got {document.get('apiVersion')!r}")
    if document.get("kind") != kind:
        problems.append(f"kind: must be {kind}, got {document.get('kind')!r}")
    problems += _metadata_problems(document.get("metadata"))
    defaulted = apply_defaults(openapi_schema(kind), copy.deepcopy(document))
    for error in sorted(_validator(kind).iter_errors(defaulted), key=str):
        problems += _describe(error)
    if not problems:
        problems += _cel_equivalents(kind, defaulted.get("spec") or {})
    return list(dict.fromkeys(problems)), defaulted


def parse_manifest(document: Any, source: str = "<manifest>") -> TrainingCycle:
    """Validate one manifest document (already parsed YAML) and return the typed cycle, or raise ManifestError."""
    problems, defaulted = _problems(document, "TrainingCycle")
    if problems:
        raise ManifestError(source, problems)
    return _typed(defaulted)


def _typed(defaulted: dict[str, Any]) -> TrainingCycle:
    metadata = defaulted["metadata"]
    return TrainingCycle(
        name=metadata.get("name"),
        generate_name=metadata.get("generateName"),
        namespace=metadata.get("namespace"),
        spec=CycleSpec.model_validate(defaulted["spec"]),
        raw=defaulted,
    )


@dataclass(frozen=True)
class Checked:
    """A document that passed `check_documents`: its kind and the document with the CRD's defaults applied."""

    kind: str
    document: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str] | None:
        """What names the object in a cluster (None for a generateName: each apply makes a new one)."""
        metadata = self.document["metadata"]
        name = metadata.get("name")
        return (self.kind, metadata.get("namespace") or "", name) if name else None

    def describe(self) -> str:
        metadata, spec = self.document["metadata"], self.document["spec"]
        name = metadata.get("name") or f"{metadata['generateName']}…"
        if self.kind == "TrainingCycle":
            return f"TrainingCycle {name} for release {spec['release']}"
        return f"AdapterRelease {name} at revision {spec['revision']}"


def _is_ours(document: Any, only: bool) -> bool:
    """Is this document one for us to check? The only document of a file always is; among several, those of our
    kinds or API group are (a file may hold other Kubernetes objects beside a cycle)."""
    if only or not isinstance(document, dict):
        return True
    return document.get("kind") in KINDS or str(document.get("apiVersion", "")).startswith(f"{GROUP}/")


def check_documents(documents: list[Any], source: str = "<manifest>") -> list[Checked]:
    """Check every sigma0 document of a file against its kind's CRD, in order. A document that names the same
    object as an earlier one is an edit of it, as `kubectl apply -f` would apply it: the transition rules
    (immutable fields) are checked between the two. Raises ManifestError naming every problem and its field."""
    checked: list[Checked] = []
    problems: list[str] = []
    latest: dict[tuple[str, str, str], Checked] = {}
    ours = [doc for doc in documents if _is_ours(doc, only=len(documents) == 1)]
    for number, document in enumerate(ours, start=1):
        prefix = f"document {number}: " if len(ours) > 1 else ""
        if not isinstance(document, dict):
            problems.append(f"{prefix}(top level): a manifest must be a YAML mapping, got {type(document).__name__}")
            continue
        kind = document.get("kind")
        if kind not in KINDS:
            problems.append(f"{prefix}kind: must be one of {', '.join(KINDS)}, got {kind!r}")
            continue
        found, defaulted = _problems(document, kind)
        item = Checked(kind, defaulted)
        if not found and item.key in latest:
            found = transition_problems(kind, latest[item.key].document, defaulted)
        problems += [prefix + problem for problem in found]
        if not found:
            checked.append(item)
            if item.key is not None:
                latest[item.key] = item
    if problems:
        kinds = sorted({doc.get("kind") for doc in ours if isinstance(doc, dict)} & set(KINDS))
        raise ManifestError(source, problems, kind=kinds[0] if len(kinds) == 1 else "manifest")
    return checked


def read_documents(path: str | Path) -> list[Any]:
    """The YAML documents of a manifest file (empty ones left out), or ManifestError if it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(str(path), [f"(file): cannot read it: {error.strerror}"]) from error
    except UnicodeDecodeError as error:
        raise ManifestError(str(path), [f"(file): not UTF-8 text ({error.reason} at byte {error.start})"]) from error
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise ManifestError(str(path), [f"(file): not valid YAML: {error}"]) from error


def validate_file(path: str | Path) -> list[Checked]:
    """What `sigma0 validate` checks: every TrainingCycle and AdapterRelease in the file (see check_documents)."""
    documents = read_documents(path)
    if not documents:
        raise ManifestError(str(path), ["(file): no documents in it"], kind="manifest")
    return check_documents(documents, str(path))


def load_manifest(path: str | Path) -> TrainingCycle:
    """The one TrainingCycle of a manifest file, after every sigma0 document in it has been checked."""
    checked = validate_file(path)
    cycles = [item for item in checked if item.kind == "TrainingCycle"]
    if len(cycles) != 1:
        raise ManifestError(str(path), [f"(file): expected one TrainingCycle document, found {len(cycles)}"])
    return _typed(cycles[0].document)
