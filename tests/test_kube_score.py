"""kube-score, an outside linter, on everything the chart installs and every stage Job the operator builds.

What is scored, per value set of tests/test_helm.py (plus two replicas, the peering mode): the chart's objects as
`helm template` renders them (`helm test`'s hook objects included), together with the stage Jobs that the operator
this render starts would create in each of its cycle namespaces: its PodSettings parsed from the rendered
Deployment's own flags, each step of a cycle (harvest, verify, dataset, train, generate, score of candidate and
incumbent on the gate and a report suite, decide) with the artifacts on the claim and on an s3:// URI, on a GPU
placement and on the CPU. Scored together, the chart's NetworkPolicies meet the stage pods they are written for.

kube-score runs with every check of its defaults, the optional ones the objects meet (seccomp profile, container
ports), `--kubernetes-version` of the test cluster, and its `kube-score/ignore` annotations switched off: the one
list of excuses is tests/kube-score-allowlist.yaml, where each entry names a check, the objects it excuses (kind,
name pattern, labels) and the reason. Any finding below kube-score's top grade that no entry excuses fails, and so
does an entry that excuses nothing any more.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_helm import KUBE_VERSION, VALUE_SETS, one, render

from helm import tools
from sigma0 import cli, plan
from sigma0.kube import jobs
from sigma0.kube.operator import settings_from
from sigma0.spec import parse_manifest

ROOT = Path(__file__).resolve().parents[1]
ALLOWLIST = ROOT / "tests" / "kube-score-allowlist.yaml"
KUBERNETES_VERSION = ".".join(KUBE_VERSION.split(".")[:2])  # kube-score takes vMAJOR.MINOR
OPTIONAL_CHECKS = ("container-seccomp-profile", "container-ports-check")
ALL_OK = 10  # kube-score's grades: 1 critical, 5 warning, 7 almost OK, 10 OK

SCORED_VALUE_SETS: dict[str, dict[str, Any]] = {**VALUE_SETS, "peering": {"operator": {"replicas": 2}}}


# Running kube-score ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str
    kind: str
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    grade: int
    comments: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.check} on {self.kind} {self.namespace}/{self.name}: {'; '.join(self.comments)}"


def kube_score(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kube-score's JSON (v2) for the objects: one entry per object, with every check's grade."""
    command = [str(tools.kube_score()), "score", "--output-format", "json", "--kubernetes-version", KUBERNETES_VERSION,
               "--disable-ignore-checks-annotations"]
    for check in OPTIONAL_CHECKS:
        command += ["--enable-optional-test", check]
    done = subprocess.run([*command, "-"], input=yaml.safe_dump_all(documents), capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode not in (0, 1):  # 1: some check is critical; anything else: it did not score
        pytest.fail(f"kube-score exited {done.returncode}:\n{done.stderr}", pytrace=False)
    return json.loads(done.stdout)


def findings(documents: list[dict[str, Any]]) -> list[Finding]:
    """Every check kube-score did not grade OK, and did not skip, on the objects."""
    found = []
    for scored in kube_score(documents):
        meta = scored["object_meta"]
        for result in scored["checks"]:
            if result["skipped"] or result["grade"] >= ALL_OK:
                continue
            found.append(Finding(
                result["check"]["id"], scored["type_meta"]["kind"], meta.get("namespace") or "", meta["name"],
                tuple(sorted((meta.get("labels") or {}).items())), result["grade"],
                tuple(f"{c['path']}: {c['summary']}".lstrip(": ") for c in result["comments"] or [])))
    return found


# What the operator renders -----------------------------------------------------------------------------------------


def cycle_spec(**overrides: Any) -> Any:
    document = {
        "apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"name": "nightly"},
        "spec": {"release": "coder", "baseModel": {"name": "Qwen/Qwen2.5-Coder-1.5B-Instruct"},
                 "harvest": {"sources": [{"path": "corpus/tasks.jsonl"}]},
                 "dataset": {"base": "base/rows.jsonl"}, "eval": {"reportSuites": ["suites/heldout.jsonl"]},
                 **overrides},
    }
    return parse_manifest(document).spec


CYCLES: dict[str, dict[str, Any]] = {
    "claim": {},
    "s3": {"artifacts": {"uri": "s3://models-bucket/sigma0"}},
    "placed": {"placement": {"train": {"resources": {"requests": {"cpu": "4", "memory": "32Gi"},
                                                     "limits": {"memory": "64Gi", "nvidia.com/gpu": 1}},
                                       "nodeSelector": {"pool": "h100"}, "priorityClassName": "training"}}},
    "cpu": {"train": {"device": "cpu"}},
}


def operator_settings(documents: list[dict[str, Any]]) -> jobs.PodSettings:
    """The stage pods' settings of the operator the render starts: its own flags, as `sigma0 operator` parses them."""
    container = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return settings_from(cli.build_parser().parse_args(container["command"][1:] + container["args"]))


def stage_jobs(settings: jobs.PodSettings, namespace: str) -> list[dict[str, Any]]:
    """Every step's Job of each cycle in CYCLES, in `namespace`, as the operator builds it."""
    built = []
    incumbent = plan.Incumbent(digest="sha256:" + "a" * 64, uri="/artifacts/adapters/a")
    trained = plan.StepResult("succeeded", {"adapter_digest": "sha256:" + "c" * 64})
    for name, overrides in CYCLES.items():
        spec = cycle_spec(**overrides)
        ref = jobs.CycleRef(name=f"nightly-{name}", namespace=namespace, uid="0123456789abcdef", release="coder")
        state = plan.CycleState(True, incumbent, {"train": trained})
        for step in plan.steps(spec, state, jobs.layout(ref, spec, settings)):
            built.append(jobs.build_job(step, cycle=ref, spec=spec, settings=settings, attempt=1,
                                        active_deadline_seconds=3600))
    return built


def cycle_namespaces(documents: list[dict[str, Any]]) -> list[str]:
    """Where the chart prepares for cycles: the namespaces of its deny-all policy for stage pods."""
    return [d["metadata"]["namespace"] for d in documents
            if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-stage-deny-all")]


@cache
def scored_objects(name: str) -> tuple[dict[str, Any], ...]:
    """The chart's objects for the value set `name`, and the stage Jobs in each of its cycle namespaces."""
    documents = render(SCORED_VALUE_SETS[name], include_tests=True)
    settings = operator_settings(documents)
    return tuple(documents + [job for namespace in cycle_namespaces(documents)
                              for job in stage_jobs(settings, namespace)])


@cache
def all_findings() -> dict[str, tuple[Finding, ...]]:
    return {name: tuple(findings(list(scored_objects(name)))) for name in SCORED_VALUE_SETS}


# The allowlist ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Excuse:
    check: str
    kind: str
    name: str  # an fnmatch pattern
    labels: tuple[tuple[str, str], ...]
    reason: str

    def covers(self, finding: Finding) -> bool:
        return (finding.check == self.check and finding.kind == self.kind
                and fnmatch.fnmatchcase(finding.name, self.name) and set(self.labels) <= set(finding.labels))

    def __str__(self) -> str:
        return f"{self.check} on {self.kind} {self.name} {dict(self.labels) or ''}".rstrip()


def allowlist() -> list[Excuse]:
    entries = yaml.safe_load(ALLOWLIST.read_text()) or []
    return [Excuse(e["check"], e["kind"], e.get("name", "*"), tuple(sorted((e.get("labels") or {}).items())),
                   e["reason"]) for e in entries]


def unexcused(found: tuple[Finding, ...] | list[Finding], excuses: list[Excuse]) -> list[Finding]:
    return [f for f in found if not any(excuse.covers(f) for excuse in excuses)]


# The checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCORED_VALUE_SETS)
def test_kube_score_finds_nothing_that_the_allowlist_does_not_excuse(name: str) -> None:
    left = unexcused(all_findings()[name], allowlist())
    assert not left, f"kube-score on the chart ({name}) and its stage Jobs; fix these, or excuse them with a " \
        f"reason in {ALLOWLIST.name}:\n" + "\n".join(map(str, left))


def test_every_allowlist_entry_still_excuses_a_finding() -> None:
    found = [f for per_set in all_findings().values() for f in per_set]
    stale = [excuse for excuse in allowlist() if not any(excuse.covers(f) for f in found)]
    assert not stale, "no finding left for these entries: remove them\n" + "\n".join(map(str, stale))


def test_every_allowlist_entry_names_a_kube_score_check_of_its_kind_and_says_why() -> None:
    listed = subprocess.run([str(tools.kube_score()), "list"], capture_output=True, text=True, timeout=60,
                            check=True).stdout
    targets = {line.split(",")[0]: line.split(",")[1] for line in listed.splitlines() if line.strip()}
    entries = yaml.safe_load(ALLOWLIST.read_text()) or []
    for entry in entries:
        assert set(entry) <= {"check", "kind", "name", "labels", "reason"}, entry
        assert entry["check"] in targets, f"kube-score has no check {entry['check']}"
        assert targets[entry["check"]] in (entry["kind"], "Pod", "all"), entry  # Pod checks apply to pod templates
        assert len(entry["reason"].split()) >= 12, f"say why {entry['check']} is kept: {entry['reason']!r}"
    keys = [(e["check"], e["kind"], e.get("name", "*"), json.dumps(e.get("labels"), sort_keys=True)) for e in entries]
    assert len(keys) == len(set(keys)), "two entries excuse the same thing"


def test_kube_score_saw_every_workload_and_policy_it_was_given() -> None:
    """An object kube-score failed to read would be a finding nobody sees."""
    kinds = {"Deployment", "Job", "CronJob", "NetworkPolicy", "Service", "PodDisruptionBudget", "Ingress"}
    for name in ("default", "everything", "peering"):
        given = {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in scored_objects(name)
                 if d["kind"] in kinds}
        scored = {(o["type_meta"]["kind"], o["object_meta"]["namespace"], o["object_meta"]["name"])
                  for o in kube_score(list(scored_objects(name)))}
        assert given <= scored, given - scored
        assert {kind for kind, _, _ in given} >= {"Deployment", "Job", "NetworkPolicy", "Service"}
        assert len([g for g in given if g[0] == "Job"]) > 4 * len(CYCLES)  # every step of every cycle


def _broken(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default render as it was before kube-score: one probe for both, no ephemeral-storage, ingress-only
    policies, and a GPU pod without its policy (no kind label)."""
    broken = copy.deepcopy(documents)
    container = one(broken, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"] = copy.deepcopy(container["readinessProbe"])
    for part in ("requests", "limits"):
        del container["resources"][part]["ephemeral-storage"]
    for policy in broken:
        if policy["kind"] == "NetworkPolicy" and policy["metadata"]["name"] == "sigma0-operator":
            policy["spec"]["policyTypes"] = ["Ingress"]
            del policy["spec"]["egress"]
    train = next(d for d in broken if d["kind"] == "Job" and d["metadata"]["labels"].get(jobs.LABEL_STEP) == "train")
    del train["spec"]["template"]["metadata"]["labels"][jobs.LABEL_KIND]
    return broken


def test_the_check_catches_what_was_fixed() -> None:
    """The attack: undo each fix in the rendered objects; each comes back as a finding that nothing excuses."""
    left = unexcused(findings(_broken(list(scored_objects("default")))), allowlist())
    caught = {(f.check, f.kind, f.name) for f in left}
    assert ("pod-probes-identical", "Deployment", "sigma0-operator") in caught
    assert ("container-ephemeral-storage-request-and-limit", "Deployment", "sigma0-operator") in caught
    assert ("pod-networkpolicy", "Deployment", "sigma0-operator") in caught
    assert any(check == "pod-networkpolicy" and name.endswith("-train-1") for check, _, name in caught), caught
    assert ("deployment-strategy", "Deployment", "sigma0-operator") not in caught  # excused, with its reason


def test_the_operator_probes_ask_different_things_of_what_it_serves() -> None:
    """Liveness asks the metrics server's port (the process is alive; TCP, since the metrics may want a token),
    readiness kopf's /healthz (it reconciles): what `sigma0 operator` serves, on the ports the chart passes it."""
    for name in ("default", "peering"):
        deployment = one(list(scored_objects(name)), "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        args = cli.build_parser().parse_args(container["command"][1:] + container["args"])
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert set(live) - {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"} == {
            "tcpSocket"} and ports[live["tcpSocket"]["port"]] == args.metrics_port
        assert (ready["httpGet"]["path"], ports[ready["httpGet"]["port"]]) == ("/healthz", args.liveness_port)


def test_two_peered_replicas_need_no_excuse() -> None:
    """The allowlist's reasons for Recreate and one replica say that two replicas fix both: kube-score agrees."""
    assert not [f for f in all_findings()["peering"] if f.kind == "Deployment"]


KUBELET_LOGS = 50 * 2**20  # the kubelet keeps 5 log files of 10Mi per container by default


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def _pod_templates(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec") or {}
    if document["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return [spec["template"]] if "template" in spec else []


def test_every_pods_disk_limit_covers_its_emptydirs_and_its_log() -> None:
    """ephemeral-storage limits that a pod reaches by doing what it is meant to would get it evicted: each pod's
    limit holds its on-disk emptyDirs at their sizeLimit plus a full rotation of its log."""
    for name in SCORED_VALUE_SETS:
        for document in scored_objects(name):
            for template in _pod_templates(document):
                pod = template["spec"]
                on_disk = [v["emptyDir"] for v in pod.get("volumes") or [] if "emptyDir" in v
                           and v["emptyDir"].get("medium") != "Memory"]
                assert all("sizeLimit" in v for v in on_disk), document["metadata"]["name"]
                limit = sum(_bytes(c["resources"]["limits"]["ephemeral-storage"]) for c in pod["containers"])
                assert limit >= sum(_bytes(v["sizeLimit"]) for v in on_disk) + KUBELET_LOGS * len(pod["containers"]), \
                    f"{document['kind']} {document['metadata']['name']} ({name})"


FAKE_GO = """#!/bin/sh
# install: "build" the binary into $GOBIN; version -m: report the module version in $FAKE_GO_VERSION
if [ "$1" = install ]; then printf '#!/bin/sh\\necho built\\n' > "$GOBIN/kube-score"; chmod +x "$GOBIN/kube-score"; fi
record='%s: go1.26\\n\\tmod\\tgithub.com/zegl/kube-score\\t%s\\th1:x=\\n'
if [ "$1" = version ]; then printf "$record" "$3" "$FAKE_GO_VERSION"; fi
"""


def test_a_go_tool_is_cached_only_when_it_was_built_from_the_pinned_version(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "go"
    fake.write_text(FAKE_GO)
    fake.chmod(0o755)
    monkeypatch.setenv("GO", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, _, version = tools.GO_TOOLS["kube-score"]
    folder = tmp_path / "cache" / "sigma0" / "kube-score" / version
    monkeypatch.setenv("FAKE_GO_VERSION", "v0.0.1")
    with pytest.raises(RuntimeError, match="not " + version):
        tools.go_tool("kube-score")
    assert not folder.exists()  # nothing cached: the next call builds again
    monkeypatch.setenv("FAKE_GO_VERSION", version)
    built = tools.go_tool("kube-score")
    assert built == folder / "kube-score" and (folder / ".complete").exists()
    fake.write_text("#!/bin/sh\nexit 1\n")  # warm: go is not run again
    assert tools.go_tool("kube-score") == built
