"""The one state machine of a TrainingCycle, shared by the local executor and the Kubernetes operator.

Pure: `next_action(spec, state, layout)` looks at what has been observed (the incumbent that was resolved, each
step's result) and says what to do next. It does no I/O. The executors do the I/O and feed observations back:

    LocalExecutor:  a step is a subprocess on this machine;      the release is a folder with an atomic pointer
    JobExecutor:    a step is a batch/v1 Job watched by kopf;     the release is an AdapterRelease resource

Running it again with the same observations gives the same answer, so a restarted executor resumes where it was.

Three ways through, chosen by the spec alone (the executors never ask which):

    train     harvest → verify → dataset → train → generate → score → decide → publish (the default)
    import    import → generate → score → decide → publish: `spec.candidate` names an adapter trained elsewhere;
              the import step copies it into the cycle and fails unless it has the digest the spec names, before
              any GPU step; from there on it is a candidate like a trained one (same problems, same decoding,
              same decision, same evidence, copied into the release's store by digest when it wins)
    dry run   harvest → verify [→ dataset], then Finish(Succeeded, DryRun) with a report of what would train:
              `spec.stopAfter`; nothing is trained or evaluated and the release is neither read nor written
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Literal

from sigma0 import evidence
from sigma0.spec import CycleSpec

StepKind = Literal["plain", "sandbox", "gpu"]
StepState = Literal["running", "succeeded", "failed"]

PHASE_PENDING = "Pending"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
TERMINAL_PHASES = (PHASE_SUCCEEDED, PHASE_FAILED)
DRY_RUN = "DryRun"  # the outcome of a cycle that stopped after spec.stopAfter
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest a presigned URL (SigV4) lasts
PRESIGNED_PROTOCOLS = frozenset({"s3", "s3a"})  # stores whose URLs sigma0.remote.presign can sign (botocore)


@dataclass(frozen=True)
class Step:
    """One stage command of the cycle. `kind` says where it may run: `sandbox` steps execute untrusted code (gVisor,
    no network), `gpu` steps load the model and never execute model output, `plain` steps only move data. `reads`:
    the inputs that earlier steps wrote; argv expects each to have the digest its writer recorded."""

    name: str
    stage: str
    kind: StepKind
    phase: str
    argv: tuple[str, ...]
    reads: tuple[str, ...] = ()
    # A sandbox step's one output folder: everything it writes is under it, and no other step writes there. A pod
    # that runs untrusted code gets this folder alone read-write (sigma0.kube.jobs).
    writes: str | None = None


@dataclass(frozen=True)
class Incumbent:
    """The adapter the release points at when the cycle starts: the one the candidate must beat."""

    digest: str
    uri: str
    pass_at_1: float | None = None
    revision: int = 0


@dataclass(frozen=True)
class StepResult:
    """`outputs`: the digest of every file or folder the step wrote, recorded when it ended (sigma0.evidence)."""

    state: StepState
    summary: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CycleState:
    """Everything observed so far. `incumbent_resolved` is False until the executor has looked at the release."""

    incumbent_resolved: bool = False
    incumbent: Incumbent | None = None
    steps: Mapping[str, StepResult] = field(default_factory=dict)
    published: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Layout:
    """Where a cycle's files are, as the stage processes see them (host paths locally, mount paths in a pod)."""

    cycle_dir: str
    input_dir: str
    leaderboard: str  # "": each score step appends its row to leaderboard.jsonl in its own output folder
    # In an object store whose credentials sandbox steps must not hold: a trusted presign step before each one
    # hands it presigned URLs for its own inputs and outputs (sigma0.remote.presign), and nothing else.
    presigned: bool = False

    def at(self, *parts: str) -> str:
        return join(self.cycle_dir, *parts)

    def source(self, path: str) -> str:
        return path if PurePosixPath(path).is_absolute() or "://" in path else join(self.input_dir, path)


def join(base: str, *parts: str) -> str:
    """A path or a URI (`s3://bucket/prefix`) joined with relative parts; PurePosixPath alone would turn `s3://`
    into `s3:/`."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        return str(PurePosixPath(base, *parts))
    return f"{scheme}://{PurePosixPath(rest, *parts)}"


# Actions ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolveIncumbent:
    """Read the release and record which adapter (if any) the candidate will be evaluated against."""


@dataclass(frozen=True)
class RunStep:
    step: Step


@dataclass(frozen=True)
class AwaitStep:
    """A step is running; wait for it to finish."""

    step: Step


@dataclass(frozen=True)
class Publish:
    """Apply the decision to the release: only if the evaluated incumbent is still current (otherwise Stale)."""

    decision: Mapping[str, Any]
    decision_file: str
    candidate_uri: str
    candidate_digest: str
    decision_digest: str | None = None  # what decide recorded for decision_file: check it before reading the file
    evidence: Mapping[str, Any] = field(default_factory=dict)  # what the decision rests on, logged with it


@dataclass(frozen=True)
class Finish:
    phase: str
    outcome: str | None
    reason: str
    report: Mapping[str, Any] | None = None  # a dry run's: what would train (dry_run_report)


Action = ResolveIncumbent | RunStep | AwaitStep | Publish | Finish


# The steps of a cycle ---------------------------------------------------------------------------------------------


def _suite_label(index: int) -> str:
    return f"report{index}"


def steps(spec: CycleSpec, state: CycleState, layout: Layout) -> list[Step]:
    """The cycle's steps in order, with their exact command lines. Depends on the incumbent (no incumbent, no
    incumbent eval) and on earlier results (the candidate's digest, for the leaderboard)."""
    v, t, e, p = spec.verify, spec.train, spec.eval, spec.promote
    incumbent = state.incumbent
    candidate_digest = candidate_digest_of(spec, state)
    adapter_dir = candidate_dir(spec, layout)
    completions = layout.at("eval", "completions")
    recorded = {name: digest for result in state.steps.values() if result.state == "succeeded"
                for name, digest in result.outputs.items()}

    def step(name: str, stage: str, kind: StepKind, phase: str, args: list[str], reads: list[str],
             expect: tuple[str, ...] = (), writes: str | None = None) -> Step:
        return Step(name, stage, kind, phase, _cmd([*args, *evidence.expect_args(recorded, reads), *expect]),
                    tuple(reads), writes)

    # Training never sees the eval set: harvest and dataset check their rows against the same suites.
    exclude = [arg for suite in excluded_suites(spec) for arg in ("--exclude-suite", _suite_arg(suite, layout))]

    def results(adapter: str, label: str) -> str:  # one folder per score step: it writes nothing outside it
        return layout.at("eval", "results", f"{adapter}-{label}")

    harvest = ["harvest", "--output", layout.at("harvest", "candidates.jsonl"),
               "--report", layout.at("harvest", "report.json")]
    for source in spec.harvest.sources if spec.harvest else ():
        harvest += ["--source", layout.source(source.path)]
    harvest += exclude

    verify = ["verify", "--input", layout.at("harvest", "candidates.jsonl"),
              "--output", layout.at("verify", "verified.jsonl"), "--report", layout.at("verify", "report.json"),
              "--sandbox", v.sandbox, "--timeout", _num(v.timeout_seconds), "--workers", str(v.workers),
              "--memory-mb", str(v.memory_mb)]

    dataset = ["dataset", "--verified", layout.at("verify", "verified.jsonl"),
               "--output", layout.at("dataset", "train.jsonl"), "--report", layout.at("dataset", "report.json")]
    if spec.dataset.base:
        dataset += ["--base", layout.source(spec.dataset.base)]
    dataset += exclude

    train = ["train", "--base-model", spec.base_model.name, "--dataset", layout.at("dataset", "train.jsonl"),
             "--output-dir", adapter_dir, "--report", layout.at("train", "report.json"),
             "--steps", str(t.steps), "--learning-rate", _num(t.learning_rate),
             "--max-seq-length", str(t.max_seq_length), "--batch-size", str(t.batch_size),
             "--gradient-accumulation", str(t.gradient_accumulation), "--lr-scheduler", t.lr_scheduler,
             "--warmup-steps", str(t.warmup_steps), "--checkpoint-every", str(t.checkpoint_every),
             "--lora-r", str(t.lora.r),
             "--lora-alpha", str(t.lora.alpha), "--lora-dropout", _num(t.lora.dropout),
             "--target-modules", ",".join(t.lora.target_modules), "--seed", str(t.seed),
             "--quantization", t.quantization, "--device", t.device]

    suites = {"gate": e.suite} | {_suite_label(i): s for i, s in enumerate(e.report_suites)}
    generate = ["generate", "--base-model", spec.base_model.name, "--adapter", f"candidate={adapter_dir}",
                "--subset", e.subset, "--output-dir", completions, "--report", layout.at("eval", "generate.json"),
                "--max-new-tokens", str(e.max_new_tokens), "--batch-size", str(e.batch_size),
                "--device", t.device, "--quantization", t.quantization]
    incumbent_expect: tuple[str, ...] = ()
    if incumbent:
        generate += ["--adapter", f"incumbent={incumbent.uri}"]
        if incumbent.uri != "none":  # the release's adapter, as the release names it
            incumbent_expect = ("--expect", f"{incumbent.digest}={incumbent.uri}")
    for label, suite in suites.items():
        generate += ["--suite", f"{label}={_suite_arg(suite, layout)}"]

    def score_input(adapter: str, label: str) -> list[str]:
        return [join(completions, adapter, label, "completions.jsonl")]

    def score(adapter: str, label: str, suite: str, digest: str) -> list[str]:
        folder = results(adapter, label)
        return ["score", "--completions", score_input(adapter, label)[0],
                "--output", join(folder, "results.jsonl"), "--report", join(folder, "report.json"),
                "--suite", _suite_arg(suite, layout), "--subset", e.subset,
                "--sandbox", e.sandbox, "--timeout", _num(e.timeout_seconds), "--workers", str(e.workers),
                "--leaderboard", layout.leaderboard or join(folder, "leaderboard.jsonl"),
                "--adapter-digest", digest, "--label", f"{adapter}/{label}"]

    decide = ["decide", "--candidate", join(results("candidate", "gate"), "results.jsonl"),
              "--output", layout.at("decide", "decision.json"),
              "--margin", _num(p.margin), "--min-pass-at-1", _num(p.min_pass_at1)]
    if incumbent:
        decide += ["--incumbent", join(results("incumbent", "gate"), "results.jsonl")]
    if p.significance is not None:
        decide += ["--significance", _num(p.significance)]

    decide_reads = [join(results("candidate", "gate"), "results.jsonl")]
    if incumbent:
        decide_reads.append(join(results("incumbent", "gate"), "results.jsonl"))

    if spec.candidate is not None:
        imported = ["import", "--source", layout.source(spec.candidate.uri), "--digest", spec.candidate.digest,
                    "--output-dir", adapter_dir, "--report", layout.at("import", "report.json")]
        plan = [step("import", "import", "plain", "Importing", imported, [])]
    else:
        plan = [
            step("harvest", "harvest", "plain", "Harvesting", harvest, []),
            step("verify", "verify", "sandbox", "Verifying", verify, [layout.at("harvest", "candidates.jsonl")],
                 writes=layout.at("verify")),
            step("dataset", "dataset", "plain", "Training", dataset, [layout.at("verify", "verified.jsonl")]),
            step("train", "train", "gpu", "Training", train, [layout.at("dataset", "train.jsonl")]),
        ]
        if spec.stop_after is not None:  # a dry run: nothing after the stage it stops after
            return _presigned(plan[: [s.name for s in plan].index(spec.stop_after) + 1], spec, state, layout)
    plan += [
        step("generate", "generate", "gpu", "Evaluating", generate, [adapter_dir], incumbent_expect),
        step("score-candidate", "score", "sandbox", "Evaluating",
             score("candidate", "gate", e.suite, candidate_digest), score_input("candidate", "gate"),
             writes=results("candidate", "gate")),
    ]
    if incumbent:
        plan.append(step("score-incumbent", "score", "sandbox", "Evaluating",
                         score("incumbent", "gate", e.suite, incumbent.digest), score_input("incumbent", "gate"),
                         writes=results("incumbent", "gate")))
    for index, suite in enumerate(e.report_suites):
        label = _suite_label(index)
        plan.append(step(f"score-candidate-{label}", "score", "sandbox", "Evaluating",
                         score("candidate", label, suite, candidate_digest), score_input("candidate", label),
                         writes=results("candidate", label)))
    plan.append(step("decide", "decide", "plain", "Deciding", decide, decide_reads))
    return _presigned(plan, spec, state, layout)


def _presigned(plan: list[Step], spec: CycleSpec, state: CycleState, layout: Layout) -> list[Step]:
    """With `layout.presigned`, a trusted `presign` step (plain: it holds the store's credentials) before each
    sandbox step, and the sandbox step with `--presigned URL`, the URL of the map its presign step wrote. The URLs
    last as long as the cycle may (spec.deadlineSeconds, at most SigV4's 7 days)."""
    if not layout.presigned:
        return plan
    expires = min(MAX_PRESIGN_SECONDS, spec.deadline_seconds)
    found: list[Step] = []
    for step in plan:
        if step.kind != "sandbox":
            found.append(step)
            continue
        name = f"presign-{step.name}"
        command = ["presign", "--map", layout.at("presign", f"{step.name}.json"), "--writes", step.writes or "",
                   "--expires-in", str(expires), "--", *step.argv[2:]]
        url = str(state.steps.get(name, StepResult("running")).summary.get("url", ""))
        found += [Step(name, step.stage, "plain", step.phase, _cmd(command)),
                  replace(step, argv=(*step.argv, "--presigned", url))]
    return found


def excluded_suites(spec: CycleSpec) -> list[str]:
    """Every suite the cycle evaluates on is kept out of its training data (harvested and base rows alike),
    report-only suites included (their figure would mean nothing otherwise), plus whatever else the manifest
    lists."""
    listed = spec.harvest.exclude_suites if spec.harvest else ()
    suites = [*listed, spec.eval.suite, *spec.eval.report_suites]
    return list(dict.fromkeys(suites))


def candidate_dir(spec: CycleSpec, layout: Layout) -> str:
    """Where the cycle's candidate adapter is: the one the train step writes, or the import step's copy."""
    return layout.at("import", "adapter") if spec.candidate is not None else layout.at("train", "adapter")


def candidate_digest_of(spec: CycleSpec, state: CycleState) -> str:
    """The candidate's digest as the step that made it reported it ("" until then)."""
    made_by = "import" if spec.candidate is not None else "train"
    return str(state.steps.get(made_by, StepResult("running")).summary.get("adapter_digest", ""))


def skipped(spec: CycleSpec) -> dict[str, str]:
    """The stages (Step.stage) this cycle does not run, each with why: what `kubectl get tc` shows in the
    conditions of a cycle that imports its candidate or stops early."""
    if spec.candidate is not None:
        why = (f"the candidate is an adapter trained elsewhere ({spec.candidate.uri}, {spec.candidate.digest}), "
               "imported by this cycle: nothing is harvested, verified or trained (spec.candidate)")
        return dict.fromkeys(("harvest", "verify", "dataset", "train"), why)
    if spec.stop_after is not None:
        why = (f"a dry run: the cycle stops after {spec.stop_after} (spec.stopAfter); nothing is trained or "
               "evaluated and the release is untouched")
        after = ("dataset", "train", "generate", "score", "decide")
        return dict.fromkeys(after[after.index(spec.stop_after) + 1:] if spec.stop_after in after else after, why)
    return {}


def holds_release(spec: CycleSpec) -> bool:
    """Whether the cycle competes for its release: reads the incumbent and may publish, so it waits its turn in
    the release's queue (sigma0.kube.queue). A dry run does neither: it never queues, and never holds a release
    up."""
    return spec.stop_after is None


def publish_evidence(spec: CycleSpec, state: CycleState) -> dict[str, Any]:
    """What a decision rests on besides the two result sets, logged with every publish (promotion log locally,
    the AdapterRelease's history on a cluster): the training data's digest, or where an imported candidate came
    from; and the suite and problems both adapters were evaluated on."""
    found: dict[str, Any] = {"suite": spec.eval.suite, "subset": spec.eval.subset}
    if spec.candidate is not None:
        return {"imported_from": spec.candidate.uri, "imported_digest": spec.candidate.digest, **found}
    dataset = state.steps.get("dataset")
    return {"dataset_digest": dataset.summary.get("dataset_digest") if dataset else None, **found}


def dry_run_report(spec: CycleSpec, state: CycleState) -> dict[str, Any]:
    """What a dry run found would train, from the summaries of the steps it ran: rows read and kept by source,
    drops by reason (harvest's and verify's), eval overlap, and after `dataset` the dataset's rows, size and
    digest."""
    harvest = state.steps["harvest"].summary
    verify = state.steps["verify"].summary
    dropped: dict[str, int] = {}
    for reasons in (harvest.get("dropped") or {}, verify.get("dropped") or {}):
        for reason, count in reasons.items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
    if harvest.get("duplicates"):
        dropped["duplicate"] = dropped.get("duplicate", 0) + int(harvest["duplicates"])
    by_source = {source: dict(counts) for source, counts in (harvest.get("by_source") or {}).items()}
    for source, passed in (verify.get("passed_by_source") or {}).items():
        by_source.setdefault(source, {})["verified"] = int(passed)
    report: dict[str, Any] = {
        "stoppedAfter": spec.stop_after,
        "harvested": int(harvest.get("harvested", 0)),
        "verified": int(verify.get("passed", 0)),
        "bySource": by_source,
        "dropped": dict(sorted(dropped.items())),
        "evalOverlap": {"harvested": int(harvest.get("excluded", 0))},
    }
    dataset = state.steps.get("dataset")
    if spec.stop_after == "dataset" and dataset is not None:
        s = dataset.summary
        report["evalOverlap"]["base"] = int(s.get("excluded", 0))
        report["dataset"] = {"rows": int(s.get("rows", 0)), "baseRows": int(s.get("base_rows", 0)),
                             "verifiedRows": int(s.get("verified_rows", 0)), "bytes": int(s.get("bytes", 0)),
                             "digest": str(s.get("dataset_digest", ""))}
    return report


def describe_dry_run(report: Mapping[str, Any]) -> str:
    """The report in one sentence, for the status message and the Ready condition."""
    overlap = report["evalOverlap"]
    dropped = ", ".join(f"{reason} {count}" for reason, count in report["dropped"].items()) or "none"
    text = (f"dry run, stopped after {report['stoppedAfter']}: {report['verified']} of {report['harvested']} "
            f"harvested rows passed the execution gate; dropped: {dropped}; excluded as eval overlap: "
            f"{overlap['harvested']} harvested")
    dataset = report.get("dataset")
    if dataset is not None:
        text += (f", {overlap.get('base', 0)} base; would train on {dataset['rows']} rows ({dataset['baseRows']} base "
                 f"+ {dataset['verifiedRows']} verified, {dataset['bytes']} bytes, {dataset['digest']})")
    return text + "; nothing was trained or evaluated and the release is untouched"


def _suite_arg(suite: str, layout: Layout) -> str:
    """A built-in suite by name, or a problems file relative to the manifest (locally) or artifacts (cluster)."""
    return layout.source(suite) if suite.endswith((".jsonl", ".jsonl.gz")) else suite


def _cmd(args: list[str]) -> tuple[str, ...]:
    return ("sigma0", "stage", *args)


def _num(value: float) -> str:
    """A number for a command line: `10` rather than `10.0`, `0.0002` exactly as written."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# The transition function ------------------------------------------------------------------------------------------


def next_action(spec: CycleSpec, state: CycleState, layout: Layout) -> Action:
    """What to do next, given everything observed so far. Pure and idempotent."""
    if not state.incumbent_resolved and holds_release(spec):
        return ResolveIncumbent()
    if state.published is not None:
        outcome = str(state.published.get("outcome"))
        return Finish(PHASE_SUCCEEDED, outcome, str(state.published.get("reason", "")))
    for step in steps(spec, state, layout):
        result = state.steps.get(step.name)
        if result is None:
            return RunStep(step)
        if result.state == "running":
            return AwaitStep(step)
        if result.state == "failed":
            reason = result.message or "the stage failed without a message"
            return Finish(PHASE_FAILED, None, f"{step.name} failed: {reason}")
        early = _early_finish(spec, step, result, state)
        if early is not None:
            return early
    if spec.stop_after is not None:
        report = dry_run_report(spec, state)
        return Finish(PHASE_SUCCEEDED, DRY_RUN, describe_dry_run(report), report)
    decide = state.steps["decide"]
    decision_file = layout.at("decide", "decision.json")
    return Publish(decision=decide.summary, decision_file=decision_file,
                   candidate_uri=candidate_dir(spec, layout), candidate_digest=candidate_digest_of(spec, state),
                   decision_digest=decide.outputs.get(decision_file), evidence=publish_evidence(spec, state))


def _early_finish(spec: CycleSpec, step: Step, result: StepResult, state: CycleState) -> Finish | None:
    """A cycle with nothing to train on ends Rejected after the dataset step, instead of training on nothing; one
    whose generate step measured other adapters than the one trained and the one the release names ends Failed:
    an adapter folder changed in between, and a figure about other weights proves nothing about these."""
    if step.name == "dataset" and int(result.summary.get("rows", 1)) == 0 and spec.stop_after is None:
        excluded = int(result.summary.get("excluded", 0))
        base = f"every base row ({excluded}) overlaps an eval suite" if excluded else "there is no base dataset"
        return Finish(PHASE_SUCCEEDED, "Rejected", f"no training rows: nothing passed the execution gate and "
                      f"{base}; the release is untouched")
    if step.name == "generate":
        evaluated = result.summary.get("adapters") or {}
        made_by = "the import step copied" if spec.candidate is not None else "the train step wrote"
        expected = {"candidate": (candidate_digest_of(spec, state), made_by)}
        if state.incumbent is not None:
            expected["incumbent"] = (state.incumbent.digest, "the release names")
        for label, (digest, whose) in expected.items():
            if evaluated.get(label) != digest:
                return Finish(PHASE_FAILED, None, f"generate loaded a {label} adapter with digest "
                              f"{evaluated.get(label)}, not {digest}, which {whose}: its folder changed after it "
                              "was written; the release is untouched")
    return None


def phase_of(spec: CycleSpec, state: CycleState, layout: Layout) -> str:
    """The phase a person sees (`kubectl get tc`): the phase of the step in progress, or the terminal phase."""
    action = next_action(spec, state, layout)
    if isinstance(action, Finish):
        return action.phase
    if isinstance(action, RunStep | AwaitStep):
        return action.step.phase
    if isinstance(action, Publish):
        return "Promoting"
    return PHASE_PENDING
