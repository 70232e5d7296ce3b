"""`sigma0 check`: is an installed sigma0 ready to run cycles? What the chart's `helm test` hook runs.

Three things a platform team's first `helm install` can get wrong while every object still applies cleanly:

1. the CRDs: missing, not Established, or stale. Helm installs `crds/` once and never upgrades them, so after a
   `helm upgrade` the cluster can keep an older schema than the operator it runs. Each CRD this package ships must be
   served with the same openAPIV3Schema, printer columns and subresources as the package's own copy (sigma0/crds);
2. the operator: every running operator pod must be Ready and answer its liveness endpoint (`/healthz`, kopf's) with
   200, straight at the pod's address, as the kubelet probes it;
3. RBAC: the operator's ServiceAccount must be allowed every rule the chart meant to grant it (the chart passes its
   own rendered rules, so there is one list), where it acts: cluster-wide, or in each watched namespace. Each rule
   is asked of the API server's authorizer with a SubjectAccessReview for that ServiceAccount: a binding to the
   wrong name or namespace, a missing RoleBinding, or a policy engine that strips rules all show here.

Every finding is printed as a line; exit 0 when every check passed, 1 when one failed, 2 on bad arguments.
The pure halves (`crd_problems`, `access_requests`) hold the rules; `run` does the I/O.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from sigma0.spec import crd

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SHIPPED_KINDS = ("TrainingCycle", "AdapterRelease")
# What a served CRD version must share with the shipped one.
VERSION_FIELDS = ("served", "storage", "schema", "subresources", "additionalPrinterColumns")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", required=True, help="the namespace the operator runs in")
    parser.add_argument("--operator-service-account", required=True, help="the operator's ServiceAccount")
    parser.add_argument(
        "--operator-selector",
        required=True,
        help="label selector of the operator's pods, e.g. app.kubernetes.io/instance=sigma0,...",
    )
    parser.add_argument("--replicas", type=int, default=1, help="operator replicas expected (0: probe none)")
    parser.add_argument("--health-port", type=int, default=8080, help="the operator's liveness port (/healthz)")
    parser.add_argument(
        "--rules",
        required=True,
        help="the operator's RBAC rules as JSON (a list of {apiGroups, resources, verbs, "
        "resourceNames?}): what the chart grants it",
    )
    parser.add_argument(
        "--watch-namespace",
        action="append",
        default=[],
        help="a namespace the operator acts in through a Role (repeat); none: cluster-wide",
    )
    parser.add_argument(
        "--namespace-rules",
        default="[]",
        help="the operator's RBAC rules in its own namespace as JSON (the GPU ledgers' Role), same form as --rules",
    )
    parser.add_argument("--kubeconfig", help="a kubeconfig file (default: in-cluster, then $KUBECONFIG)")


# ---------------------------------------------------------------------------------------------------------------
# Pure: what must hold


def crd_problems(live: dict[str, Any] | None, shipped: dict[str, Any]) -> list[str]:
    """What is wrong with the CRD the API server has (None: it has none) against the one this package ships."""
    name = shipped["metadata"]["name"]
    if live is None:
        return [f"CRD {name} is not installed (helm installs helm/sigma0/crds/ on install only)"]
    problems = []
    conditions = {c.get("type"): c for c in (live.get("status") or {}).get("conditions") or []}
    if (conditions.get("Established") or {}).get("status") != "True":
        problems.append(f"CRD {name} is not Established")
    live_versions = {v["name"]: v for v in live["spec"].get("versions") or []}
    for version in shipped["spec"]["versions"]:
        found = live_versions.get(version["name"])
        if found is None:
            problems.append(f"CRD {name} does not serve {version['name']}")
            continue
        stale = [field for field in VERSION_FIELDS if found.get(field) != version.get(field)]
        if stale:
            problems.append(
                f"CRD {name} {version['name']}: {', '.join(stale)} differ from this sigma0's CRD "
                "(stale after an upgrade? `kubectl apply -f crds/`: docs/install.md)"
            )
    return problems


@dataclass(frozen=True)
class Access:
    """One request the operator's ServiceAccount must be allowed: a verb on a resource (or subresource)."""

    group: str
    resource: str
    verb: str
    namespace: str = ""  # "": cluster-wide (every namespace)
    name: str = ""  # a rule limited by resourceNames is asked for each name

    def describe(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f"in {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {what}{'/' + self.name if self.name else ''} {where}"


def access_requests(rules: list[dict[str, Any]], namespaces: list[str]) -> list[Access]:
    """Every (group, resource, verb[, name]) the rules grant, in each namespace (none given: cluster-wide)."""
    if not isinstance(rules, list) or not rules:
        raise ValueError("--rules: expected a non-empty JSON list of RBAC rules")
    requests = []
    for where in namespaces or [""]:
        for rule in rules:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            requests.append(Access(group, resource, verb, where, name))
    return requests


def review(access: Access, namespace: str, service_account: str) -> dict[str, Any]:
    """The SubjectAccessReview that asks whether `service_account` (in `namespace`) may make this request."""
    resource, _, subresource = access.resource.partition("/")
    attributes = {"group": access.group, "resource": resource, "verb": access.verb}
    for key, value in (("subresource", subresource), ("namespace", access.namespace), ("name", access.name)):
        if value:
            attributes[key] = value
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{service_account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# ---------------------------------------------------------------------------------------------------------------
# I/O


def _healthz(ip: str, port: int) -> str | None:
    """None if http://ip:port/healthz answers 200, else what went wrong."""
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def check(args: argparse.Namespace, api: Any) -> list[tuple[bool, str]]:
    """Every finding as (passed, line)."""
    from kubernetes import client

    findings: list[tuple[bool, str]] = []
    extensions = client.ApiextensionsV1Api(api)
    for kind in SHIPPED_KINDS:
        shipped = crd(kind)
        name = shipped["metadata"]["name"]
        try:
            live = api.sanitize_for_serialization(extensions.read_custom_resource_definition(name))
        except client.ApiException as error:
            if error.status != 404:
                raise
            live = None
        problems = crd_problems(live, shipped)
        findings += [(False, p) for p in problems] or [(True, f"CRD {name}: Established, same schema as this sigma0")]

    core = client.CoreV1Api(api)
    pods = [
        api.sanitize_for_serialization(p)
        for p in core.list_namespaced_pod(args.namespace, label_selector=args.operator_selector).items
    ]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if args.replicas == 0:
        findings.append((True, "operator: replicas is 0, no pod to probe"))
    elif not running:
        findings.append((False, f"operator: no running pod matches {args.operator_selector} in {args.namespace}"))
    for pod in running:
        name, ip = pod["metadata"]["name"], (pod.get("status") or {}).get("podIP")
        if not pod_ready(pod):
            findings.append((False, f"operator pod {name}: not Ready"))
        elif not ip:
            findings.append((False, f"operator pod {name}: no pod IP"))
        else:
            error = _healthz(ip, args.health_port)
            findings.append(
                (
                    error is None,
                    f"operator pod {name}: /healthz on {ip}:{args.health_port} "
                    + ("answers 200" if error is None else f"fails: {error}"),
                )
            )

    authorization = client.AuthorizationV1Api(api)
    own = json.loads(args.namespace_rules)
    wanted = access_requests(json.loads(args.rules), args.watch_namespace)
    for access in wanted + (access_requests(own, [args.namespace]) if own else []):
        body = review(access, args.namespace, args.operator_service_account)
        answer = api.sanitize_for_serialization(authorization.create_subject_access_review(body))
        allowed = bool((answer.get("status") or {}).get("allowed"))
        findings.append(
            (
                allowed,
                f"RBAC: {args.operator_service_account} may {access.describe()}" + ("" if allowed else ": DENIED"),
            )
        )
    return findings


def run(args: argparse.Namespace) -> int:
    from sigma0.kube.operator import api_client

    for flag, text, namespaces in (("--rules", args.rules, args.watch_namespace),
                                   ("--namespace-rules", args.namespace_rules, [args.namespace])):
        try:
            rules = json.loads(text)
            if rules or flag == "--rules":
                access_requests(rules, namespaces)
        except (json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
            print(f"{flag}: not a JSON list of RBAC rules ({error})")
            return EXIT_BAD_INPUT
    findings = check(args, api_client(args.kubeconfig))
    for passed, line in findings:
        print(f"{'ok  ' if passed else 'FAIL'}  {line}", flush=True)
    failed = sum(not passed for passed, _ in findings)
    print(f"sigma0 check: {len(findings) - failed} passed, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_FAILED
