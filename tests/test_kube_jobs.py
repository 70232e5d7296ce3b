"""Stage Jobs (pure): what each kind of step's Job looks like, and what a Job and its pods say about the step."""

from __future__ import annotations

import json
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
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
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
    placement = {"train": {"resources": {"limits": {"nvidia.com/gpu": 2}},
                           "nodeSelector": {"pool": "h100"},
                           "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                           "priorityClassName": "training"},
                 "eval": {"nodeSelector": {"pool": "l4"}}}
    cycle_spec = spec(placement=placement)
    train = pod_of(build(cycle_spec, "train"))
    assert train["containers"][0]["image"] == "reg/trainer:1"
    assert train["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 2}}
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
    with_secret = jobs.PodSettings(artifacts_secret="s3-credentials")
    for step in ("harvest", "verify", "train"):
        job = jobs.build_job(step_named(remote, step), cycle=REF, spec=remote, settings=with_secret, attempt=1,
                             active_deadline_seconds=60)
        assert pod_of(job)["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    on_volume = jobs.build_job(step_named(default, "verify"), cycle=REF, spec=default, settings=with_secret,
                               attempt=1, active_deadline_seconds=60)
    assert "envFrom" not in pod_of(on_volume)["containers"][0], "a volume cycle never gets the store's credentials"


def test_root_only_when_the_operator_is_told_so() -> None:
    settings = jobs.PodSettings(run_as_user=0)
    job = jobs.build_job(step_named(spec(), "verify"), cycle=REF, spec=spec(), settings=settings, attempt=1,
                         active_deadline_seconds=60)
    assert pod_of(job)["securityContext"]["runAsNonRoot"] is False


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
