"""Stage Jobs (pure): what each kind of step's Job looks like, and what a Job and its pods say about the step."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sigma0 import plan
from sigma0.kube import jobs
from sigma0.spec import parse_manifest

REF = jobs.CycleRef(name="c1", namespace="team", uid="0123456789abcdef", release="coder")
SETTINGS = jobs.PodSettings(sandbox_image="reg/sandbox:1", trainer_image="reg/trainer:1")


def spec(**overrides: Any):
    document = {
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
        "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                 "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, **overrides},
    }
    return parse_manifest(document).spec


def step_named(cycle_spec, name: str) -> plan.Step:
    layout = jobs.layout(REF, cycle_spec, SETTINGS)
    trained = plan.StepResult("succeeded", {"adapter_digest": "sha256:" + "c" * 64})
    state = plan.CycleState(True, None, {"train": trained})
    return {s.name: s for s in plan.steps(cycle_spec, state, layout)}[name]


def build(cycle_spec, name: str, attempt: int = 1) -> dict[str, Any]:
    return jobs.build_job(step_named(cycle_spec, name), cycle=REF, spec=cycle_spec, settings=SETTINGS,
                          attempt=attempt, active_deadline_seconds=3600)


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def test_a_sandbox_step_runs_hardened_under_the_runtime_class_with_the_stage_sandbox_set_to_process() -> None:
    cycle_spec = spec(verify={"sandbox": "gvisor"})
    job = build(cycle_spec, "verify")
    pod = pod_of(job)
    (container,) = pod["containers"]
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    # root inside gVisor (not the node's root), with only what the worker needs to give each child its own user
    assert pod["securityContext"]["runAsNonRoot"] is False and pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "KILL", "SETGID", "SETUID"]}
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "reg/sandbox:1"
    assert job["metadata"]["labels"][jobs.LABEL_NETWORK] == "none"
    assert job["spec"]["template"]["metadata"]["labels"][jobs.LABEL_NETWORK] == "none"
    # the plan's command, with --sandbox gvisor → process: runsc cannot nest inside the gVisor pod
    planned = list(step_named(cycle_spec, "verify").argv)
    command = container["command"]
    at = planned.index("--sandbox") + 1
    assert planned[at] == "gvisor" and command[at] == "process"
    assert command[:at] == planned[:at] and command[at + 1:] == planned[at + 1:]
    assert command[:3] == ["sigma0", "stage", "verify"]
    # a failed sandbox verdict is never retried
    assert job["spec"]["backoffLimit"] == 0
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "NotIn", "values": [0]}} in rules
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def test_the_isolation_note_says_what_ran_where() -> None:
    step = step_named(spec(), "score-candidate")
    argv, note = jobs.stage_argv(step, "gvisor")
    assert argv[argv.index("--sandbox") + 1] == "process"
    assert note is not None and "gvisor" in note and "--sandbox auto" in note
    assert jobs.stage_argv(step, "") == (list(step.argv), None)  # no runtime class: the stage sandboxes itself
    assert jobs.stage_argv(step_named(spec(), "harvest"), "gvisor") == (list(step_named(spec(), "harvest").argv),
                                                                        None)


def test_a_gpu_step_gets_the_trainer_image_and_the_placement() -> None:
    placement = {"train": {"resources": {"limits": {"nvidia.com/gpu": 1, "memory": "40Gi"}},
                           "nodeSelector": {"pool": "h100"},
                           "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                           "priorityClassName": "training"},
                 "eval": {"nodeSelector": {"pool": "l4"}}}
    cycle_spec = spec(placement=placement)
    train = pod_of(build(cycle_spec, "train"))
    assert train["containers"][0]["image"] == "reg/trainer:1"
    assert train["containers"][0]["resources"] == {
        "limits": {"nvidia.com/gpu": 1, "memory": "40Gi", "ephemeral-storage": "2560Mi"},
        "requests": {"ephemeral-storage": "256Mi"}}
    assert train["nodeSelector"] == {"pool": "h100"}
    assert train["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train["priorityClassName"] == "training"
    assert "runtimeClassName" not in train
    assert train["automountServiceAccountToken"] is False
    generate = pod_of(build(cycle_spec, "generate"))
    assert generate["nodeSelector"] == {"pool": "l4"}
    assert generate["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the default: one GPU
    assert jobs.LABEL_NETWORK not in build(cycle_spec, "train")["metadata"]["labels"]
    gpu_rules = build(cycle_spec, "train")["spec"]["podFailurePolicy"]["rules"]
    bad_input = {"containerName": "stage", "operator": "In", "values": [2]}
    assert {"action": "FailJob", "onExitCodes": bad_input} in gpu_rules


def test_a_cpu_cycle_asks_for_no_gpu() -> None:
    container = pod_of(build(spec(train={"device": "cpu"}), "train"))["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])


def _quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


@pytest.mark.parametrize("overrides", [{}, {"artifacts": {"uri": "s3://bucket/sigma0"}}, {"train": {"device": "cpu"}}])
def test_every_stage_pod_asks_for_local_disk_and_its_limit_covers_its_emptydirs_and_its_log(
        overrides: dict[str, Any]) -> None:
    cycle_spec = spec(**overrides)
    for step in plan.steps(cycle_spec, plan.CycleState(True, None, {}), jobs.layout(REF, cycle_spec, SETTINGS)):
        pod = pod_of(build(cycle_spec, step.name))
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["ephemeral-storage"] == jobs.EPHEMERAL_STORAGE["requests"]
        on_disk = sum(_quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"]
                      if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
        assert on_disk  # /tmp at least: an emptyDir without a sizeLimit would not count here
        limit = _quantity(resources["limits"]["ephemeral-storage"])
        assert limit == on_disk + _quantity(jobs.LOG_ALLOWANCE), f"{step.name}: {resources} for {pod['volumes']}"


def test_a_placement_that_names_ephemeral_storage_keeps_its_own() -> None:
    own = {"requests": {"cpu": "1", "ephemeral-storage": "20Gi"}, "limits": {"memory": "8Gi"}}
    for placement, step in (({"sandbox": {"resources": own}}, "verify"), ({"train": {"resources": own}}, "train")):
        resources = pod_of(build(spec(placement=placement), step))["containers"][0]["resources"]
        assert resources["requests"]["ephemeral-storage"] == "20Gi"  # not ours, and no limit of ours below it
        assert "ephemeral-storage" not in resources["limits"]


def test_plain_steps_are_hardened_but_need_no_runtime_class() -> None:
    pod = pod_of(build(spec(), "harvest"))
    assert "runtimeClassName" not in pod
    assert pod["containers"][0]["image"] == "reg/sandbox:1"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_harvest_and_dataset_pods_check_their_rows_against_the_same_eval_suites() -> None:
    cycle_spec = spec(dataset={"base": "base/rows.jsonl"}, eval={"reportSuites": ["suites/heldout.jsonl"]})
    commands = {name: pod_of(build(cycle_spec, name))["containers"][0]["command"] for name in ("harvest", "dataset")}

    def excluded(argv: list[str]) -> list[str]:
        return [argv[i + 1] for i, part in enumerate(argv) if part == "--exclude-suite"]

    assert excluded(commands["dataset"]) == excluded(commands["harvest"]) == [
        "humaneval", "/artifacts/suites/heldout.jsonl"]
    assert commands["dataset"][:3] == ["sigma0", "stage", "dataset"]
    assert "/artifacts/base/rows.jsonl" in commands["dataset"]


def test_metadata_labels_owner_and_lifetimes() -> None:
    job = build(spec(), "train", attempt=2)
    metadata = job["metadata"]
    assert metadata["name"] == "c1-train-2" and metadata["namespace"] == "team"
    assert metadata["labels"][jobs.LABEL_CYCLE] == "c1" and metadata["labels"][jobs.LABEL_STEP] == "train"
    assert metadata["labels"][jobs.LABEL_ATTEMPT] == "2" and metadata["labels"][jobs.LABEL_RELEASE] == "coder"
    assert metadata["ownerReferences"] == [{"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle",
                                            "name": "c1", "uid": REF.uid, "controller": True,
                                            "blockOwnerDeletion": True}]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds_after_finished
    assert job["spec"]["backoffLimit"] == SETTINGS.backoff_limit
    container = pod_of(job)["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SIGMA0_MODEL_CACHE"] == "/artifacts/models" and env["HOME"] == "/tmp"
    assert jobs.cycle_selector(REF) == "sigma0.dev/cycle=c1,sigma0.dev/cycle-uid=0123456789abcdef"


def test_gpu_pods_download_hub_models_onto_the_artifacts_volume_not_tmp() -> None:
    """A hub id as baseModel downloads into HF_HOME (~/.cache/huggingface, that is /tmp, by default): a model of
    several GB fills the pod's /tmp emptyDir. Train and generate pods put it beside the model cache instead."""
    cycle_spec = spec()
    for name in ("train", "generate"):
        container = pod_of(build(cycle_spec, name))["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HF_HOME"] == "/artifacts/models/hf", name
        assert env["SIGMA0_MODEL_CACHE"] == "/artifacts/models", name
        mounted = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "artifacts"]
        assert mounted == ["/artifacts"], name
    # pods that load no model get no HF_HOME
    container = pod_of(build(cycle_spec, "verify"))["containers"][0]
    assert "HF_HOME" not in {e["name"] for e in container["env"]}


def test_without_an_artifacts_volume_gpu_pods_keep_hub_models_on_a_disk_of_their_own_and_may_fill_it() -> None:
    """With an artifacts URI there is no volume to put models on, and /tmp holds 2Gi: a 7B model's weights would get
    the pod evicted. Train and generate pods get a node-local emptyDir sized by --model-cache-size, and their
    ephemeral-storage limit grows by it, so that filling it is not an eviction either."""
    remote = spec(artifacts={"uri": "s3://bucket/sigma0"})
    for name in ("train", "generate"):
        pod = pod_of(build(remote, name))
        container = pod["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SIGMA0_MODEL_CACHE"] == "/models" and env["HF_HOME"] == "/models/hf", name
        assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
        assert {"name": "models", "emptyDir": {"sizeLimit": "64Gi"}} in pod["volumes"]
        limit = _quantity(container["resources"]["limits"]["ephemeral-storage"])
        assert limit == _quantity("64Gi") + _quantity(jobs.EPHEMERAL_STORAGE["limits"]), name
    for name in ("verify", "harvest"):  # pods that load no model keep the default disk
        pod = pod_of(build(remote, name))
        assert "models" not in {v["name"] for v in pod["volumes"]}, name
        assert pod["containers"][0]["resources"]["limits"]["ephemeral-storage"] == jobs.EPHEMERAL_STORAGE["limits"]
    # '' keeps the old place, /tmp
    small = jobs.build_job(step_named(remote, "train"), cycle=REF, spec=remote, attempt=1,
                           settings=dataclasses.replace(SETTINGS, model_cache_size=""), active_deadline_seconds=3600)
    env = {e["name"]: e["value"] for e in pod_of(small)["containers"][0]["env"]}
    assert env["SIGMA0_MODEL_CACHE"] == "/tmp/models"


def test_job_names_are_deterministic_and_fit_63_characters() -> None:
    assert jobs.job_name("c1", "verify", 1) == jobs.job_name("c1", "verify", 1) == "c1-verify-1"
    long = "a" * 60
    names = {jobs.job_name(long, step, 1) for step in ("score-candidate-report0", "score-candidate", "train")}
    assert len(names) == 3 and all(len(n) <= 63 and n.endswith("-1") for n in names)
    assert jobs.job_name(long + "x", "train", 1) != jobs.job_name(long + "y", "train", 1)


def test_artifacts_locations() -> None:
    default = spec()
    layout = jobs.layout(REF, default, SETTINGS)
    assert layout.cycle_dir == "/artifacts/cycles/team/c1-01234567"
    assert layout.source("corpus/tasks.jsonl") == "/artifacts/corpus/tasks.jsonl"
    pod = pod_of(build(default, "harvest"))
    volume = next(v for v in pod["volumes"] if v["name"] == "artifacts")
    assert volume == {"name": "artifacts", "persistentVolumeClaim": {"claimName": "sigma0-artifacts"}}

    claimed = spec(artifacts={"pvc": {"claimName": "data", "subPath": "sigma0"}})
    pod = pod_of(build(claimed, "harvest"))
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "artifacts")
    assert mount == {"name": "artifacts", "mountPath": "/artifacts", "subPath": "sigma0"}

    on_node = pod_of(build(spec(artifacts={"path": "/srv/sigma0"}), "harvest"))
    assert {"name": "artifacts", "hostPath": {"path": "/srv/sigma0", "type": "DirectoryOrCreate"}} in on_node["volumes"]

    remote = spec(artifacts={"uri": "s3://bucket/sigma0/"})
    assert jobs.layout(REF, remote, SETTINGS).cycle_dir == "s3://bucket/sigma0/cycles/team/c1-01234567"
    pod = pod_of(build(remote, "harvest"))
    assert all(v["name"] != "artifacts" for v in pod["volumes"])
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["SIGMA0_ARTIFACTS_URI"] == "s3://bucket/sigma0/"
    assert "envFrom" not in pod["containers"][0], "no Secret configured: none referenced"
    with_secret = jobs.PodSettings(artifacts_secret="s3-credentials", service_account="irsa")
    for step in ("harvest", "presign-verify", "train", "presign-score-candidate", "decide"):
        job = jobs.build_job(step_named(remote, step), cycle=REF, spec=remote, settings=with_secret, attempt=1,
                             active_deadline_seconds=60)
        assert pod_of(job)["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert pod_of(job)["serviceAccountName"] == "irsa"
    on_volume = jobs.build_job(step_named(default, "verify"), cycle=REF, spec=default, settings=with_secret,
                               attempt=1, active_deadline_seconds=60)
    assert "envFrom" not in pod_of(on_volume)["containers"][0], "a volume cycle never gets the store's credentials"


def test_pods_that_run_untrusted_code_get_no_store_credentials_only_presigned_urls_from_a_trusted_step() -> None:
    """The attack: a candidate that gets past the child's limits in a verify or score pod of an S3 cycle reads the
    pod's environment, its files, or its ServiceAccount's cloud identity, for the store's keys. None of them has
    any: the Secret and the ServiceAccount go to the trusted pods only, among them the presign step that runs just
    before each sandbox step and passes it presigned URLs."""
    remote = spec(artifacts={"uri": "s3://bucket/sigma0/"})
    settings = jobs.PodSettings(artifacts_secret="s3-credentials", service_account="irsa")
    layout = jobs.layout(REF, remote, settings)
    assert layout.presigned and layout.leaderboard == "", "no shared leaderboard: each score step writes its own"
    steps = plan.steps(remote, plan.CycleState(True, None, {}), layout)
    names = [s.name for s in steps]
    sandboxed = [s for s in steps if s.kind == "sandbox"]
    assert {s.name for s in sandboxed} == {"verify", "score-candidate"}
    for step in sandboxed:
        assert names[names.index(step.name) - 1] == f"presign-{step.name}", "the trusted step comes right before"
        pod = pod_of(jobs.build_job(step, cycle=REF, spec=remote, settings=settings, attempt=1,
                                    active_deadline_seconds=60))
        text = json.dumps(pod)
        assert "s3-credentials" not in text and "secretRef" not in text and "secretKeyRef" not in text
        assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
        assert all(not v.get("secret") and not v.get("projected") for v in pod["volumes"])
        assert step.argv[-2] == "--presigned", "the map's URL, from the presign step's summary"
        presign = next(s for s in steps if s.name == f"presign-{step.name}")
        assert presign.kind == "plain" and "--writes" in presign.argv
        assert presign.argv[presign.argv.index("--writes") + 1] == step.writes
        assert list(presign.argv[presign.argv.index("--") + 1:]) == list(step.argv[2:-2]), \
            "the presign step signs exactly the sandbox step's command line"
    on_volume = jobs.layout(REF, spec(), settings)
    assert not on_volume.presigned
    assert not any(s.name.startswith("presign") for s in plan.steps(spec(), plan.CycleState(True, None, {}), on_volume))


def test_root_only_when_the_operator_is_told_so() -> None:
    settings = jobs.PodSettings(run_as_user=0)
    job = jobs.build_job(step_named(spec(), "harvest"), cycle=REF, spec=spec(), settings=settings, attempt=1,
                         active_deadline_seconds=60)
    assert pod_of(job)["securityContext"]["runAsNonRoot"] is False


def test_root_with_slot_user_capabilities_only_in_sandbox_pods_under_a_known_gvisor_runtime_class() -> None:
    def security(cycle_spec, name: str, settings: jobs.PodSettings = SETTINGS) -> tuple[dict, dict]:
        pod = pod_of(jobs.build_job(step_named(cycle_spec, name), cycle=REF, spec=cycle_spec, settings=settings,
                                    attempt=1, active_deadline_seconds=60))
        return pod["securityContext"], pod["containers"][0]["securityContext"]

    non_root = ({"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                 "seccompProfile": {"type": "RuntimeDefault"}}, {"drop": ["ALL"]})
    for name in ("harvest", "dataset", "train", "generate", "decide"):  # never root, whatever the runtime class
        pod, container = security(spec(), name)
        assert (pod, container["capabilities"]) == non_root, name
    for name in ("verify", "score-candidate"):
        pod, container = security(spec(), name)
        assert pod["runAsUser"] == 0 and pod["runAsGroup"] == 0 and pod["runAsNonRoot"] is False
        assert container["capabilities"]["add"] == ["CHOWN", "KILL", "SETGID", "SETUID"]
        # a runtime class the operator does not know as gVisor (runc, kata, ...) gets no root: the node's could be it
        elsewhere = spec(placement={"sandbox": {"runtimeClassName": "kata"}})
        pod, container = security(elsewhere, name, jobs.PodSettings(allow_process_sandbox=True))
        assert (pod, container["capabilities"]) == non_root, name
        # the operator's list of gVisor classes decides
        pod, _ = security(elsewhere, name, jobs.PodSettings(gvisor_runtime_classes=("gvisor", "kata")))
        assert pod["runAsUser"] == 0


def test_stage_outputs_are_readable_by_the_other_stage_pods_users(tmp_path) -> None:
    """Sandbox pods run as root inside gVisor without CAP_DAC_OVERRIDE; the other pods as 65532. Each reads what
    the other wrote (verify reads harvest's candidates, dataset reads verify's rows), so no output may be 0600."""
    import stat

    from sigma0.io import write_json_atomic, write_jsonl_atomic

    write_jsonl_atomic(tmp_path / "verified.jsonl", [{"fn": "f"}])
    write_json_atomic(tmp_path / "report.json", {"total": 1})
    for name in ("verified.jsonl", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def mounts_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_of(job)["containers"][0]["volumeMounts"]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _writable(job: dict[str, Any]) -> list[str]:
    return [m["mountPath"] for m in mounts_of(job) if not m.get("readOnly")]


def _mount_for(job: dict[str, Any], path: str) -> dict[str, Any]:
    """The mount a path in the container resolves through: the deepest one it lies under."""
    return max((m for m in mounts_of(job) if _under(path, m["mountPath"])), key=lambda m: len(m["mountPath"]))


@pytest.mark.parametrize("name", ["verify", "score-candidate", "score-incumbent", "score-candidate-report0"])
def test_a_sandbox_pod_reads_the_artifacts_read_only_and_writes_only_its_own_output_folder(name: str) -> None:
    cycle_spec = spec(eval={"reportSuites": ["suites/heldout.jsonl"]})
    layout = jobs.layout(REF, cycle_spec, SETTINGS)
    incumbent = plan.Incumbent("sha256:" + "a" * 64, "/artifacts/releases/coder/aaa")
    trained = plan.StepResult("succeeded", {"adapter_digest": "sha256:" + "c" * 64})
    step = {s.name: s for s in plan.steps(cycle_spec, plan.CycleState(True, incumbent, {"train": trained}),
                                          layout)}[name]
    job = jobs.build_job(step, cycle=REF, spec=cycle_spec, settings=SETTINGS, attempt=1, active_deadline_seconds=60)
    artifacts = [m for m in mounts_of(job) if m["name"] == "artifacts"]
    assert artifacts[0] == {"name": "artifacts", "mountPath": "/artifacts", "readOnly": True}
    own = step.writes
    assert own and own.startswith(layout.cycle_dir + "/")
    assert artifacts[1] == {"name": "artifacts", "mountPath": own, "subPath": own.removeprefix("/artifacts/")}
    assert sorted(_writable(job)) == sorted(["/tmp", own])  # and the termination message, which kubelet owns
    argv = pod_of(job)["containers"][0]["command"]
    written = [argv[i + 1] for i, part in enumerate(argv) if part in ("--output", "--report", "--leaderboard")]
    assert written and all(_mount_for(job, path)["mountPath"] == own for path in written), written
    read = [argv[i + 1] for i, part in enumerate(argv) if part in ("--input", "--completions")]
    read += [argv[i + 1] for i, part in enumerate(argv) if part == "--suite" and argv[i + 1].startswith("/")]
    assert read and all(_mount_for(job, path).get("readOnly") for path in read), read
    # nothing another step reads is writable here: not the other sandbox steps' folders, not the cycle's other
    # outputs (completions, dataset, adapter, decision), not other cycles, not the inputs
    for other in ("/artifacts/cycles/team/c1-01234567/eval/completions/candidate/gate/completions.jsonl",
                  "/artifacts/cycles/team/c1-01234567/eval/results/candidate-gate/results.jsonl",
                  "/artifacts/cycles/team/c1-01234567/eval/results/incumbent-gate/results.jsonl",
                  "/artifacts/cycles/team/c1-01234567/verify/verified.jsonl",
                  "/artifacts/cycles/team/c1-01234567/dataset/train.jsonl",
                  "/artifacts/cycles/team/c1-01234567/decide/decision.json",
                  "/artifacts/cycles/team/other-76543210/eval/results/candidate-gate/results.jsonl",
                  "/artifacts/corpus/tasks.jsonl", "/artifacts/leaderboard.jsonl"):
        if not _under(other, own):
            assert _mount_for(job, other).get("readOnly") is True, other


def test_the_output_folder_mount_keeps_the_claims_sub_path() -> None:
    claimed = spec(artifacts={"pvc": {"claimName": "data", "subPath": "teams/a/"}})
    job = build(claimed, "score-candidate")
    assert mounts_of(job)[1:] == [
        {"name": "artifacts", "mountPath": "/artifacts", "subPath": "teams/a/", "readOnly": True},
        {"name": "artifacts", "mountPath": "/artifacts/cycles/team/c1-01234567/eval/results/candidate-gate",
         "subPath": "teams/a/cycles/team/c1-01234567/eval/results/candidate-gate"}]


def test_plain_and_gpu_pods_mount_the_artifacts_read_write_as_before() -> None:
    for name in ("harvest", "dataset", "train", "generate", "decide"):
        assert [m for m in mounts_of(build(spec(), name)) if m["name"] == "artifacts"] == [
            {"name": "artifacts", "mountPath": "/artifacts"}], name


def test_on_a_volume_or_in_a_store_there_is_no_shared_leaderboard_file() -> None:
    layout = jobs.layout(REF, spec(), SETTINGS)
    assert layout.leaderboard == ""
    argv = step_named(spec(), "score-candidate").argv
    at = argv[argv.index("--leaderboard") + 1]
    assert at == "/artifacts/cycles/team/c1-01234567/eval/results/candidate-gate/leaderboard.jsonl"
    remote = jobs.layout(REF, spec(artifacts={"uri": "s3://bucket/sigma0"}), SETTINGS)
    assert remote.leaderboard == "", "a score pod in a store may write its own folder alone (presigned URLs)"


# What the operator refuses to run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["gs://bucket/sigma0", "az://container/sigma0", "memory://sigma0"])
def test_a_store_that_cannot_sign_urls_is_refused_instead_of_giving_sandbox_pods_credentials(uri: str) -> None:
    reason, message = jobs.refusal(spec(artifacts={"uri": uri}), jobs.PodSettings()) or ("", "")
    assert reason == "ArtifactsStoreCannotPresign"
    assert uri in message and "s3://" in message and "spec.artifacts.pvc" in message
    for fine in ("s3://bucket/sigma0", "s3a://bucket/sigma0"):
        assert jobs.refusal(spec(artifacts={"uri": fine}), jobs.PodSettings()) is None


def test_a_host_path_is_refused_unless_the_operator_allows_it() -> None:
    on_node = spec(artifacts={"path": "/srv/sigma0"})
    reason, message = jobs.refusal(on_node, jobs.PodSettings())
    assert reason == "HostPathNotAllowed"
    assert "spec.artifacts.path" in message and "--allow-host-path" in message and "artifacts.pvc" in message
    assert jobs.refusal(on_node, jobs.PodSettings(allow_host_path=True)) is None
    assert jobs.refusal(on_node, jobs.PodSettings(allow_process_sandbox=True))[0] == "HostPathNotAllowed"
    for fine in (spec(), spec(artifacts={"pvc": {"claimName": "data"}}), spec(artifacts={"uri": "s3://b/x"})):
        assert jobs.refusal(fine, jobs.PodSettings()) is None


@pytest.mark.parametrize("overrides, says", [
    ({"verify": {"sandbox": "process"}}, "spec.verify.sandbox is process"),
    ({"eval": {"sandbox": "process"}}, "spec.eval.sandbox is process"),
    ({"placement": {"sandbox": {"runtimeClassName": "runc"}}}, "runtimeClassName 'runc' is not a gVisor"),
    ({"placement": {"sandbox": {"runtimeClassName": ""}}}, "runtimeClassName '' is not a gVisor"),
])
def test_untrusted_code_without_gvisor_is_refused_unless_the_operator_allows_it(overrides: dict[str, Any],
                                                                                 says: str) -> None:
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "c1"},
                "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                         "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]}, **overrides}}
    from sigma0.spec import CycleSpec, apply_defaults, openapi_schema  # (runtimeClassName "" is refused by the CRD)

    cycle_spec = CycleSpec.model_validate(apply_defaults(openapi_schema("TrainingCycle"), document)["spec"])
    reason, message = jobs.refusal(cycle_spec, jobs.PodSettings())
    assert reason == "ProcessSandboxNotAllowed"
    assert says in message and "--allow-process-sandbox" in message
    assert jobs.refusal(cycle_spec, jobs.PodSettings(allow_process_sandbox=True)) is None
    assert jobs.refusal(cycle_spec, jobs.PodSettings(allow_host_path=True)) is not None
    # the gVisor sandbox asked for by name, under gVisor, is what the default is: nothing to refuse
    assert jobs.refusal(spec(verify={"sandbox": "gvisor"}), jobs.PodSettings()) is None
    named = cycle_spec.placement.sandbox.runtime_class_name
    if named not in ("", "gvisor"):  # a class the operator is told is gVisor is fine
        assert jobs.refusal(cycle_spec, jobs.PodSettings(gvisor_runtime_classes=(named,))) is None


# observe ----------------------------------------------------------------------------------------------------------


def job(*conditions: dict[str, Any], start: str = "2026-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "c1-verify-1", "uid": "j1"}, "spec": {},
            "status": {"startTime": start, "conditions": list(conditions), **status}}


def pod(phase: str, *, name: str = "c1-verify-1-abcde", created: str = "2026-01-01T00:00:01Z",
        terminated: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None,
        waiting: dict[str, Any] | None = None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else ({"waiting": waiting} if waiting else {"running": {}})
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": phase, "conditions": conditions or [],
                       "containerStatuses": [{"name": "stage", "state": state}]}}


COMPLETE = {"type": "Complete", "status": "True"}


def test_a_completed_job_gives_the_summary_from_the_termination_message() -> None:
    summary = {"stage": "verify", "total": 10, "passed": 7}
    seen = jobs.observe(job(COMPLETE, completionTime="2026-01-01T00:01:00Z"),
                        [pod("Succeeded", terminated={"exitCode": 0, "message": json.dumps(summary)})])
    assert seen.state == "succeeded" and seen.summary == summary
    assert (seen.start, seen.end) == ("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")


def test_a_completed_job_without_a_summary_is_not_taken_on_trust() -> None:
    seen = jobs.observe(job(COMPLETE), [pod("Succeeded", terminated={"exitCode": 0, "message": "all good"})])
    assert seen.state == "failed" and "no JSON summary" in seen.message


def test_a_failed_job_says_why_with_the_stage_error_and_exit_code() -> None:
    failed = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
              "lastTransitionTime": "2026-01-01T00:02:00Z"}
    message = json.dumps({"stage": "harvest", "error": "source /artifacts/x.json does not exist", "kind": "input"})
    seen = jobs.observe(job(failed), [pod("Failed", terminated={"exitCode": 2, "message": message})])
    assert seen.state == "failed"
    assert seen.message == "PodFailurePolicy: exit code 2: source /artifacts/x.json does not exist"
    assert seen.end == "2026-01-01T00:02:00Z"
    # a crash before any summary: the log tail (FallbackToLogsOnError) is the message
    seen = jobs.observe(job(failed), [pod("Failed", terminated={"exitCode": 1, "message": "Traceback ...\nBoom"})])
    assert seen.message.endswith("exit code 1: Traceback ... | Boom")
    # a process ended by a signal: what usually sent it
    seen = jobs.observe(job(failed), [pod("Failed", terminated={"exitCode": 143, "reason": "Error"})])
    assert seen.message == "PodFailurePolicy: exit code 143 (SIGTERM: the pod was deleted, evicted or stopped): Error"
    seen = jobs.observe(job(failed), [pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})])
    assert "exit code 137 (SIGKILL: out of memory" in seen.message and seen.message.endswith("OOMKilled")
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}
    assert jobs.observe(job(deadline), []).message == "DeadlineExceeded: Job was active longer than specified deadline"


def test_a_pending_pod_says_what_the_scheduler_said() -> None:
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]
    seen = jobs.observe(job(), [pod("Pending", conditions=unschedulable)])
    assert seen.state == "running"
    assert seen.waiting == ("Unschedulable", "pod c1-verify-1-abcde is Pending: 0/1 nodes are available: "
                            "1 Insufficient nvidia.com/gpu.")
    pulling = pod("Pending", conditions=[{"type": "PodScheduled", "status": "True"}],
                  waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})
    assert jobs.observe(job(), [pulling]).waiting == ("ImagePullBackOff", "pod c1-verify-1-abcde: ImagePullBackOff: "
                                                      "Back-off pulling image")
    assert jobs.observe(job(), []).waiting[0] == "PodNotCreated"
    assert jobs.observe(job(), [pod("Running")]).waiting is None


def test_the_newest_pod_speaks_for_a_retried_job() -> None:
    first = pod("Failed", name="old", created="2026-01-01T00:00:01Z", terminated={"exitCode": 1, "message": "old"})
    second = pod("Failed", name="new", created="2026-01-01T00:05:00Z", terminated={"exitCode": 1, "message": "new"})
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    assert jobs.observe(job(failed), [second, first]).message == "BackoffLimitExceeded: exit code 1: new"


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", None])
def test_parse_summary_only_accepts_a_json_object(text: str | None) -> None:
    assert jobs.parse_summary(text) is None


# The operator's flags -------------------------------------------------------------------------------------------


def _operator_settings(argv: list[str]) -> jobs.PodSettings:
    import argparse

    from sigma0.kube import operator

    parser = argparse.ArgumentParser()
    operator.add_arguments(parser)
    return operator.settings_from(parser.parse_args(argv))


def test_the_operator_refuses_host_paths_and_process_sandboxes_unless_a_flag_or_its_variable_allows_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SIGMA0_ALLOW_HOST_PATH", "SIGMA0_ALLOW_PROCESS_SANDBOX", "SIGMA0_GVISOR_RUNTIME_CLASSES"):
        monkeypatch.delenv(name, raising=False)
    default = _operator_settings([])
    assert (default.allow_host_path, default.allow_process_sandbox) == (False, False)
    assert default.gvisor_runtime_classes == ("gvisor",)
    flagged = _operator_settings(["--allow-host-path", "--allow-process-sandbox", "--gvisor-runtime-class", "a",
                                  "--gvisor-runtime-class", "b"])
    assert (flagged.allow_host_path, flagged.allow_process_sandbox) == (True, True)
    assert flagged.gvisor_runtime_classes == ("a", "b")
    monkeypatch.setenv("SIGMA0_ALLOW_HOST_PATH", "false")
    monkeypatch.setenv("SIGMA0_ALLOW_PROCESS_SANDBOX", "TRUE")
    monkeypatch.setenv("SIGMA0_GVISOR_RUNTIME_CLASSES", "gvisor, gvisor-systrap")
    from_env = _operator_settings([])
    assert (from_env.allow_host_path, from_env.allow_process_sandbox) == (False, True)
    assert from_env.gvisor_runtime_classes == ("gvisor", "gvisor-systrap")
    assert _operator_settings(["--gvisor-runtime-class", "x"]).gvisor_runtime_classes == ("x",)  # the flag wins


CREATED = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)  # the pods' creationTimestamp above


@pytest.mark.parametrize("reason", ["InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"])
def test_a_pod_that_can_never_start_fails_its_step_at_once(reason: str) -> None:
    seen = jobs.observe(job(), [pod("Pending", waiting={"reason": reason, "message": 'secret "s3" not found'})],
                        CREATED + timedelta(seconds=1))
    assert seen.state == "failed" and seen.message.startswith(f"{reason}: pod c1-verify-1-abcde: {reason}: ")
    assert 'secret "s3" not found' in seen.message and seen.end == "2026-01-01T00:00:02Z"


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_an_image_pull_gets_its_grace_and_then_fails_the_step(reason: str) -> None:
    pulling = [pod("Pending", waiting={"reason": reason, "message": "registry.example/x: not found"})]
    grace = jobs.HEALS_WITHIN_SECONDS[reason]
    within = jobs.observe(job(), pulling, CREATED + timedelta(seconds=grace - 1))
    assert within.state == "running" and within.waiting is not None and within.waiting[0] == reason
    after = jobs.observe(job(), pulling, CREATED + timedelta(seconds=grace))
    assert after.state == "failed" and f"still so after {grace} s" in after.message
    # without a clock (nothing to judge the grace by) the step only waits
    assert jobs.observe(job(), pulling).state == "running"


def test_an_unbound_volume_is_not_a_lack_of_nodes_and_fails_after_its_grace() -> None:
    message = "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes"
    unbound = [pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                           "message": message}])]
    within = jobs.observe(job(), unbound, CREATED + timedelta(seconds=10))
    # another placement would not help: the GPU fallback (unschedulable_since) must not start
    assert within.state == "running" and within.waiting is not None and within.waiting[0] == "VolumeNotBound"
    assert within.unschedulable_since is None
    after = jobs.observe(job(), unbound, CREATED + timedelta(seconds=jobs.HEALS_WITHIN_SECONDS["VolumeNotBound"]))
    assert after.state == "failed" and after.message.startswith("VolumeNotBound: ")
    # a plain lack of nodes waits for its placement's patience, however long it lasts
    nodes = [pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])]
    seen = jobs.observe(job(), nodes, CREATED + timedelta(days=2))
    assert seen.state == "running" and seen.unschedulable_since == "2026-01-01T00:00:01Z"


def test_pull_secrets_on_every_stage_pod_the_service_account_only_on_trusted_ones_and_shm_on_gpu_pods() -> None:
    from dataclasses import replace

    settings = replace(SETTINGS, image_pull_secrets=("regcred",), service_account="sigma0-stages",
                       gpu_shm_size="4Gi")
    cycle_spec = spec()
    kinds: dict[str, str] = {}
    for step in plan.steps(cycle_spec, plan.CycleState(), jobs.layout(REF, cycle_spec, settings)):
        pod = pod_of(jobs.build_job(step, cycle=REF, spec=cycle_spec, settings=settings, attempt=1,
                                    active_deadline_seconds=60))
        kinds[step.name] = step.kind
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], step.name
        # untrusted code never runs with the cloud role: no service account, and no token mounted either way
        assert pod.get("serviceAccountName") == (None if step.kind == "sandbox" else "sigma0-stages"), step.name
        assert pod["automountServiceAccountToken"] is False
        shm = [v for v in pod["volumes"] if v["name"] == "shm"]
        if step.kind == "gpu":
            assert shm == [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}]
            assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
        else:
            assert shm == [], step.name
    assert set(kinds.values()) == {"plain", "sandbox", "gpu"}
    # by default: no pull secret, the namespace's service account
    pod = pod_of(build(cycle_spec, "train"))
    assert "imagePullSecrets" not in pod and "serviceAccountName" not in pod
