"""The manifest schema: the CRD is the one schema, defaults apply, bad manifests name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sigma0.spec import CycleSpec, ManifestError, load_manifest, openapi_schema, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
DEMO = sorted((ROOT / "examples" / "demo").glob("[0-9]-*.yaml"))


def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "sigma0.dev/v1alpha1",
        "kind": "TrainingCycle",
        "metadata": {"name": "c1"},
        "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                 "harvest": {"sources": [{"path": "corpus.jsonl"}]}},
    }


def problems_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document)
    return caught.value.problems


def test_minimal_manifest_gets_the_crd_defaults() -> None:
    cycle = parse_manifest(minimal())
    spec = cycle.spec
    assert (spec.train.lora.r, spec.train.lora.alpha) == (16, 32)
    assert spec.train.quantization == "nf4"
    assert spec.eval.suite == "humaneval" and spec.eval.subset == "all"
    assert spec.verify.sandbox == "auto"
    assert spec.placement.sandbox.runtime_class_name == "gvisor"
    assert spec.harvest.exclude_suites == ("humaneval",)
    assert spec.promote.margin == 0 and spec.promote.significance is None


def test_every_example_manifest_is_valid() -> None:
    manifests = sorted((ROOT / "examples").glob("*.yaml")) + DEMO
    assert len(DEMO) == 3
    for manifest in manifests:
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "train", "steps"), 0, "spec.train.steps: 0 is less than the minimum of 1"),
        (("spec", "train", "quantization"), "int3", "spec.train.quantization: 'int3' is not one of"),
        (("spec", "train", "learningRate"), 0, "spec.train.learningRate"),
        (("spec", "eval", "subset"), "half", "spec.eval.subset: 'half' does not match"),
        (("spec", "promote", "margin"), 1.5, "spec.promote.margin: 1.5 is greater than the maximum of 1"),
        (("spec", "promote", "significance"), 1, "spec.promote.significance"),
        (("spec", "verify", "sandbox"), "docker", "spec.verify.sandbox: 'docker' is not one of"),
        (("spec", "release"), "Not_A_Name", "spec.release: 'Not_A_Name' does not match"),
        (("spec", "harvest", "sources"), [], "spec.harvest.sources: [] should be non-empty"),
        (("spec", "train", "lora", "r"), "sixteen", "spec.train.lora.r: 'sixteen' is not of type 'integer'"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(path: tuple[str, ...], value: Any, expected: str) -> None:
    document = minimal()
    target = document
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    assert any(expected in problem for problem in problems_of(document)), problems_of(document)


def test_unknown_fields_are_rejected_not_dropped() -> None:
    document = minimal()
    document["spec"]["train"] = {"stepz": 10}
    (problem,) = problems_of(document)
    assert problem.startswith("spec.train: unknown field(s) stepz")


def test_missing_required_fields_and_identity() -> None:
    document = minimal()
    del document["spec"]["baseModel"]
    document["kind"] = "Job"
    document["metadata"] = {}
    text = "\n".join(problems_of(document))
    assert "'baseModel' is a required property" in text
    assert "kind: must be TrainingCycle" in text
    assert "metadata: set metadata.name or metadata.generateName" in text


def test_at_most_one_artifacts_location() -> None:
    document = minimal()
    document["spec"]["artifacts"] = {"path": "/data", "uri": "s3://bucket/sigma0"}
    assert problems_of(document) == [
        "spec.artifacts: set at most one of artifacts.path, artifacts.pvc, artifacts.uri (got ['path', 'uri'])"]


def test_unreadable_and_unparseable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read it"):
        load_manifest(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(broken)


def test_validation_does_not_modify_the_document() -> None:
    document = minimal()
    before = copy.deepcopy(document)
    parse_manifest(document)
    assert document == before


def _crd_fields(schema: dict[str, Any], prefix: str = "") -> set[str]:
    names = set()
    for name, sub in schema.get("properties", {}).items():
        names.add(prefix + name)
        if sub.get("type") == "array":
            sub = sub.get("items", {})
        if sub.get("type") == "object" and "properties" in sub:
            names |= _crd_fields(sub, f"{prefix}{name}.")
    return names


def _model_fields(model: type, prefix: str = "") -> set[str]:
    names = set()
    for field in model.model_fields.values():  # type: ignore[attr-defined]
        alias = field.alias
        names.add(prefix + alias)
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                names |= _model_fields(candidate, f"{prefix}{alias}.")
    return names


def test_typed_spec_mirrors_the_crd_exactly() -> None:
    spec_schema = openapi_schema("TrainingCycle")["properties"]["spec"]
    assert _crd_fields(spec_schema) == _model_fields(CycleSpec)


def test_demo_manifests_are_named_cycles_of_one_release() -> None:
    """Named, so a second `make demo` shows the finished cycles instead of deciding them again."""
    cycles = [parse_manifest(yaml.safe_load(path.read_text())) for path in DEMO]
    assert [cycle.name for cycle in cycles] == ["demo-1-bootstrap", "demo-2-promote", "demo-3-reject"]
    assert {cycle.spec.release for cycle in cycles} == {"demo-coder"}
    assert {cycle.spec.base_model.name for cycle in cycles} == {"tiny://coder"}
