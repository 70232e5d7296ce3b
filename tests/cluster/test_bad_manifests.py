"""The catalogue of bad manifests (tests/badinput/manifests/catalogue.yaml) against the real API server, with only
the CRDs installed: every entry is refused by `kubectl apply`, the refusal names the same field as `sigma0 validate`
and says the same thing (tests/badinput/catalogue.py knows how each side words each rule), and nothing is lost:
a refused create leaves no object, a refused edit leaves the object as it was.

Manifests go to kubectl as JSON: YAML 1.1 (kubectl) and YAML 1.2 (PyYAML) disagree on scalars such as `n`.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from badinput.catalogue import ROOT, Entry, entries, flat, names

from sigma0.spec import ManifestError, apply_defaults, check_documents, openapi_schema

from .cluster import Cluster

ENTRIES = entries()
PLURALS = {"TrainingCycle": "trainingcycles.sigma0.dev", "AdapterRelease": "adapterreleases.sigma0.dev"}


@pytest.fixture(scope="module")
def ns(cluster: Cluster) -> Iterator[str]:
    """The CRDs, as shipped, and one namespace for the whole catalogue (each entry names its own object)."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", *(f"crd/{plural}" for plural in PLURALS.values()),
                    "--timeout=60s")
    name = cluster.create_namespace("bad-manifests")
    try:
        yield name
    finally:
        cluster.delete_namespace(name)


def apply(cluster: Cluster, namespace: str, document: dict[str, Any]) -> subprocess.CompletedProcess:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)


def stored(cluster: Cluster, namespace: str, document: dict[str, Any]) -> dict[str, Any] | None:
    answer = cluster.kubectl("get", PLURALS[document["kind"]], document["metadata"]["name"], "-n", namespace,
                             "-o", "json", check=False)
    if answer.returncode != 0:
        assert "NotFound" in answer.stderr or "Invalid value" in answer.stderr, answer.stderr
        return None
    return json.loads(answer.stdout)


def local_problem(entry: Entry) -> str:
    with pytest.raises(ManifestError) as caught:
        check_documents(entry.documents(), entry.name)
    (problem,) = caught.value.problems
    return problem


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_the_api_server_refuses_each_entry_as_sigma0_validate_does(cluster: Cluster, ns: str, entry: Entry) -> None:
    if entry.is_edit:
        created = apply(cluster, ns, entry.valid())
        assert created.returncode == 0, f"the valid object must be accepted: {created.stderr}"

    answer = apply(cluster, ns, entry.manifest())

    refusal = flat(answer.stderr)
    assert answer.returncode != 0, f"accepted: {answer.stdout}"
    assert names(entry.field, refusal), (entry.field, refusal)
    assert re.search(entry.says("server"), refusal), (entry.says("server"), refusal)
    local = local_problem(entry)  # the same field, the same rule, as sigma0 validate says it
    assert names(entry.field, local) and re.search(entry.says("local"), local), local

    found = stored(cluster, ns, entry.manifest())
    if entry.is_edit:  # the object is as the valid manifest made it, defaults (applied the same way here) and all
        assert found is not None
        expected = apply_defaults(openapi_schema(entry.kind), copy.deepcopy(entry.valid()))
        assert found["spec"] == expected["spec"]
    else:
        assert found is None, "a refused manifest must not create anything"
