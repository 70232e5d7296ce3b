"""The release rules, held against both stores through the one `Releases` interface.

Every test here runs twice: on the local store (LocalReleases, a folder) and on the AdapterRelease store
(ClusterReleases, against an in-memory API server that keeps resourceVersions, answers 404 / 409 and holds every
write to the AdapterRelease schema). Whatever one store refuses, the other must refuse; whatever one chooses, the
other must choose. The API side against a real API server is tests/cluster/test_operator.py."""

from __future__ import annotations

import copy
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from sigma0 import release_rules as rules
from sigma0.gate import Decision, Outcome, Policy, decide
from sigma0.io import tree_digest
from sigma0.kube.releases import ClusterReleases
from sigma0.local_release import LocalReleases
from sigma0.plan import Incumbent
from sigma0.release_rules import InvalidRelease, ReleaseError, Releases
from sigma0.spec import _strict, openapi_schema

NAME = "coder"
NOW = "2026-01-01T00:00:00Z"
SPEC_SCHEMA = jsonschema.Draft4Validator(_strict(openapi_schema("AdapterRelease")["properties"]["spec"]))
INPUTS = {"candidate": {"path": "c.jsonl", "digest": "sha256:" + "e" * 64}, "incumbent": None}


def as_file(decision: Decision) -> dict[str, Any]:
    """A decision as the decide step writes decision.json."""
    return {**decision.to_dict(), "inputs": INPUTS}


BOOTSTRAP = as_file(decide({"a": True, "b": False}, None, Policy()))
PROMOTE = as_file(decide({"a": True, "b": True}, {"a": True, "b": False}, Policy()))
REJECT = as_file(decide({"a": True, "b": False}, {"a": True, "b": False}, Policy()))


class FakeAdapterReleases:
    """The custom-objects calls ClusterReleases makes, answered as the API server would: 404 for a missing
    object, 409 for a stale resourceVersion or an existing name, the schema's defaults applied and every write
    held to the AdapterRelease schema (a write it refuses is a test failure: the rules must not produce one)."""

    def __init__(self, history_limit: int = rules.DEFAULT_HISTORY_LIMIT) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.history_limit = history_limit
        self.writes = 0

    def _admit(self, body: dict[str, Any], old: dict[str, Any] | None) -> None:
        body = copy.deepcopy(body)
        body["spec"].setdefault("historyLimit", self.history_limit)
        errors = [error.message for error in SPEC_SCHEMA.iter_errors(body["spec"])]
        assert not errors, errors
        if old is not None:
            assert body["spec"]["revision"] >= old["spec"]["revision"], "revision never decreases"
        self.version += 1
        self.writes += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[body["metadata"]["name"]] = body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[name])

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):
        if body["metadata"]["name"] in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self._admit(body, None)

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kwargs):
        old = self.objects.get(name)
        if old is None:
            raise ApiException(status=404, reason="Not Found")
        if body["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._admit(body, old)


class Store:
    """One store under test, with what a test needs to look behind the interface."""

    def __init__(self, kind: str, tmp_path: Path, history_limit: int = rules.DEFAULT_HISTORY_LIMIT) -> None:
        self.kind = kind
        if kind == "local":
            self.local = LocalReleases(tmp_path / "releases", history_limit=history_limit)
            self.releases: Releases = self.local
        else:
            self.api = FakeAdapterReleases(history_limit)
            self.releases = ClusterReleases(self.api, "team", clock=lambda: NOW)

    def writes(self) -> int:
        """How many times the release was written (the local log's promotions and rollbacks)."""
        if self.kind == "local":
            rows = self.local.store.promotions(NAME)
            return sum(row["outcome"] in ("Bootstrapped", "Promoted", "RolledBack") for row in rows)
        return self.api.writes


@pytest.fixture(params=["local", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return Store(request.param, tmp_path)


@pytest.fixture
def adapters(tmp_path: Path) -> list[tuple[str, str]]:
    """Adapter folders (uri, digest): the local store copies them, the cluster store points at them."""
    made = []
    for index in range(5):
        folder = tmp_path / f"adapter-{index}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"seed": index}))
        (folder / "adapter_model.safetensors").write_bytes(bytes([index]) * 100)
        made.append((str(folder), tree_digest(folder)))
    return made


def publish(releases: Releases, adapter: tuple[str, str], decision: dict[str, Any], incumbent: Incumbent | None,
            cycle: str) -> dict[str, Any]:
    uri, digest = adapter
    return releases.publish(NAME, cycle=cycle, decision=decision, candidate_uri=uri, candidate_digest=digest,
                            incumbent=incumbent, evidence={"suite": "humaneval"})


def chain(releases: Releases, adapters: list[tuple[str, str]], count: int) -> list[dict[str, Any]]:
    """Bootstrap adapters[0], then promote each next one over the current incumbent."""
    results = [publish(releases, adapters[0], BOOTSTRAP, None, "c0")]
    for index in range(1, count):
        results.append(publish(releases, adapters[index], PROMOTE, releases.incumbent(NAME), f"c{index}"))
    return results


def seen(releases: Releases) -> tuple[Any, ...]:
    """The release as the interface shows it, in terms both stores share."""
    current = releases.current(NAME)
    return (
        None if current is None else (current.digest, current.cycle, current.revision, current.pass_at_1),
        [(old.digest, old.revision, old.rolled_back) for old in releases.history(NAME)],
    )


# One interface --------------------------------------------------------------------------------------------------

METHODS = ("current", "history", "incumbent", "publish", "rollback")


def test_both_stores_implement_the_protocol(store: Store) -> None:
    assert isinstance(store.releases, Releases)


@pytest.mark.parametrize("method", METHODS)
def test_both_stores_take_the_protocols_parameters(method: str) -> None:
    """Same names, kinds, defaults and (resolved) types as the protocol; return types may only narrow."""

    def parameters(function: Any) -> list[tuple[str, Any, Any, Any]]:
        hints = typing.get_type_hints(function)
        return [(p.name, p.kind, p.default, hints.get(p.name)) for p in inspect.signature(function).parameters.values()]

    expected = parameters(getattr(Releases, method))
    assert parameters(getattr(LocalReleases, method)) == expected
    assert parameters(getattr(ClusterReleases, method)) == expected


# Refused alike ------------------------------------------------------------------------------------------------------

BAD_DIGESTS = [
    "sha256:short",
    "sha256:" + "A" * 64,  # upper-case hex: the schema's pattern is lower-case
    "SHA256:" + "a" * 64,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 63 + "g",
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 64 + "\n",  # Python's `$` matches before a final newline; the API server's does not
    " sha256:" + "a" * 64,
    "",
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
@pytest.mark.parametrize("decision", [BOOTSTRAP, REJECT], ids=["bootstrap", "reject"])
def test_a_malformed_candidate_digest_is_refused_by_both_and_nothing_changes(store, adapters, digest, decision):
    incumbent = None if decision is BOOTSTRAP else Incumbent(adapters[1][1], adapters[1][0])
    with pytest.raises(InvalidRelease, match="candidate digest must look like"):
        publish(store.releases, (adapters[0][0], digest), decision, incumbent, "c1")
    assert seen(store.releases) == (None, []) and store.writes() == 0


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_a_malformed_incumbent_digest_is_refused_by_both(store, adapters, digest):
    chain(store.releases, adapters, 1)
    before = seen(store.releases)
    incumbent = Incumbent(digest, "/somewhere")
    with pytest.raises(InvalidRelease, match="incumbent digest must look like"):
        publish(store.releases, adapters[1], PROMOTE, incumbent, "c1")
    assert seen(store.releases) == before and store.writes() == 1


@pytest.mark.parametrize(
    ("decision", "incumbent", "uri", "message"),
    [
        (BOOTSTRAP, True, "folder", "without an incumbent"),
        (PROMOTE, False, "folder", "needs the digest of the incumbent"),
        (PROMOTE, True, "", "needs the candidate adapter folder"),
        ({**PROMOTE, "outcome": "Stale"}, True, "folder", "cannot be Stale"),
        ({**PROMOTE, "outcome": "Promoted!"}, True, "folder", "not a gate decision"),
        ({"reason": "no outcome at all"}, True, "folder", "not a gate decision"),
    ],
    ids=["bootstrap-with-incumbent", "promote-without", "no-folder", "stale", "bad-outcome", "no-outcome"],
)
def test_a_publish_that_contradicts_its_decision_is_refused_by_both(store, adapters, decision, incumbent, uri,
                                                                     message):
    evaluated = Incumbent(adapters[4][1], adapters[4][0]) if incumbent else None
    with pytest.raises(InvalidRelease, match=message) as raised:
        publish(store.releases, (adapters[0][0] if uri else uri, adapters[0][1]), decision, evaluated, "c1")
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, ReleaseError)
    assert seen(store.releases) == (None, []) and store.writes() == 0


@pytest.mark.parametrize("name", ["", "Coder", "coder\n", "../escape", "a/b", "-x", "x-", "a" * 254, "co der"])
@pytest.mark.parametrize("method", ["current", "history", "incumbent", "rollback"])
def test_a_name_that_is_no_kubernetes_name_is_refused_by_both(store, name, method):
    with pytest.raises(InvalidRelease, match="invalid release name"):
        getattr(store.releases, method)(name)


def test_history_limits_outside_the_schemas_range_are_refused(tmp_path):
    for limit in (0, -1, rules.MAX_HISTORY_LIMIT + 1, True):
        with pytest.raises(InvalidRelease, match="history_limit"):
            LocalReleases(tmp_path, history_limit=limit)
        with pytest.raises(InvalidRelease, match="history_limit"):
            rules.check_history_limit(limit)
    assert rules.check_history_limit(rules.MAX_HISTORY_LIMIT) == 50


def test_the_rules_and_the_adapterrelease_schema_say_the_same() -> None:
    """The schema (crds/) holds the API server to the same digest format and history bounds as the rules."""
    spec = openapi_schema("AdapterRelease")["properties"]["spec"]["properties"]
    for pointer in (spec["current"], spec["history"]["items"]):
        assert pointer["properties"]["digest"]["pattern"] == f"^{rules.DIGEST.pattern}$"
    limit = spec["historyLimit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (
        1, rules.MAX_HISTORY_LIMIT, rules.DEFAULT_HISTORY_LIMIT)
    assert spec["history"]["maxItems"] == rules.MAX_HISTORY_LIMIT


# The stale check, alike ---------------------------------------------------------------------------------------------


def test_a_promotion_against_an_incumbent_that_moved_is_stale_in_both(store, adapters):
    chain(store.releases, adapters, 1)
    evaluated = store.releases.incumbent(NAME)
    publish(store.releases, adapters[1], PROMOTE, evaluated, "c1")
    before = seen(store.releases)
    late = publish(store.releases, adapters[2], PROMOTE, evaluated, "late")
    assert late["outcome"] == "Stale" and late["revision"] == 2
    assert late["reason"] == rules.stale_reason(adapters[0][1], adapters[1][1])
    assert late["uri"] == store.releases.current(NAME).uri
    assert seen(store.releases) == before and store.writes() == 2


def test_a_second_bootstrap_is_stale_in_both(store, adapters):
    chain(store.releases, adapters, 1)
    second = publish(store.releases, adapters[1], BOOTSTRAP, None, "other")
    assert (second["outcome"], second["revision"]) == ("Stale", 1)
    assert store.releases.current(NAME).digest == adapters[0][1]


def test_an_incumbent_rolled_back_from_makes_a_promotion_stale_in_both(store, adapters):
    chain(store.releases, adapters, 3)
    evaluated = store.releases.incumbent(NAME)
    store.releases.rollback(NAME, reason="regressed")
    late = publish(store.releases, adapters[3], PROMOTE, evaluated, "late")
    assert late["outcome"] == "Stale" and store.releases.current(NAME).digest == adapters[1][1]


def test_a_rejection_writes_nothing_in_either(store, adapters):
    chain(store.releases, adapters, 1)
    before = seen(store.releases)
    rejected = publish(store.releases, adapters[1], REJECT, store.releases.incumbent(NAME), "c1")
    assert (rejected["outcome"], rejected["reason"], rejected["revision"]) == ("Rejected", REJECT["reason"], 1)
    assert seen(store.releases) == before and store.writes() == 1


def test_publishing_again_after_a_kill_is_recognised_by_both_not_called_stale(store, adapters):
    first = publish(store.releases, adapters[0], BOOTSTRAP, None, "c0")
    promoted = publish(store.releases, adapters[1], PROMOTE, store.releases.incumbent(NAME), "c1")
    before = seen(store.releases)
    # the executor was killed after the write, before it recorded the result: it publishes again
    again = publish(store.releases, adapters[1], PROMOTE, Incumbent(adapters[0][1], first["uri"]), "c1")
    assert again == promoted
    assert seen(store.releases) == before and store.writes() == 2
    # another cycle that trained the very same adapter is not this publish: it is Stale
    other = publish(store.releases, adapters[1], PROMOTE, Incumbent(adapters[0][1], first["uri"]), "c2")
    assert other["outcome"] == "Stale"


def test_the_local_log_gets_a_row_a_kill_cost_it_and_never_a_second_one(tmp_path, adapters):
    local = LocalReleases(tmp_path / "releases")
    publish(local, adapters[0], BOOTSTRAP, None, "c0")
    log = tmp_path / "releases" / NAME / "promotions.jsonl"
    log.write_text("")  # killed between the pointer swap and the log append
    for _ in range(2):
        assert publish(local, adapters[0], BOOTSTRAP, None, "c0")["outcome"] == "Bootstrapped"
    assert [(row["outcome"], row["cycle"], row["revision"]) for row in local.store.promotions(NAME)] == [
        ("Bootstrapped", "c0", 1)]


# Rollback and history, alike ----------------------------------------------------------------------------------------


def test_rollback_picks_the_same_entry_in_both(tmp_path, adapters):
    def walk(store: Store) -> list[Any]:
        releases, steps = store.releases, []
        chain(releases, adapters, 3)  # a, b, c
        steps.append(releases.rollback(NAME, reason="c regressed").digest)  # b; c marked rolled back
        publish(releases, adapters[3], PROMOTE, releases.incumbent(NAME), "c3")  # d over b
        steps.append(seen(releases))
        for _ in range(2):  # b (never c), then a
            back = releases.rollback(NAME)
            steps.append((back.digest, back.revision, back.rolled_back, seen(releases)))
        with pytest.raises(ReleaseError, match="no earlier adapter to roll back to") as raised:
            releases.rollback(NAME)
        steps.append(str(raised.value).split(" has ", 1)[1])
        return steps

    local, cluster = walk(Store("local", tmp_path / "l")), walk(Store("cluster", tmp_path / "c"))
    assert local == cluster
    a, b, c, d = (digest for _, digest in adapters[:4])
    assert [step[0] for step in local[2:4]] == [b, a]
    assert local[3][3][1] == [(b, 6, True), (d, 5, True), (c, 3, True)]


def test_rollback_needs_an_earlier_adapter_in_both(store, adapters):
    with pytest.raises(ReleaseError, match="does not exist"):
        store.releases.rollback(NAME)
    chain(store.releases, adapters, 1)
    with pytest.raises(ReleaseError, match=r"no earlier adapter to roll back to \(it has had only one\)"):
        store.releases.rollback(NAME)
    assert store.writes() == 1


@pytest.mark.parametrize("limit", [1, 2])
def test_history_is_bounded_alike(tmp_path, adapters, limit):
    shown = []
    for kind in ("local", "cluster"):
        store = Store(kind, tmp_path / kind, history_limit=limit)
        chain(store.releases, adapters, 5)
        store.releases.rollback(NAME)
        shown.append(seen(store.releases))
    assert shown[0] == shown[1]
    assert len(shown[0][1]) == limit and shown[0][0][2] == 6


def test_both_stores_report_revisions_and_incumbents_alike(tmp_path, adapters):
    reports = []
    for kind in ("local", "cluster"):
        store = Store(kind, tmp_path / kind)
        results = chain(store.releases, adapters, 3)
        incumbent = store.releases.incumbent(NAME)
        assert incumbent is not None and incumbent.uri == store.releases.current(NAME).uri
        reports.append(([(r["outcome"], r["reason"], r["revision"]) for r in results],
                        (incumbent.digest, incumbent.pass_at_1, incumbent.revision)))
    assert reports[0] == reports[1]
    assert [revision for _, _, revision in reports[0][0]] == [1, 2, 3]


# The pure rules ---------------------------------------------------------------------------------------------------


def test_choose_rollback_leaves_its_inputs_alone_and_skips_every_pointer_rolled_back_from(tmp_path):
    from sigma0.release import ReleasePointer

    def pointer(digit: str, revision: int, rolled_back: bool = False) -> ReleasePointer:
        return ReleasePointer("/" + digit, "sha256:" + digit * 64, 0.5, "c" + digit, NOW, revision, rolled_back)

    current = pointer("e", 5)
    history = [pointer("d", 4, True), pointer("c", 3, True), pointer("b", 2), pointer("a", 1)]
    kept = copy.deepcopy(history)
    choice = rules.choose_rollback("release 'coder'", current, history, 5, 10)
    assert history == kept and current == pointer("e", 5)
    assert (choice.target, choice.revision) == (pointer("b", 2), 6)
    assert choice.history == [pointer("e", 5, True), pointer("d", 4, True), pointer("c", 3, True), pointer("a", 1)]
    with pytest.raises(ReleaseError, match="has no current adapter"):
        rules.choose_rollback("release 'coder'", None, history, 0, 10)


def test_judge_publish_writes_only_a_promotion_over_the_current_incumbent() -> None:
    from sigma0.release import ReleasePointer

    current = ReleasePointer("/a", "sha256:" + "a" * 64, 0.5, "c1", NOW, 3)
    b = "sha256:" + "b" * 64

    def judge(outcome: Outcome, evaluated: str | None, cycle: str = "c2", digest: str = b) -> tuple[Any, ...]:
        verdict = rules.judge_publish(outcome, "why", current=current, revision=3, cycle=cycle,
                                      candidate_digest=digest, evaluated_digest=evaluated)
        return verdict.outcome, verdict.revision, verdict.write

    assert judge(Outcome.PROMOTED, current.digest) == (Outcome.PROMOTED, 4, True)
    assert judge(Outcome.PROMOTED, b) == (Outcome.STALE, 3, False)
    assert judge(Outcome.BOOTSTRAPPED, None) == (Outcome.STALE, 3, False)
    assert judge(Outcome.REJECTED, b) == (Outcome.REJECTED, 3, False)
    assert judge(Outcome.PROMOTED, b, cycle="c1", digest=current.digest) == (Outcome.PROMOTED, 3, False)
    empty = rules.judge_publish(Outcome.BOOTSTRAPPED, "why", current=None, revision=0, cycle="c1",
                                candidate_digest=b, evaluated_digest=None)
    assert (empty.outcome, empty.revision, empty.write) == (Outcome.BOOTSTRAPPED, 1, True)


# `sigma0 release`, one command for both ---------------------------------------------------------------------------


def test_sigma0_release_shows_and_rolls_back_both_stores_alike(tmp_path, adapters, monkeypatch, capsys):
    from sigma0 import cli

    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps at the terminal's width
    api = FakeAdapterReleases()
    monkeypatch.setattr(cli, "_custom_api", lambda kubeconfig: api)
    chain(LocalReleases(tmp_path / "work" / "releases"), adapters, 3)
    chain(ClusterReleases(api, "team", clock=lambda: NOW), adapters, 3)

    def run(where: list[str], *argv: str) -> tuple[int, list[list[str]]]:
        code = cli.main(["release", *argv, *where])
        lines = capsys.readouterr().out.splitlines()
        # rev, digest, pass@1 and cycle; the uri (a copy locally) and the time stamp are each store's own
        return code, [line.split()[:7] if line.startswith("rev ") else line.split() for line in lines]

    seen_by = {}
    for kind, where in (("local", ["--workdir", str(tmp_path / "work")]),
                        ("cluster", ["--cluster", "--namespace", "team"])):
        label = "release" if kind == "local" else "AdapterRelease"
        history = run(where, "history", NAME)
        rolled = run(where, "rollback", NAME, "--reason", "regressed")
        shown = run(where, "show", NAME)
        missing = run(where, "show", "other")
        refused = run(where, "rollback", "Bad/Name")
        assert rolled[1][0][0] == missing[1][0][0] == label
        seen_by[kind] = (history, (rolled[0], rolled[1][0][-5:]), shown, (missing[0], missing[1][0][-4:]),
                         (refused[0], refused[1][0][:3]))
    assert seen_by["local"] == seen_by["cluster"]
    history, rolled, shown, missing, refused = seen_by["local"]
    a, b, c = (digest for _, digest in adapters[:3])
    assert history == (0, [["rev", "3", c, "pass@1", "1.000", "cycle", "c2"],
                           ["rev", "2", b, "pass@1", "1.000", "cycle", "c1"],
                           ["rev", "1", a, "pass@1", "0.500", "cycle", "c0"]])
    assert rolled == (0, ["points", "at", b, "(revision", "4)"]) and shown[1][0][:3] == ["rev", "4", b]
    assert missing == (0, ["has", "no", "adapter", "yet"])
    assert refused == (2, ["invalid", "release", "name"])

    # -o json|yaml: the same fields from either store, kubectl style (show: the pointer or null; history: a list).
    printed = {}
    for kind, where in (("local", ["--workdir", str(tmp_path / "work")]),
                        ("cluster", ["--cluster", "--namespace", "team"])):
        outputs = []
        for argv in (["history", NAME, "-o", "json"], ["show", NAME, "-o", "yaml"], ["show", "other", "-o", "json"]):
            assert cli.main(["release", *argv, *where]) == 0
            outputs.append(yaml.safe_load(capsys.readouterr().out))  # JSON is YAML too
        history_rows, shown_row, nothing = outputs
        assert nothing is None and shown_row == history_rows[0]
        printed[kind] = [{key: row[key] for key in ("revision", "digest", "passAt1", "cycle", "rolledBack")}
                         for row in history_rows]
    assert printed["local"] == printed["cluster"]
    assert [(row["revision"], row["digest"], row["rolledBack"]) for row in printed["local"]] == [
        (4, b, False), (3, c, True), (1, a, False)]
