"""The local release store: publish, staleness, failure in the middle, concurrent publishes, rollback."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import pytest

from sigma0 import release
from sigma0.gate import Decision, Outcome, Policy, decide
from sigma0.io import tree_digest
from sigma0.release import LocalReleaseStore, ReleaseError, ReleasePointer

NAME = "coder"
BOOTSTRAP = decide({"a": True, "b": False}, None, Policy())
PROMOTE = decide({"a": True, "b": True}, {"a": True, "b": False}, Policy())
REJECT = decide({"a": True, "b": False}, {"a": True, "b": False}, Policy())
EVIDENCE = {"dataset": "sha256:" + "d" * 64, "candidate_results": "sha256:" + "e" * 64}


def make_adapter(folder: Path, seed: str) -> tuple[Path, str]:
    """A small adapter folder (config, weights, a nested file) and its tree digest."""
    (folder / "nested").mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "seed": seed}))
    (folder / "adapter_model.safetensors").write_bytes(seed.encode() * 1000)
    (folder / "nested" / "notes.txt").write_text(seed)
    return folder, tree_digest(folder)


@pytest.fixture
def store(tmp_path: Path) -> LocalReleaseStore:
    return LocalReleaseStore(tmp_path / "releases")


@pytest.fixture
def adapters(tmp_path: Path) -> list[tuple[Path, str]]:
    return [make_adapter(tmp_path / f"adapter-{i}", f"seed-{i}") for i in range(4)]


def publish(store, adapter, decision, incumbent, cycle="c1"):
    folder, digest = adapter
    return store.publish(
        NAME,
        decision=decision,
        candidate_adapter_dir=folder,
        candidate_digest=digest,
        evaluated_incumbent_digest=incumbent,
        cycle=cycle,
        evidence=EVIDENCE,
    )


def promoted_chain(store, adapters, count):
    """Bootstrap adapters[0], then promote each next one over the previous; returns the pointers."""
    pointers = [publish(store, adapters[0], BOOTSTRAP, None, cycle="c0").pointer]
    for i in range(1, count):
        pointers.append(publish(store, adapters[i], PROMOTE, adapters[i - 1][1], cycle=f"c{i}").pointer)
    return pointers


def assert_loadable(pointer: ReleasePointer) -> None:
    assert Path(pointer.uri).is_dir()
    assert tree_digest(pointer.uri) == pointer.digest


def test_an_empty_store_has_no_release(store):
    assert store.current(NAME) is None
    assert store.history(NAME) == []
    assert store.promotions(NAME) == []


def test_bootstrap_copies_the_adapter_read_only_and_points_at_it(store, adapters, tmp_path):
    result = publish(store, adapters[0], BOOTSTRAP, None)
    assert (result.outcome, result.revision) == (Outcome.BOOTSTRAPPED, 1)
    pointer = store.current(NAME)
    assert pointer == result.pointer
    digest = adapters[0][1]
    assert pointer.uri == str(tmp_path / "releases" / NAME / "adapters" / digest.removeprefix("sha256:"))
    assert (pointer.digest, pointer.pass_at_1, pointer.cycle, pointer.revision) == (digest, 0.5, "c1", 1)
    assert_loadable(pointer)
    for path in [Path(pointer.uri), *Path(pointer.uri).rglob("*")]:
        assert path.stat().st_mode & 0o222 == 0, f"{path} is writable"
    shutil.rmtree(adapters[0][0])  # the release does not depend on the source folder
    assert_loadable(store.current(NAME))
    [row] = store.promotions(NAME)
    assert (row["outcome"], row["revision"], row["cycle"]) == ("Bootstrapped", 1, "c1")
    assert row["evidence"] == EVIDENCE
    assert row["candidate_digest"] == digest and row["incumbent_digest"] is None
    assert Decision.from_dict(row["decision"]) == BOOTSTRAP


def test_promotion_moves_the_pointer_and_keeps_the_previous_one(store, adapters):
    first, second = promoted_chain(store, adapters, 2)
    assert (second.revision, second.digest, second.pass_at_1) == (2, adapters[1][1], 1.0)
    assert store.current(NAME) == second
    assert store.history(NAME) == [first]
    assert_loadable(first)
    state = json.loads((Path(store.root) / NAME / "current.json").read_text())
    assert state["release"] == NAME and state["revision"] == 2
    assert [old["digest"] for old in state["history"]] == [adapters[0][1]]
    assert [row["outcome"] for row in store.promotions(NAME)] == ["Bootstrapped", "Promoted"]


def test_a_rejection_is_logged_and_changes_nothing(store, adapters):
    [first] = promoted_chain(store, adapters, 1)
    result = publish(store, adapters[1], REJECT, first.digest, cycle="c9")
    assert (result.outcome, result.revision, result.pointer) == (Outcome.REJECTED, 1, first)
    assert store.current(NAME) == first
    assert not (Path(store.root) / NAME / "adapters" / adapters[1][1].removeprefix("sha256:")).exists()
    row = store.promotions(NAME)[-1]
    assert (row["outcome"], row["cycle"], row["revision"]) == ("Rejected", "c9", 1)
    assert row["decision"]["reason"] == REJECT.reason


def test_a_rejection_needs_no_adapter_folder(store, adapters):
    result = store.publish(
        NAME,
        decision=REJECT,
        candidate_adapter_dir=None,
        candidate_digest=adapters[1][1],
        evaluated_incumbent_digest=adapters[0][1],
        cycle="c1",
        evidence={},
    )
    assert (result.outcome, result.revision, result.pointer) == (Outcome.REJECTED, 0, None)


def test_promotion_against_an_outdated_incumbent_is_stale(store, adapters):
    first, second = promoted_chain(store, adapters, 2)
    result = publish(store, adapters[2], PROMOTE, first.digest, cycle="late")
    assert (result.outcome, result.revision, result.pointer) == (Outcome.STALE, 2, second)
    assert store.current(NAME) == second
    row = store.promotions(NAME)[-1]
    assert (row["outcome"], row["current_digest"], row["incumbent_digest"]) == (
        "Stale",
        second.digest,
        first.digest,
    )
    assert "evaluate against the current one" in row["reason"]


def test_a_second_bootstrap_is_stale(store, adapters):
    [first] = promoted_chain(store, adapters, 1)
    result = publish(store, adapters[1], BOOTSTRAP, None)
    assert (result.outcome, result.pointer) == (Outcome.STALE, first)


def test_refuses_an_adapter_that_is_not_the_evaluated_one(store, adapters):
    [first] = promoted_chain(store, adapters, 1)
    folder, _ = adapters[1]
    with pytest.raises(ReleaseError, match="only the adapter that was evaluated"):
        publish(store, (folder, adapters[2][1]), PROMOTE, first.digest, cycle="bad")
    assert store.current(NAME) == first
    assert sorted(p.name for p in (Path(store.root) / NAME / "adapters").iterdir()) == [
        first.digest.removeprefix("sha256:")
    ]
    row = store.promotions(NAME)[-1]
    assert (row["outcome"], row["cycle"], row["revision"]) == ("Failed", "bad", 1)
    assert "ReleaseError" in row["error"]


def test_refuses_a_missing_adapter_folder(store, tmp_path, adapters):
    with pytest.raises(ReleaseError, match="does not exist"):
        publish(store, (tmp_path / "nowhere", adapters[0][1]), BOOTSTRAP, None)
    assert store.current(NAME) is None


@pytest.mark.parametrize(
    ("decision", "incumbent", "adapter_dir", "message"),
    [
        (BOOTSTRAP, "sha256:" + "a" * 64, "x", "without an incumbent"),
        (PROMOTE, None, "x", "needs the digest of the incumbent"),
        (PROMOTE, "sha256:abc", "x", "incumbent digest must look like"),
        (PROMOTE, "sha256:" + "a" * 64, None, "needs the candidate adapter folder"),
        (Decision(Outcome.STALE, "x", Policy(), 0.0, 0, 0), None, "x", "cannot be Stale"),
    ],
)
def test_rejects_inconsistent_publish_arguments(store, decision, incumbent, adapter_dir, message):
    with pytest.raises(ValueError, match=message):
        store.publish(
            NAME,
            decision=decision,
            candidate_adapter_dir=adapter_dir,
            candidate_digest="sha256:" + "b" * 64,
            evaluated_incumbent_digest=incumbent,
            cycle="c1",
            evidence={},
        )
    assert store.promotions(NAME) == []


def test_rejects_unloggable_evidence_before_changing_anything(store, adapters):
    with pytest.raises(TypeError):
        store.publish(
            NAME,
            decision=BOOTSTRAP,
            candidate_adapter_dir=adapters[0][0],
            candidate_digest=adapters[0][1],
            evaluated_incumbent_digest=None,
            cycle="c1",
            evidence={"when": object()},
        )
    assert store.current(NAME) is None and store.promotions(NAME) == []


@pytest.mark.parametrize("name", ["", "Coder", "../escape", "a/b", "-x", "x-", "a" * 300])
def test_rejects_unsafe_release_names(store, name):
    with pytest.raises(ReleaseError, match="invalid release name"):
        store.current(name)


def test_failure_after_the_copy_and_before_the_swap_keeps_the_old_release(store, adapters, monkeypatch):
    [first] = promoted_chain(store, adapters, 1)

    def broken_write(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(release, "write_json_atomic", broken_write)
    with pytest.raises(OSError, match="disk full"):
        publish(store, adapters[1], PROMOTE, first.digest, cycle="c1")
    assert store.current(NAME) == first
    assert_loadable(store.current(NAME))
    rows = store.promotions(NAME)
    assert [row["outcome"] for row in rows] == ["Bootstrapped", "Failed"]
    assert rows[-1]["error"] == "OSError: disk full" and rows[-1]["revision"] == 1

    monkeypatch.undo()  # a retry succeeds and reuses the adapter copied in before the failure
    result = publish(store, adapters[1], PROMOTE, first.digest, cycle="c1")
    assert (result.outcome, result.revision) == (Outcome.PROMOTED, 2)
    assert_loadable(store.current(NAME))


def test_failure_during_the_copy_leaves_no_partial_adapter(store, adapters, monkeypatch):
    [first] = promoted_chain(store, adapters, 1)
    real_copytree = shutil.copytree
    copied: list[str] = []

    def copy_one_then_fail(src, dst, *args, **kwargs):  # shutil's own recursion comes back here too
        def copy(source, target, **_):
            if copied:
                raise OSError("I/O error")
            copied.append(source)
            return shutil.copy2(source, target)

        return real_copytree(src, dst, copy_function=copy, dirs_exist_ok=True)

    monkeypatch.setattr(release.shutil, "copytree", copy_one_then_fail)
    with pytest.raises(OSError, match="I/O error"):
        publish(store, adapters[1], PROMOTE, first.digest)
    assert copied, "the copy started before it failed"
    assert store.current(NAME) == first
    assert_loadable(first)
    assert [p.name for p in (Path(store.root) / NAME / "adapters").iterdir()] == [
        first.digest.removeprefix("sha256:")
    ]
    assert [row["outcome"] for row in store.promotions(NAME)] == ["Bootstrapped", "Failed"]


def test_the_log_never_claims_a_promotion_that_is_not_live(store, adapters, monkeypatch):
    [first] = promoted_chain(store, adapters, 1)
    monkeypatch.setattr(release, "write_json_atomic", lambda path, data: (_ for _ in ()).throw(OSError("x")))
    for cycle in ("c1", "c2"):
        with pytest.raises(OSError):
            publish(store, adapters[1], PROMOTE, first.digest, cycle=cycle)
    promotions = [row for row in store.promotions(NAME) if row["outcome"] in ("Promoted", "Bootstrapped")]
    assert [row["revision"] for row in promotions] == [store.current(NAME).revision]


def _slow_install(real):
    def install(*args, **kwargs):
        time.sleep(0.3)  # widen the window between reading the pointer and swapping it
        return real(*args, **kwargs)

    return install


def _race_in_thread(store, adapter, incumbent, cycle, barrier, results):
    barrier.wait()
    results[cycle] = publish(store, adapter, PROMOTE, incumbent, cycle=cycle).outcome


def test_racing_promotions_in_threads_exactly_one_wins(store, adapters, monkeypatch):
    [first] = promoted_chain(store, adapters, 1)
    monkeypatch.setattr(release, "_install_adapter", _slow_install(release._install_adapter))
    barrier, results = threading.Barrier(2), {}
    threads = [
        threading.Thread(
            target=_race_in_thread, args=(store, adapters[i], first.digest, f"r{i}", barrier, results)
        )
        for i in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [Outcome.PROMOTED, Outcome.STALE]
    winner = next(cycle for cycle, outcome in results.items() if outcome is Outcome.PROMOTED)
    current = store.current(NAME)
    assert (current.cycle, current.revision) == (winner, 2)
    assert store.history(NAME) == [first]
    assert sorted(row["outcome"] for row in store.promotions(NAME)[1:]) == ["Promoted", "Stale"]


def _race_in_process(root, adapter, incumbent, cycle, barrier, queue):
    store = LocalReleaseStore(root)
    release._install_adapter = _slow_install(release._install_adapter)
    barrier.wait()
    queue.put((cycle, str(publish(store, adapter, PROMOTE, incumbent, cycle=cycle).outcome)))


def test_racing_promotions_in_processes_exactly_one_wins(store, adapters):
    [first] = promoted_chain(store, adapters, 1)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    processes = [
        context.Process(
            target=_race_in_process, args=(store.root, adapters[i], first.digest, f"p{i}", barrier, queue)
        )
        for i in (1, 2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    outcomes = dict(queue.get(timeout=5) for _ in processes)
    assert sorted(outcomes.values()) == ["Promoted", "Stale"]
    winner = next(cycle for cycle, outcome in outcomes.items() if outcome == "Promoted")
    assert (store.current(NAME).cycle, store.current(NAME).revision) == (winner, 2)


def test_rollback_walks_back_through_promotions(store, adapters):
    a, b, c = promoted_chain(store, adapters, 3)
    back = store.rollback(NAME, reason="c regressed in production")
    assert (back.digest, back.cycle, back.revision, back.rolled_back) == (b.digest, b.cycle, 4, False)
    assert store.current(NAME) == back
    assert [(p.digest, p.rolled_back) for p in store.history(NAME)] == [(c.digest, True), (a.digest, False)]
    assert_loadable(back)

    again = store.rollback(NAME)  # goes on to a, never back to c, which was rolled back from
    assert (again.digest, again.revision) == (a.digest, 5)
    assert [(p.digest, p.rolled_back) for p in store.history(NAME)] == [(b.digest, True), (c.digest, True)]
    with pytest.raises(ReleaseError, match="no earlier adapter to roll back to"):
        store.rollback(NAME)
    assert store.current(NAME) == again

    rows = [row for row in store.promotions(NAME) if row["outcome"] == "RolledBack"]
    assert [(row["from"]["digest"], row["to"]["digest"], row["revision"]) for row in rows] == [
        (c.digest, b.digest, 4),
        (b.digest, a.digest, 5),
    ]
    assert rows[0]["reason"] == "c regressed in production"


def test_a_rollback_makes_an_evaluation_against_the_rolled_back_adapter_stale(store, adapters):
    _, _, c = promoted_chain(store, adapters, 3)
    store.rollback(NAME)
    assert publish(store, adapters[3], PROMOTE, c.digest).outcome is Outcome.STALE


def test_promotion_after_rollback_continues_the_revisions(store, adapters):
    _, b = promoted_chain(store, adapters, 2)
    a_again = store.rollback(NAME)
    result = publish(store, adapters[2], PROMOTE, a_again.digest, cycle="next")
    assert (result.outcome, result.revision) == (Outcome.PROMOTED, 4)
    assert [p.digest for p in store.history(NAME)] == [a_again.digest, b.digest]


def test_rollback_needs_a_release_with_history(store, adapters):
    with pytest.raises(ReleaseError, match="does not exist"):
        store.rollback(NAME)
    promoted_chain(store, adapters, 1)
    with pytest.raises(ReleaseError, match="no earlier adapter"):
        store.rollback(NAME)


def test_rollback_refuses_a_missing_adapter_folder(store, adapters):
    a, _ = promoted_chain(store, adapters, 2)
    release._remove_tree(Path(a.uri))
    with pytest.raises(ReleaseError, match="is missing"):
        store.rollback(NAME)


def test_history_is_bounded_newest_first(tmp_path, adapters):
    store = LocalReleaseStore(tmp_path / "releases", history_limit=2)
    pointers = promoted_chain(store, adapters, 4)
    assert store.history(NAME) == [pointers[2], pointers[1]]
    assert store.current(NAME).revision == 4


def test_history_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="history_limit"):
        LocalReleaseStore(tmp_path, history_limit=0)


def test_a_damaged_pointer_file_is_a_clear_error(store, adapters):
    promoted_chain(store, adapters, 1)
    path = Path(store.root) / NAME / "current.json"
    path.write_text('{"uri": "x"}')
    with pytest.raises(ReleaseError, match=r"current\.json is not a valid release pointer"):
        store.current(NAME)
    path.write_text("{not json")
    with pytest.raises(ReleaseError, match="not a valid release pointer"):
        store.history(NAME)


def test_a_relative_root_still_gives_absolute_adapter_paths(tmp_path, adapters, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = LocalReleaseStore("releases")
    pointer = publish(store, adapters[0], BOOTSTRAP, None).pointer
    assert Path(pointer.uri).is_absolute()
    assert_loadable(pointer)
