"""The catalogue of invalid manifests (manifests/catalogue.yaml) as test cases, for `sigma0 validate` and the API
server alike, and how each of the two words each kind of rejection."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).parent / "manifests" / "catalogue.yaml"
EXAMPLE = ROOT / "examples" / "cycle.yaml"
Side = Literal["local", "server"]

# What each side says for each rule: (sigma0 validate, i.e. jsonschema's words; the API server's words), as regexes.
# `cel` rules say the CRD's own message on both sides: the entry's `message`.
RULES: dict[str, tuple[str, str]] = {
    "type": (r"is not of type", r"must be of type"),
    "required": (r"is a required property", r"Required value"),
    "minimum": (r"is less than the minimum of", r"should be greater than or equal to"),
    "exclusiveMinimum": (r"is less than or equal to the minimum of", r"should be greater than \d"),
    "maximum": (r"is greater than the maximum of", r"should be less than or equal to"),
    "exclusiveMaximum": (r"is greater than or equal to the maximum of", r"should be less than \d"),
    "enum": (r"is not one of", r"Unsupported value"),
    "pattern": (r"does not match", r"should match"),
    "minLength": (r"should be non-empty", r"should be at least 1 chars long"),
    "minItems": (r"should be non-empty", r"should have at least 1 items"),
    "maxItems": (r"is too long", r"must have at most \d+ items"),
    "unknown": (r"unknown field", r"unknown field"),
    "name": (r"is not a DNS-1123 label", r"RFC 1123"),
    "duplicate": (r"duplicate name", r"Duplicate value"),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    field: str
    rule: str
    meaning: str
    patch: dict[str, Any] | None = None
    edit: dict[str, Any] | None = None
    message: str | None = None

    @property
    def is_edit(self) -> bool:
        return self.edit is not None

    def valid(self) -> dict[str, Any]:
        """The valid object the entry starts from, named after the entry."""
        base = copy.deepcopy(_example() if self.kind == "TrainingCycle" else _document()["adapterRelease"])
        base["metadata"] = {"name": self.name}
        return base

    def manifest(self) -> dict[str, Any]:
        """The invalid manifest; for an edit, the object as the edit would make it."""
        return merge_patch(self.valid(), self.edit if self.is_edit else self.patch)

    def documents(self) -> list[dict[str, Any]]:
        """What `sigma0 validate` reads: the manifest, or for an edit the object then its edit (as `kubectl apply
        -f` would apply them, one after the other)."""
        return [self.valid(), self.manifest()] if self.is_edit else [self.manifest()]

    def says(self, side: Side) -> str:
        """A regex for the reason the error must give on that side."""
        if self.rule == "cel":
            assert self.message, f"{self.name}: a cel entry needs the CRD's message"
            return re.escape(self.message)
        return RULES[self.rule][0 if side == "local" else 1]


@cache
def _document() -> dict[str, Any]:
    return yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))


@cache
def _example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def entries() -> list[Entry]:
    return [Entry(**entry) for entry in _document()["entries"]]


def names(field: str, text: str) -> bool:
    """Does the text name this field as a whole path? (`spec.train` is not named by `spec.train.steps`; the API
    server's `spec.placement.eval.placements[1]` names `spec.placement.eval.placements`.)"""
    return re.search(rf"(?<![\w.\]\[]){re.escape(field)}(?![\w.])", text) is not None


def flat(text: str) -> str:
    """Output with its line breaks and runs of spaces made single spaces (rich and kubectl wrap long lines)."""
    return " ".join(text.split())
