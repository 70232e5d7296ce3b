"""The chart and the plain manifests, installed for real on the test control plane (tests/cluster).

- `helm install` of helm/sigma0 with its CronJob on; the operator runs as a local process (`sigma0 operator`, as in
  tests/cluster/test_operator.py, whose helpers this reuses) under a token of the chart's own ServiceAccount, so the
  chart's RBAC is what is tested; the CronJob is fired twice with `kubectl create job --from=cronjob/...` (its pod,
  run by the pod executor, creates a TrainingCycle through the API with the CronJob's own ServiceAccount); the second
  cycle waits Queued behind the first, which runs to Succeeded; `helm uninstall` then leaves no object of the release
  behind (the CRDs, the cycles, the release and the artifacts claim stay, as documented).
- `helm install` with watchNamespaces: this time the chart's own Deployment runs the operator (the pod executor starts
  its command as a host process, which logs in in-cluster with the pod's token); it holds Roles in the watched
  namespace only, runs the first stage of a cycle there and leaves a cycle in another namespace alone.
- `sigma0 cycle create` (the CronJob's command) against the API server: a new cycle per call, an invalid template
  refused with exit 2, a ServiceAccount without `create` refused with exit 1.
- `kubectl apply -k manifests/` (with a test overlay that only sets the operator's replicas to 0, since the operator
  runs as a local process here) and a server-side dry run of manifests/samples/.

Firing the CronJob through `kubectl create job --from` rather than waiting for its schedule keeps the test short and
deterministic; the schedule itself is accepted by the API server (whose CronJob validation parses it: a schedule
it cannot parse is refused, as the test shows), and the CronJob controller's firing on schedule is already proven
by tests/cluster/test_controlplane.py.

Where uid 65532 cannot run the venv's interpreter on this machine (it sits under /root: tests/cluster/README.md), the
pods' securityContext is set to root through the chart's values (operator.podSecurityContext, stagePods.runAsUser),
as test_operator.py does with --run-as-user 0.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from helm import tools

from .cluster import Cluster
from .podexecutor import stage_pod_user
from .test_operator import (
    GROUP,
    VERSION,
    Operator,
    Platform,
    _free_port,
    _kubeconfig,
    phase_is,
    table,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sigma0"
MANIFESTS = ROOT / "manifests"
RELEASE = "sigma0-it"  # names: sigma0-it-operator, sigma0-it-cycle, ...; never those of manifests/ (sigma0-*)
CRONJOB = f"{RELEASE}-cycle"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
NAMESPACED_KINDS = ("deployments,replicasets,pods,services,serviceaccounts,configmaps,cronjobs,jobs,roles,"
                    "rolebindings,networkpolicies,persistentvolumeclaims,secrets")
CLUSTER_KINDS = "clusterroles,clusterrolebindings,runtimeclasses"


class Helm:
    """The helm binary against the test cluster, with its own config, cache and data folders."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(tools.helm()), *args], capture_output=True, text=True, env=self.env, timeout=300,
                              check=False)
        assert done.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}"
        return done


def _values(namespace: str, user: int, runtime_class: str) -> dict[str, Any]:
    """The chart's values for this cluster: the operator runs outside (replicas 0), pods as `user` where the venv's
    interpreter cannot run otherwise, a RuntimeClass of our own, and the CronJob on with examples/cycle.yaml's
    spec for its template."""
    spec = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())["spec"])
    spec["release"] = "it-coder"
    root = {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0} if user == 0 else {}
    return {
        "operator": {"replicas": 0, "podSecurityContext": root},
        "stagePods": {"runAsUser": user},
        "runtimeClass": {"name": runtime_class},
        "artifacts": {"pvc": {"size": "1Gi"}},
        "cronjob": {"enabled": True, "cycle": {"generateName": "nightly-", "spec": spec}},
    }


def _artifacts(cluster: Cluster, namespace: str, folder: Path) -> str:
    """A PersistentVolume for the chart's claim (there is no dynamic provisioner), pre-bound to it, with the
    example corpus at its root."""
    shutil.copytree(ROOT / "examples" / "corpus", folder / "corpus")
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    name = f"{namespace}-artifacts"
    client.CoreV1Api(cluster.api_client()).create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder)},
                 "claimRef": {"namespace": namespace, "name": "sigma0-artifacts"}}})
    return name


def _names(cluster: Cluster, *args: str) -> list[str]:
    found = cluster.kubectl("get", *args, "-o", "name", check=False)
    assert found.returncode == 0, found.stderr
    return found.stdout.split()


def _cycles(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = cluster.kubectl("get", "trainingcycles", "-n", namespace, "-l", f"sigma0.dev/created-by={CRONJOB}",
                            "-o", "yaml").stdout
    return sorted(yaml.safe_load(found)["items"], key=lambda c: c["metadata"]["creationTimestamp"])


def _fire(cluster: Cluster, namespace: str, job: str) -> None:
    """Run the CronJob now, as `kubectl create job --from` does, and wait for its pod to finish."""
    cluster.kubectl("create", "job", "-n", namespace, f"--from=cronjob/{CRONJOB}", job)
    done = cluster.kubectl("wait", "-n", namespace, f"job/{job}", "--for=condition=Complete", "--timeout=90s",
                           check=False)
    if done.returncode != 0:
        pods = _names(cluster, "pods", "-n", namespace, "-l", f"job-name={job}")
        logs = "\n".join(cluster.pod_log(namespace, p.split("/")[1]) for p in pods)
        pytest.fail(f"the CronJob's Job {job} did not complete: {done.stderr}\n{logs}", pytrace=False)


@pytest.mark.slow
def test_helm_install_runs_the_cronjobs_cycle_and_uninstall_leaves_nothing(cluster: Cluster, namespace: str,
                                                                           tmp_path: Path) -> None:
    helm = Helm(cluster, tmp_path / "helm")
    user = stage_pod_user()
    runtime_class = f"{namespace}-gvisor"  # test_operator.py's RuntimeClass `gvisor` may exist, outside Helm
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(_values(namespace, user, runtime_class)))
    volume = _artifacts(cluster, namespace, tmp_path / "artifacts")
    operator: Operator | None = None
    try:
        helm("install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values))
        cluster.kubectl("wait", "--for=condition=established", "--timeout=60s",
                        f"crd/trainingcycles.{GROUP}", f"crd/adapterreleases.{GROUP}")
        cluster.kubectl("wait", "-n", namespace, "pvc/sigma0-artifacts", "--for=jsonpath={.status.phase}=Bound",
                        "--timeout=60s")
        installed = set(_names(cluster, NAMESPACED_KINDS, "-n", namespace, "-l", INSTANCE))
        assert {f"deployment.apps/{RELEASE}-operator", f"serviceaccount/{RELEASE}-operator",
                f"cronjob.batch/{CRONJOB}", f"configmap/{CRONJOB}-template", f"serviceaccount/{CRONJOB}",
                f"role.rbac.authorization.k8s.io/{CRONJOB}", f"networkpolicy.networking.k8s.io/{RELEASE}-operator",
                f"networkpolicy.networking.k8s.io/{RELEASE}-stage-deny-all",
                "persistentvolumeclaim/sigma0-artifacts"} <= installed, installed
        assert f"runtimeclass.node.k8s.io/{runtime_class}" in _names(cluster, CLUSTER_KINDS, "-l", INSTANCE)

        # the schedule is one the API server accepted; one it cannot parse is refused
        cronjob = yaml.safe_load(cluster.kubectl("get", "cronjob", "-n", namespace, CRONJOB, "-o", "yaml").stdout)
        assert (cronjob["spec"]["schedule"], cronjob["spec"]["timeZone"]) == ("0 2 * * *", "Etc/UTC")
        refused = cluster.kubectl("patch", "cronjob", "-n", namespace, CRONJOB, "--dry-run=server", "--type=merge",
                                  "-p", '{"spec": {"schedule": "61 * * * *"}}', check=False)
        assert refused.returncode != 0 and "schedule" in refused.stderr

        # the operator, with the chart's ServiceAccount and nothing else
        token = cluster.service_account_token(namespace, f"{RELEASE}-operator", seconds=3600)
        kubeconfig = _kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")
        # started as the chart's Deployment starts it: the chart's RuntimeClass is the gVisor one, and the GPU ledgers
        # are kept in the release namespace, where the chart's Role lets it write them
        operator = Operator(kubeconfig, tmp_path / "operator.log", user,
                            extra=("--gvisor-runtime-class", runtime_class, "--ledger-namespace", namespace))
        operator.start()
        admin = cluster.api_client()
        platform = Platform(cluster, operator, tmp_path / "artifacts", kubeconfig, client.CustomObjectsApi(admin),
                            client.BatchV1Api(admin), client.CoreV1Api(admin),
                            client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig))))

        # the CronJob fires twice: two cycles of one release, the second queued behind the first
        _fire(cluster, namespace, "nightly-a")
        (first,) = _cycles(cluster, namespace)
        wait_for(platform, namespace, "the first cycle to be admitted",
                 lambda: (platform.custom.get_namespaced_custom_object(
                     GROUP, VERSION, namespace, "trainingcycles", first["metadata"]["name"]).get("status") or {}
                 ).get("admitted"))
        _fire(cluster, namespace, "nightly-b")
        first_name, second_name = (c["metadata"]["name"] for c in _cycles(cluster, namespace))
        assert first_name == first["metadata"]["name"] and first_name.startswith("nightly-")
        queued = wait_for(platform, namespace, "the second cycle to be Queued",
                          phase_is(platform, namespace, second_name, "Queued"))
        assert first_name in queued["message"]
        print(f"\n$ kubectl get tc -n {namespace}\n{cluster.kubectl('get', 'tc', '-n', namespace).stdout}")
        cluster.kubectl("delete", "tc", "-n", namespace, second_name)  # a queued cycle is all it had to show

        done = wait_for(platform, namespace, "the CronJob's cycle to finish",
                        phase_is(platform, namespace, first_name, "Succeeded", "Failed"), timeout=420, interval=1)
        assert done["phase"] == "Succeeded", done.get("message")
        # every stage ran as a Job under the chart's settings; the sandbox's verdicts are test_operator.py's concern
        assert done["decision"]["outcome"] == "Bootstrapped" and done["counts"]["harvested"] > 0
        assert {s["state"] for s in done["stages"].values()} == {"succeeded"}
        assert runtime_class in done["stages"]["verify"]["isolation"]
        shown = cluster.kubectl("get", "tc", "-n", namespace).stdout
        print(f"\n$ kubectl get tc -n {namespace}\n{shown}")
        print(f"$ kubectl get ar -n {namespace}\n{cluster.kubectl('get', 'ar', '-n', namespace).stdout}")
        (row,) = table(shown)
        assert (row["NAME"], row["RELEASE"], row["PHASE"], row["DECISION"]) == (first_name, "it-coder", "Succeeded",
                                                                                "Bootstrapped")
    finally:
        if operator is not None:
            operator.stop()

    # helm uninstall: nothing of the release is left but what is kept on purpose
    helm("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "120s")

    def leftovers() -> list[str]:
        names = _names(cluster, NAMESPACED_KINDS, "-n", namespace, "-l", INSTANCE)
        names += _names(cluster, CLUSTER_KINDS, "-l", INSTANCE)
        names += _names(cluster, "secrets", "-n", namespace, "-l", f"owner=helm,name={RELEASE}")
        return [n for n in names if n != "persistentvolumeclaim/sigma0-artifacts"]

    deadline = time.monotonic() + 60  # the CronJob's Jobs and pods go through the garbage collector
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers() == []
    claim = yaml.safe_load(cluster.kubectl("get", "pvc", "-n", namespace, "sigma0-artifacts", "-o", "yaml").stdout)
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert _names(cluster, "crd", f"trainingcycles.{GROUP}", f"adapterreleases.{GROUP}")  # Helm keeps CRDs
    assert _names(cluster, "tc", "-n", namespace, first_name) and _names(cluster, "ar", "-n", namespace, "it-coder")
    cluster.kubectl("delete", "pvc", "-n", namespace, "sigma0-artifacts", "--wait=false")
    cluster.kubectl("delete", "pv", volume, "--wait=false")


def test_kubectl_apply_k_installs_the_manifests_and_the_samples_pass_a_server_side_dry_run(cluster: Cluster,
                                                                                           tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "patches": [{"target": {"kind": "Deployment", "name": "sigma0-operator"},
                     "patch": '[{"op": "replace", "path": "/spec/replicas", "value": 0}]'}]}))
    applied = cluster.kubectl("apply", "-k", str(overlay), check=False)
    assert applied.returncode == 0, applied.stderr
    cluster.kubectl("wait", "--for=condition=established", "--timeout=60s",
                    f"crd/trainingcycles.{GROUP}", f"crd/adapterreleases.{GROUP}")
    present = set(_names(cluster, "deployments,serviceaccounts,services,cronjobs,configmaps,networkpolicies,"
                                  "persistentvolumeclaims,roles,rolebindings", "-n", "sigma0-system"))
    assert {"deployment.apps/sigma0-operator", "serviceaccount/sigma0-operator", "service/sigma0-operator-metrics",
            "cronjob.batch/sigma0-cycle", "configmap/sigma0-cycle-template",
            "networkpolicy.networking.k8s.io/sigma0-stage-deny-all", "networkpolicy.networking.k8s.io/sigma0-operator",
            "persistentvolumeclaim/sigma0-artifacts", "role.rbac.authorization.k8s.io/sigma0-cycle",
            "role.rbac.authorization.k8s.io/sigma0-operator-gpu-ledger"} <= present
    assert _names(cluster, "clusterrole/sigma0-operator", "clusterrolebinding/sigma0-operator", "runtimeclass/gvisor")
    suspended = cluster.kubectl("get", "cronjob", "-n", "sigma0-system", "sigma0-cycle", "-o",
                                "jsonpath={.spec.suspend}").stdout
    assert suspended == "true"
    samples = cluster.kubectl("apply", "-n", "sigma0-system", "-k", str(MANIFESTS / "samples"), "--dry-run=server",
                              check=False)
    assert samples.returncode == 0, samples.stderr
    assert "trainingcycle.sigma0.dev/sample-coder-1 created (server dry run)" in samples.stdout
    assert "adapterrelease.sigma0.dev/sample-coder created (server dry run)" in samples.stdout
    # the namespace is free again for the operator's end-to-end tests: only the Deployment (scaled to 0 here) and
    # the suspended CronJob would differ from what they apply, and both are removed
    cluster.kubectl("delete", "-n", "sigma0-system", "deployment/sigma0-operator", "cronjob/sigma0-cycle")


def test_sigma0_cycle_create_checks_the_template_and_needs_only_create(cluster: Cluster, namespace: str,
                                                                       tmp_path: Path) -> None:
    """The CronJob's command outside a pod: valid template → a new cycle each time; invalid → exit 2, nothing
    created; a ServiceAccount without `create` → exit 1 with the API server's refusal."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=established", "--timeout=60s",
                    f"crd/trainingcycles.{GROUP}", f"crd/adapterreleases.{GROUP}")
    template = yaml.safe_load((ROOT / "examples" / "demo" / "2-promote.yaml").read_text())
    template["metadata"] = {"generateName": "demo-"}  # what a nightly template has: a new cycle each time
    template["spec"]["suspend"] = True  # nothing needs to run
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(template))
    command = [sys.executable, "-m", "sigma0", "cycle", "create", "--kubeconfig", str(cluster.kubeconfig),
               "--namespace", namespace]
    made = [subprocess.run([*command, str(good)], capture_output=True, text=True, timeout=60, check=False)
            for _ in range(2)]
    assert [m.returncode for m in made] == [0, 0], [m.stderr for m in made]
    names = _names(cluster, "tc", "-n", namespace)
    assert len(names) == 2 and all(n.startswith("trainingcycle.sigma0.dev/demo-") for n in names)
    printed = sorted(m.stdout.split()[0] for m in made)  # "trainingcycle.sigma0.dev/demo-xxxxx created in ..."
    assert printed == sorted(names) and all(f"created in namespace {namespace}" in m.stdout for m in made)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**template, "spec": {**template["spec"], "train": {"steps": 0}}}))
    refused = subprocess.run([*command, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "spec.train.steps" in refused.stderr
    assert len(_names(cluster, "tc", "-n", namespace)) == 2

    token = cluster.service_account_token(namespace, "default")  # no role at all
    weak = _kubeconfig(cluster, token, tmp_path / "default.kubeconfig")
    denied = subprocess.run([sys.executable, "-m", "sigma0", "cycle", "create", "--kubeconfig", str(weak),
                             "--namespace", namespace, str(good)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert denied.returncode == 1 and "403" in denied.stderr and "refused" in denied.stderr


@pytest.mark.slow
def test_the_charts_deployment_runs_the_operator_in_the_watched_namespaces_only(cluster: Cluster, namespace: str,
                                                                                 tmp_path: Path) -> None:
    """watchNamespaces, for real: the chart's own Deployment runs the operator (its pod run by the pod executor as
    a host process, logging in with the pod's ServiceAccount token from inside), with Roles in the watched
    namespace and no cluster-wide permission. A cycle there is picked up and its first stage runs; a cycle in
    another namespace is left alone."""
    release = "sigma0-ns"
    helm = Helm(cluster, tmp_path / "helm")
    user = stage_pod_user()
    runtime_class = f"{namespace}-gvisor"
    liveness, metrics = _free_port(), _free_port()
    values = _values(namespace, user, runtime_class)
    values["cronjob"] = {"enabled": False}
    values["watchNamespaces"] = [namespace]
    values["operator"] |= {"replicas": 1, "livenessPort": liveness, "metricsPort": metrics, "resyncSeconds": 3}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    volume = _artifacts(cluster, namespace, tmp_path / "artifacts")
    other = cluster.create_namespace("unwatched")
    try:
        helm("install", release, str(CHART), "--namespace", namespace, "--values", str(tmp_path / "values.yaml"))
        account = f"system:serviceaccount:{namespace}:{release}-operator"
        can = cluster.kubectl("auth", "can-i", "create", "jobs", "-n", namespace, "--as", account, check=False)
        cannot = cluster.kubectl("auth", "can-i", "list", "trainingcycles", "--all-namespaces", "--as", account,
                                 check=False)
        assert (can.stdout.strip(), cannot.stdout.strip()) == ("yes", "no")
        cluster.kubectl("wait", "-n", namespace, "pod", "-l", f"{INSTANCE.replace(RELEASE, release)}",
                        "--for=condition=Ready", "--timeout=90s")
        deadline = time.monotonic() + 90
        while True:  # kopf serves /healthz once it has logged in (in-cluster) and started watching
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pods = _names(cluster, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
                pytest.fail("the operator pod never answered /healthz:\n"
                            + cluster.pod_log(namespace, pods[0].split("/")[1])[-3000:], pytrace=False)
            time.sleep(0.5)

        cycle = yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())
        cycle["spec"]["placement"] = {"sandbox": {"runtimeClassName": runtime_class}}
        for target in (namespace, other):
            cluster.kubectl("apply", "-n", target, "-f", "-", input=yaml.safe_dump(cycle))
        custom = client.CustomObjectsApi(cluster.api_client())

        def harvested() -> bool:
            found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingcycles",
                                                        cycle["metadata"]["name"])
            return ((found.get("status") or {}).get("stages") or {}).get("harvest", {}).get("state") == "succeeded"

        deadline = time.monotonic() + 120
        while not harvested():
            if time.monotonic() > deadline:
                pods = _names(cluster, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
                pytest.fail("the watched cycle's harvest never succeeded:\n"
                            + cluster.kubectl("get", "tc,jobs,pods", "-n", namespace).stdout
                            + cluster.pod_log(namespace, pods[0].split("/")[1])[-3000:], pytrace=False)
            time.sleep(0.5)
        ignored = custom.get_namespaced_custom_object(GROUP, VERSION, other, "trainingcycles",
                                                      cycle["metadata"]["name"])
        assert "status" not in ignored and not _names(cluster, "jobs", "-n", other)
        helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
        gone = cluster.kubectl("wait", "-n", namespace, "pod", "-l", f"app.kubernetes.io/instance={release}",
                               "--for=delete", "--timeout=60s", check=False)
        # the operator pod goes with its Deployment
        assert gone.returncode == 0 or not _names(cluster, "pods", "-n", namespace, "-l", INSTANCE.replace(
            RELEASE, release)), gone.stderr
    finally:
        cluster.delete_namespace(other)
        cluster.kubectl("delete", "tc", "--all", "-n", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "pvc", "-n", namespace, "sigma0-artifacts", "--wait=false", check=False)
        cluster.kubectl("delete", "pv", volume, "--wait=false", check=False)
