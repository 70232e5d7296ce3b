"""Stage Jobs: a Step of the plan as a batch/v1 Job, and what a Job and its pods say about the step.

Pure: no API calls. The executor creates what `build_job` returns and feeds `observe` what it lists.

What a stage pod looks like, by the step's kind (sigma0.plan.Step.kind):

    sandbox  verify, score: they execute untrusted code (harvested candidates, model completions). The sandbox
             image under the cycle's runtimeClassName (default `gvisor`), no ServiceAccount token, read-only root
             filesystem, seccomp RuntimeDefault, CPU and memory limits, and the label that the deny-all
             NetworkPolicy (manifests/per-namespace/) selects. A failed sandbox pod is never retried
             (podFailurePolicy FailJob on any non-zero exit): the verdict stands. The artifacts volume is mounted
             read-only; only the step's own output folder is writable (see "What a sandbox pod may write").
    plain    harvest, dataset, decide: they only move data. The same hardened pod, non-root, every capability
             dropped, without the runtime class.
    gpu      train, generate: the trainer image with one of the step's GPU placements (GPUs, resources,
             nodeSelector, tolerations, priorityClassName; which one is the executor's choice, see
             sigma0.placement), labelled with the placement's name and GPU count, from which the operator counts
             GPU-hours (`gpu_usage`). They load the model and never execute model output, so they do not need
             gVisor (which has no GPU passthrough to speak of) but are otherwise just as locked down.

gVisor cannot nest: inside a gVisor pod, `runsc` cannot start another sandbox. So when the pod has a runtime
class, a sandbox step runs with `--sandbox process` (the stage's warm-worker, rlimits and nonce checks still
apply) and the pod's runtime class is the isolation boundary; `stage_argv` rewrites that one value and says so,
and the executor records it in the stage's status (`isolation`).

What a sandbox pod may write. The stage process (the judge) and the candidate's child run in the same pod, so the
pod's mounts are what a candidate that gets past the child's limits could touch. The artifacts volume is mounted
read-only at /artifacts (inputs, every other step's outputs, every other cycle); a second mount of the same
volume, by subPath, makes the step's own output folder (`Step.writes`: verify/, or eval/results/<adapter>-<label>/
for each score step; no other step writes there) writable at its usual path, so the command line is unchanged.
Only trusted steps (dataset, decide) read that folder afterwards. So a candidate can plant nothing that another
step reads: not completions for generate to resume, not results for score to resume, not a decision. An emptyDir
plus a copying step was the other way: one more container per step for the same guarantee. There is no shared
leaderboard on a volume: each score step appends its row in its own folder. Within its own folder the judge is
protected by users: under a runtime class the operator knows as gVisor (`--gvisor-runtime-class`, default
`gvisor`) the pod runs as root inside the sandbox, with CHOWN, KILL, SETGID and SETUID only (gVisor's root is not
the node's), so that the stage's worker gives each child a user of its own (sigma0.sandbox.worker), which cannot
write the judge's files, signal or trace it. Every other stage pod is the images' non-root user with every
capability dropped.

What the operator refuses (`refusal`): a cycle whose artifacts are a node folder (`artifacts.path`, a hostPath
volume) unless it runs with `--allow-host-path`, and one whose sandbox steps would run without gVisor (`sandbox:
process`, or a runtimeClassName it does not know as gVisor) unless it runs with `--allow-process-sandbox`. Such a
cycle fails at once with the reason in its status; nothing is created for it.

Every pod mounts the artifacts volume at /artifacts (a PersistentVolumeClaim, or a node folder for
`artifacts.path`), or, with an fsspec URI (`artifacts.uri`, e.g. s3://), gets URIs in its command line, which
`sigma0 stage` runs on local copies in /tmp (sigma0.remote). The trusted pods get the store's credentials from the
operator's `--artifacts-secret` as environment variables (envFrom; s3fs reads AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL). Sandbox pods get none, nor a ServiceAccount: the plan puts a trusted
`presign` step before each sandbox step, which hands it presigned URLs for its own inputs and outputs alone
(plan.Layout.presigned, sigma0.stages.presign).

Every pod reports its summary through its termination message, which `observe` reads from
the pod status: the operator never reads the shared disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sigma0 import journal, plan
from sigma0.kube import API_VERSION
from sigma0.placement import Usage, format_time, gpu_count, options_for, parse_time
from sigma0.spec import CycleSpec, GpuPlacement

CONTAINER = "stage"
TERMINATION_PATH = "/dev/termination-log"

ANNOTATION_SUSPENDED = "sigma0.dev/suspended-by-cycle"
"""On a Job the operator suspended because its cycle was (spec.suspend): only those it resumes."""
LABEL_CYCLE = "sigma0.dev/cycle"
LABEL_CYCLE_UID = "sigma0.dev/cycle-uid"
LABEL_RELEASE = "sigma0.dev/release"
LABEL_STEP = "sigma0.dev/step"
LABEL_STAGE = "sigma0.dev/stage"
LABEL_KIND = "sigma0.dev/kind"
LABEL_ATTEMPT = "sigma0.dev/attempt"
LABEL_NETWORK = "sigma0.dev/network"  # "none": selected by the deny-all-egress NetworkPolicy
LABEL_PLACEMENT = "sigma0.dev/placement"  # GPU steps: the placement's name
LABEL_GPUS = "sigma0.dev/gpus"  # GPU steps: how many GPUs the pod holds (GPU-hours = this x hours)
MANAGED_BY = ("app.kubernetes.io/managed-by", "sigma0-operator")

EXIT_BAD_INPUT = 2  # sigma0.cli: StageInputError; retrying cannot help

SANDBOX_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
CPU_TRAINER_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
GPU_RESOURCES = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "32Gi"}}  # + the GPUs
# Local disk of every stage container, unless its placement's resources name ephemeral-storage themselves. A stage
# writes its outputs to the artifacts volume, which is not ephemeral storage; outside it, only /tmp (an emptyDir of at
# most 2Gi: HOME, scratch, and with an artifacts URI the local copies of its inputs and outputs) and its log (which the
# kubelet rotates, 5 files of 10Mi by default) count. The limit covers both, so a stage is evicted only past them
# (tests/test_kube_jobs.py checks it against the pod's emptyDirs); the request is what a stage needs commonly.
EPHEMERAL_STORAGE = {"requests": "256Mi", "limits": "2560Mi"}
MODEL_CACHE_PATH = "/models"  # GPU pods without an artifacts volume (PodSettings.model_cache_size)
LOG_ALLOWANCE = "512Mi"  # the part of the limit beyond the emptyDirs: the container's log, and some slack


@dataclass(frozen=True)
class PodSettings:
    """Operator-wide settings for stage pods (`sigma0 operator` flags)."""

    sandbox_image: str = "ghcr.io/sigma0/sandbox:0.2.0"
    trainer_image: str = "ghcr.io/sigma0/trainer:0.2.0"
    image_pull_policy: str = "IfNotPresent"
    mount_path: str = "/artifacts"
    default_claim: str = "sigma0-artifacts"  # when a cycle names no artifacts location
    artifacts_secret: str = ""  # with an artifacts URI: the Secret whose keys stage pods get as environment variables
    run_as_user: int = 65532  # the images' non-root user; 0 only for test harnesses that cannot do better
    ttl_seconds_after_finished: int = 86400
    backoff_limit: int = 1  # retries of plain and GPU pods on exit code 1 (never on 2, never for sandbox)
    gvisor_runtime_classes: tuple[str, ...] = ("gvisor",)  # RuntimeClasses whose handler is gVisor (runsc)
    allow_host_path: bool = False  # admit cycles with artifacts.path (a hostPath volume in every stage pod)
    allow_process_sandbox: bool = False  # admit cycles whose sandbox steps would run without gVisor
    # The cycle's labels and annotations that a batch queue reads, copied onto its Jobs, so that Kueue (or another
    # queue that admits batch/v1 Jobs) admits, suspends and resumes them like any Job.
    queue_keys: tuple[str, ...] = ("kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class")
    image_pull_secrets: tuple[str, ...] = ()  # Secrets for pulling the stage images from a private registry
    # The ServiceAccount of trusted stage pods (harvest, dataset, train, generate, decide), e.g. one bound to a cloud
    # role by IRSA or Workload Identity instead of static keys. Sandbox pods, which run untrusted code, never get it.
    service_account: str = ""
    gpu_shm_size: str = "2Gi"  # /dev/shm of GPU pods (memory-backed): PyTorch's DataLoader workers share through it
    # The model cache of GPU pods where there is no artifacts volume (an artifacts URI): a node-local emptyDir at
    # MODEL_CACHE_PATH, sized for a hub model's weights ('' leaves it in /tmp, which holds 2Gi).
    model_cache_size: str = "64Gi"


@dataclass(frozen=True)
class CycleRef:
    """The TrainingCycle a Job belongs to (its owner)."""

    name: str
    namespace: str
    uid: str
    release: str
    queue_labels: tuple[tuple[str, str], ...] = ()  # the cycle's, for PodSettings.queue_keys (queueing())
    queue_annotations: tuple[tuple[str, str], ...] = ()

    @property
    def folder(self) -> str:
        # The uid keeps a recreated cycle of the same name from resuming the outputs of a deleted one.
        return f"cycles/{self.namespace}/{self.name}-{self.uid[:8]}"


def queueing(metadata: Mapping[str, Any], keys: Sequence[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The labels and annotations among `keys` that a cycle's metadata carries, for CycleRef."""
    def picked(found: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return tuple((key, str(found[key])) for key in keys if found and key in found)
    return {"queue_labels": picked(metadata.get("labels")), "queue_annotations": picked(metadata.get("annotations"))}


# Where the files are ---------------------------------------------------------------------------------------------


def layout(cycle: CycleRef, spec: CycleSpec, settings: PodSettings) -> plan.Layout:
    """The plan's Layout as the stage pods see it: under the mount path, or under the artifacts URI."""
    if spec.artifacts.uri:
        root = spec.artifacts.uri.rstrip("/")
        # Sandbox steps get presigned URLs, never the credentials, so each writes its own folder and nothing else
        return plan.Layout(cycle_dir=f"{root}/{cycle.folder}", input_dir=root, leaderboard="", presigned=True)
    # On a volume, score pods mount it read-only but for their own folder: no shared leaderboard file
    root = settings.mount_path
    return plan.Layout(cycle_dir=f"{root}/{cycle.folder}", input_dir=root, leaderboard="")


def refusal(spec: CycleSpec, settings: PodSettings) -> tuple[str, str] | None:
    """(reason, message) if this operator must not run the cycle at all, else None."""
    if spec.artifacts.path and not settings.allow_host_path:
        return "HostPathNotAllowed", (
            f"spec.artifacts.path ({spec.artifacts.path}) would mount a node folder (hostPath) into every stage "
            "pod, including those that run untrusted code; this operator refuses it. Use spec.artifacts.pvc or "
            "spec.artifacts.uri, or start the operator with --allow-host-path (SIGMA0_ALLOW_HOST_PATH=true, "
            "chart value stagePods.allowHostPath) on a single-tenant cluster")
    scheme = (spec.artifacts.uri or "").partition("://")[0].lower()
    if spec.artifacts.uri and scheme not in plan.PRESIGNED_PROTOCOLS:
        signable = ", ".join(f"{protocol}://" for protocol in sorted(plan.PRESIGNED_PROTOCOLS))
        return "ArtifactsStoreCannotPresign", (
            f"spec.artifacts.uri ({spec.artifacts.uri}): verify and score pods get no credentials, only presigned "
            f"URLs for their own files, which only an S3 store can sign ({signable}); use an S3 or S3-compatible "
            "bucket, or spec.artifacts.pvc")
    runtime_class = spec.placement.sandbox.runtime_class_name
    process = [f"spec.{part}.sandbox is process" for part in ("verify", "eval")
               if getattr(spec, part).sandbox == "process"]
    if runtime_class not in settings.gvisor_runtime_classes:
        known = ", ".join(settings.gvisor_runtime_classes) or "none"
        process.append(f"spec.placement.sandbox.runtimeClassName {runtime_class!r} is not a gVisor RuntimeClass "
                       f"this operator knows (--gvisor-runtime-class: {known})")
    if process and not settings.allow_process_sandbox:
        return "ProcessSandboxNotAllowed", (
            f"{'; '.join(process)}: verify and score would run untrusted code without gVisor; this operator "
            "refuses it. Leave sandbox at auto or gvisor with a gVisor runtimeClassName, or start the operator "
            "with --allow-process-sandbox (SIGMA0_ALLOW_PROCESS_SANDBOX=true, chart value "
            "stagePods.allowProcessSandbox) where every candidate is trusted")
    return None


def artifacts_volume(spec: CycleSpec, settings: PodSettings) -> tuple[dict[str, Any] | None, str | None]:
    """The artifacts volume and its subPath, or (None, None) when the cycle uses an fsspec URI."""
    artifacts = spec.artifacts
    if artifacts.uri:
        return None, None
    if artifacts.path:
        return {"name": "artifacts", "hostPath": {"path": artifacts.path, "type": "DirectoryOrCreate"}}, None
    if artifacts.pvc:
        claim = {"claimName": artifacts.pvc.claim_name}
        return {"name": "artifacts", "persistentVolumeClaim": claim}, artifacts.pvc.sub_path or None
    return {"name": "artifacts", "persistentVolumeClaim": {"claimName": settings.default_claim}}, None


# Names and labels -------------------------------------------------------------------------------------------------


def job_name(cycle: str, step: str, attempt: int) -> str:
    """`<cycle>-<step>-<attempt>`, deterministic, so a restarted operator finds (or re-creates, harmlessly:
    409) the same Job; shortened with a hash of the cycle name when it would pass 63 characters."""
    suffix = f"-{step}-{attempt}"
    name = cycle + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(cycle.encode()).hexdigest()[:6]
    keep = 63 - len(suffix) - len(digest) - 1
    return f"{cycle[:keep].rstrip('-')}-{digest}{suffix}"


def cycle_selector(cycle: CycleRef) -> str:
    return f"{LABEL_CYCLE}={cycle.name},{LABEL_CYCLE_UID}={cycle.uid}"


def labels(step: plan.Step, cycle: CycleRef, attempt: int, placement: GpuPlacement | None = None,
           gpus: int = 0) -> dict[str, str]:
    found = {
        "app.kubernetes.io/name": "sigma0",
        "app.kubernetes.io/component": "stage",
        MANAGED_BY[0]: MANAGED_BY[1],
        LABEL_CYCLE: cycle.name,
        LABEL_CYCLE_UID: cycle.uid,
        LABEL_RELEASE: cycle.release,
        LABEL_STEP: step.name,
        LABEL_STAGE: step.stage,
        LABEL_KIND: step.kind,
        LABEL_ATTEMPT: str(attempt),
    }
    if step.kind != "gpu":  # GPU pods may need to fetch a hub model; nothing else needs the network
        found[LABEL_NETWORK] = "none"
    elif placement is not None:
        found[LABEL_PLACEMENT] = placement.name
        found[LABEL_GPUS] = str(gpus)
    return found


# The Job ----------------------------------------------------------------------------------------------------------


def stage_argv(step: plan.Step, runtime_class: str | None) -> tuple[list[str], str | None]:
    """The container's command line, and a note on the isolation if it differs from what the plan asked."""
    argv = list(step.argv)
    if step.kind != "sandbox" or not runtime_class or "--sandbox" not in argv:
        return argv, None
    index = argv.index("--sandbox") + 1
    requested, argv[index] = argv[index], "process"
    note = (f"runtimeClassName {runtime_class}: the pod is the sandbox; the plan's --sandbox {requested} ran as "
            "--sandbox process inside it (runsc cannot nest)")
    return argv, note


def failure_policy(kind: str) -> dict[str, Any]:
    """Disruptions (eviction, preemption) never count; bad input (exit 2) never retries; a sandbox verdict never
    retries either: running untrusted code again cannot turn a failure into evidence."""
    rules: list[dict[str, Any]] = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    if kind == "sandbox":
        rules.append({"action": "FailJob",
                      "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}})
    else:
        rules.append({"action": "FailJob",
                      "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_INPUT]}})
    return {"rules": rules}


def gpu_resources(placement: GpuPlacement, spec: CycleSpec) -> dict[str, Any]:
    """A GPU pod's container resources on `placement`: its resources (or the defaults), with `gpus` of its
    gpuResource when set; with neither resources nor gpus, one GPU (none for a cycle that trains on the CPU)."""
    written = placement.resources.as_container_resources() if placement.resources is not None else {}
    if written:
        found = written
        count = placement.gpus
    else:
        found = copy.deepcopy(CPU_TRAINER_RESOURCES if spec.train.device == "cpu" else GPU_RESOURCES)
        count = placement.gpus if placement.gpus is not None else (0 if spec.train.device == "cpu" else 1)
    if count is not None:
        for part in ("limits", "requests"):
            (found.get(part) or {}).pop(placement.gpu_resource, None)
        if count:  # an extended resource is asked for in limits; requests, if given, must equal them
            found.setdefault("limits", {})[placement.gpu_resource] = str(count)
        found = {part: values for part, values in found.items() if values or part not in ("limits", "requests")}
    return found


def _resources(spec: CycleSpec, placement: GpuPlacement | None, disk: int = 0) -> dict[str, Any]:
    if placement is not None:
        return with_ephemeral_storage(gpu_resources(placement, spec), disk)
    return with_ephemeral_storage(spec.placement.sandbox.resources or SANDBOX_RESOURCES, disk)


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity (2560Mi, 64Gi, 1e9) in bytes, rounded up: the client's own parser, imported when
    needed (it brings the whole client, half a second)."""
    from kubernetes.utils.quantity import parse_quantity

    return math.ceil(parse_quantity(quantity))


def with_ephemeral_storage(resources: Mapping[str, Any], disk: int = 0) -> dict[str, Any]:
    """`resources` with EPHEMERAL_STORAGE's request and limit, the limit raised by `disk` bytes (more emptyDirs),
    unless they name ephemeral-storage already (then both are theirs: a request of theirs above our limit would make
    the pod invalid)."""
    found = copy.deepcopy(dict(resources))
    if any("ephemeral-storage" in (found.get(part) or {}) for part in ("requests", "limits")):
        return found
    for part, quantity in EPHEMERAL_STORAGE.items():
        if part == "limits" and disk:
            quantity = f"{(quantity_bytes(quantity) + disk) // 2**20}Mi"
        found[part] = {**(found.get(part) or {}), "ephemeral-storage": quantity}
    return found


def _placement(step: plan.Step, spec: CycleSpec, placement: GpuPlacement | None) -> dict[str, Any]:
    """nodeSelector, tolerations, priorityClassName and runtimeClassName for the pod."""
    found: dict[str, Any] = {}
    if placement is not None:
        if placement.node_selector:
            found["nodeSelector"] = dict(placement.node_selector)
        if placement.tolerations:
            found["tolerations"] = [dict(t) for t in placement.tolerations]
        if placement.priority_class_name:
            found["priorityClassName"] = placement.priority_class_name
        return found
    sandbox = spec.placement.sandbox
    if sandbox.node_selector:
        found["nodeSelector"] = dict(sandbox.node_selector)
    if sandbox.tolerations:
        found["tolerations"] = [dict(t) for t in sandbox.tolerations]
    if step.kind == "sandbox" and sandbox.runtime_class_name:
        found["runtimeClassName"] = sandbox.runtime_class_name
    return found


# What the stage's worker needs to give each candidate's child a user of its own (sigma0.sandbox.worker).
SLOT_USER_CAPABILITIES = ["CHOWN", "KILL", "SETGID", "SETUID"]


def root_in_gvisor(step: plan.Step, spec: CycleSpec, settings: PodSettings) -> bool:
    """Whether the step's pod runs as root inside gVisor: sandbox steps under a known gVisor RuntimeClass only."""
    return step.kind == "sandbox" and spec.placement.sandbox.runtime_class_name in settings.gvisor_runtime_classes


def _security(settings: PodSettings, root_in_sandbox: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext)."""
    user = 0 if root_in_sandbox else settings.run_as_user
    pod: dict[str, Any] = {"runAsNonRoot": user != 0, "runAsUser": user, "runAsGroup": user,
                           "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.run_as_user != 0:  # the volume's group, as for every other stage pod
        pod["fsGroup"] = settings.run_as_user
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if root_in_sandbox:
        capabilities["add"] = list(SLOT_USER_CAPABILITIES)
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                 "capabilities": capabilities}
    return pod, container


def _artifact_mounts(step: plan.Step, settings: PodSettings, sub_path: str | None) -> list[dict[str, Any]]:
    """The artifacts volume's mounts: the whole of it read-write, or, for a sandbox step, read-only with the step's
    own output folder (and nothing else) mounted read-write over it."""
    mount: dict[str, Any] = {"name": "artifacts", "mountPath": settings.mount_path}
    if sub_path:
        mount["subPath"] = sub_path
    if step.kind != "sandbox":
        return [mount]
    root = settings.mount_path.rstrip("/") + "/"
    if not step.writes or not step.writes.startswith(root):
        raise ValueError(f"sandbox step {step.name} names no output folder under {root}: {step.writes!r}")
    own = step.writes.removeprefix(root).strip("/")
    output = {"name": "artifacts", "mountPath": step.writes, "subPath": f"{sub_path.strip('/')}/{own}" if sub_path
              else own}
    return [{**mount, "readOnly": True}, output]


def build_job(step: plan.Step, *, cycle: CycleRef, spec: CycleSpec, settings: PodSettings, attempt: int,
              active_deadline_seconds: int, placement: GpuPlacement | None = None,
              resume_key: str | None = None) -> dict[str, Any]:
    """The Job that runs `step` for `cycle` (attempt 1, 2, ...); a GPU step on `placement` (default: the first
    of its placements). `resume_key`: the step's key for the journals of what it resumes (sigma0.journal)."""
    name = job_name(cycle.name, step.name, attempt)
    gpu = step.kind == "gpu"
    placement = (placement or options_for(spec, step.stage)[0]) if gpu else None
    argv, _ = stage_argv(step, spec.placement.sandbox.runtime_class_name)
    volume, sub_path = artifacts_volume(spec, settings)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "SIGMA0_TERMINATION_LOG", "value": TERMINATION_PATH},
           {"name": "SIGMA0_CYCLE", "value": cycle.name}, {"name": "SIGMA0_STEP", "value": step.name}]
    if gpu and settings.gpu_shm_size:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.gpu_shm_size}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if resume_key:
        env.append({"name": journal.KEY_ENV, "value": resume_key})
    env_from: list[dict[str, Any]] = []
    disk = 0  # bytes of on-disk emptyDirs beyond /tmp, which the ephemeral-storage limit must hold too
    if volume is None:
        model_cache = "/tmp/models"
        if gpu and settings.model_cache_size:
            model_cache = MODEL_CACHE_PATH
            volumes.append({"name": "models", "emptyDir": {"sizeLimit": settings.model_cache_size}})
            mounts.append({"name": "models", "mountPath": MODEL_CACHE_PATH})
            disk = quantity_bytes(settings.model_cache_size)
        env.append({"name": "SIGMA0_ARTIFACTS_URI", "value": spec.artifacts.uri or ""})
        if settings.artifacts_secret and step.kind != "sandbox":  # sandbox steps: presigned URLs (sigma0.remote)
            env_from.append({"secretRef": {"name": settings.artifacts_secret}})
    else:
        model_cache = f"{settings.mount_path}/models"
        volumes.append(volume)
        mounts += _artifact_mounts(step, settings, sub_path)
    env.append({"name": "SIGMA0_MODEL_CACHE", "value": model_cache})
    if gpu:
        # A hub id as baseModel downloads through huggingface_hub into HF_HOME, ~/.cache/huggingface by default:
        # the small /tmp emptyDir. Models belong with the model cache: on the artifacts volume, or in its own emptyDir.
        env.append({"name": "HF_HOME", "value": f"{model_cache}/hf"})
    resources = _resources(spec, placement, disk)
    gpus = gpu_count(resources, placement.gpu_resource) if placement is not None else 0
    step_labels = labels(step, cycle, attempt, placement, gpus)
    pod_security, container_security = _security(settings, root_in_gvisor(step, spec, settings))
    container = {
        "name": CONTAINER,
        "image": settings.trainer_image if step.kind == "gpu" else settings.sandbox_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": argv,
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": container_security,
        "terminationMessagePath": TERMINATION_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
        **_placement(step, spec, placement),
    }
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.service_account and step.kind != "sandbox":
        pod_spec["serviceAccountName"] = settings.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cycle.namespace,
            "labels": {**dict(cycle.queue_labels), **step_labels},
            **({"annotations": dict(cycle.queue_annotations)} if cycle.queue_annotations else {}),
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "TrainingCycle", "name": cycle.name,
                                 "uid": cycle.uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "backoffLimit": 0 if step.kind == "sandbox" else settings.backoff_limit,
            "activeDeadlineSeconds": max(1, int(active_deadline_seconds)),
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "podFailurePolicy": failure_policy(step.kind),
            "template": {"metadata": {"labels": step_labels}, "spec": pod_spec},
        },
    }


# What a Job says --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A step's Job as seen now. `waiting` is (reason, message) while its pod cannot run yet, and
    `unschedulable_since` the creation time of that pod while the scheduler finds no node for it."""

    state: plan.StepState
    summary: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    start: str | None = None
    end: str | None = None
    waiting: tuple[str, str] | None = None
    unschedulable_since: str | None = None


def finished(job: Mapping[str, Any]) -> bool:
    """Whether the Job itself has ended (Complete or Failed)."""
    return _condition(job, "Complete") is not None or _condition(job, "Failed") is not None


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _newest(pods: Sequence[Mapping[str, Any]], phase: str | None = None) -> Mapping[str, Any] | None:
    chosen = [p for p in pods if phase is None or (p.get("status") or {}).get("phase") == phase]
    return max(chosen, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
               default=None)


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return (status.get("state") or {}).get("terminated") or {}
    return {}


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """A termination message as a summary: the JSON object the stage wrote, or None if it is not one."""
    try:
        data = json.loads(message or "")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _failure_message(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    failed = _condition(job, "Failed") or {}
    why = failed.get("reason") or "Failed"
    pod = _newest(pods, "Failed")
    if pod is None:
        return {}, f"{why}: {failed.get('message') or 'the Job failed and no pod is left to say why'}"
    terminated = _terminated(pod)
    summary = parse_summary(terminated.get("message")) or {}
    detail = str(summary.get("error") or _tail(terminated.get("message") or "")
                 or (pod.get("status") or {}).get("message") or terminated.get("reason") or "no message")
    return summary, f"{why}: {_exit_text(terminated.get('exitCode'))}{detail}"


SIGNAL_CAUSES = {9: "SIGKILL: out of memory, or still running when its grace period ended",
                 15: "SIGTERM: the pod was deleted, evicted or stopped"}


def _exit_text(code: Any) -> str:
    """`exit code N: `, and for a process ended by a signal (128 + N, as kubelet reports it) what usually sent it."""
    if code is None:
        return ""
    if isinstance(code, int) and code - 128 in SIGNAL_CAUSES:
        return f"exit code {code} ({SIGNAL_CAUSES[code - 128]}): "
    return f"exit code {code}: "


def _tail(log: str, lines: int = 3) -> str:
    """The last lines of a log tail (FallbackToLogsOnError), where a traceback says what went wrong."""
    kept = [line.strip() for line in log.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-500:]


# Why a stage pod cannot start, and how long it may wait for that to end by itself. The pod spec is immutable, so a
# bad image name or a container that cannot be configured (a missing Secret or ConfigMap key) never heals: the step
# fails at once, as KubeRay's RayJob and JobSet do, instead of holding its node (and GPU) until the cycle's deadline.
# An image pull and a volume claim may heal (a registry blip, a provisioner still at work): they get a grace first.
NEVER_HEALS = frozenset({"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                         "CreateContainerError"})
HEALS_WITHIN_SECONDS = {"ErrImagePull": 300, "ImagePullBackOff": 300, "VolumeNotBound": 300}
VOLUME_WORDS = ("persistentvolumeclaim", "persistentvolume ")
"""Words of the scheduler's message for a pod whose volume claim is missing or unbound."""


def hopeless(waiting: tuple[str, str] | None, since: datetime | None, now: datetime | None) -> str | None:
    """Why a pod that waits with `waiting` (reason, message) since `since` will not start by itself, or None while
    it may still."""
    if waiting is None or now is None:
        return None
    reason, message = waiting
    if reason in NEVER_HEALS:
        return f"{message} (this does not heal by itself: the pod's spec cannot change)"
    grace = HEALS_WITHIN_SECONDS.get(reason)
    if grace is not None and since is not None and (now - since).total_seconds() >= grace:
        return f"{message} (still so after {grace} s)"
    return None


def _waiting(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    if (job.get("spec") or {}).get("suspend"):
        return "JobSuspended", f"Job {job['metadata']['name']} is suspended"
    pod = _newest(pods)
    if pod is None:
        return "PodNotCreated", f"Job {job['metadata']['name']} has no pod yet"
    name, status = pod["metadata"]["name"], pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "Unschedulable"
            if any(word in (condition.get("message") or "").lower() for word in VOLUME_WORDS):
                reason = "VolumeNotBound"  # not a lack of nodes: another placement would not help
            return reason, f"pod {name} is Pending: {condition.get('message') or reason}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            reason = waiting.get("reason") or "ContainerWaiting"
            return reason, f"pod {name}: {reason}: {waiting.get('message') or 'waiting to start'}"
    if not any(c.get("type") == "PodScheduled" for c in status.get("conditions") or []):
        return "PodNotScheduled", f"pod {name} is waiting for the scheduler"
    return "PodPending", f"pod {name} is Pending"


def resume_key_of(job: Mapping[str, Any]) -> str | None:
    """The resume key a Job's pods run with (build_job), for a Job adopted without its record."""
    for container in ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        for variable in container.get("env") or []:
            if variable.get("name") == journal.KEY_ENV:
                return str(variable.get("value") or "") or None
    return None


def observe(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime | None = None) -> Observation:
    """What the step did so far, from its Job and the Job's pods (as dicts, as the API returns them). A pod that
    waits for what will not come by itself (`hopeless`, judged at `now`) fails the step while its Job still runs:
    the executor then deletes that Job."""
    status = job.get("status") or {}
    start = status.get("startTime")
    if _condition(job, "Complete"):
        pod = _newest(pods, "Succeeded")
        summary = parse_summary(_terminated(pod).get("message")) if pod else None
        if summary is None:
            # proof beats claims: a stage that left no summary did not show what it did
            return Observation("failed", {}, "the Job completed but its pod left no JSON summary in its "
                               "termination message", start, status.get("completionTime"))
        return Observation("succeeded", summary, "", start, status.get("completionTime"))
    if _condition(job, "Failed"):
        summary, message = _failure_message(job, pods)
        end = (_condition(job, "Failed") or {}).get("lastTransitionTime")
        return Observation("failed", summary, message, start, end)
    waiting = _waiting(job, pods)
    pod = _newest(pods)
    created = pod["metadata"].get("creationTimestamp") if pod else None
    why = hopeless(waiting, parse_time(created) if created else None, now)
    if why is not None and waiting is not None and now is not None:
        return Observation("failed", {}, f"{waiting[0]}: {why}", start, format_time(now))
    since = created if waiting and waiting[0] == "Unschedulable" else None
    return Observation("running", {}, "", start, None, waiting, since)



def gpu_usage(pod: Mapping[str, Any]) -> Usage | None:
    """A GPU stage pod's row in the GPU ledger: its placement and GPUs (its labels) from the real start of its
    container to its end (None while it runs); None for any other pod, or one whose container never started."""
    metadata = pod["metadata"]
    pod_labels = metadata.get("labels") or {}
    if pod_labels.get(LABEL_KIND) != "gpu" or LABEL_PLACEMENT not in pod_labels:
        return None
    state: Mapping[str, Any] = {}
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            state = status.get("state") or {}
    terminated, running = state.get("terminated") or {}, state.get("running") or {}
    started = terminated.get("startedAt") or running.get("startedAt")
    if not started:
        return None
    finished = terminated.get("finishedAt")
    return Usage(key=str(metadata.get("uid") or metadata["name"]), placement=pod_labels[LABEL_PLACEMENT],
                 stage=pod_labels.get(LABEL_STEP, ""), cycle=pod_labels.get(LABEL_CYCLE, ""),
                 start=parse_time(started), end=parse_time(finished) if finished else None,
                 gpus=int(pod_labels.get(LABEL_GPUS, "0")))
