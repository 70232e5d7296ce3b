"""The TrainingCycle manifest: one schema (the CRD in crds/), checked the same way locally and by the API server.

`load_manifest(path)` reads a YAML manifest, applies the CRD's defaults, validates it against the CRD's OpenAPI
schema (unknown fields rejected, as `kubectl apply` does with strict field validation), checks the rules the API
server would check with CEL, and returns a typed `TrainingCycle`. Every problem is reported with the field's path.
"""

from __future__ import annotations

import copy
import re
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

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid TrainingCycle:\n" + "\n".join(f"  - {p}" for p in problems))


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


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{_field_path(error.absolute_path)}: unknown field(s) {', '.join(extra)} (known: {known})"
    if error.validator == "required":
        return f"{_field_path(error.absolute_path)}: {error.message}"
    return f"{_field_path(error.absolute_path)}: {error.message}"


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


class GpuPlacement(_Model):
    """One place GPU pods can run (a GPU pool), with its optional weekly GPU-hour budget (sigma0.placement)."""

    name: str = "default"
    gpus: int | None = None
    gpu_resource: str = "nvidia.com/gpu"
    resources: dict[str, Any] | None = None
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


class CycleSpec(_Model):
    release: str
    base_model: BaseModelRef
    harvest: HarvestSpec
    verify: VerifySpec = VerifySpec()
    dataset: DatasetSpec = DatasetSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    promote: PromoteSpec = PromoteSpec()
    artifacts: ArtifactsSpec = ArtifactsSpec()
    placement: PlacementSpec = PlacementSpec()
    deadline_seconds: int = 86400
    suspend: bool = False


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


def _cel_equivalents(spec: dict[str, Any]) -> list[str]:
    """The CEL rules in the CRD that a plain JSON Schema cannot express (transition rules need an old object and
    only apply on the server)."""
    problems = []
    artifacts = spec.get("artifacts") or {}
    chosen = [key for key in ("path", "pvc", "uri") if key in artifacts]
    if len(chosen) > 1:
        problems.append(f"spec.artifacts: set at most one of artifacts.path, artifacts.pvc, artifacts.uri "
                        f"(got {chosen})")
    for stage in ("train", "eval"):
        setting = (spec.get("placement") or {}).get(stage) or {}
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


def parse_manifest(document: Any, source: str = "<manifest>") -> TrainingCycle:
    """Validate one manifest document (already parsed YAML) and return the typed cycle, or raise ManifestError."""
    if not isinstance(document, dict):
        raise ManifestError(source, ["(top level): a TrainingCycle manifest must be a YAML mapping"])
    problems: list[str] = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION}, got {document.get('apiVersion')!r}")
    if document.get("kind") != "TrainingCycle":
        problems.append(f"kind: must be TrainingCycle, got {document.get('kind')!r}")
    problems += _metadata_problems(document.get("metadata"))
    defaulted = apply_defaults(openapi_schema("TrainingCycle"), copy.deepcopy(document))
    problems += [_describe(e) for e in sorted(_validator("TrainingCycle").iter_errors(defaulted), key=str)]
    if not problems:
        problems += _cel_equivalents(defaulted["spec"])
    if problems:
        raise ManifestError(source, problems)
    metadata = defaulted["metadata"]
    return TrainingCycle(
        name=metadata.get("name"),
        generate_name=metadata.get("generateName"),
        namespace=metadata.get("namespace"),
        spec=CycleSpec.model_validate(defaulted["spec"]),
        raw=defaulted,
    )


def load_manifest(path: str | Path) -> TrainingCycle:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(str(path), [f"(file): cannot read it: {error.strerror}"]) from error
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise ManifestError(str(path), [f"(file): not valid YAML: {error}"]) from error
    cycles = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "TrainingCycle"]
    if len(documents) != 1 and len(cycles) != 1:
        raise ManifestError(str(path), [f"(file): expected one TrainingCycle document, found {len(cycles)}"])
    return parse_manifest(cycles[0] if cycles else documents[0], str(path))
