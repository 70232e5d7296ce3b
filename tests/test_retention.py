"""The retention rule (sigma0.retention) and the cleaner (sigma0.clean), each held to its attacks: an adapter the
release points at never goes, an unfinished cycle never goes, nothing outside the cycle's folder is touched."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pytest

from sigma0 import retention
from sigma0.clean import clean_folder
from sigma0.cli import main
from sigma0.retention import Cycle, Limits, RetentionError, doomed, inside, kept_under

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = "/artifacts/cycles/ns"


def cyc(name: str, phase: str | None = "Succeeded", finished_min: int | None = 0, created_min: int = 0,
        release: str = "coder", ttl: int | None = None) -> Cycle:
    """A cycle created at T0 + created_min minutes, finished at T0 + finished_min minutes (None: not recorded)."""
    return Cycle(name=name, release=release, phase=phase, created=T0 + timedelta(minutes=created_min),
                 finished=None if finished_min is None else T0 + timedelta(minutes=finished_min),
                 ttl_seconds=ttl, artifacts=f"{ROOT}/{name}-0123abcd")


def names(found: list[retention.Doomed]) -> list[str]:
    return [d.cycle.name for d in found]


NOW = T0 + timedelta(days=1)


def test_no_limits_and_no_ttl_keep_everything() -> None:
    cycles = [cyc(f"c{i}", finished_min=i) for i in range(20)] + [cyc("f", "Failed")]
    assert doomed(cycles, "coder", Limits(), [], NOW) == []


def test_history_limits_keep_the_newest_of_each_phase_separately() -> None:
    cycles = [cyc("s1", finished_min=1), cyc("s2", finished_min=2), cyc("s3", finished_min=3),
              cyc("f1", "Failed", finished_min=4), cyc("f2", "Failed", finished_min=5)]
    found = doomed(cycles, "coder", Limits(successful=1, failed=1), [], NOW)
    assert names(found) == ["s1", "s2", "f1"]  # oldest first; s3 and f2 stay
    assert {d.why for d in found} == {"history"}
    assert "newest 1 stay" in found[0].message
    # a limit on one phase says nothing about the other
    assert names(doomed(cycles, "coder", Limits(failed=0), [], NOW)) == ["f1", "f2"]


def test_a_limit_of_zero_keeps_none_and_finish_time_not_creation_order_decides() -> None:
    # created in one order, finished in the other: the one that finished last is the newest
    cycles = [cyc("early", finished_min=50, created_min=0), cyc("late", finished_min=10, created_min=5)]
    assert names(doomed(cycles, "coder", Limits(successful=1), [], NOW)) == ["late"]
    assert names(doomed(cycles, "coder", Limits(successful=0), [], NOW)) == ["late", "early"]


def test_ties_in_time_resolve_the_same_way_whatever_the_order_listed() -> None:
    a, b, c = (cyc(n, finished_min=7, created_min=3) for n in ("a", "b", "c"))
    first = names(doomed([a, b, c], "coder", Limits(successful=1), [], NOW))
    assert first == names(doomed([c, a, b], "coder", Limits(successful=1), [], NOW)) == ["a", "b"]
    # same finish, different creation: the later-created is newer
    older, newer = cyc("z-older", finished_min=7, created_min=1), cyc("a-newer", finished_min=7, created_min=2)
    assert names(doomed([newer, older], "coder", Limits(successful=1), [], NOW)) == ["z-older"]


@pytest.mark.parametrize("phase", [None, "Pending", "Queued", "Harvesting", "Training", "Evaluating", "Promoting",
                                   "Suspended", "Waiting"])
def test_an_unfinished_cycle_is_never_deleted_by_limits_or_ttl(phase: str | None) -> None:
    running = cyc("running", phase, finished_min=None, created_min=-10_000, ttl=0)
    done = cyc("done", finished_min=1)
    assert names(doomed([running, done], "coder", Limits(successful=0, failed=0), [], NOW)) == ["done"]


def test_cycles_of_another_release_are_not_touched_nor_counted() -> None:
    mine = [cyc("m1", finished_min=1), cyc("m2", finished_min=2)]
    other = [cyc(f"o{i}", finished_min=i + 10, release="other", ttl=0) for i in range(5)]
    assert names(doomed([*other, *mine], "coder", Limits(successful=1), [], NOW)) == ["m1"]
    assert names(doomed([*other, *mine], "coder", Limits(successful=2), [], NOW)) == []


def test_a_dry_run_is_a_succeeded_cycle_and_has_nothing_to_keep() -> None:
    dry = cyc("dry", finished_min=1)  # phase Succeeded, outcome DryRun: counted with the successful ones
    real = cyc("real", finished_min=2)
    (found,) = doomed([dry, real], "coder", Limits(successful=1), [f"{ROOT}/real-0123abcd/train/adapter"], NOW)
    assert found.cycle.name == "dry" and found.keep == ()


def test_ttl_after_finish_and_clock_skew_never_deletes_early() -> None:
    c = cyc("c", finished_min=0, ttl=3600)
    assert doomed([c], "coder", Limits(), [], T0 + timedelta(seconds=3599)) == []
    (found,) = doomed([c], "coder", Limits(), [], T0 + timedelta(seconds=3600))
    assert found.why == "ttl" and "ttlSecondsAfterFinished=3600" in found.message
    # a finish time ahead of this clock (the writer's clock runs fast): not past its TTL yet
    ahead = cyc("ahead", finished_min=120, ttl=60)
    assert doomed([ahead], "coder", Limits(), [], T0 + timedelta(minutes=100)) == []
    # no recorded finish time: the TTL cannot be counted, so it does not delete (limits still may)
    unknown = cyc("unknown", finished_min=None, ttl=0)
    assert doomed([unknown], "coder", Limits(), [], NOW) == []
    # ...where it counts as finished when it was created (its only time known)
    assert names(doomed([unknown, cyc("known", finished_min=-5)], "coder", Limits(successful=1), [], NOW)) == [
        "known"]
    late = cyc("late", finished_min=None, created_min=30)
    early = cyc("early", finished_min=5)
    assert names(doomed([late, early], "coder", Limits(successful=1), [], NOW)) == ["early"]


def test_the_adapter_the_release_points_at_now_or_in_history_is_kept() -> None:
    current, old = cyc("current-winner", finished_min=3), cyc("old-winner", finished_min=1)
    loser = cyc("loser", finished_min=2)
    pointers = [f"{current.artifacts}/train/adapter", f"{old.artifacts}/import/adapter"]
    found = {d.cycle.name: d for d in doomed([current, old, loser], "coder", Limits(successful=0), pointers, NOW)}
    assert found["current-winner"].keep == (f"{current.artifacts}/train/adapter",)
    assert found["old-winner"].keep == (f"{old.artifacts}/import/adapter",)
    assert found["loser"].keep == ()


def test_pointers_are_matched_as_paths_not_as_text() -> None:
    folder = f"{ROOT}/c-1-0123abcd"
    assert kept_under(folder, [f"{ROOT}/c-1-0123abcdX/train/adapter"]) == ()  # a longer name is another cycle
    assert kept_under(folder, [f"{ROOT}/c-1-0123abcd/../c-1-0123abcd/train/adapter/"]) == (
        f"{ROOT}/c-1-0123abcd/../c-1-0123abcd/train/adapter/",)
    assert kept_under(folder, [f"{ROOT}/other/../c-1-0123abcd/train/adapter"])
    assert kept_under(folder, [f"{ROOT}/c-1-0123abcd/../c-2/train/adapter"]) == ()
    assert kept_under(folder, ["", "none"]) == ()
    # URIs: same scheme and bucket only
    s3 = "s3://bucket/p/cycles/ns/c-1-0123abcd"
    assert kept_under(s3, [f"{s3}/train/adapter"]) == (f"{s3}/train/adapter",)
    assert kept_under(s3, ["gs://bucket/p/cycles/ns/c-1-0123abcd/train/adapter",
                           "s3://other/p/cycles/ns/c-1-0123abcd/train/adapter"]) == ()
    assert not inside("/p/cycles/ns/c-1-0123abcd/x", s3)


def test_limits_are_checked() -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(RetentionError, match="history limit"):
            Limits(successful=bad)  # type: ignore[arg-type]


# The cleaner -------------------------------------------------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def cycle_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cycles" / "ns" / "c-1-0123abcd"
    for rel in ("harvest/candidates.jsonl", "verify/verified.jsonl", "train/adapter/adapter_model.safetensors",
                "train/adapter/adapter_config.json", "train/report.json", "train/checkpoints/1/x.bin",
                "eval/results/candidate-gate/results.jsonl"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(rel)
    return folder


def test_clean_deletes_all_but_the_kept_adapter(tmp_path: Path) -> None:
    folder = cycle_folder(tmp_path)
    neighbour = cycle_folder(tmp_path / "x").parent / "c-1-0123abcdX"
    neighbour.mkdir()
    (neighbour / "keepme").write_text("x")
    summary = clean_folder(str(folder), [str(folder / "train" / "adapter")])
    assert tree(folder) == {"train", "train/adapter", "train/adapter/adapter_model.safetensors",
                            "train/adapter/adapter_config.json"}
    assert summary["removed"] == 5  # harvest, verify, eval, train/report.json, train/checkpoints
    assert (neighbour / "keepme").exists()
    # again: nothing left to do, the adapter still there
    assert clean_folder(str(folder), [str(folder / "train" / "adapter")])["removed"] == 0
    assert (folder / "train/adapter/adapter_config.json").exists()


def test_clean_with_nothing_kept_removes_the_folder_and_a_missing_folder_is_done(tmp_path: Path) -> None:
    folder = cycle_folder(tmp_path)
    clean_folder(str(folder))
    assert not folder.exists() and folder.parent.exists()
    assert clean_folder(str(folder)) == {"folder": str(folder), "removed": 0, "kept": []}


def test_clean_never_follows_a_link_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "adapter").mkdir()
    (outside / "data").write_text("do not delete")
    (outside / "adapter" / "w").write_text("do not delete")
    folder = cycle_folder(tmp_path)
    (folder / "verify" / "escape").symlink_to(outside)
    (folder / "link").symlink_to(outside)
    # a kept path through a link: the cleaner removes the link, never what it points at
    (folder / "import").symlink_to(outside)
    clean_folder(str(folder), [str(folder / "import" / "adapter"), str(folder / "train" / "adapter")])
    assert tree(outside) == {"data", "adapter", "adapter/w"}
    assert not (folder / "import").is_symlink() and not (folder / "link").is_symlink()
    assert (folder / "train/adapter/adapter_config.json").exists()
    escape = tmp_path / "cycles" / "ns" / "evil"
    escape.symlink_to(outside)
    with pytest.raises(RetentionError, match="not a folder"):
        clean_folder(str(escape))
    assert tree(outside) == {"data", "adapter", "adapter/w"}


@pytest.mark.parametrize("folder", ["/", "/artifacts", "/artifacts/cycles", "s3://bucket", "relative/x"])
def test_clean_refuses_what_is_not_a_cycle_folder(folder: str) -> None:
    with pytest.raises(RetentionError, match="not a cycle's folder"):
        clean_folder(folder)


def test_clean_refuses_a_kept_path_outside_the_folder(tmp_path: Path) -> None:
    folder = cycle_folder(tmp_path)
    with pytest.raises(RetentionError, match="not inside"):
        clean_folder(str(folder), [str(tmp_path / "cycles" / "ns" / "c-2" / "train" / "adapter")])
    assert (folder / "harvest" / "candidates.jsonl").exists()  # nothing happened


def test_clean_an_fsspec_folder_keeps_the_adapter() -> None:
    fs = fsspec.filesystem("memory")
    root = "memory://bucket/p/cycles/ns/c-1-0123abcd"
    for rel in ("harvest/a.jsonl", "train/adapter/w.bin", "train/report.json", "eval/x/y.jsonl"):
        with fs.open(f"{root}/{rel}", "w") as out:
            out.write(rel)
    with fs.open("memory://bucket/p/cycles/ns/c-1-0123abcdX/w.bin", "w") as out:
        out.write("neighbour")
    clean_folder(root, [f"{root}/train/adapter"])
    assert sorted(fs.find(root)) == ["/bucket/p/cycles/ns/c-1-0123abcd/train/adapter/w.bin"]
    assert fs.exists("memory://bucket/p/cycles/ns/c-1-0123abcdX/w.bin")
    clean_folder(root)
    assert not fs.exists(root) and fs.exists("memory://bucket/p/cycles/ns/c-1-0123abcdX/w.bin")


def test_sigma0_clean_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGMA0_TERMINATION_LOG", str(tmp_path / "summary.json"))
    folder = cycle_folder(tmp_path)
    assert main(["clean", str(folder), "--keep", str(folder / "train" / "adapter")]) == 0
    assert tree(folder) >= {"train/adapter/adapter_config.json"} and "harvest" not in tree(folder)
    assert json.loads((tmp_path / "summary.json").read_text())["removed"] == 5
    assert main(["clean", "/artifacts"]) == 2
    assert "not a cycle's folder" in capsys.readouterr().err
    assert main(["clean", str(folder), "--keep", "/elsewhere/cycles/x/adapter"]) == 2
    assert os.path.exists(folder / "train" / "adapter")


# The local janitor (`sigma0 run --...-cycles-history-limit`) ------------------------------------------------------


def local_cycle(workdir: Path, name: str, phase: str | None, at: str | None, release: str = "coder",
                **spec: object) -> Path:
    from sigma0.executors.local import STATE_FILE

    folder = workdir / "cycles" / name
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "harvest.log").write_text("x")
    finished = {"phase": phase, "outcome": None, "reason": "", "at": at} if phase else None
    (folder / STATE_FILE).write_text(json.dumps({
        "name": name, "manifestDigest": "x", "startedAt": "2026-01-01T00:00:00+00:00", "steps": {},
        "finished": finished, "spec": {"release": release, **spec}}))
    return folder


def test_the_local_sweep_applies_the_same_rule_to_a_workdir(tmp_path: Path) -> None:
    from sigma0.executors.local import sweep
    from sigma0.local_release import LocalReleases

    workdir = tmp_path / "work"
    old = local_cycle(workdir, "old", "Failed", "2026-01-01T01:00:00+00:00")
    new = local_cycle(workdir, "new", "Failed", "2026-01-01T02:00:00+00:00")
    running = local_cycle(workdir, "running", None, None, ttlSecondsAfterFinished=0)
    other = local_cycle(workdir, "other", "Failed", "2026-01-01T00:30:00+00:00", release="other")
    ttl = local_cycle(workdir, "ttl", "Succeeded", "2026-01-01T00:00:00+00:00", ttlSecondsAfterFinished=60)
    (workdir / "cycles" / "unreadable").mkdir()
    (workdir / "cycles" / "unreadable" / "state.json").write_text("{")
    releases = LocalReleases(workdir / "releases")
    assert sweep(workdir, "coder", Limits(), releases, T0) == []  # TTL not yet past, no limits
    gone = sweep(workdir, "coder", Limits(failed=1), releases, T0 + timedelta(minutes=1))
    assert [d.cycle.name for d in gone] == ["ttl", "old"]
    assert not old.exists() and not ttl.exists()
    assert new.exists() and running.exists() and other.exists() and (workdir / "cycles" / "unreadable").exists()


def test_sigma0_run_removes_the_cycles_past_its_limits(tmp_path: Path) -> None:
    import yaml

    workdir = tmp_path / "work"
    document = {"apiVersion": "sigma0.dev/v1alpha1", "kind": "TrainingCycle", "metadata": {"generateName": "c-"},
                "spec": {"release": "coder", "baseModel": {"name": "tiny://llama"},
                         "harvest": {"sources": [{"path": "missing.jsonl"}]}}}
    manifest = tmp_path / "cycle.yaml"
    manifest.write_text(yaml.safe_dump(document))
    run = ["run", str(manifest), "--workdir", str(workdir)]
    assert main([*run, "--name", "first"]) == 1
    assert main([*run, "--name", "second", "--failed-cycles-history-limit", "1"]) == 1
    assert sorted(p.name for p in (workdir / "cycles").iterdir()) == ["second"]
    assert main([*run, "--name", "third", "--failed-cycles-history-limit", "-1"]) == 2
