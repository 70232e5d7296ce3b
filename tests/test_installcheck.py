"""`sigma0 check` (the chart's `helm test`): the rules it holds an installation to, attacked one by one.

The whole check against a live installation runs in tests/e2e (helm test on a real node); here, its pure halves.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sigma0 import cli
from sigma0.kube.installcheck import EXIT_BAD_INPUT, Access, access_requests, crd_problems, review, run
from sigma0.spec import crd


def served(kind: str) -> dict[str, Any]:
    """The shipped CRD as an API server returns it once Established."""
    live = copy.deepcopy(crd(kind))
    live["status"] = {
        "conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]
    }
    return live


@pytest.mark.parametrize("kind", ["TrainingCycle", "AdapterRelease"])
def test_the_shipped_crd_as_served_passes(kind: str) -> None:
    assert crd_problems(served(kind), crd(kind)) == []


def test_a_missing_crd_fails_naming_it() -> None:
    (problem,) = crd_problems(None, crd("TrainingCycle"))
    assert "trainingcycles.sigma0.dev is not installed" in problem


def test_a_crd_not_yet_established_fails() -> None:
    live = served("TrainingCycle")
    live["status"]["conditions"][1]["status"] = "False"
    assert crd_problems(live, crd("TrainingCycle")) == ["CRD trainingcycles.sigma0.dev is not Established"]


def test_a_stale_schema_left_by_helm_upgrade_fails() -> None:
    """helm upgrade never touches crds/: an older schema that lacks a field this operator reads must not pass."""
    live = served("TrainingCycle")
    (version,) = live["spec"]["versions"]
    del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["candidate"]
    (problem,) = crd_problems(live, crd("TrainingCycle"))
    assert "v1alpha1: schema differ" in problem and "kubectl apply -f crds/" in problem


def test_a_crd_that_lost_its_status_subresource_or_columns_fails() -> None:
    live = served("TrainingCycle")
    (version,) = live["spec"]["versions"]
    version.pop("subresources")
    version["additionalPrinterColumns"] = version["additionalPrinterColumns"][:2]
    (problem,) = crd_problems(live, crd("TrainingCycle"))
    assert "subresources, additionalPrinterColumns differ" in problem


def test_a_crd_that_no_longer_serves_the_version_fails() -> None:
    live = served("AdapterRelease")
    live["spec"]["versions"][0]["name"] = "v1beta1"
    assert crd_problems(live, crd("AdapterRelease")) == ["CRD adapterreleases.sigma0.dev does not serve v1alpha1"]


RULES = [
    {"apiGroups": ["sigma0.dev"], "resources": ["trainingcycles", "trainingcycles/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["sigma0-gpu-ledger"], "verbs": ["update"]},
]


def test_every_verb_resource_and_name_of_every_rule_is_asked_where_the_operator_acts() -> None:
    cluster_wide = access_requests(RULES, [])
    assert len(cluster_wide) == 5 and {a.namespace for a in cluster_wide} == {""}
    assert Access("", "configmaps", "update", "", "sigma0-gpu-ledger") in cluster_wide
    namespaced = access_requests(RULES, ["team-a", "team-b"])
    assert len(namespaced) == 10 and {a.namespace for a in namespaced} == {"team-a", "team-b"}


def test_a_subresource_is_asked_as_one_and_as_the_service_account_with_its_groups() -> None:
    body = review(Access("sigma0.dev", "trainingcycles/status", "patch", "team-a"), "sigma0-system", "op")
    assert body["spec"]["user"] == "system:serviceaccount:sigma0-system:op"
    assert "system:serviceaccounts:sigma0-system" in body["spec"]["groups"]
    assert body["spec"]["resourceAttributes"] == {
        "group": "sigma0.dev",
        "resource": "trainingcycles",
        "subresource": "status",
        "verb": "patch",
        "namespace": "team-a",
    }
    # cluster-wide: no namespace attribute at all (an empty one would be asked of the "" namespace)
    assert "namespace" not in review(Access("batch", "jobs", "watch"), "ns", "op")["spec"]["resourceAttributes"]


@pytest.mark.parametrize("rules", ["[]", "{}", "not json", '[{"verbs": ["get"]}]'])
def test_rules_that_are_not_a_list_of_rbac_rules_are_bad_input_before_any_request(
    rules: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.build_parser().parse_args(
        [
            "check",
            "--namespace",
            "ns",
            "--operator-service-account",
            "op",
            "--operator-selector",
            "a=b",
            "--rules",
            rules,
            "--kubeconfig",
            "/nonexistent",
        ]
    )
    assert run(args) == EXIT_BAD_INPUT
    assert "--rules" in capsys.readouterr().out
