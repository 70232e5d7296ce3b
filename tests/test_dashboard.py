"""The dashboard (sigma0.dashboard) on a local workdir: read-only over HTTP, and, in a real headless browser
(tests/browser.py: Debian's chromium through Selenium), the page after a real `sigma0 run` (the tiny cycle of
tests/test_run_local.py, with a report-only suite and the McNemar test on), its curve point by point against the
cycle's own record, a running cycle's phase moving without a reload, and a cycle's per-problem evidence.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from selenium.webdriver.common.by import By
from test_run_local import manifest

from sigma0.dashboard.board import short_digest
from sigma0.dashboard.server import make_server
from sigma0.dashboard.sources import LocalSource
from sigma0.io import read_json

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "examples" / "suites" / "heldout.jsonl"
PHASES = ("Pending", "Harvesting", "Verifying", "Training", "Evaluating", "Deciding", "Promoting")


def write_manifest(folder: Path) -> Path:
    """test_run_local's tiny cycle, with a report-only suite (its own line on the plot) and a significance test."""
    return manifest(
        folder,
        eval={"subset": "first:3", "maxNewTokens": 16, "batchSize": 3, "reportSuites": [str(HELDOUT)]},
        promote={"significance": 0.5},
    )


def run_command(manifest: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "sigma0", "run", str(manifest), "--workdir", str(workdir)]


# Read-only, over plain HTTP -------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path / "work"
    (workdir / "cycles").mkdir(parents=True)
    server = make_server(LocalSource(workdir), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", workdir
    finally:
        server.shutdown()
        server.server_close()


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def tree(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
def test_every_method_but_get_and_head_is_refused_on_every_path(served: tuple[str, Path], method: str) -> None:
    base, workdir = served
    before = tree(workdir)
    for path in ("/", "/board", "/healthz", "/static/dashboard.js", "/cycles/-/cycle-1", "/anything"):
        status, headers, _ = request(base + path, method, b"{}" if method not in ("OPTIONS", "TRACE") else None)
        assert status == 405, (method, path, status)
        assert headers["Allow"] == "GET, HEAD"
    assert tree(workdir) == before, "a refused request changed the workdir"


def test_get_answers_with_a_policy_that_loads_only_from_this_origin(served: tuple[str, Path]) -> None:
    base, _ = served
    status, headers, body = request(base + "/")
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    page = body.decode()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page), "the page names an asset on another host"
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        status, _, data = request(base + asset)
        assert status == 200 and b"http" not in data, asset
    status, headers, _ = request(base + "/board", "HEAD")
    assert status == 200 and headers["ETag"]
    status, _, body = request(base + "/board")
    etag = headers["ETag"]
    unchanged = urllib.request.Request(base + "/board", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(unchanged, timeout=10)
    assert not_modified.value.code == 304


def test_evidence_outside_the_workdirs_cycles_is_not_served(served: tuple[str, Path]) -> None:
    base, workdir = served
    (workdir.parent / "secret.txt").write_text("not for the page")
    for path in (
        "/cycles/-/..",
        "/cycles/-/%2E%2E",
        "/cycles/-/..%2Fsecret.txt",
        "/cycles/ns/cycle-1",
        "/static/../cli.py",
        "/static/%2E%2E%2Fserver.py",
    ):
        status, _, body = request(base + path)
        assert status == 404, (path, status)
        assert b"not for the page" not in body


# In a real browser, after real cycles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A workdir after one real local cycle (it bootstraps the release), and its manifest."""
    folder = tmp_path_factory.mktemp("dashboard")
    manifest, work = write_manifest(folder), folder / "work"
    done = subprocess.run(run_command(manifest, work), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return manifest, work


@pytest.fixture
def dashboard(workdir: tuple[Path, Path]) -> Iterator[str]:
    """`sigma0 dashboard` as a user starts it, on a free port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sigma0", "dashboard", "--workdir", str(workdir[1]), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, f"sigma0 dashboard said {line!r}"
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def cycles_of(work: Path) -> list[dict[str, Any]]:
    """Every cycle's state.json, oldest first."""
    states = [read_json(path) for path in (work / "cycles").glob("*/state.json")]
    return sorted(states, key=lambda state: (state["startedAt"], state["name"]))


def summary(state: dict[str, Any], step: str) -> dict[str, Any]:
    return state["steps"][step]["summary"]


def dots(browser: Any, release: str, series: int) -> list[tuple[str, str]]:
    """(x label, value) of every point pygal drew for one series of the release's curve."""
    found = []
    section = browser.find_element(By.CSS_SELECTOR, f'section.curve[data-release="{release}"]')
    for point in section.find_elements(By.CSS_SELECTOR, f"g.plot.overlay g.serie-{series} g.dots"):
        value = point.find_element(By.CSS_SELECTOR, "desc.value").get_attribute("textContent")
        label = point.find_element(By.CSS_SELECTOR, "desc.x_label").get_attribute("textContent")
        found.append((label, value))
    return found


def check_curve(browser: Any, work: Path) -> None:
    """One point per cycle, each the figure that cycle's score steps recorded; promotions where the release moved."""
    states = cycles_of(work)
    names = [state["name"] for state in states]
    assert dots(browser, "coder", 0) == [
        (s["name"], f"{summary(s, 'score-candidate')['pass_at_1']:.3f}") for s in states
    ]
    assert dots(browser, "coder", 1) == [
        (s["name"], f"{summary(s, 'score-incumbent')['pass_at_1']:.3f}")
        for s in states
        if "score-incumbent" in s["steps"]
    ]
    promoted = [s for s in states if s["finished"]["outcome"] in ("Bootstrapped", "Promoted")]
    assert dots(browser, "coder", 2) == [
        (s["name"], f"{summary(s, 'score-candidate')['pass_at_1']:.3f}") for s in promoted
    ]
    assert dots(browser, "coder", 3) == [
        (s["name"], f"{summary(s, 'score-candidate-report0')['pass_at_1']:.3f}") for s in states
    ]
    legend = browser.find_element(By.CSS_SELECTOR, 'section.curve[data-release="coder"]').text
    assert f"report: {HELDOUT.name}" in legend
    assert len(names) == len(set(names))


@pytest.mark.slow
def test_the_page_shows_the_release_the_curve_and_the_decision_of_a_real_cycle(
    workdir: tuple[Path, Path], dashboard: str, tmp_path: Path
) -> None:
    _, work = workdir
    current = read_json(work / "releases" / "coder" / "current.json")
    with chromium() as browser:
        browser.get(dashboard + "/")
        row = browser.find_element(By.CSS_SELECTOR, 'tr.release[data-release="coder"]')
        assert row.find_element(By.CSS_SELECTOR, ".digest").text == short_digest(current["digest"])
        assert row.find_element(By.CSS_SELECTOR, ".pass").text == f"{current['pass_at_1']:.3f}"
        assert row.find_element(By.CSS_SELECTOR, ".revision").text == str(current["revision"])
        check_curve(browser, work)

        first = cycles_of(work)[0]
        cycle = browser.find_element(By.CSS_SELECTOR, f'tr.cycle[data-cycle="{first["name"]}"]')
        assert cycle.get_attribute("data-phase") == "Succeeded"
        decide = summary(first, "decide")
        assert cycle.find_element(By.CSS_SELECTOR, ".decision .badge").text == decide["outcome"] == "Bootstrapped"
        assert cycle.find_element(By.CSS_SELECTOR, ".decision .reason").text == first["finished"]["reason"]
        verify, harvest = summary(first, "verify"), summary(first, "harvest")
        assert cycle.find_element(By.CSS_SELECTOR, ".verified").text == f"{verify['passed']}/{harvest['harvested']}"
        expected = Counter(harvest["dropped"]) + Counter(verify["dropped"]) + Counter(duplicate=harvest["duplicates"])
        drops = {
            d.get_attribute("data-reason"): d.get_attribute("textContent")
            for d in cycle.find_elements(By.CSS_SELECTOR, ".drop")
        }
        assert drops == {reason: f"{reason}\xa0{count}" for reason, count in expected.items()} and drops
        stages = {s.get_attribute("data-stage"): s.text for s in cycle.find_elements(By.CSS_SELECTOR, ".stage")}
        assert set(stages) == set(first["steps"]) and re.fullmatch(r"train \d+ s on local", stages["train"])
        gpu = browser.find_element(By.CSS_SELECTOR, 'tr.gpu[data-placement="local"]')
        assert gpu.find_element(By.CSS_SELECTOR, ".used").text == "0.00"  # the CPU: no GPU-hours

        # nothing came from another origin
        origins = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        )
        assert origins and set(origins) == {dashboard}

        # the cycle's evidence: its per-problem results, as its score step wrote them
        cycle.find_element(By.CSS_SELECTOR, ".name a").click()
        results = [
            json.loads(line)
            for line in (work / "cycles" / first["name"] / "eval" / "results" / "candidate-gate" / "results.jsonl")
            .read_text()
            .splitlines()
        ]
        rows = {
            r.get_attribute("data-task"): r.find_element(By.CSS_SELECTOR, ".candidate").text
            for r in browser.find_elements(By.CSS_SELECTOR, "tr.problem")
        }
        assert rows == {r["task_id"]: "pass" if r["passed"] else "fail" for r in results}
        assert browser.find_element(By.CSS_SELECTOR, 'tr.file[data-label="candidate"]').text.endswith("matches")
        assert browser.save_screenshot(str(tmp_path / "evidence.png"))


@pytest.mark.slow
def test_a_running_cycle_moves_through_its_phases_on_the_open_page_without_a_reload(
    workdir: tuple[Path, Path], dashboard: str
) -> None:
    manifest, work = workdir
    before = {state["name"] for state in cycles_of(work)}
    with chromium() as browser:
        browser.get(dashboard + "/")
        browser.execute_script("window.sigma0NotReloaded = true")
        process = subprocess.Popen(run_command(manifest, work), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                phases = browser.execute_script(
                    "return Array.from(document.querySelectorAll('tr.cycle'))"
                    ".map(r => [r.dataset.cycle, r.dataset.phase])"
                )
                new = [phase for name, phase in phases if name not in before]
                if new and (not seen or seen[-1] != new[0]):
                    seen.append(new[0])
                if new and new[0] in ("Succeeded", "Failed"):
                    break
                time.sleep(0.3)
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert seen and seen[-1] == "Succeeded", seen
        assert [phase for phase in seen[:-1] if phase in PHASES] == seen[:-1] and len(seen) >= 3, seen
        assert browser.execute_script("return window.sigma0NotReloaded === true"), "the page was reloaded"

        # the second cycle was decided against the first one's adapter: two points, an incumbent, a p-value
        check_curve(browser, work)
        second = cycles_of(work)[-1]
        decide = summary(second, "decide")
        row = browser.find_element(By.CSS_SELECTOR, f'tr.cycle[data-cycle="{second["name"]}"]')
        assert row.find_element(By.CSS_SELECTOR, ".decision .badge").text == second["finished"]["outcome"]
        assert row.find_element(By.CSS_SELECTOR, ".incumbent").text.startswith(f"{decide['incumbent_pass_at_1']:.3f}")
        assert decide["p_value"] is not None  # always computed against an incumbent
        assert row.find_element(By.CSS_SELECTOR, ".p-value").text == f"{decide['p_value']:.3g}"


def test_a_results_file_changed_after_its_score_step_is_shown_as_changed_not_read(tmp_path: Path) -> None:
    """The evidence page believes a results file only on the digest its score step recorded."""
    from sigma0.dashboard.evidence import evidence_of

    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "passed": True, "reason": "passed"}) + "\n")
    from sigma0.io import file_digest

    status = {
        "phase": "Succeeded",
        "stages": {"score-candidate": {"state": "succeeded", "outputs": {str(path): file_digest(path)}}},
    }
    shown = evidence_of("c", status, lambda p: Path(p).read_bytes())
    assert [(r.task_id, r.candidate) for r in shown.rows] == [("HumanEval/0", True)]
    with path.open("a") as handle:
        handle.write(json.dumps({"task_id": "HumanEval/1", "passed": True, "reason": "passed"}) + "\n")
    shown = evidence_of("c", status, lambda p: Path(p).read_bytes())
    assert shown.rows == () and "changed after it was written" in shown.files[0].problem


def test_a_waiting_cycle_shows_why_it_waits() -> None:
    """The page shows the status message the operator writes while a cycle waits (here: no GPU placement has budget
    left), rendered by the operator's own status view."""
    from sigma0.dashboard.board import CycleInput, build
    from sigma0.dashboard.server import render_board
    from sigma0.kube import jobs, status
    from sigma0.spec import load_manifest

    spec = load_manifest(str(ROOT / "examples" / "cycle.yaml")).spec
    ref = jobs.CycleRef(name="c1", namespace="team", uid="0123456789abcdef", release=spec.release)
    done = {
        name: status.StageRecord(f"c1-{name}-1", 1, "succeeded", summary={"rows": 3} if name == "dataset" else {})
        for name in ("harvest", "verify", "dataset")
    }
    record = status.CycleRecord(admitted=True, incumbent_resolved=True, stages=done)
    wait = status.PlacementWait(
        "train", "BudgetSpent", "every placement of train has spent its weekly budget", "2026-01-08T00:00:00Z"
    )

    def waiting_on(placement_wait: status.PlacementWait) -> dict[str, Any]:
        layout = jobs.layout(ref, spec, jobs.PodSettings())
        return status.render(
            spec,
            record,
            layout,
            status.Situation(placement_wait=placement_wait),
            generation=1,
            now="2026-01-01T00:00:00Z",
        )

    found = waiting_on(wait)
    board = build("cluster", [CycleInput("team", "c1", spec, found, "2026-01-01T00:00:00Z")], [])
    (cycle,) = board.cycles
    assert (cycle.phase, cycle.message) == ("Waiting", wait.message)
    page = render_board(board)
    assert 'data-phase="Waiting"' in page and wait.message in page

    # text from the cluster is text: a message with markup is shown, never run
    hostile = status.PlacementWait("train", "BudgetSpent", "<script>alert(1)</script><img src=x onerror=alert(2)>")
    found = waiting_on(hostile)
    page = render_board(build("cluster", [CycleInput("team", "c1", spec, found, "2026-01-01T00:00:00Z")], []))
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_workdir_that_is_not_there_is_refused_naming_the_flag(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sigma0", "dashboard", "--workdir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--workdir" in done.stdout and "is not a folder" in done.stdout
