"""The chart (helm/sigma0) and the plain manifests (manifests/), checked without a cluster.

- `helm lint --strict` is clean, and values.schema.json (plus the chart's own cross-field checks) rejects bad values
  with the field's name;
- `helm template` output, for several value sets, validates against the Kubernetes 1.36 schemas
  (kubernetes-validate, strict: unknown fields fail), and the CronJob's cycle template against the CRD;
- checkov finds nothing on the rendered output, and every check it skips is one of the expected few, each with the
  reason written next to it in the template;
- the chart's CRDs and manifests/crds/ are byte-identical to crds/; `kubectl kustomize manifests/` renders exactly
  the chart's default objects (plus the namespace and the suspended CronJob); the RBAC rules are the same everywhere;
- the commands the chart's pods run parse with the sigma0 CLI and name images that have a Dockerfile.

The real install on the test control plane is tests/cluster/test_install.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helm import tools
from sigma0 import cli
from sigma0.spec import openapi_schema, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "sigma0"
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.36.0"  # the newest schemas kubernetes-validate 1.37.0 has for the test cluster's v1.36.3
KUBE_VERSION = "v1.36.3"  # helm template --kube-version: the test cluster's
RELEASE, NAMESPACE = "sigma0", "sigma0-system"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

# Value sets that between them switch every template branch on.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {
        "watchNamespaces": ["sigma0-system", "team-a"],
        "artifacts": {"mode": "existingClaim", "existingClaim": "shared-artifacts"},
        "cronjob": {"enabled": True, "schedule": "30 3 * * 1-5", "timeZone": "Europe/Paris"},
        "metrics": {"service": False},
    },
    "plain-metrics": {
        "metrics": {"secure": False, "allowedFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}], "serviceMonitor": {"enabled": True}},
        "cronjob": {"enabled": True},
    },
    "everything": {
        "image": {"registry": "registry.example.com/ml", "tag": "0.1.0-rc1"},
        "imagePullSecrets": [{"name": "regcred"}],
        "cycleNamespaces": ["sigma0-system", "nightly"],
        "operator": {"priorityClassName": "system-cluster-critical", "nodeSelector": {"pool": "system"},
                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system",
                                      "effect": "NoSchedule"}],
                     "podAnnotations": {"example.com/team": "ml"}},
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "sigma0@p.iam.gserviceaccount.com"}},
        # GKE Sandbox's pool: its label instead of the default one (null removes a default key), and its taint
        "runtimeClass": {"nodeSelector": {"sigma0.dev/gvisor-pool": None, "sandbox.gke.io/runtime": "gvisor"},
                         "tolerations": [{"key": "sandbox.gke.io/runtime", "operator": "Equal", "value": "gvisor",
                                          "effect": "NoSchedule"}]},
        "artifacts": {"mode": "s3", "s3": {"uri": "s3://models-bucket/sigma0", "credentialsSecret": "s3-creds",
                                           "egress": [{"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}],
                                                       "ports": [{"port": 9000, "protocol": "TCP"}]}]}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                       "tlsConfig": {"ca": {"secret": {"name": "metrics-ca", "key": "ca.crt"}},
                                                     "serverName": "sigma0-operator-metrics.sigma0-system.svc"}},
                    "tlsSecret": "sigma0-metrics-tls",
                    "readers": [{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}],
                    "allowedFrom": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "monitoring"}}}]},
        "cronjob": {"enabled": True, "cycle": {"labels": {"team": "ml"}}},
        "stagePods": {"allowHostPath": True, "allowProcessSandbox": True},
        "dashboard": {"enabled": True, "artifactsClaim": "sigma0-artifacts",
                      "ingress": {"enabled": True, "className": "nginx", "host": "sigma0.example.com",
                                  "annotations": {"nginx.ingress.kubernetes.io/auth-url": "https://auth.example.com"},
                                  "tls": [{"secretName": "sigma0-tls", "hosts": ["sigma0.example.com"]}]}},
    },
}


# Running the tools --------------------------------------------------------------------------------------------------


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command[:3])} ... exited {done.returncode}:\n{done.stdout}\n{done.stderr}",
                    pytrace=False)
    return done


def _values_file(values: dict[str, Any], folder: Path, name: str) -> Path:
    path = folder / f"{name}.values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@cache
def _render_text(values_json: str, release: str, namespace: str, include_crds: bool, include_tests: bool) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        values = _values_file(json.loads(values_json), Path(tmp), "v")
        command = [str(tools.helm()), "template", release, str(CHART), "--namespace", namespace,
                   "--kube-version", KUBE_VERSION, "--values", str(values)]
        command += ["--include-crds"] if include_crds else []
        return _run(command + ([] if include_tests else ["--skip-tests"])).stdout


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE,
           include_crds: bool = False, include_tests: bool = False) -> list[dict[str, Any]]:
    """The chart's objects; `helm test`'s hook objects (templates/tests/) only with include_tests."""
    text = _render_text(json.dumps(values or {}, sort_keys=True), release, namespace, include_crds, include_tests)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(values: dict[str, Any], tmp_path: Path) -> str:
    command = [str(tools.helm()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
               "--values", str(_values_file(values, tmp_path, "bad"))]
    done = _run(command, check=False)
    assert done.returncode != 0, f"helm template accepted bad values {values}"
    return done.stderr


def by_key(documents: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keyed = {}
    for doc in documents:
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in keyed, f"two objects are {key}"
        keyed[key] = doc
    return keyed


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def cycle_template(documents: list[dict[str, Any]]) -> dict[str, Any]:
    config = next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-template"))
    return yaml.safe_load(config["data"]["cycle.yaml"])


# Lint and schema --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict_is_clean(name: str, tmp_path: Path) -> None:
    values = _values_file(VALUE_SETS[name], tmp_path, name)
    done = _run([str(tools.helm()), "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                 "--kube-version", KUBE_VERSION, "--values", str(values)])
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


BAD_VALUES = [
    ({"operator": {"replicas": 6}}, "/operator/replicas"),
    ({"artifacts": {"mode": "nfs"}}, "/artifacts/mode"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"cronjob": {"schedule": "nightly"}}, "/cronjob/schedule"),
    ({"cronjob": {"cycle": {"spec": {"release": "Coder 2"}}}}, "/cronjob/cycle/spec/release"),
    ({"operator": {"resources": {"requests": {"cpu": "lots"}, "limits": {}}}}, "/operator/resources/requests/cpu"),
    ({"artifacts": {"s3": {"uri": "https://bucket"}}}, "/artifacts/s3/uri"),
    ({"runtimeclass": {"create": False}}, "'runtimeclass' not allowed"),  # a typo is an error, not a no-op
    ({"artifacts": {"mode": "existingClaim"}}, "set artifacts.existingClaim"),
    ({"artifacts": {"mode": "s3", "s3": {"uri": "s3://bucket/p"}}}, "artifacts.s3.credentialsSecret"),
    ({"artifacts": {"mode": "s3", "s3": {"uri": "s3://bucket/p", "credentialsSecret": "c"}}}, "artifacts.s3.egress"),
    ({"artifacts": {"s3": {"egress": [{"ports": [{"port": 443}], "podSelector": {}}]}}}, "/artifacts/s3/egress/0"),
    ({"cronjob": {"enabled": True}, "watchNamespaces": ["team-a"]}, "leaves unwatched"),
    ({"metrics": {"service": False, "serviceMonitor": {"enabled": True}}}, "needs metrics.service"),
    ({"dashboard": {"ingress": {"enabled": True}}}, "need dashboard.enabled"),
    ({"dashboard": {"enabled": True, "service": False, "ingress": {"enabled": True}}}, "needs dashboard.service"),
    ({"dashboard": {"port": 0}}, "/dashboard/port"),
    ({"metrics": {"secure": False}}, "plain HTTP metrics need networkPolicy.create and metrics.allowedFrom"),
    ({"metrics": {"secure": False, "allowedFrom": [{"podSelector": {}}]}, "networkPolicy": {"create": False}},
     "plain HTTP metrics need networkPolicy.create"),
    ({"metrics": {"readers": [{"kind": "ServiceAccount"}]}}, "/metrics/readers/0"),
    ({"metrics": {"tlsSecret": "Not_A_Name"}}, "/metrics/tlsSecret"),
    ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.2"]}}}, "/networkPolicy/apiServer/cidrs/0"),
    ({"networkPolicy": {"apiServer": {"ports": []}}}, "/networkPolicy/apiServer/ports"),
    ({"networkPolicy": {"gpuStageEgress": [{"podSelector": {}}]}}, "/networkPolicy/gpuStageEgress/0"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_field(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    assert message in render_error(values, tmp_path)


def test_the_dashboard_is_off_by_default_and_when_on_is_served_read_only_through_its_service_and_ingress() -> None:
    def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
        (found,) = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
        return found

    default = render()
    assert not any("dashboard" in arg for arg in container(default)["args"])
    assert not [d for d in default if "dashboard" in d["metadata"]["name"]]
    documents = render(VALUE_SETS["everything"])
    operator = container(documents)
    assert {"--dashboard-port=8070", "--dashboard-artifacts=/artifacts"} <= set(operator["args"])
    assert {"name": "dashboard", "containerPort": 8070} in operator["ports"]
    assert {"name": "artifacts", "mountPath": "/artifacts", "readOnly": True} in operator["volumeMounts"]
    volumes = one(documents, "Deployment")["spec"]["template"]["spec"]["volumes"]
    claim = {"claimName": "sigma0-artifacts", "readOnly": True}
    assert {"name": "artifacts", "persistentVolumeClaim": claim} in volumes
    (service,) = [d for d in documents if d["kind"] == "Service" and d["metadata"]["name"].endswith("-dashboard")]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8070, "targetPort": "dashboard"}]
    ingress = one(documents, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["rules"][0]["host"] == "sigma0.example.com"
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sigma0-operator"]
    assert {"port": "dashboard"} in policy["spec"]["ingress"][0]["ports"]


# Kubernetes schemas and checkov -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_rendered_objects_validate_against_the_kubernetes_schemas(name: str) -> None:
    documents = render(VALUE_SETS[name], include_crds=True, include_tests=True)
    problems = []
    for doc in documents:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "ServiceMonitor":  # a Prometheus Operator CRD: no upstream schema; checked below
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {doc['apiVersion']} in Kubernetes {K8S_VERSION}")
    assert not problems, "\n".join(problems)
    if name == "everything":
        monitor = one(documents, "ServiceMonitor")
        (service,) = [d for d in documents if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert monitor["metadata"]["labels"]["release"] == "prometheus"


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "default"])
def test_the_cronjob_template_is_a_valid_training_cycle(name: str) -> None:
    cycle = cycle_template(render(VALUE_SETS[name]))
    parsed = parse_manifest(cycle, f"{name}: the CronJob's template")
    assert parsed.name is None and parsed.generate_name == "nightly-"
    assert parsed.spec.placement.sandbox.runtime_class_name == "gvisor"
    assert cycle["metadata"]["labels"]["sigma0.dev/created-by"] == "sigma0-cycle"
    if name == "everything":  # S3 artifacts reach the cycle; the operator gets the credentials Secret's name
        assert parsed.spec.artifacts.uri == "s3://models-bucket/sigma0"
        assert cycle["metadata"]["labels"]["team"] == "ml"
        (container,) = one(render(VALUE_SETS[name]), "Deployment")["spec"]["template"]["spec"]["containers"]
        assert {"name": "SIGMA0_ARTIFACTS_SECRET", "value": "s3-creds"} in container["env"]
        assert not [d for d in render(VALUE_SETS[name]) if d["kind"] == "PersistentVolumeClaim"]
        store = [d for d in render(VALUE_SETS[name]) if d["metadata"]["name"].endswith("-stage-object-store")]
        assert len(store) == 2  # one per cycle namespace, selecting the pods the deny-all policy selects
        assert store[0]["spec"]["egress"] == VALUE_SETS[name]["artifacts"]["s3"]["egress"]
        assert store[0]["spec"]["podSelector"] == {"matchLabels": {"sigma0.dev/network": "none"}}


EXPECTED_SKIPS = {"CKV_K8S_38", "CKV_K8S_43"}  # token mounted where needed; no digest for images not built yet


def test_checkov_finds_nothing_and_every_skip_carries_its_reason(tmp_path: Path) -> None:
    for name, values in VALUE_SETS.items():
        text = _render_text(json.dumps(values, sort_keys=True), RELEASE, NAMESPACE, True, True)
        (tmp_path / f"{name}.yaml").write_text(text)
    done = _run([str(tools.checkov()), "--directory", str(tmp_path), "--framework", "kubernetes",
                 "--skip-download", "--output", "json"], check=False)
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
              for c in results.get("failed_checks", [])]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 100
    assert done.returncode == 0
    skipped = results.get("skipped_checks", [])
    assert {c["check_id"] for c in skipped} == EXPECTED_SKIPS
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 30, f"{check['check_id']} on {check['resource']} is skipped without a reason"


# CRDs, manifests, RBAC --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("copy_folder", [CHART / "crds", MANIFESTS / "crds"], ids=["chart", "manifests"])
def test_the_crd_copies_are_identical_to_crds(copy_folder: Path) -> None:
    originals = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    # kopf's peering CRDs ride along in the chart (for replicas > 1): checked against manifests/peering/ elsewhere
    copies = {p.name: p.read_bytes() for p in copy_folder.glob("*.yaml") if p.name != "kopf-peerings.yaml"}
    assert sorted(copies) == sorted(originals)
    for name, content in originals.items():
        assert copies[name] == content, f"{copy_folder.relative_to(ROOT)}/{name} differs from crds/{name}: copy it"


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    text = _run([str(tools.kubectl()), "kustomize", str(folder)]).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)

    def strip(metadata: dict[str, Any]) -> None:
        for label in HELM_ONLY_LABELS:
            (metadata.get("labels") or {}).pop(label, None)

    strip(doc["metadata"])
    spec = doc.get("spec") or {}
    for template in (spec.get("template"), (spec.get("jobTemplate") or {}),
                     ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")):
        if template and "metadata" in template:
            strip(template["metadata"])
    return doc


def test_the_manifests_are_the_charts_default_objects_plus_the_namespace_and_the_suspended_cronjob() -> None:
    default = by_key(render(include_crds=True))
    with_cronjob = by_key(render({"cronjob": {"enabled": True, "suspend": True}}, include_crds=True))
    assert default.keys() < with_cronjob.keys()
    cronjob_objects = with_cronjob.keys() - default.keys()
    assert {kind for kind, _, _ in cronjob_objects} == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding",
                                                        "CronJob", "NetworkPolicy"}
    manifests = by_key(_kustomize(MANIFESTS))
    assert manifests.pop(("Namespace", "", NAMESPACE))  # helm install --create-namespace makes it
    # kopf's peering CRDs, which the chart always carries, are manifests/peering/'s (for two replicas) there
    peering_crds = {key for key in with_cronjob
                    if key[0] == "CustomResourceDefinition" and key[2].endswith(".kopf.dev")}
    assert len(peering_crds) == 2
    with_cronjob = {key: value for key, value in with_cronjob.items() if key not in peering_crds}
    assert sorted(manifests) == sorted(with_cronjob)
    for key, expected in with_cronjob.items():
        assert manifests[key] == _without_helm_labels(expected), f"manifests/ and the chart differ on {key}"
    assert one(list(manifests.values()), "CronJob")["spec"]["suspend"] is True


def test_the_per_namespace_kustomization_takes_the_namespace_it_is_applied_to() -> None:
    documents = _kustomize(MANIFESTS / "per-namespace")
    assert sorted(d["kind"] for d in documents) == ["NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim"]
    assert all("namespace" not in d["metadata"] for d in documents)


def _rules(documents: list[dict[str, Any]], kind: str) -> list[list[dict[str, Any]]]:
    return [d["rules"] for d in documents if d["kind"] == kind and d["metadata"]["name"] == "sigma0-operator"]


def test_the_operator_rbac_is_the_same_cluster_wide_namespaced_and_in_the_plain_manifests() -> None:
    (manifest_rules,) = _rules(list(yaml.safe_load_all((MANIFESTS / "10-rbac.yaml").read_text())), "ClusterRole")
    (cluster_rules,) = _rules(render(), "ClusterRole")
    assert cluster_rules == manifest_rules
    # least privilege: no wildcard, no secrets, nothing written but status, Jobs, releases, events, the GPU
    # ledger and the deletion of finished cycles (a new permission belongs in this list on purpose, and in
    # manifests/10-rbac.yaml and the chart alike)
    for rule in cluster_rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"secrets", "pods/exec", "pods/attach", "nodes"} & set(rule["resources"])
    writable = {r for rule in cluster_rules if set(rule["verbs"]) - {"get", "list", "watch"} for r in rule["resources"]}
    assert writable == {"trainingcycles", "trainingcycles/status", "trainingcycles/finalizers", "adapterreleases",
                        "jobs", "events"}
    # cycles themselves: only deleted (the janitor, sigma0.kube.janitor), never created or changed
    (cycles,) = [r for r in cluster_rules if r["resources"] == ["trainingcycles"]]
    assert set(cycles["verbs"]) - {"get", "list", "watch"} == {"delete"}
    # the GPU ledgers (sigma0.kube.ledger) are ConfigMaps in the operator's own namespace, out of the tenants' reach:
    # no ConfigMap anywhere else, in the chart as in manifests/
    for documents, namespace in ((render(), "sigma0-system"),
                                 (list(yaml.safe_load_all((MANIFESTS / "10-rbac.yaml").read_text())), "sigma0-system")):
        (ledger_role,) = [d for d in documents if d["kind"] == "Role" and d["metadata"]["name"].endswith("-gpu-ledger")]
        assert ledger_role["metadata"]["namespace"] == namespace
        assert ledger_role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                         "verbs": ["get", "create", "update"]}]
        (binding,) = [d for d in documents
                      if d["kind"] == "RoleBinding" and d["roleRef"]["name"].endswith("-gpu-ledger")]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sigma0-operator", "namespace": namespace}]

    namespaced = render(VALUE_SETS["namespaced"])
    # nothing cluster-wide but what secure metrics need: TokenReview and SubjectAccessReview are cluster-scoped
    cluster_scoped = {(d["kind"], d["metadata"]["name"]) for d in namespaced
                      if d["kind"] in ("ClusterRole", "ClusterRoleBinding")}
    assert cluster_scoped == {("ClusterRoleBinding", "sigma0-operator-auth-delegator"),
                              ("ClusterRole", "sigma0-metrics-reader")}
    roles = [d for d in namespaced if d["kind"] == "Role" and d["metadata"]["name"] == "sigma0-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["sigma0-system", "team-a"]
    assert all(r["rules"] == manifest_rules for r in roles)
    bindings = [d for d in namespaced if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "sigma0-operator"]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "sigma0-operator", "namespace": NAMESPACE}]
               for b in bindings) and len(bindings) == 2
    (container,) = one(namespaced, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--namespace=sigma0-system" in container["args"] and "--namespace=team-a" in container["args"]
    assert "--all-namespaces" not in container["args"]
    # the CronJob may create cycles, nothing else
    creator = next(d for d in namespaced if d["kind"] == "Role" and d["metadata"]["name"] == "sigma0-cycle")
    assert creator["rules"] == [{"apiGroups": ["sigma0.dev"], "resources": ["trainingcycles"], "verbs": ["create"]}]


def test_per_namespace_objects_go_to_every_cycle_namespace() -> None:
    def placed(documents: list[dict[str, Any]], kind: str) -> list[str]:
        return sorted(d["metadata"]["namespace"] for d in documents
                      if d["kind"] == kind and d["metadata"]["name"] in ("sigma0-stage-deny-all", "sigma0-artifacts"))

    assert placed(render(), "NetworkPolicy") == [NAMESPACE] == placed(render(), "PersistentVolumeClaim")
    assert placed(render(VALUE_SETS["namespaced"]), "NetworkPolicy") == ["sigma0-system", "team-a"]
    assert placed(render(VALUE_SETS["namespaced"]), "PersistentVolumeClaim") == []  # an existing claim
    assert placed(render(VALUE_SETS["everything"]), "NetworkPolicy") == ["nightly", "sigma0-system"]
    policy = next(d for d in render() if d["metadata"]["name"] == "sigma0-stage-deny-all")
    assert policy["spec"] == {"podSelector": {"matchLabels": {"sigma0.dev/network": "none"}},
                              "policyTypes": ["Ingress", "Egress"]}  # no rules: nothing in, nothing out
    claim = one(render(), "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def _policy(documents: list[dict[str, Any]], name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == name
                and d["metadata"]["namespace"] == namespace]
    return found["spec"]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return policy["podSelector"]["matchLabels"].items() <= labels.items()


def test_the_pods_that_talk_to_the_api_server_may_reach_only_it_and_gpu_stage_pods_take_no_ingress() -> None:
    from sigma0.kube import jobs

    any_address = [{"ports": [{"port": p, "protocol": "TCP"} for p in (443, 6443, 8443, 16443)]}]
    narrowed = {"cidrs": ["10.0.0.2/32", "10.96.0.1/32"], "ports": [6443, 443]}
    to_it = [{"ports": [{"port": 6443, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
              "to": [{"ipBlock": {"cidr": "10.0.0.2/32"}}, {"ipBlock": {"cidr": "10.96.0.1/32"}}]}]
    for api_server, rule in (({}, any_address), (narrowed, to_it)):
        documents = render({"cronjob": {"enabled": True}, "networkPolicy": {"apiServer": api_server}},
                           include_tests=True)
        pods = {"operator": one(documents, "Deployment")["spec"]["template"],
                "sigma0-cycle": one(documents, "CronJob")["spec"]["jobTemplate"]["spec"]["template"],
                "sigma0-test": one(documents, "Job")["spec"]["template"]}
        for name, pod in pods.items():
            policy = _policy(documents, "sigma0-operator" if name == "operator" else name)
            assert _selects(policy, pod["metadata"]["labels"]) and policy["policyTypes"] == ["Ingress", "Egress"]
            assert policy["egress"][:1] == rule, name
        ingress = [{"ports": [{"port": "metrics"}, {"port": "health"}]}]
        assert _policy(documents, "sigma0-operator")["ingress"] == ingress
        assert "ingress" not in _policy(documents, "sigma0-cycle")  # nothing connects to the other two
        check = _policy(documents, "sigma0-test")
        assert "ingress" not in check
        operator_pods = one(documents, "Deployment")["spec"]["selector"]["matchLabels"]
        assert check["egress"][1:] == [{"to": [{"podSelector": {"matchLabels": operator_pods}}],  # their /healthz
                                        "ports": [{"port": 8080, "protocol": "TCP"}]}]
    # train and generate pods: no ingress, egress as networkPolicy.gpuStageEgress (default anywhere)
    gpu = _policy(render(), "sigma0-stage-gpu")
    assert gpu == {"podSelector": {"matchLabels": {jobs.LABEL_KIND: "gpu"}}, "policyTypes": ["Ingress", "Egress"],
                   "egress": [{}]}
    assert _policy(render({"networkPolicy": {"gpuStageEgress": []}}), "sigma0-stage-gpu")["egress"] == []
    assert not [d for d in render({"networkPolicy": {"create": False}}) if d["kind"] == "NetworkPolicy"]


def test_the_runtime_class_schedules_sandbox_pods_onto_a_tainted_gvisor_pool() -> None:
    runtime = one(render(VALUE_SETS["everything"]), "RuntimeClass")
    assert runtime["handler"] == "runsc" and runtime["metadata"]["name"] == "gvisor"
    assert runtime["scheduling"]["nodeSelector"] == {"sandbox.gke.io/runtime": "gvisor"}
    assert runtime["scheduling"]["tolerations"][0]["key"] == "sandbox.gke.io/runtime"
    assert not [d for d in render({"runtimeClass": {"create": False}}) if d["kind"] == "RuntimeClass"]


def test_the_samples_are_valid_and_the_cycle_is_examples_cycle_yaml() -> None:
    names = yaml.safe_load((MANIFESTS / "samples" / "kustomization.yaml").read_text())["resources"]
    samples = {name: yaml.safe_load((MANIFESTS / "samples" / name).read_text()) for name in names}
    assert samples["trainingcycle.yaml"] == yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())
    parse_manifest(samples["trainingcycle.yaml"])
    release = samples["adapterrelease.yaml"]
    assert release["kind"] == "AdapterRelease"
    assert release["metadata"]["name"] == samples["trainingcycle.yaml"]["spec"]["release"]
    jsonschema.Draft4Validator(openapi_schema("AdapterRelease")).validate(release)


# The commands the chart's pods run --------------------------------------------------------------------------------


def test_the_charts_commands_parse_with_the_sigma0_cli_and_name_images_that_exist() -> None:
    documents = render(VALUE_SETS["everything"])
    deployment, cronjob = one(documents, "Deployment"), one(documents, "CronJob")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(operator["command"][1:] + operator["args"])
    assert operator["command"][0] == "sigma0" and args.command == "operator"
    assert (args.sandbox_image, args.trainer_image) == ("registry.example.com/ml/sandbox:0.1.0-rc1",
                                                        "registry.example.com/ml/trainer:0.1.0-rc1")
    assert args.all_namespaces and args.run_as_user == 65532
    assert args.allow_host_path and args.allow_process_sandbox  # what stagePods.allow* switch on
    images = {operator["image"], args.sandbox_image, args.trainer_image}
    (creator,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    images.add(creator["image"])
    for reference in images:
        name = reference.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        assert (ROOT / "images" / name / "Dockerfile").is_file(), f"{reference}: no images/{name}/Dockerfile"
    created = cli.build_parser().parse_args(creator["command"][1:])
    assert (created.command, created.action) == ("cycle", "create")
    mount = next(m for m in creator["volumeMounts"] if m["name"] == "template")
    assert created.manifest == f"{mount['mountPath']}/cycle.yaml"

    defaults = cli.build_parser().parse_args(["operator"] + one(render(), "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"])
    assert defaults.artifacts_claim == one(render(), "PersistentVolumeClaim")["metadata"]["name"]
    assert defaults.sandbox_image == "ghcr.io/sigma0/sandbox:0.2.0"  # the operator's own default (jobs.PodSettings)
    # by default: no hostPath, no sandbox without gVisor, and the chart's RuntimeClass is the gVisor one
    assert not defaults.allow_host_path and not defaults.allow_process_sandbox
    assert defaults.gvisor_runtime_class == [one(render(), "RuntimeClass")["metadata"]["name"]]
    renamed = render({"runtimeClass": {"name": "gvisor-systrap"}})
    renamed_args = one(renamed, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gvisor-runtime-class=gvisor-systrap" in renamed_args
    # the stage pods' settings reach the operator as its flags, and parse into the same PodSettings
    from sigma0.kube.operator import settings_from

    staged = render({"imagePullSecrets": [{"name": "regcred"}],
                     "stagePods": {"serviceAccountName": "sigma0-stages", "gpuShmSize": "8Gi", "modelCacheSize": "1Ti",
                                   "queueKeys": ["kueue.x-k8s.io/queue-name", "team.example/queue"]}})
    settings = settings_from(cli.build_parser().parse_args(
        ["operator"] + one(staged, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]))
    assert settings.image_pull_secrets == ("regcred",) and settings.service_account == "sigma0-stages"
    assert settings.gpu_shm_size == "8Gi" and settings.model_cache_size == "1Ti"
    assert settings.queue_keys == ("kueue.x-k8s.io/queue-name", "team.example/queue")
    assert settings_from(defaults).queue_keys == ("kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class")


def test_two_replicas_peer_one_active_with_the_peering_object_and_its_rbac() -> None:
    from sigma0.kube.operator import identity_priority

    for values, peering_kind, role_kind in (({}, "ClusterKopfPeering", "ClusterRole"),
                                            (VALUE_SETS["namespaced"], "KopfPeering", "Role")):
        documents = render({**values, "operator": {"replicas": 2, "peeringLifetimeSeconds": 30}})
        deployment = one(documents, "Deployment")
        assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        args = cli.build_parser().parse_args(
            ["operator"] + deployment["spec"]["template"]["spec"]["containers"][0]["args"])
        peerings = [d for d in documents if d["kind"] == peering_kind]
        assert peerings and {p["metadata"]["name"] for p in peerings} == {args.peering}
        assert args.peering_lifetime == 30 and args.priority is None  # each replica derives its own
        # one at a time: rollouts, drains (a PodDisruptionBudget), and a node's death (replicas prefer different ones)
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
        (budget,) = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
        assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
        (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": deployment["spec"]["selector"]}
        roles = [d for d in documents if d["kind"] == role_kind and d["metadata"]["name"] == "sigma0-operator"]
        for role in roles:
            (rule,) = [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]
            assert set(rule["verbs"]) == {"get", "list", "watch", "patch"}
    # one replica: standalone, no peering objects, no peering permission
    single = render()
    assert not [d for d in single if d["kind"] in ("ClusterKopfPeering", "KopfPeering")]
    assert "--peering" not in " ".join(one(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
    # the CRDs the peering objects need ship in the chart, the same as the plain manifests'
    assert (CHART / "crds" / "kopf-peerings.yaml").read_bytes() == (MANIFESTS / "peering" / "10-crds.yaml").read_bytes()
    # replicas of one Deployment differ in identity (pod name, pid), and so in priority
    assert identity_priority("sigma0@op-7d9f-abcde/1/a1b2c3") != identity_priority("sigma0@op-7d9f-fghij/1/d4e5f6")


def test_the_operator_deployment_is_hardened_and_recreated() -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "Recreate"} and spec["replicas"] == 1
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "affinity" not in pod and not [d for d in render() if d["kind"] == "PodDisruptionBudget"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]


def test_notes_tell_how_to_apply_a_cycle_and_watch_it(tmp_path: Path) -> None:
    values = _values_file({"cronjob": {"enabled": True}}, tmp_path, "notes")
    done = _run([str(tools.helm()), "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                 "--values", str(values)])
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -n sigma0-system -f examples/cycle.yaml" in notes
    assert "kubectl get tc -n sigma0-system -w" in notes
    assert "kubectl create job -n sigma0-system --from=cronjob/sigma0-cycle" in notes
    assert "--clusterrole=sigma0-metrics-reader --serviceaccount=" in notes  # secure metrics, no readers yet


@pytest.mark.parametrize("name", ["default", "namespaced"])
def test_helm_test_checks_the_operators_rendered_rules_where_it_acts_and_its_own_pods(name: str) -> None:
    """The hook's `sigma0 check` gets the very rules the chart grants (no second list to drift), the watched
    namespaces the Roles are in, the operator pods' selector and liveness port; it runs as an identity of its own that
    may only read the two CRDs, list pods and ask SubjectAccessReviews, and nothing of it outlives a passing test."""
    values = VALUE_SETS[name]
    documents = render(values, include_tests=True)
    hooks = [d for d in documents if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    assert {d["kind"] for d in hooks} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                          "NetworkPolicy", "Job"}
    for hook in hooks:
        assert "hook-succeeded" in hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.command == "check" and container["image"] == one(render(values), "Deployment")["spec"]["template"][
        "spec"]["containers"][0]["image"]
    operator_role = next(d for d in render(values) if d["kind"] in ("ClusterRole", "Role")
                         and d["metadata"]["name"] == args.operator_service_account)
    assert json.loads(args.rules) == operator_role["rules"]
    assert args.watch_namespace == list(values.get("watchNamespaces") or [])
    # and the rules it holds in its own namespace (the GPU ledgers), asked there
    ledger_role = next(d for d in render(values)
                       if d["kind"] == "Role" and d["metadata"]["name"].endswith("-gpu-ledger"))
    assert json.loads(args.namespace_rules) == ledger_role["rules"]
    assert args.namespace == ledger_role["metadata"]["namespace"]
    # the operator keeps its ledgers there, and gets the administrator's budgets as flags
    budgeted = render({**values, "gpuBudgets": [{"placement": "a100", "weeklyGPUHours": 40},
                                                {"namespace": "team-a", "placement": "a100", "weeklyGPUHours": 2.5}]})
    _, operator_args = _operator(budgeted)
    assert operator_args.ledger_namespace == args.namespace
    from sigma0.kube.operator import gpu_budgets

    budgets = gpu_budgets(operator_args)
    assert (budgets.of("team-a", "a100"), budgets.of("team-b", "a100"), budgets.of("team-a", "t4")) == (2.5, 40, None)
    deployment = one(render(values), "Deployment")
    selector = dict(pair.split("=") for pair in args.operator_selector.split(","))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert args.health_port == next(p["containerPort"] for p in deployment["spec"]["template"]["spec"][
        "containers"][0]["ports"] if p["name"] == "health")
    (own_role,) = [d for d in hooks if d["kind"] == "ClusterRole"]
    assert {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in own_role["rules"]} == {
        (("apiextensions.k8s.io",), ("customresourcedefinitions",), ("get",)),
        (("authorization.k8s.io",), ("subjectaccessreviews",), ("create",))}


def _operator(documents: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, cli.build_parser().parse_args(container["command"][1:] + container["args"])


def test_metrics_are_https_for_authorized_tokens_by_default_and_plain_http_only_on_the_pod_ip_behind_a_policy() -> None:
    default = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    pod, args = _operator(default)
    assert args.metrics_secure and not args.metrics_cert_file and args.metrics_address == "0.0.0.0"
    # the operator may ask who a token is and what it may do; scrapers get a role for get /metrics, nothing else
    (delegator,) = [d for d in default if d["metadata"]["name"] == "sigma0-operator-auth-delegator"]
    assert delegator["kind"] == "ClusterRoleBinding" and delegator["roleRef"]["name"] == "system:auth-delegator"
    assert delegator["subjects"] == [{"kind": "ServiceAccount", "name": "sigma0-operator", "namespace": NAMESPACE}]
    (reader,) = [d for d in default if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "sigma0-metrics-reader"]
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    assert not [d for d in default if d["metadata"]["name"] == "sigma0-metrics-reader" and
                d["kind"] == "ClusterRoleBinding"]  # metrics.readers is empty: the admin binds it
    (endpoint,) = one(default, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    (port,) = [p for p in one(default, "Service")["spec"]["ports"] if p["name"] == "metrics"]
    assert port["appProtocol"] == "https"
    policy = next(d for d in default if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sigma0-operator")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics"}, {"port": "health"}]}]

    # the admin's certificate (a Secret, e.g. cert-manager's), named readers, scrapers limited by the policy too
    everything = render(VALUE_SETS["everything"])
    pod, args = _operator(everything)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "metrics-tls"]
    assert volume["secret"]["secretName"] == "sigma0-metrics-tls"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "metrics-tls"]
    assert mount["readOnly"] and args.metrics_cert_file == f"{mount['mountPath']}/tls.crt"
    assert args.metrics_key_file == f"{mount['mountPath']}/tls.key"
    (binding,) = [d for d in everything if d["kind"] == "ClusterRoleBinding" and
                  d["metadata"]["name"] == "sigma0-metrics-reader"]
    assert binding["roleRef"]["name"] == "sigma0-metrics-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}]
    (endpoint,) = one(everything, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "metrics-ca"
    policy = next(d for d in everything if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sigma0-operator")
    assert {"from": VALUE_SETS["everything"]["metrics"]["allowedFrom"], "ports": [{"port": "metrics"}]} in \
        policy["spec"]["ingress"]  # allowedFrom narrows the HTTPS port too
    assert not [rule for rule in policy["spec"]["ingress"]
                if "from" not in rule and {"port": "metrics"} in rule["ports"]]

    # plain: the pod's own address, no review RBAC, and only the listed peers reach the port
    plain = render(VALUE_SETS["plain-metrics"])
    pod, args = _operator(plain)
    assert not args.metrics_secure and args.metrics_address == "$(POD_IP)"
    (env,) = [e for e in pod["containers"][0]["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    names = {d["metadata"]["name"] for d in plain}
    assert not {"sigma0-operator-auth-delegator", "sigma0-metrics-reader"} & names
    policy = next(d for d in plain if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sigma0-operator")
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": "health"}]},
        {"from": VALUE_SETS["plain-metrics"]["metrics"]["allowedFrom"], "ports": [{"port": "metrics"}]}]
    (endpoint,) = one(plain, "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint and "bearerTokenFile" not in endpoint
