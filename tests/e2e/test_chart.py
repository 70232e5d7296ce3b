"""The chart, installed as a platform team would, on a real node: upstream kubelet, containerd, runc and gVisor.

Nothing here runs on the host: the operator, every stage and the `helm test` check run from the three images
`make images` built (build/images/, imported into the node's containerd, never pulled), under the chart's own
ServiceAccounts, RBAC, RuntimeClass and security contexts. The only values changed from the chart's defaults are
where the images come from (`image.registry`, and `image.pullPolicy: IfNotPresent`, since no registry exists here).

1. `helm install` → the operator Deployment's pod becomes Ready from the operator image;
2. examples/corpus is copied onto the artifacts volume exactly as docs/install.md tells a user (a busybox pod and
   `kubectl cp`), and `kubectl apply -f examples/cycle.yaml` runs the whole cycle: verify and score pods from the
   sandbox image under RuntimeClass gvisor (containerd runs them with the runsc shim), harvest, dataset and decide
   from the sandbox image under runc, train and generate from the trainer image (on the CPU, a tiny model); the
   cycle Succeeds and the AdapterRelease is written; `helm upgrade` in the middle of it (from training on) replaces
   the operator pod, and the new one finishes the cycle without running any step twice;
3. `helm test` passes, and fails, naming the rule, once the operator's ClusterRole loses one;
4. `helm uninstall` removes every object the chart created (the CRDs, cycles, releases and the artifacts claim stay,
   as docs/install.md says).

The cluster is tests/cluster's control plane with a kubelet node (tests/cluster/README.md); the images are those of
build/images/images.json, which `make images` writes (`make test` runs it first). Missing images fail the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cluster.cluster import GVISOR_RUNTIME_CLASS as GVISOR
from cluster.cluster import Cluster

from helm import tools
from sigma0.kube import jobs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sigma0"
IMAGES = ROOT / "build" / "images" / "images.json"
PREVIOUS = json.loads((ROOT / "helm" / "previous-release.json").read_text())  # the release before this chart's
UPGRADED = "sigma0-upgrade"  # the namespace of the install that is upgraded from the previous release
RELEASE, NAMESPACE = "sigma0", "sigma0-system"
MOUNT = jobs.PodSettings().mount_path  # where stage pods mount the artifacts volume
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
OPERATOR_PODS = f"{INSTANCE},app.kubernetes.io/component=operator"
CYCLE = yaml.safe_load((ROOT / "examples" / "cycle.yaml").read_text())
T = TypeVar("T")


def images(listing: Path = IMAGES) -> dict[str, dict[str, Any]]:
    if not listing.is_file():
        pytest.fail(f"{listing} is missing: run `make images` (make test does)", pytrace=False)
    return {image["name"]: image for image in json.loads(listing.read_text())}




def config_digest(image: dict[str, Any], tree: Path = ROOT) -> str:
    """The image's ID as the CRI reports it (a pod's imageID, for an image with no registry digest): the digest of its
    config, read from the OCI archive (under `tree`) through the manifest make images recorded."""
    with tarfile.open(tree / image["archive"]) as archive:
        def blob(digest: str) -> dict[str, Any]:
            member = archive.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None, digest
            return json.load(member)
        return blob(image["manifestDigest"])["config"]["digest"]


def registry(built: dict[str, dict[str, Any]]) -> str:
    """The chart's image.registry for the built refs: <registry>/<name>:<tag>, the same for all three."""
    (found,) = {image["ref"].rsplit("/", 1)[0] for image in built.values()}
    return found


class Env:
    """The kubelet cluster with helm and kubectl against it."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.artifacts_dir = Path()  # the artifacts volume's folder, once `installed` made it
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(tools.helm()), *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)
        if check:
            assert done.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.cluster.kubectl_path), *args], capture_output=True, text=True, env=self.env,
                              input=stdin, timeout=300, check=False)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def on_volume(self, path: str) -> Path:
        """Where a stage pod's /artifacts/... path is on this host (the PersistentVolume's hostPath)."""
        assert path.startswith(f"{MOUNT}/"), path
        return self.artifacts_dir / path.removeprefix(f"{MOUNT}/")

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def diagnostics(self) -> str:
        parts = [self.kubectl("get", "pods,jobs,tc,ar", "-A", "-o", "wide", check=False).stdout,
                 self.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[-6000:]]
        for pod in self.get("pods", "-n", NAMESPACE)["items"]:
            name = pod["metadata"]["name"]
            log = self.kubectl("logs", "-n", NAMESPACE, name, "--all-containers", "--tail=40", check=False)
            parts.append(f"--- {name}\n{log.stdout}{log.stderr}")
        return "\n".join(parts)

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(1)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics()}", pytrace=False)


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    return images()


@pytest.fixture(scope="module")
def previous() -> tuple[Path, dict[str, dict[str, Any]]]:
    """The previous release's source tree and its images, as scripts/build-previous-images.sh built them (make test
    runs it first)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-previous-images.sh"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.fail(f"the previous release's images are not built: {done.stderr.strip()}", pytrace=False)
    tree = Path(done.stdout.strip())
    return tree, images(tree / "build" / "images" / "images.json")


@pytest.fixture(scope="module")
def env(built: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with Cluster(runtime="kubelet") as cluster:
        for image in built.values():
            cluster.import_image(ROOT / image["archive"], image["ref"])
        env = Env(cluster, tmp_path_factory.mktemp("helm"))
        # the test cluster has a gvisor RuntimeClass for its own tests; the chart makes its own (runtimeClass.create)
        env.kubectl("delete", "runtimeclass", GVISOR)
        yield env


def upgrade_commands() -> list[list[str]]:
    """The commands of docs/install.md's "Upgrade" section (its first code block), each split into words."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text[text.index("\n## Upgrade\n"):]
    block = section.split("```\n", 2)[1]
    return [line.split("#")[0].split() for line in block.splitlines() if line.split("#")[0].strip()]


def bind_volume(env: Env, namespace: str, folder: Path) -> None:
    """A volume for the chart's artifacts claim in `namespace` (no dynamic provisioner: a pre-bound hostPath PV,
    open to the images' uid 65532, since fsGroup does not apply to hostPath)."""
    folder.chmod(0o777)
    env.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"e2e-artifacts-{namespace}"},
        "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder)},
                 "claimRef": {"namespace": namespace, "name": "sigma0-artifacts"}}}))


def load_corpus(env: Env, namespace: str, corpus: Path) -> None:
    """docs/install.md, "Run a cycle": the corpus onto the artifacts volume through a short-lived pod."""
    overrides = {"spec": {"securityContext": {"runAsUser": 65532, "fsGroup": 65532},
                          "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "600"],
                                          "volumeMounts": [{"name": "a", "mountPath": "/artifacts"}]}],
                          "volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "sigma0-artifacts"}}]}}
    env.kubectl("run", "-n", namespace, "corpus-loader", "--image=busybox:1.36", "--restart=Never",
                f"--overrides={json.dumps(overrides)}")
    env.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/corpus-loader", "--timeout=120s")
    env.kubectl("cp", str(corpus), f"{namespace}/corpus-loader:/artifacts/corpus")
    env.kubectl("delete", "pod", "-n", namespace, "corpus-loader", "--wait=false")


@pytest.fixture(scope="module")
def installed(env: Env, built: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The chart installed, with a volume for its artifacts claim."""
    env.artifacts_dir = tmp_path_factory.mktemp("artifacts")
    bind_volume(env, NAMESPACE, env.artifacts_dir)
    env.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
             "--set", f"image.registry={registry(built)}", "--set", "image.pullPolicy=IfNotPresent",
             "--wait", "--timeout", "5m")
    return env


def pods_of_job(env: Env, job: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return env.get("pods", "-n", namespace, "-l", f"job-name={job}")["items"]


def trained_or_over(env: Env, namespace: str, name: str) -> Callable[[], dict[str, Any] | None]:
    """The cycle's status once it trains (the step that takes longest, so an upgrade then finds it in flight)."""
    def check() -> dict[str, Any] | None:
        status = env.get("tc", "-n", namespace, name).get("status") or {}
        train = ((status.get("stages") or {}).get("train") or {}).get("state")
        return status if train in ("running", "succeeded") or status.get("phase") in ("Succeeded", "Failed") else None
    return check


def finished_once_each(env: Env, namespace: str, name: str) -> dict[str, Any]:
    """The cycle's status once it ended; it must have Succeeded, with one Job per step and train on its first."""
    def finished() -> dict[str, Any] | None:
        status = env.get("tc", "-n", namespace, name).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = env.wait_for(f"cycle {name} to finish", finished, timeout=1500)
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{env.diagnostics()}"
    steps = [job["metadata"]["labels"]["sigma0.dev/step"]
             for job in env.get("jobs", "-n", namespace, "-l", f"sigma0.dev/cycle={name}")["items"]]
    assert len(steps) == len(set(steps)), f"a step ran twice across the upgrade: {sorted(steps)}"
    assert status["stages"]["train"]["attempt"] == 1
    return status


def test_the_operator_pod_runs_from_the_operator_image_and_becomes_ready(installed: Env,
                                                                         built: dict[str, dict[str, Any]]) -> None:
    (pod,) = installed.get("pods", "-n", NAMESPACE, "-l", OPERATOR_PODS)["items"]
    (container,) = pod["status"]["containerStatuses"]
    assert container["ready"], installed.diagnostics()
    assert container["image"].endswith(built["operator"]["ref"].split("/", 1)[1])
    # the image the node ran is the archive make images wrote, by digest
    assert container["imageID"].endswith(config_digest(built["operator"])), container["imageID"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532  # the chart's default, unchanged


def test_a_cycle_applied_with_kubectl_runs_every_stage_from_its_image_and_is_written_to_the_release(
        installed: Env, built: dict[str, dict[str, Any]]) -> None:
    env = installed
    load_corpus(env, NAMESPACE, ROOT / "examples" / "corpus")
    env.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "cycle.yaml"))
    name = CYCLE["metadata"]["name"]

    # helm upgrade with the cycle in flight (training, or generating and scoring after it): a changed value replaces
    # the operator pod (Recreate); the new operator takes the cycle up where it is, adopting its running Job instead
    # of starting another
    in_flight = env.wait_for(f"cycle {name} to train", trained_or_over(env, NAMESPACE, name), timeout=900)
    assert in_flight.get("phase") not in ("Succeeded", "Failed"), f"over before the upgrade: {in_flight}"
    before = {p["metadata"]["uid"] for p in env.get("pods", "-n", NAMESPACE, "-l", OPERATOR_PODS)["items"]}
    env.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
             "--set", "operator.resyncSeconds=20", "--wait", "--timeout", "5m")
    after = env.get("pods", "-n", NAMESPACE, "-l", OPERATOR_PODS)["items"]
    assert {p["metadata"]["uid"] for p in after}.isdisjoint(before), "helm upgrade did not replace the operator pod"
    (operator_pod,) = [p for p in after if not p["metadata"].get("deletionTimestamp")]
    assert "--resync-seconds=20" in operator_pod["spec"]["containers"][0]["args"]

    status = finished_once_each(env, NAMESPACE, name)

    # The gate in a gVisor pod kept exactly what the same gate keeps on this host (root, every capability, the
    # process sandbox): the same rows, byte for byte, and some of them (the corpus has good and broken rows).
    verify = status["stages"]["verify"]
    assert verify["summary"]["passed"] > 0, verify["summary"]
    (candidates,) = [p for p in status["stages"]["harvest"]["outputs"] if p.endswith("candidates.jsonl")]
    (verified,) = [p for p in verify["outputs"] if p.endswith("verified.jsonl")]
    on_host = env.artifacts_dir.parent / "host-verify"
    on_host.mkdir()
    here = subprocess.run([sys.executable, "-m", "sigma0", "stage", "verify", "--sandbox", "process",
                           "--timeout", str(CYCLE["spec"]["verify"]["timeoutSeconds"]),
                           "--input", str(env.on_volume(candidates)), "--output", str(on_host / "verified.jsonl"),
                           "--report", str(on_host / "report.json")], capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    assert env.on_volume(verified).read_bytes() == (on_host / "verified.jsonl").read_bytes()

    release = env.get("ar", "-n", NAMESPACE, CYCLE["spec"]["release"])
    assert release["spec"]["current"]["cycle"] == name
    assert release["spec"]["current"]["digest"].startswith("sha256:")

    jobs = env.get("jobs", "-n", NAMESPACE, "-l", f"sigma0.dev/cycle={name}")["items"]
    stages = [job["metadata"]["labels"]["sigma0.dev/stage"] for job in jobs]
    assert {"harvest", "verify", "dataset", "train", "generate", "score"} <= set(stages), sorted(stages)
    sandbox, trainer = built["sandbox"]["ref"].split("/", 1)[1], built["trainer"]["ref"].split("/", 1)[1]
    for stage, job in zip(stages, jobs, strict=True):
        pods = [p for p in pods_of_job(env, job["metadata"]["name"]) if p["status"].get("phase") == "Succeeded"]
        assert pods, f"{stage}: no pod Succeeded\n{env.diagnostics()}"
        pod = pods[-1]
        (container,) = pod["status"]["containerStatuses"]
        image = trainer if stage in ("train", "generate") else sandbox
        assert container["image"].endswith(image), (stage, container["image"])
        assert container["imageID"].endswith(config_digest(built["trainer" if image == trainer else "sandbox"]))
        gvisor = stage in ("verify", "score")
        assert (pod["spec"].get("runtimeClassName") == "gvisor") == gvisor, stage
        # what containerd actually ran it with: the runsc shim for gVisor pods, runc for the rest
        runtime = env.cluster.container_runtime(container["containerID"])
        assert runtime == ("io.containerd.runsc.v1" if gvisor else "io.containerd.runc.v2"), (stage, runtime)


def test_helm_test_passes_and_fails_naming_a_rule_the_operator_lost(installed: Env) -> None:
    env = installed
    done = env.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "5m")
    assert "Phase:          Succeeded" in done.stdout, done.stdout
    # a passed check's Job goes (hook-succeeded); its checks are those the failing run below prints
    assert not env.get("jobs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=test")["items"]

    # the attack: an admin's policy (or a botched upgrade) strips the operator of deleting Jobs
    role = env.get("clusterrole", f"{RELEASE}-operator")
    rules = role["rules"]
    jobs_rule = next(i for i, r in enumerate(rules) if r.get("resources") == ["jobs"])
    broken = [r for i, r in enumerate(rules) if i != jobs_rule]
    env.kubectl("patch", "clusterrole", f"{RELEASE}-operator", "--type=json",
                "-p", json.dumps([{"op": "replace", "path": "/rules", "value": broken}]))
    try:
        failed = env.helm("test", RELEASE, "--namespace", NAMESPACE, "--logs", "--timeout", "5m", check=False)
        assert failed.returncode != 0, failed.stdout
        logs = env.kubectl("logs", "-n", NAMESPACE, f"job/{RELEASE}-test", check=False).stdout
        assert "FAIL  RBAC: sigma0-operator may create jobs.batch cluster-wide: DENIED" in logs, logs
        # everything else still holds, each check named: the CRDs as shipped, the operator's health endpoint
        for check in ("ok    CRD trainingcycles.sigma0.dev", "ok    CRD adapterreleases.sigma0.dev",
                      "/healthz on ", "ok    RBAC: sigma0-operator may get pods cluster-wide"):
            assert check in logs, logs
    finally:
        env.kubectl("patch", "clusterrole", f"{RELEASE}-operator", "--type=json",
                    "-p", json.dumps([{"op": "replace", "path": "/rules", "value": rules}]))
    env.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "5m")


def test_helm_uninstall_removes_what_the_chart_created(installed: Env) -> None:
    env = installed
    env.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")

    def gone() -> bool:
        left = env.kubectl("get", "deployments,pods,serviceaccounts,roles,rolebindings,networkpolicies,services,"
                           "cronjobs,configmaps,jobs", "-n", NAMESPACE, "-l", INSTANCE, "-o", "name").stdout.split()
        cluster_wide = env.kubectl("get", "clusterroles,clusterrolebindings,runtimeclasses", "-l", INSTANCE,
                                   "-o", "name").stdout.split()
        return not left and not cluster_wide

    env.wait_for("the release's objects to go", gone, timeout=120)
    # what stays, as documented: the CRDs with the cycles and releases, and the artifacts claim
    assert env.get("crd", "trainingcycles.sigma0.dev")["metadata"]["name"]
    assert env.get("ar", "-n", NAMESPACE, CYCLE["spec"]["release"])
    assert env.get("pvc", "-n", NAMESPACE, "sigma0-artifacts")


def test_helm_upgrade_from_the_previous_release_with_a_cycle_in_flight(
        installed: Env, built: dict[str, dict[str, Any]], previous: tuple[Path, dict[str, dict[str, Any]]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """What a platform team running the previous release does (helm/previous-release.json): its CRDs, chart and
    images, a cycle of its own example running; then the upgrade exactly as docs/install.md gives it, CRDs first,
    while the cycle trains. The new operator, from this tree's image, finishes the cycle without running any step
    twice, and the steps it starts run from this tree's stage images."""
    env = installed
    tree, old = previous
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert PREVIOUS["version"] != version, "helm/previous-release.json must name the release before this one"
    for image in old.values():
        env.cluster.import_image(tree / image["archive"], image["ref"])
    env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(tree / "helm" / "sigma0" / "crds"))
    bind_volume(env, UPGRADED, tmp_path_factory.mktemp("upgraded"))
    env.helm("install", RELEASE, str(tree / "helm" / "sigma0"), "--namespace", UPGRADED, "--create-namespace",
             "--set", f"image.registry={registry(old)}", "--set", "image.pullPolicy=IfNotPresent",
             "--wait", "--timeout", "5m")
    (pod,) = env.get("pods", "-n", UPGRADED, "-l", OPERATOR_PODS)["items"]
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(config_digest(old["operator"], tree))
    load_corpus(env, UPGRADED, tree / "examples" / "corpus")
    env.kubectl("apply", "-n", UPGRADED, "-f", str(tree / "examples" / "cycle.yaml"))
    name = yaml.safe_load((tree / "examples" / "cycle.yaml").read_text())["metadata"]["name"]
    in_flight = env.wait_for(f"cycle {name} to train", trained_or_over(env, UPGRADED, name), timeout=900)
    assert in_flight.get("phase") not in ("Succeeded", "Failed"), f"over before the upgrade: {in_flight}"
    upgraded_at = env.get("tc", "-n", UPGRADED, name)["status"]["stages"].keys()

    # docs/install.md, "Upgrade", word for word but for the namespace (and --wait, to look at the result)
    upgrade = upgrade_commands()
    assert [words[:2] for words in upgrade] == [["kubectl", "apply"], ["helm", "upgrade"]], upgrade
    for words in upgrade:
        args = [str(ROOT / w) if w.startswith("helm/") else UPGRADED if w == NAMESPACE else w for w in words[1:]]
        if words[0] == "kubectl":
            env.kubectl(*args)
        else:
            env.helm(*args, "--wait", "--timeout", "5m")

    (pod,) = [p for p in env.get("pods", "-n", UPGRADED, "-l", OPERATOR_PODS)["items"]
              if not p["metadata"].get("deletionTimestamp")]
    assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == version
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(config_digest(built["operator"]))

    status = finished_once_each(env, UPGRADED, name)
    assert env.get("ar", "-n", UPGRADED, yaml.safe_load((tree / "examples" / "cycle.yaml").read_text())["spec"][
        "release"])["spec"]["current"]["cycle"] == name
    started_after = [step for step in status["stages"] if step not in upgraded_at]
    assert started_after, f"no step started after the upgrade: {sorted(status['stages'])}"
    for step in started_after:
        (job,) = env.get("jobs", "-n", UPGRADED, "-l", f"sigma0.dev/cycle={name},sigma0.dev/step={step}")["items"]
        pods = [p for p in pods_of_job(env, job["metadata"]["name"], UPGRADED)
                if p["status"].get("phase") == "Succeeded"]
        image = "trainer" if job["metadata"]["labels"]["sigma0.dev/kind"] == "gpu" else "sandbox"
        assert pods[-1]["status"]["containerStatuses"][0]["imageID"].endswith(config_digest(built[image])), step
    env.helm("uninstall", RELEASE, "--namespace", UPGRADED, "--wait", "--timeout", "5m")
