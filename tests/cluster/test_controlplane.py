"""Proof that the test cluster is real Kubernetes: each test leans on an upstream behaviour
(the API server's CRD serving, optimistic concurrency, RBAC; the Job, CronJob and garbage
collector controllers; the scheduler's resource fit; RuntimeClass admission), and on the pod
executor standing in for kubelet where pods have to run."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .cluster import GPU_POOL_LABEL, GVISOR_POOL_LABEL, Cluster


def wait_until(what: str, fn: Callable[[], Any], timeout_s: float = 30, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def pod(name: str, command: list[str], **spec: Any) -> dict:
    container = {"name": "main", "image": "sigma0.test/none:latest", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


# ---------------------------------------------------------------------------------------------
# API server: CRDs, status subresource, optimistic concurrency

GROUP = "proof.sigma0.test"


@pytest.fixture(scope="module")
def widget_crd(cluster: Cluster) -> Iterator[str]:
    """A namespaced CRD Widget with a status subresource and printer columns."""
    ext = client.ApiextensionsV1Api(cluster.api_client())
    name = f"widgets.{GROUP}"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [
                            {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        ],
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                                },
                            }
                        },
                    }
                ],
            },
        }
    )

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

    wait_until("CRD Established", established)
    yield "widgets"
    ext.delete_custom_resource_definition(name)


def test_crd_is_served_and_kubectl_shows_its_printer_columns(cluster: Cluster, namespace: str, widget_crd: str) -> None:
    co = client.CustomObjectsApi(cluster.api_client())
    co.create_namespaced_custom_object(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 7}},
    )
    co.patch_namespaced_custom_object_status(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        "w1",
        {"status": {"phase": "Spinning"}},
        _content_type="application/merge-patch+json",
    )
    out = cluster.kubectl("get", "widgets", "-n", namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "SIZE", "PHASE", "AGE"], out
    assert row.split()[:3] == ["w1", "7", "Spinning"], out
    # the short name works too, through the API's discovery
    assert "w1" in cluster.kubectl("get", "wg", "-n", namespace, "-o", "name").stdout


def test_status_subresource_update_does_not_bump_generation(cluster: Cluster, namespace: str, widget_crd: str) -> None:
    co = client.CustomObjectsApi(cluster.api_client())
    w = co.create_namespaced_custom_object(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 1}},
    )
    assert w["metadata"]["generation"] == 1
    w = co.patch_namespaced_custom_object_status(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        "w2",
        {"status": {"phase": "Ready"}},
        _content_type="application/merge-patch+json",
    )
    assert w["metadata"]["generation"] == 1 and w["status"] == {"phase": "Ready"}
    # status written through the main resource is ignored; a spec change bumps generation
    w = co.patch_namespaced_custom_object(
        GROUP,
        "v1",
        namespace,
        widget_crd,
        "w2",
        {"spec": {"size": 2}, "status": {"phase": "Ignored"}},
        _content_type="application/merge-patch+json",
    )
    assert w["metadata"]["generation"] == 2 and w["status"] == {"phase": "Ready"}


def test_update_with_stale_resource_version_is_a_conflict(cluster: Cluster, namespace: str, core) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"v": "1"}})
    stale = core.read_namespaced_config_map("cm", namespace)
    fresh = core.read_namespaced_config_map("cm", namespace)
    fresh.data = {"v": "2"}
    core.replace_namespaced_config_map("cm", namespace, fresh)
    stale.data = {"v": "3"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("cm", namespace, stale)
    assert e.value.status == 409
    assert core.read_namespaced_config_map("cm", namespace).data == {"v": "2"}


# ---------------------------------------------------------------------------------------------
# Controllers: Job, CronJob, garbage collector


def test_job_runs_to_completion_with_backoff_after_a_failure(
    cluster: Cluster, namespace: str, tmp_path: Path, core
) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    state = tmp_path / "state"
    script = (
        "if [ -f /state/tried ]; then echo second try; exit 0; fi; touch /state/tried; echo first try fails; exit 1"
    )
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "flaky"},
            "spec": {
                "backoffLimit": 3,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "sigma0.test/none",
                                "command": ["sh", "-c", script],
                                "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                            }
                        ],
                        "volumes": [{"name": "state", "hostPath": {"path": str(state), "type": "DirectoryOrCreate"}}],
                    }
                },
            },
        },
    )

    def complete():
        j = batch.read_namespaced_job("flaky", namespace)
        return j if any(c.type == "Complete" and c.status == "True" for c in (j.status.conditions or [])) else None

    job = wait_until("Job Complete", complete, timeout_s=90)
    assert job.status.succeeded == 1 and job.status.failed == 1
    pods = sorted(
        core.list_namespaced_pod(namespace, label_selector="job-name=flaky").items,
        key=lambda p: p.metadata.creation_timestamp,
    )
    assert [p.status.phase for p in pods] == ["Failed", "Succeeded"]
    failed_at = pods[0].status.container_statuses[0].state.terminated.finished_at
    # the Job controller waited out its pod-failure back-off (10 s for the first failure)
    assert (pods[1].metadata.creation_timestamp - failed_at).total_seconds() >= 5
    assert "first try fails" in cluster.pod_log(namespace, pods[0].metadata.name)
    assert "second try" in cluster.pod_log(namespace, pods[1].metadata.name)


def test_cronjob_creates_jobs_on_its_schedule(cluster: Cluster, namespace: str) -> None:
    batch = client.BatchV1Api(cluster.api_client())
    cj = batch.create_namespaced_cron_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "tick"},
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [
                                    {"name": "main", "image": "sigma0.test/none", "command": ["echo", "tick"]}
                                ],
                            }
                        }
                    }
                },
            },
        },
    )

    def owned_jobs():
        return [
            j
            for j in batch.list_namespaced_job(namespace).items
            if any(o.uid == cj.metadata.uid for o in (j.metadata.owner_references or []))
        ]

    jobs = wait_until("a Job from the CronJob", owned_jobs, timeout_s=75, every_s=1)
    # scheduled at the top of a minute, by the cronjob controller
    stamp = jobs[0].metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    scheduled = datetime.datetime.fromisoformat(stamp)
    assert scheduled.second == 0
    wait_until(
        "the Job to complete",
        lambda: batch.read_namespaced_job(jobs[0].metadata.name, namespace).status.succeeded == 1,
        timeout_s=30,
    )
    assert batch.read_namespaced_cron_job("tick", namespace).status.last_schedule_time is not None


def test_owner_references_garbage_collect_children(cluster: Cluster, namespace: str, core) -> None:
    parent = core.create_namespaced_config_map(namespace, {"metadata": {"name": "parent"}})
    for i in range(3):
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": f"child-{i}",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent.metadata.uid}
                    ],
                }
            },
        )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "unrelated"}})
    core.delete_namespaced_config_map("parent", namespace)

    def children_gone() -> bool:
        names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        return not any(n.startswith("child-") for n in names)

    wait_until("the garbage collector to delete the children", children_gone, timeout_s=60)
    core.read_namespaced_config_map("unrelated", namespace)  # still there


# ---------------------------------------------------------------------------------------------
# Scheduler, RBAC, RuntimeClass + gVisor


def test_pod_asking_for_more_gpus_than_the_node_has_stays_pending(cluster: Cluster, namespace: str, core) -> None:
    node = core.read_node(cluster.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == "1"
    gpus = {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}
    core.create_namespaced_pod(namespace, pod("two-gpus", ["true"], container={"resources": gpus}))

    def unschedulable():
        p = core.read_namespaced_pod("two-gpus", namespace)
        conds = [c for c in (p.status.conditions or []) if c.type == "PodScheduled" and c.status == "False"]
        return conds[0] if conds and conds[0].reason == "Unschedulable" else None

    cond = wait_until("the scheduler to give up on two GPUs", unschedulable)
    assert "Insufficient nvidia.com/gpu" in cond.message
    time.sleep(2)
    p = core.read_namespaced_pod("two-gpus", namespace)
    assert p.status.phase == "Pending" and not p.spec.node_name
    # one GPU fits, on the GPU pool node
    one = {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
    core.create_namespaced_pod(
        namespace, pod("one-gpu", ["true"], container={"resources": one}, nodeSelector={GPU_POOL_LABEL: "true"})
    )
    done = cluster.wait_for_pod_phase(namespace, "one-gpu")
    assert done["status"]["phase"] == "Succeeded" and done["spec"]["nodeName"] == cluster.node_name


def test_service_account_is_denied_until_a_role_binding_allows_it(cluster: Cluster, namespace: str, core) -> None:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    as_reader = client.CoreV1Api(cluster.token_api_client(cluster.service_account_token(namespace, "reader")))
    with pytest.raises(ApiException) as e:
        as_reader.list_namespaced_pod(namespace)
    assert e.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in e.value.body
    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )

    def allowed() -> bool:
        try:
            as_reader.list_namespaced_pod(namespace)
            return True
        except ApiException as e:
            assert e.status == 403
            return False

    wait_until("the RoleBinding to take effect", allowed, timeout_s=10)
    with pytest.raises(ApiException) as e:  # only what the Role grants
        as_reader.list_namespaced_secret(namespace)
    assert e.value.status == 403


@pytest.fixture
def gvisor_runtime_class(cluster: Cluster) -> Iterator[str]:
    node_api = client.NodeV1Api(cluster.api_client())
    name = f"gvisor-{secrets.token_hex(3)}"
    node_api.create_runtime_class(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": name},
            "handler": "runsc",
            "scheduling": {"nodeSelector": {GVISOR_POOL_LABEL: "true"}},
        }
    )
    yield name
    node_api.delete_runtime_class(name)


@pytest.mark.gvisor
def test_runtime_class_runsc_runs_the_pod_inside_gvisor(
    cluster: Cluster, namespace: str, core, gvisor_runtime_class: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "uname -r; uname -r > /out/kernel; echo written-in-gvisor > /out/proof; "
        "echo '{\"ok\": true}' > /dev/termination-log"
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "sandboxed",
            ["sh", "-c", script],
            runtimeClassName=gvisor_runtime_class,
            container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
            volumes=[{"name": "out", "hostPath": {"path": str(out)}}],
        ),
    )
    created = core.read_namespaced_pod("sandboxed", namespace)
    # the RuntimeClass admission plugin merged the class's scheduling constraints into the pod
    assert created.spec.node_selector == {GVISOR_POOL_LABEL: "true"}
    done = cluster.wait_for_pod_phase(namespace, "sandboxed")
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", (done["status"], cluster.pod_log(namespace, "sandboxed"))
    assert json.loads(term["message"]) == {"ok": True}
    kernel = (out / "kernel").read_text().strip()
    assert kernel and kernel != os.uname().release  # gVisor's Sentry reports its own kernel version
    assert (out / "proof").read_text() == "written-in-gvisor\n"  # volume writes reach the host folder
    assert kernel in cluster.pod_log(namespace, "sandboxed")


# ---------------------------------------------------------------------------------------------
# The node and the pod executor (the kubelet stand-in)


def test_node_is_ready_with_gpu_capacity_pool_labels_and_a_lease(cluster: Cluster, core) -> None:
    node = core.read_node(cluster.node_name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert node.status.capacity["nvidia.com/gpu"] == "1"
    assert node.metadata.labels[GPU_POOL_LABEL] == "true" and node.metadata.labels[GVISOR_POOL_LABEL] == "true"
    assert not node.spec.taints
    coord = client.CoordinationV1Api(cluster.api_client())
    lease = coord.read_namespaced_lease(cluster.node_name, "kube-node-lease")
    assert lease.spec.holder_identity == cluster.node_name
    first = lease.spec.renew_time
    wait_until(
        "the node's lease to be renewed",
        lambda: coord.read_namespaced_lease(cluster.node_name, "kube-node-lease").spec.renew_time > first,
        timeout_s=25,
        every_s=1,
    )


def test_pod_gets_env_volumes_workdir_and_reports_its_termination_message(
    cluster: Cluster, namespace: str, core, tmp_path: Path
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"MODE": "fast", "config.yaml": "depth: 3\n"}}
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    host_out = tmp_path / "host-out"
    pv_dir = tmp_path / "pv"
    core.create_persistent_volume(
        {
            "metadata": {"name": f"pv-{namespace}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "hostPath": {"path": str(pv_dir), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": namespace, "name": "data"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    program = r"""
import json, os, pathlib
r = {
  "cwd": os.getcwd(), "mode": os.environ["MODE"], "token": os.environ["TOKEN"], "pod": os.environ["POD"],
  "config": open("/etc/settings/config.yaml").read(), "secret": open("/etc/creds/token").read(),
  "sa_namespace": open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read(),
}
open("/data/from-pod", "w").write("pvc")
open("/host-out/from-pod", "w").write("hostpath")
open("scratch", "w").write("emptydir")
print("hello from", r["pod"])
open("/dev/termination-log", "w").write(json.dumps(r))
"""
    core.create_namespaced_pod(
        namespace,
        pod(
            "worker",
            ["python3", "-c", program],
            container={
                "workingDir": "/scratch",
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    {"name": "data", "mountPath": "/data"},
                    {"name": "host", "mountPath": "/host-out"},
                ],
            },
            volumes=[
                {"name": "scratch", "emptyDir": {}},
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "host", "hostPath": {"path": str(host_out), "type": "DirectoryOrCreate"}},
            ],
        ),
    )
    try:
        done = cluster.wait_for_pod_phase(namespace, "worker", timeout_s=60)
        assert done["status"]["phase"] == "Succeeded", (done["status"], cluster.pod_log(namespace, "worker"))
        term = done["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["reason"] == "Completed"
        assert json.loads(term["message"]) == {
            "cwd": "/scratch",
            "mode": "fast",
            "token": "s3cret",
            "pod": "worker",
            "config": "depth: 3\n",
            "secret": "s3cret",
            "sa_namespace": namespace,
        }
        assert (pv_dir / "from-pod").read_text() == "pvc"
        assert (host_out / "from-pod").read_text() == "hostpath"
        assert cluster.pod_log(namespace, "worker") == "hello from worker\n"
        # kubectl logs goes API server -> the node's /containerLogs endpoint -> the same file
        assert cluster.kubectl("logs", "-n", namespace, "worker").stdout == "hello from worker\n"
    finally:
        core.delete_persistent_volume(f"pv-{namespace}")


def test_failed_container_reports_exit_code_and_message(cluster: Cluster, namespace: str, core) -> None:
    core.create_namespaced_pod(
        namespace,
        pod(
            "fails",
            ["sh", "-c", "echo some output; echo bad input >&2; exit 3"],
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    done = cluster.wait_for_pod_phase(namespace, "fails")
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Failed"
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"] == "some output\nbad input\n"  # no termination-log file: the log tail


def test_active_deadline_seconds_fails_the_pod(cluster: Cluster, namespace: str, core) -> None:
    core.create_namespaced_pod(namespace, pod("slow", ["sleep", "300"], activeDeadlineSeconds=2))
    done = cluster.wait_for_pod_phase(namespace, "slow", timeout_s=30)
    assert done["status"]["phase"] == "Failed" and done["status"]["reason"] == "DeadlineExceeded"
    # stopped as kubelet stops it: SIGTERM (sleep dies of it: 128 + 15), SIGKILL after the grace period
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


def test_deleting_a_pod_kills_its_process_group(cluster: Cluster, namespace: str, core, tmp_path: Path) -> None:
    # "$$$$" and "$$!" are "$$" and "$!" once Kubernetes has expanded $(VAR) references ("$$" escapes "$")
    script = "sleep 300 & echo $$! >> /out/pids; sleep 300 & echo $$! >> /out/pids; echo $$$$ >> /out/pids; wait"
    core.create_namespaced_pod(
        namespace,
        pod(
            "sleeper",
            ["sh", "-c", script],
            terminationGracePeriodSeconds=2,
            container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]},
            volumes=[{"name": "out", "hostPath": {"path": str(tmp_path)}}],
        ),
    )
    cluster.wait_for_pod_phase(namespace, "sleeper", phases=("Running",))
    pids_file = tmp_path / "pids"
    wait_until("the pod to write its pids", lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3)
    pids = [int(p) for p in pids_file.read_text().split()]
    for pid in pids:
        os.kill(pid, 0)  # alive
    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except ApiException as e:
            return e.status == 404

    wait_until("the pod object to be removed", gone, timeout_s=20)
    for pid in pids:  # the shell and both background sleeps: ended and reaped, not even zombies
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize(
    "sandboxed", [pytest.param(False, id="host"), pytest.param(True, id="gvisor", marks=pytest.mark.gvisor)]
)
def test_hardened_non_root_job_pod_writes_its_volume_and_termination_message(
    cluster: Cluster, namespace: str, tmp_path: Path, gvisor_runtime_class: str, sandboxed: bool
) -> None:
    """The shape of a sigma0 stage pod: a Job, non-root, read-only root, emptyDir /tmp, a hostPath folder."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    artifacts.chmod(0o777)  # kubelet does not chown hostPath folders for fsGroup either
    tmp_path.chmod(0o755)
    program = (
        "import json, os; open('/artifacts/out.txt', 'w').write(str(os.getuid())); "
        "open('/tmp/scratch', 'w').write('x'); "
        "json.dump({'uid': os.getuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups()), "
        "'home': os.environ['HOME']}, open('/dev/termination-log', 'w'))"
    )
    template = {
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "stage",
                    "image": "sigma0.test/sandbox:1",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-c", program],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "artifacts", "mountPath": "/artifacts"},
                    ],
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                {"name": "artifacts", "hostPath": {"path": str(artifacts), "type": "DirectoryOrCreate"}},
            ],
        }
    }
    if sandboxed:
        template["spec"]["runtimeClassName"] = gvisor_runtime_class
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "stage"},
            "spec": {"backoffLimit": 0, "template": template},
        },
    )
    core = client.CoreV1Api(cluster.api_client())
    pods = wait_until(
        "the Job's pod", lambda: core.list_namespaced_pod(namespace, label_selector="job-name=stage").items
    )
    done = cluster.wait_for_pod_phase(namespace, pods[0].metadata.name)
    assert done["status"]["phase"] == "Succeeded", (done["status"], cluster.pod_log(namespace, pods[0].metadata.name))
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(term["message"]) == {"uid": 65532, "gid": 65532, "groups": [65532], "home": "/tmp"}
    assert (artifacts / "out.txt").read_text() == "65532"
    wait_until("the Job to complete", lambda: batch.read_namespaced_job("stage", namespace).status.succeeded == 1)
