"""Which runsc starts the gVisor sandboxes, on which platform, and how the reports say so.

The choice (sigma0.sandbox.runner.find_runsc): SIGMA0_RUNSC if set; else the static current gVisor that
scripts/build-gvisor.sh built and smoke-tested on this kernel (runsc.json), on systrap; else the runsc on PATH
(Debian's) on ptrace. These tests build the situations out of fake runsc executables; the ones at the end run
scripts/build-gvisor.sh itself with a stand-in `go` command, and the gvisor-marked ones need root and a real build.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sigma0.sandbox import Limits, SandboxUnavailable, from_asserts, options, run_programs, runner
from sigma0.sandbox.runner import Runsc, find_runsc, gvisor_cache, resolve_sandbox, worker_command

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-gvisor.sh"
REAL_BUILD = runner._recorded_build(gvisor_cache() / "runsc.json")  # (runsc, version): what setup built here
KERNEL = os.uname().release


def fake_runsc(folder: Path, version: str = "fake-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runsc"
    path.write_text(f'#!/bin/sh\necho "runsc version {version}"\necho "spec: 1.0.2"\n')
    path.chmod(0o755)
    return path


def record(cache: Path, built: Path, **changes: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    entry = {"runsc": str(built), "shim": str(built.parent / "containerd-shim-runsc-v1"), "version": "v0.0.0-pinned",
             "platform": "systrap", "kernel": KERNEL, "stamp": "0" * 64} | changes  # fmt: skip
    (cache / "runsc.json").write_text(json.dumps(entry))


@pytest.fixture
def place(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing in it: an empty PATH folder and an empty gVisor cache."""
    (tmp_path / "path").mkdir()
    return {"PATH": str(tmp_path / "path"), "HOME": str(tmp_path / "home"), "SIGMA0_GVISOR_CACHE": str(tmp_path / "c")}


def test_no_runsc_anywhere_means_none(place: dict[str, str]) -> None:
    assert find_runsc(place) is None


def test_debian_runsc_on_path_runs_on_ptrace(place: dict[str, str]) -> None:
    runsc = fake_runsc(Path(place["PATH"]), "0.0~20221219.0")
    assert find_runsc(place) == Runsc(str(runsc), "ptrace", "PATH", "0.0~20221219.0")


def test_sigma0s_smoke_tested_build_wins_on_systrap(place: dict[str, str], tmp_path: Path) -> None:
    fake_runsc(Path(place["PATH"]))
    built = fake_runsc(tmp_path / "c" / "v0.0.0-pinned" / "bin")
    record(Path(place["SIGMA0_GVISOR_CACHE"]), built)
    assert find_runsc(place) == Runsc(str(built), "systrap", "sigma0's build", "v0.0.0-pinned")
    # with nothing on PATH too: the build alone is enough for gVisor
    assert find_runsc(place | {"PATH": str(tmp_path / "nowhere")}) == find_runsc(place)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"kernel": "4.19.0-other"}, id="smoke-tested-on-another-kernel"),
        pytest.param({"runsc": "/nonexistent/runsc"}, id="runsc-gone"),
        pytest.param({"platform": "ptrace"}, id="not-a-systrap-record"),
    ],
)
def test_a_build_record_that_proves_nothing_here_falls_back_to_debian_ptrace(
    place: dict[str, str], tmp_path: Path, broken: dict[str, str]
) -> None:
    debian = fake_runsc(Path(place["PATH"]))
    record(Path(place["SIGMA0_GVISOR_CACHE"]), fake_runsc(tmp_path / "built"), **broken)
    assert find_runsc(place) == Runsc(str(debian), "ptrace", "PATH", "fake-1")


def test_a_garbled_record_falls_back(place: dict[str, str]) -> None:
    debian = fake_runsc(Path(place["PATH"]))
    Path(place["SIGMA0_GVISOR_CACHE"]).mkdir()
    (Path(place["SIGMA0_GVISOR_CACHE"]) / "runsc.json").write_text('{"runsc": ')
    assert find_runsc(place) == Runsc(str(debian), "ptrace", "PATH", "fake-1")


def test_overrides(place: dict[str, str], tmp_path: Path) -> None:
    debian = fake_runsc(Path(place["PATH"]))
    built = fake_runsc(tmp_path / "built")
    record(Path(place["SIGMA0_GVISOR_CACHE"]), built)
    mine = fake_runsc(tmp_path / "mine", "release-20990101.0")
    # SIGMA0_RUNSC beats the build; ptrace unless told, since every runsc has it
    assert find_runsc(place | {"SIGMA0_RUNSC": str(mine)}) == Runsc(
        str(mine), "ptrace", "SIGMA0_RUNSC", "release-20990101.0"
    )
    told = place | {"SIGMA0_RUNSC": str(mine), "SIGMA0_RUNSC_PLATFORM": "systrap"}
    assert find_runsc(told) == Runsc(str(mine), "systrap", "SIGMA0_RUNSC", "release-20990101.0")
    # Debian's runsc by name, as the benchmark compares them
    assert find_runsc(place | {"SIGMA0_RUNSC": str(debian)}) == Runsc(str(debian), "ptrace", "SIGMA0_RUNSC", "fake-1")
    # the platform alone: sigma0's build on ptrace
    assert find_runsc(place | {"SIGMA0_RUNSC_PLATFORM": "ptrace"}) == Runsc(
        str(built), "ptrace", "sigma0's build", "v0.0.0-pinned"
    )
    with pytest.raises(SandboxUnavailable, match="not an executable"):
        find_runsc(place | {"SIGMA0_RUNSC": str(tmp_path / "missing")})
    with pytest.raises(SandboxUnavailable, match="not a gVisor platform"):
        find_runsc(place | {"SIGMA0_RUNSC_PLATFORM": "docker"})


def test_the_cache_is_where_the_build_script_puts_it(tmp_path: Path) -> None:
    assert gvisor_cache({"HOME": "/home/u"}) == Path("/home/u/.cache/sigma0/gvisor")
    assert gvisor_cache({"HOME": "/home/u", "XDG_CACHE_HOME": "/x"}) == Path("/x/sigma0/gvisor")
    assert gvisor_cache({"HOME": "/home/u", "SIGMA0_GVISOR_CACHE": "/g"}) == Path("/g")
    script = BUILD_SCRIPT.read_text()
    assert 'cache_root="${SIGMA0_GVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/gvisor}"' in script
    assert 'record="$cache_root/runsc.json"' in script


def use(monkeypatch: pytest.MonkeyPatch, place: dict[str, str]) -> None:
    for name in ("SIGMA0_RUNSC", "SIGMA0_RUNSC_PLATFORM", "SIGMA0_PIN_LANES", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in place.items():
        monkeypatch.setenv(name, value)


def test_the_worker_command_and_the_reports_name_the_runsc_and_platform(
    monkeypatch: pytest.MonkeyPatch, place: dict[str, str], tmp_path: Path
) -> None:
    use(monkeypatch, place)
    built = fake_runsc(tmp_path / "built")
    record(Path(place["SIGMA0_GVISOR_CACHE"]), built)
    command = worker_command("gvisor", "/tmp/sigma0-runsc-x")
    assert command[: command.index("do")] == [
        str(built), "--root=/tmp/sigma0-runsc-x", "--network=none", "--platform=systrap"
    ]  # fmt: skip
    assert resolve_sandbox("auto") == "gvisor"
    described = runner.describe_sandbox("gvisor", 2)
    assert "--platform=systrap" in described and str(built) in described
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    args = argparse.Namespace(sandbox="auto", timeout=5.0, workers=2, memory_mb=256)
    settings = options.from_args(args)
    assert settings.to_dict()["runsc"] == {
        "path": str(built), "platform": "systrap", "origin": "sigma0's build", "version": "v0.0.0-pinned"
    }  # fmt: skip
    assert "--platform=systrap" in settings.describe()
    assert settings.to_dict()["pinned"] is True and "each pinned to a CPU" in settings.describe()
    monkeypatch.setenv("SIGMA0_PIN_LANES", "off")
    assert options.from_args(args).to_dict()["pinned"] is False
    assert "pinned to a CPU" not in options.from_args(args).describe()
    monkeypatch.setenv("SIGMA0_PIN_LANES", "no")
    with pytest.raises(SandboxUnavailable, match="SIGMA0_PIN_LANES='no'"):
        options.from_args(args)
    monkeypatch.delenv("SIGMA0_PIN_LANES")
    monkeypatch.setenv("SIGMA0_RUNSC_PLATFORM", "ptrace")
    assert options.from_args(args).to_dict()["runsc"]["platform"] == "ptrace"
    process = options.from_args(argparse.Namespace(**{**vars(args), "sandbox": "process"})).to_dict()
    assert process["runsc"] is None and process["pinned"] is False
    with pytest.raises(ValueError, match="--root"):
        worker_command("gvisor")


def test_gvisor_lanes_are_pinned_to_the_cpus_this_process_may_use_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGMA0_PIN_LANES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 3})
    assert runner.lane_cpus("gvisor", 2) == [3, 5]
    assert runner.lane_cpus("gvisor", 5) == [3, 5, 3, 5, 3]
    assert runner.lane_cpus("process", 2) == [None, None]  # pinning bought the process sandbox nothing
    monkeypatch.setenv("SIGMA0_PIN_LANES", "off")
    assert runner.lane_cpus("gvisor", 2) == [None, None]
    monkeypatch.setenv("SIGMA0_PIN_LANES", "1")
    with pytest.raises(SandboxUnavailable, match="use on"):
        runner.lane_cpus("gvisor", 2)


def test_a_batch_with_fewer_lanes_than_cpus_is_unpinned_so_batches_sharing_a_machine_do_not_crowd_its_first_cpus(
    monkeypatch: pytest.MonkeyPatch, place: dict[str, str], tmp_path: Path
) -> None:
    """Three cycles with the manifest's 2 workers on a 64-CPU machine (or three containers with a CPU quota but no
    affinity of their own): were each batch's lanes pinned to the first 2 CPUs, all three would crowd onto CPUs 0
    and 1 while 62 sit idle."""
    use(monkeypatch, place)
    record(Path(place["SIGMA0_GVISOR_CACHE"]), fake_runsc(tmp_path / "built"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    batches = [runner.lane_cpus("gvisor", 2) for _ in range(3)]
    assert batches == [[None, None]] * 3
    settings = options.from_args(argparse.Namespace(sandbox="gvisor", timeout=5.0, workers=2, memory_mb=256))
    assert settings.to_dict()["pinned"] is False and "pinned to a CPU" not in settings.describe()
    everything = options.from_args(argparse.Namespace(sandbox="gvisor", timeout=5.0, workers=None, memory_mb=256))
    assert everything.workers == 64 and everything.to_dict()["pinned"] is True  # the default: a lane on every CPU
    assert runner.lane_cpus("gvisor", 64) == list(range(64))


def test_without_any_runsc_auto_is_process_and_gvisor_is_refused(
    monkeypatch: pytest.MonkeyPatch, place: dict[str, str]
) -> None:
    use(monkeypatch, place)
    assert resolve_sandbox("auto") == "process"
    with pytest.raises(SandboxUnavailable, match="needs runsc"):
        resolve_sandbox("gvisor")


# --- scripts/build-gvisor.sh, with a stand-in `go` that "builds" by copying a given binary ----------------------------

FAKE_GO = """#!/bin/sh
# `go version` / `go build ... -o DIR/ PKG...`: copy $FAKE_GO_BINARY to DIR/runsc and DIR/shim.
[ "$1" = version ] && { echo "go version fake"; exit 0; }
echo "$@" >> "$FAKE_GO_LOG"
while [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done
cp "$FAKE_GO_BINARY" "$out/runsc" && cp "$FAKE_GO_BINARY" "$out/shim"
"""


def build_script(tmp_path: Path, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    go = tmp_path / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GO": str(go), "FAKE_GO_BINARY": binary,
           "FAKE_GO_LOG": str(tmp_path / "go.log"), "SIGMA0_GVISOR_CACHE": str(tmp_path / "cache")}  # fmt: skip
    return subprocess.run(["bash", str(BUILD_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def pinned_version() -> str:
    for line in (REPO / "scripts" / "gvisor" / "go.mod").read_text().splitlines():
        if line.startswith("require gvisor.dev/gvisor "):
            return line.split()[2]
    raise AssertionError("scripts/gvisor/go.mod pins no gvisor.dev/gvisor")


def test_the_pin_is_one_pseudo_version_with_its_checksums() -> None:
    version = pinned_version()
    assert version.startswith("v0.0.0-") and len(version.split("-")) == 3, version
    go_sum = (REPO / "scripts" / "gvisor" / "go.sum").read_text()
    assert f"gvisor.dev/gvisor {version} h1:" in go_sum and f"gvisor.dev/gvisor {version}/go.mod h1:" in go_sum


@pytest.mark.skipif(not Path("/bin/true").exists(), reason="needs /bin/true, a dynamically linked executable")
def test_a_dynamically_linked_build_is_refused(tmp_path: Path) -> None:
    done = build_script(tmp_path, "/bin/true")
    assert done.returncode == 1 and "dynamically linked" in done.stderr, done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "cache" / "runsc.json").exists()
    assert build_script(tmp_path, "/bin/true", "--check").returncode == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runsc") is None, reason="needs root and Debian's runsc")
def test_a_static_runsc_without_systrap_is_built_but_not_recorded(tmp_path: Path) -> None:
    """Debian's runsc is static but has no systrap: cached, and sigma0 keeps ptrace."""
    debian = shutil.which("runsc")
    assert debian is not None
    done = build_script(tmp_path, debian)
    bin_folder = tmp_path / "cache" / pinned_version() / "bin"
    assert done.returncode == 0 and done.stdout.strip() == str(bin_folder), done.stderr
    assert "does not start a systrap sandbox" in done.stderr
    assert not (tmp_path / "cache" / "runsc.json").exists()
    assert sorted(p.name for p in bin_folder.iterdir()) == ["containerd-shim-runsc-v1", "runsc"]
    assert "CGO_ENABLED" not in (tmp_path / "go.log").read_text()  # set in the environment, not as a flag
    # warm: no second build, and --check reports the cached folder
    assert build_script(tmp_path, debian).returncode == 0
    assert len((tmp_path / "go.log").read_text().splitlines()) == 1
    check = build_script(tmp_path, debian, "--check")
    assert check.returncode == 0 and check.stdout.strip() == str(bin_folder)


def record_batch_roots(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runsc folders (--root, TMPDIR) of the batches started from now on, in the order they were made."""
    roots: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording(prefix: str) -> str:
        folder = mkdtemp(prefix=prefix)
        if prefix == "sigma0-runsc-":
            roots.append(folder)
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return roots


@pytest.mark.gvisor
@pytest.mark.skipif(os.geteuid() != 0 or REAL_BUILD is None, reason="needs root and scripts/build-gvisor.sh's build")
def test_a_runsc_that_runs_systrap_is_recorded_and_then_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert REAL_BUILD is not None
    done = build_script(tmp_path, REAL_BUILD[0])
    assert done.returncode == 0, done.stderr
    entry = json.loads((tmp_path / "cache" / "runsc.json").read_text())
    bin_folder = tmp_path / "cache" / pinned_version() / "bin"
    assert entry["runsc"] == str(bin_folder / "runsc") and entry["platform"] == "systrap"
    assert entry["shim"] == str(bin_folder / "containerd-shim-runsc-v1") and entry["kernel"] == KERNEL
    use(monkeypatch, {"PATH": str(tmp_path / "empty"), "SIGMA0_GVISOR_CACHE": str(tmp_path / "cache")})
    assert find_runsc() == Runsc(str(bin_folder / "runsc"), "systrap", "sigma0's build", pinned_version())
    # and a batch really runs there, its runsc state (--root, TMPDIR) in a folder of its own that is gone afterwards
    roots = record_batch_roots(monkeypatch)
    slow = "import time\ndef f():\n    time.sleep(1.5)\n    return 7\n"
    programs = [from_asserts("slow", "f", slow, ["assert f() == 7"]),
                from_asserts("ok", "f", "def f(): return 7", ["assert f() == 7"]),
                from_asserts("bad", "f", "def f(): return 2", ["assert f() == 7"])]  # fmt: skip
    verdicts, inside = {}, []
    for verdict in run_programs(programs, sandbox="gvisor", workers=2, timeout=10, limits=Limits()):
        if not verdicts:  # "slow" is still running: its sandbox's state is in the batch's folder, not in /tmp
            inside = list(Path(roots[0]).glob("runsc-do*"))
        verdicts[verdict.id] = verdict
    assert verdicts["slow"].passed and verdicts["ok"].passed and not verdicts["bad"].passed
    assert inside, "runsc do kept its state elsewhere"
    assert len(roots) == 1 and not Path(roots[0]).exists()


def batch_processes(root: str) -> list[int]:
    """The host processes of a batch's sandboxes: every process whose command line names the batch's runsc folder."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and root.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _allowed_cpus(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


@pytest.mark.gvisor
@pytest.mark.skipif(os.geteuid() != 0 or REAL_BUILD is None, reason="needs root and scripts/build-gvisor.sh's build")
@pytest.mark.parametrize("pin", ["on", "off"])
def test_every_process_of_a_lanes_sandbox_runs_on_the_lanes_one_cpu(
    monkeypatch: pytest.MonkeyPatch, pin: str
) -> None:
    """runsc, its sentry, gofer and systrap stubs: all of a lane's host processes are pinned to its CPU, and the two
    lanes to different CPUs; with SIGMA0_PIN_LANES=off they may run anywhere this process may. This process keeps to
    two CPUs meanwhile, so that its two lanes cover them on a machine with more."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(everywhere)[:2])
    try:
        _check_the_lanes_cpus(monkeypatch, pin)
    finally:
        os.sched_setaffinity(0, everywhere)


def _check_the_lanes_cpus(monkeypatch: pytest.MonkeyPatch, pin: str) -> None:
    monkeypatch.setenv("SIGMA0_PIN_LANES", pin)
    monkeypatch.delenv("SIGMA0_RUNSC", raising=False)
    monkeypatch.delenv("SIGMA0_RUNSC_PLATFORM", raising=False)
    roots = record_batch_roots(monkeypatch)
    slow = "import time\ndef f():\n    time.sleep(2)\n    return 7\n"
    programs = [from_asserts("ok", "f", "def f(): return 7", ["assert f() == 7"]),
                from_asserts("slow-1", "f", slow, ["assert f() == 7"]),
                from_asserts("slow-2", "f", slow, ["assert f() == 7"])]  # fmt: skip
    seen: dict[int, str] = {}
    for verdict in run_programs(programs, sandbox="gvisor", workers=2, timeout=10, limits=Limits()):
        assert verdict.passed, verdict
        if not seen:  # both lanes are still busy with a slow one
            for pid in batch_processes(roots[0]):
                with contextlib.suppress(OSError):
                    seen[pid] = _allowed_cpus(pid)
    ours = sorted(os.sched_getaffinity(0))
    assert len(seen) >= 4, seen  # at least runsc and its sentry, per lane
    if pin == "off":
        assert set(seen.values()) == {_allowed_cpus(os.getpid())}
    else:
        assert all(cpus.isdigit() for cpus in seen.values()), seen  # one CPU each
        assert {int(cpus) for cpus in seen.values()} == set(ours[:2]), seen


@pytest.mark.gvisor
@pytest.mark.skipif(os.geteuid() != 0 or REAL_BUILD is None, reason="needs root and scripts/build-gvisor.sh's build")
def test_a_batch_stopped_while_a_run_left_a_detached_process_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack on a gVisor worker's end, which kills nothing itself (it is the sandbox's init): a candidate
    leaves a detached process and is still running when the batch is stopped. Every host process of the batch's
    sandboxes must be gone soon after, and their folder with them."""
    monkeypatch.delenv("SIGMA0_RUNSC", raising=False)
    monkeypatch.delenv("SIGMA0_RUNSC_PLATFORM", raising=False)
    roots = record_batch_roots(monkeypatch)
    daemon = ("import os, time\ndef f():\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(120)\n"
              "        os._exit(0)\n    time.sleep(30)\n    return 7\n")
    programs = [from_asserts("ok", "f", "def f(): return 7", ["assert f() == 7"]),
                from_asserts("daemon", "f", daemon, ["assert f() == 7"])]  # fmt: skip
    batch = run_programs(programs, sandbox="gvisor", workers=2, timeout=60, limits=Limits())
    first = next(batch)
    assert first.id == "ok" and first.passed
    batch.close()  # the daemon's run, and the process it detached, are still there
    deadline = time.monotonic() + 10
    while batch_processes(roots[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not batch_processes(roots[0]), "processes of the stopped batch's sandboxes outlived it"
    assert not Path(roots[0]).exists()
