"""The operator on the real control plane (issue 7, item 3): `sigma0 operator` as a subprocess under its
ServiceAccount (manifests/10-rbac.yaml), against the upstream kube-apiserver, etcd, controller-manager and scheduler
of tests/cluster, whose one node's pods the test pod executor runs.

    python bench/operator_cycles.py                                # the whole bench, about 17 minutes here
    python bench/operator_cycles.py --scale-repeats 1 --json results.json
    python bench/operator_cycles.py --recording rec.json           # replay an earlier run's recording (no real cycles)
    python bench/operator_cycles.py --stages real --latency-cycles 2 --scale-cycles 4 --releases 2

Phases, in this order, one operator process throughout:

  real     `--real-cycles` (2) cycles of examples/cycle.yaml, one after another in one release, with their real
           stage commands (tiny CPU model; verify and score pods under gVisor). The first bootstraps the release,
           the second is evaluated against it. Their stage pods' termination messages are the recording.
  latency  `--latency-cycles` (5) cycles one after another in one release, stages `--stages` (replay): apply →
           first Job, and every stage transition.
  scale    `--scale-cycles` (100) cycles across `--releases` (10) releases in one `kubectl apply`, stages `--stages`
           (replay), `--scale-repeats` (3) times (each in a fresh namespace): time until all are decided, the
           operator's peak memory and CPU, the API requests it made.
  idle     `--idle-seconds` (65) with nothing to do: the requests of the periodic resync alone.

Replay (bench/replay.py, like kwok): a stage pod ends at once with the termination message the real run of its
step wrote; it measures the operator and the API server, not the stages. Every figure says which mode made it.

Times come from the benchmark's own watches (bench/timeline.py: object timestamps have 1 s resolution). API
requests are the API server's count (bench/audit.py: an audit policy that records the operator's ServiceAccount
only). Memory is the RSS of the operator's process tree, sampled every 100 ms with psutil. The node reports
`--node-cpu` cores, `--node-memory` and `--gpus` GPUs, so that with replayed stages the node's size does not
queue the lanes (a kwok-like fake capacity; real stages use this machine's 2 cores whatever the node says).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.cluster: the control plane and the pod executor

# bench/*.py: scripts here run as `python bench/NAME.py`
from audit import AuditLog, breakdown, codes, policy  # noqa: E402
from machine import describe  # noqa: E402
from replay import Recording  # noqa: E402
from timeline import Timeline, Transition  # noqa: E402

from tests.cluster.cluster import K8S_VERSION, Cluster  # noqa: E402
from tests.cluster.controlplane import AUDIT_POLICY_ENV, free_port, kill_group  # noqa: E402
from tests.cluster.controlplane import _die_with_parent as die_with_parent  # noqa: E402
from tests.cluster.podexecutor import PodWorker, stage_pod_user  # noqa: E402

EXAMPLE = ROOT / "examples" / "cycle.yaml"
MANIFESTS = ROOT / "manifests"
OPERATOR_USER = "system:serviceaccount:sigma0-system:sigma0-operator"
TARGET_FIRST_JOB_S = 1.0
TARGET_RSS_MIB = round(200e6 / 2**20, 1)  # the issue says 200 MB: 190.7 MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-cycles", type=int, default=2, help="real cycles to record (0 with --recording)")
    parser.add_argument("--recording", type=Path, help="replay this recording instead of recording real cycles")
    parser.add_argument("--save-recording", type=Path, help="write the recording here")
    parser.add_argument("--stages", choices=("replay", "real"), default="replay",
                        help="stage pods of the latency and scale phases (default replay)")
    parser.add_argument("--latency-cycles", type=int, default=5)
    parser.add_argument("--scale-cycles", type=int, default=100)
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--scale-repeats", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=65.0)
    parser.add_argument("--resync-seconds", type=float, default=30.0, help="the operator's (its default: 30)")
    parser.add_argument("--watch-timeout", type=int, default=60, help="the operator's (its default: 60)")
    parser.add_argument("--gpus", type=int, default=10, help="nvidia.com/gpu the node reports")
    parser.add_argument("--node-cpu", default="64", help="cpu the node reports")
    parser.add_argument("--node-memory", default="512Gi", help="memory the node reports")
    parser.add_argument("--cycle-timeout", type=float, default=900.0, help="seconds one cycle may take (real)")
    parser.add_argument("--scale-timeout", type=float, default=1800.0, help="seconds the scale phase may take")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles of the operator here (scale phase)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the operator process (diagnostics, e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    if args.recording is None and args.real_cycles < 1 and args.stages == "replay":
        parser.error("replay needs a recording: --real-cycles 1 or more, or --recording FILE")

    check_client()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, kill: tear the cluster down all the same
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sigma0-opbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "audit-policy.yaml").write_text(policy(OPERATOR_USER))
    os.environ[AUDIT_POLICY_ENV] = str(workdir / "audit-policy.yaml")
    info = describe(("sigma0", "kopf", "kubernetes", "psutil"))
    info["load_start"] = os.getloadavg()
    cluster = Cluster(workdir / "cluster", gpus=args.gpus, cpu=args.node_cpu, memory=args.node_memory)
    bench = None
    try:
        cluster.start()
        bench = Bench(cluster, workdir, args)
        results = bench.run()
    finally:
        if bench is not None:
            bench.close()
        cluster.stop(keep_workdir=args.workdir is not None)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    info["load_end"] = os.getloadavg()
    report(info, args, results)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1, default=str))


def check_client() -> None:
    import kubernetes

    if kubernetes.__version__ == "36.0.0":
        raise SystemExit(
            "the kubernetes Python client 36.0.0 sends no Authorization header for a bearer token "
            "(kubernetes-client/python#2582): every request of the operator's ServiceAccount would be "
            "system:anonymous and be refused. Install 36.0.3 (pip install kubernetes==36.0.3), or put a copy of it "
            "first on PYTHONPATH for this run (pip install --no-deps --target DIR kubernetes==36.0.3)."
        )


# The platform: CRDs, RBAC, RuntimeClass, the operator ----------------------------------------------------------------


class Operator:
    """`python -m sigma0 operator` with the ServiceAccount's kubeconfig, its memory and CPU sampled."""

    def __init__(self, kubeconfig: Path, log: Path, run_as_user: int, resync: float, watch_timeout: int,
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.liveness = free_port()
        self.command = [sys.executable, "-m", "sigma0", "operator", "--kubeconfig", str(kubeconfig),
                        "--all-namespaces", "--run-as-user", str(run_as_user), "--resync-seconds", f"{resync:g}",
                        "--watch-timeout", str(watch_timeout), "--metrics-port", str(free_port()),
                        "--liveness-port", str(self.liveness)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss bytes, cpu seconds) of the tree
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> float:
        """Start it and wait for its liveness endpoint; the seconds that took."""
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=ROOT, env=self.env,
                                         preexec_fn=die_with_parent)  # never outlives the bench
        self._sampler.start()
        deadline = started + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"the operator's liveness endpoint did not answer in 120 s:\n{self.tail()}")

    def _sample(self) -> None:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            rss, cpu = 0, 0.0
            try:
                for process in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += process.memory_info().rss
                        times = process.cpu_times()
                        cpu += times.user + times.system
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic(), rss, cpu))
            self._stop.wait(0.1)

    def timeline(self, start: float, end: float, step: float = 1.0) -> list[tuple[float, float]]:
        """(seconds after `start`, RSS MiB), the largest sample of each `step` seconds."""
        buckets: dict[int, float] = {}
        for at, rss, _ in self.samples:
            if start <= at <= end:
                bucket = int((at - start) / step)
                buckets[bucket] = max(buckets.get(bucket, 0.0), rss / 2**20)
        return [(round(bucket * step, 1), round(mib, 1)) for bucket, mib in sorted(buckets.items())]

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(peak RSS in MiB, CPU seconds) between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return float("nan"), float("nan")
        before = [s for s in self.samples if s[0] < start]
        cpu_start = before[-1][2] if before else inside[0][2]
        return max(s[1] for s in inside) / 2**20, inside[-1][2] - cpu_start

    def errors_logged(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(" ERROR " in line or line.startswith("Traceback") for line in text.splitlines())

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        kill_group(self.proc.pid, grace_s=20)
        self.proc.wait(timeout=10)


# Measurements -------------------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """What one phase measured. Lists hold one value per cycle (or per transition); seconds unless named."""

    name: str
    mode: str
    cycles: int
    releases: int
    wall: float = 0.0  # apply → the last cycle decided
    apply_seconds: list[float] = field(default_factory=list)  # `kubectl apply` itself
    apply_to_first_job: list[float] = field(default_factory=list)  # cycles admitted at once
    seen_to_first_job: list[float] = field(default_factory=list)
    handover: list[float] = field(default_factory=list)  # previous cycle of the release decided → first Job
    apply_to_decided: list[float] = field(default_factory=list)
    pod_to_job_done: list[float] = field(default_factory=list)
    job_done_to_next: list[float] = field(default_factory=list)
    pod_to_next: list[float] = field(default_factory=list)
    slowest_transitions: list[str] = field(default_factory=list)
    requests: int = 0
    requests_per_cycle: list[float] = field(default_factory=list)
    request_breakdown: dict[str, int] = field(default_factory=dict)
    response_codes: dict[str, int] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    peak_rss_at: float = 0.0  # seconds after the phase began
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB), 1 s buckets
    cpu_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    watch_events: dict[str, int] = field(default_factory=dict)  # in the phase's namespace, by kind
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end


class Bench:
    def __init__(self, cluster: Cluster, workdir: Path, args: argparse.Namespace) -> None:
        self.cluster, self.workdir, self.args = cluster, workdir, args
        self.artifacts = workdir / "artifacts"
        self.operator: Operator | None = None
        self.timeline = Timeline(cluster.admin)
        assert cluster.control_plane is not None
        self.audit = AuditLog(cluster.control_plane.audit_log)
        self.recording: Recording | None = None
        self.profilers: list[subprocess.Popen[bytes]] = []

    # Set-up ---------------------------------------------------------------------------------------------------------

    def install(self) -> dict[str, float]:
        c = self.cluster
        c.kubectl("apply", "-f", str(ROOT / "crds"))
        for name in ("00-namespace.yaml", "10-rbac.yaml", "20-runtimeclass.yaml"):
            c.kubectl("apply", "-f", str(MANIFESTS / name))
        c.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/trainingcycles.sigma0.dev",
                  "crd/adapterreleases.sigma0.dev")
        shutil.copytree(ROOT / "examples" / "corpus", self.artifacts / "corpus", dirs_exist_ok=True)
        for path in (self.artifacts, *self.artifacts.rglob("*")):
            path.chmod(0o777 if path.is_dir() else 0o666)
        token = c.service_account_token("sigma0-system", "sigma0-operator", seconds=8 * 3600)
        assert c.control_plane is not None
        kubeconfig = self.workdir / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "bench", "cluster": {"server": c.server,
                                                       "certificate-authority": str(c.control_plane.ca)}}],
            "users": [{"name": "sigma0-operator", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "bench", "user": "sigma0-operator"}}]}))
        self.timeline.start()
        env = dict(item.split("=", 1) for item in self.args.operator_env)
        self.operator = Operator(kubeconfig, self.workdir / "operator.log", stage_pod_user(), self.args.resync_seconds,
                                 self.args.watch_timeout, env)
        started = time.monotonic()
        ready = self.operator.start()
        time.sleep(2)  # let its watches settle before anything is measured
        return {"cluster_start_s": c.start_seconds, "operator_ready_s": ready,
                "operator_rss_at_start_mib": self.operator.window(started, time.monotonic())[0]}

    def namespace(self, hint: str) -> str:
        """A fresh namespace with the default artifacts claim, bound to the shared artifacts folder."""
        ns = self.cluster.create_namespace(hint)
        admin = self.cluster.admin
        admin.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"artifacts-{ns}"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(self.artifacts)}}})
        admin.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sigma0-artifacts"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"artifacts-{ns}",
                     "resources": {"requests": {"storage": "1Gi"}}}})
        return ns

    def stages(self, mode: str) -> None:
        assert self.cluster.executor is not None
        if mode == "real":
            self.cluster.executor.worker_factory = PodWorker
            return
        if self.recording is None:
            raise SystemExit("replay needs a recording")
        self.cluster.executor.worker_factory = self.recording.worker_factory()

    # Phases ---------------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"setup": self.install(), "phases": []}
        args = self.args
        if args.recording:
            self.recording = Recording.load(args.recording)
        if args.real_cycles > 0:
            results["phases"].append(self.one_after_another("real", "real", args.real_cycles))
            self.recording = self.recording or self.record(results["phases"][-1]["namespace"])
        if self.recording is not None:
            results["recorded_steps"] = self.recording.steps()
            if args.save_recording:
                self.recording.save(args.save_recording)
        if args.latency_cycles > 0:
            results["phases"].append(self.one_after_another("latency", args.stages, args.latency_cycles))
        for repeat in range(args.scale_repeats):
            results["phases"].append(self.all_at_once(f"scale{repeat + 1}", args.stages, args.scale_cycles,
                                                      args.releases))
        if args.idle_seconds > 0:
            results["idle"] = self.idle(args.idle_seconds)
        assert self.operator is not None
        results["operator_errors_logged"] = self.operator.errors_logged()
        results["watch_errors"] = self.timeline.errors[:20]
        return results

    def record(self, namespace: str) -> Recording:
        pods = self.cluster.admin.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        recording = Recording.from_pods(pods)
        missing = [s for s in ("harvest", "verify", "dataset", "train", "generate", "score-candidate", "decide")
                   if not any(s in steps for steps in recording.messages.values())]
        if missing:
            raise SystemExit(f"the real cycles left no termination message for {missing}: {recording.steps()}")
        return recording

    def one_after_another(self, phase: str, mode: str, count: int) -> dict[str, Any]:
        """`count` cycles of one release, each applied once the one before is decided."""
        self.stages(mode)
        ns = self.namespace(f"bench-{phase}")
        result = PhaseResult(phase, mode, count, 1, load=(os.getloadavg()[0], 0.0))
        first_wall = first_mono = 0.0
        marks: list[tuple[float, float]] = []  # (wall, monotonic) of each apply
        names = [f"{phase}-{index + 1}" for index in range(count)]
        for name in names:
            started_wall, started, took = self.apply(ns, [cycle_document(name, release=phase)])
            marks.append((started_wall, started))
            if name == names[0]:
                first_wall, first_mono = started_wall, started
            result.apply_seconds.append(took)
            self.wait(ns, [name], self.args.cycle_timeout)
            self.per_cycle(result, ns, name, started)
            time.sleep(2)  # what the operator does right after a decision belongs to this cycle
        end_wall, end = time.time(), time.monotonic()
        result.wall = end - first_mono
        bounds = [*(wall for wall, _ in marks[1:]), end_wall]
        for (wall, _), until in zip(marks, bounds, strict=True):
            result.requests_per_cycle.append(len(self.audit.between(wall, until)))
        self.totals(result, ns, first_wall, end_wall, first_mono, end)
        result.load = (result.load[0], os.getloadavg()[0])
        return {"namespace": ns, **asdict(result)}

    def all_at_once(self, phase: str, mode: str, count: int, releases: int) -> dict[str, Any]:
        """`count` cycles across `releases` releases, applied together: queued one at a time per release."""
        self.stages(mode)
        ns = self.namespace(f"bench-{phase}")
        result = PhaseResult(phase, mode, count, releases, load=(os.getloadavg()[0], 0.0))
        names = [f"c{index:03d}" for index in range(count)]
        documents = [cycle_document(name, release=f"rel-{index % releases}") for index, name in enumerate(names)]
        profiler = self.profile(phase)
        started_wall, started, took = self.apply(ns, documents)
        result.apply_seconds.append(took)
        self.wait(ns, names, self.args.scale_timeout)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            profiler.wait(timeout=60)
        result.wall = max(c.decided or 0.0 for c in self.cycles(ns)) - started
        by_release: dict[str, list[str]] = {}
        for index, name in enumerate(names):
            by_release.setdefault(f"rel-{index % releases}", []).append(name)
        for release_names in by_release.values():
            for before, name in zip([None, *release_names], release_names, strict=False):
                self.per_cycle(result, ns, name, started, queued_behind=before)
        time.sleep(2)  # what the operator does right after the last decision belongs to this phase
        self.totals(result, ns, started_wall, time.time(), started, time.monotonic())
        result.requests_per_cycle = [result.requests / count]
        result.load = (result.load[0], os.getloadavg()[0])
        return {"namespace": ns, **asdict(result)}

    def idle(self, seconds: float) -> dict[str, Any]:
        """Nothing left to do: what the periodic resync alone costs."""
        assert self.operator is not None
        start_wall, start = time.time(), time.monotonic()
        time.sleep(seconds)
        requests = self.audit.between(start_wall, time.time())
        peak, cpu = self.operator.window(start, time.monotonic())
        cycles = len(self.timeline.cycles)
        return {"seconds": seconds, "requests": len(requests), "per_minute": len(requests) * 60 / seconds,
                "breakdown": dict(breakdown(requests).most_common()), "peak_rss_mib": peak, "cpu_seconds": cpu,
                "cycles_in_cluster": cycles}

    # Pieces ---------------------------------------------------------------------------------------------------------

    def apply(self, namespace: str, documents: list[dict[str, Any]]) -> tuple[float, float, float]:
        """`kubectl apply -f -`: (wall clock and monotonic time it was started, seconds it took)."""
        text = yaml.safe_dump_all(documents)
        wall, started = time.time(), time.monotonic()
        done = self.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False, timeout=600)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"kubectl apply failed: {done.stderr}")
        return wall, started, took

    def wait(self, namespace: str, names: list[str], timeout: float) -> None:
        if not self.timeline.wait_until(lambda: self.timeline.decided(namespace, names), timeout):
            raise SystemExit(f"not all cycles were decided within {timeout:.0f} s\n{self.diagnostics(namespace)}")

    def cycles(self, namespace: str) -> list[Any]:
        return [c for c in self.timeline.cycles.values() if c.namespace == namespace]

    def per_cycle(self, result: PhaseResult, ns: str, name: str, applied: float,
                  queued_behind: str | None = None) -> None:
        times = self.timeline.cycles[(ns, name)]
        first = self.timeline.first_job(ns, name)
        assert times.decided is not None
        result.apply_to_decided.append(times.decided - applied)
        result.outcomes[times.outcome or "?"] = result.outcomes.get(times.outcome or "?", 0) + 1
        if first is not None:
            if queued_behind is None:
                result.apply_to_first_job.append(first - applied)
                result.seen_to_first_job.append(first - times.seen)
            else:
                before = self.timeline.cycles[(ns, queued_behind)].decided
                assert before is not None
                result.handover.append(first - before)
        for step in self.timeline.transitions(ns, name):
            add(result.pod_to_job_done, step.pod_to_job_done)
            add(result.job_done_to_next, step.job_done_to_next)
            add(result.pod_to_next, step.pod_to_next)
            if step.job_done_to_next is not None and step.job_done_to_next > 1.0:
                result.slowest_transitions.append(describe_transition(step))

    def totals(self, result: PhaseResult, ns: str, start_wall: float, end_wall: float, start: float,
               end: float) -> None:
        assert self.operator is not None
        requests = self.audit.between(start_wall, end_wall)
        result.requests = len(requests)
        result.request_breakdown = dict(breakdown(requests).most_common())
        result.response_codes = {str(k): v for k, v in sorted(codes(requests).items())}
        result.peak_rss_mib, result.cpu_seconds = self.operator.window(start, end)
        result.rss_timeline = self.operator.timeline(start, end)
        result.peak_rss_at = max(result.rss_timeline, key=lambda point: point[1], default=(0.0, 0.0))[0]
        result.watch_events = self.timeline.events_in(ns)
        result.slowest_transitions = sorted(result.slowest_transitions, reverse=True)[:5]

    def profile(self, phase: str) -> subprocess.Popen[bytes] | None:
        if self.args.profile is None or self.operator is None or self.operator.proc is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = self.args.profile / f"operator-{phase}.speedscope.json"
        spy = Path(sys.executable).parent / "py-spy"
        command = [str(spy), "record", "--pid", str(self.operator.proc.pid), "--format", "speedscope", "--rate",
                   "100", "--subprocesses", "--threads", "--output", str(out)]
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.profilers.append(profiler)
        return profiler

    def diagnostics(self, namespace: str) -> str:
        phases = Counter(c.phase or "New" for c in self.cycles(namespace))
        lines = [f"phases: {dict(phases)}"]
        for what in ("tc", "jobs", "pods"):
            lines.append(self.cluster.kubectl("get", what, "-n", namespace, check=False).stdout[-3000:])
        if self.operator is not None:
            lines.append("--- operator log:\n" + self.operator.tail())
        return "\n".join(lines)

    def close(self) -> None:
        for profiler in self.profilers:
            if profiler.poll() is None:
                profiler.kill()
        self.timeline.stop()
        if self.operator is not None:
            self.operator.stop()


def cycle_document(name: str, release: str) -> dict[str, Any]:
    document = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    document["metadata"]["name"] = name
    document["spec"]["release"] = release
    return document


def add(values: list[float], value: float | None) -> None:
    if value is not None:
        values.append(value)


def describe_transition(step: Transition) -> str:
    return f"{step.job_done_to_next:.2f} s {step.cycle}: {step.after} → {step.to}"


# The report ---------------------------------------------------------------------------------------------------------


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return f"{'—':>8}{'—':>9}{'—':>9}{'':>6}"
    found = [v * scale for v in values]
    return (f"{min(found):8.{digits}f}{statistics.median(found):9.{digits}f}{max(found):9.{digits}f}"
            f"{len(found):6d}")


def verdict(value: float, limit: float) -> str:
    return f"{'met' if value < limit else 'MISSED'}: {value / limit:.2f}x the target {limit:g}"


def report(info: dict[str, Any], args: argparse.Namespace, results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(f"machine: {info['cores']} cores, {info['cpu']}; load (1 min) {info['load_start'][0]:.1f} at start, "
          f"{info['load_end'][0]:.1f} at end")
    print(f"versions: python {info['python']}, kubernetes {K8S_VERSION} (apiserver, controller-manager, scheduler; "
          f"etcd 3.6.8), kopf {info['kopf']}, kubernetes client {info['kubernetes']}, sigma0 {info['sigma0']}")
    print(f"operator: one replica, `sigma0 operator --resync-seconds {args.resync_seconds:g} --watch-timeout "
          f"{args.watch_timeout}`, ServiceAccount sigma0-system/sigma0-operator; ready "
          f"{setup['operator_ready_s']:.1f} s after start, RSS {setup['operator_rss_at_start_mib']:.0f} MiB; "
          f"node reports {args.node_cpu} cpu, "
          f"{args.node_memory}, {args.gpus} GPUs")
    print(f"recorded steps: {results.get('recorded_steps')}")
    print("each figure: min / median / max over n (cycles, transitions or repeats), seconds unless named\n")
    header = f"{'figure':<52}{'min':>8}{'median':>9}{'max':>9}{'n':>6}   target"
    for phase in results["phases"]:
        name, mode = phase["name"], phase["mode"]
        if phase["releases"] == 1:
            title = f"{phase['cycles']} cycles of one release, one after another"
        else:
            title = f"{phase['cycles']} cycles across {phase['releases']} releases, applied at once"
        print(f"[{name}] {title}; stage pods: {mode.upper()}; load {phase['load'][0]:.1f} → {phase['load'][1]:.1f}")
        print(header)
        first = phase["apply_to_first_job"]
        rows = [
            ("kubectl apply itself", phase["apply_seconds"], ""),
            ("apply → first Job (kubectl start → Job seen)", first,
             verdict(statistics.median(first), TARGET_FIRST_JOB_S) if first else ""),
            ("cycle seen → first Job", phase["seen_to_first_job"], ""),
            ("queue: previous cycle decided → next first Job", phase["handover"], ""),
            ("pod ended → Job Complete (Job controller)", phase["pod_to_job_done"], ""),
            ("Job Complete → next Job created (operator)", phase["job_done_to_next"], ""),
            ("pod ended → next Job created", phase["pod_to_next"], ""),
            ("apply → cycle decided", phase["apply_to_decided"], ""),
        ]
        for label, values, target in rows:
            if values:
                print(f"{label:<52}{spread(values)}   {target}")
        per_cycle = phase["requests_per_cycle"]
        print(f"{'API requests by the operator, per cycle':<52}{spread(per_cycle, digits=1)}")
        print(f"whole phase: {phase['wall']:.1f} s until the last cycle was decided; {phase['requests']} API requests "
              f"({phase['requests'] / phase['cycles']:.1f} per cycle; codes {phase['response_codes']}); operator peak "
              f"RSS {phase['peak_rss_mib']:.0f} MiB (at +{phase['peak_rss_at']:.0f} s), "
              f"{verdict(phase['peak_rss_mib'], TARGET_RSS_MIB)}; operator CPU "
              f"{phase['cpu_seconds']:.1f} s ({phase['cpu_seconds'] / phase['cycles']:.2f} s per cycle); outcomes "
              f"{phase['outcomes']}")
        top = list(phase["request_breakdown"].items())[:12]
        print("requests by kind: " + ", ".join(f"{kind} {count}" for kind, count in top))
        events = phase["watch_events"]
        per_cycle_events = ", ".join(f"{kind} {n / phase['cycles']:.1f}" for kind, n in sorted(events.items()))
        print(f"watch events per cycle (the operator reconciles on each; reconciles ≈ get trainingcycles): "
              f"{per_cycle_events}")
        if phase["slowest_transitions"]:
            print("slowest Job Complete → next Job: " + "; ".join(phase["slowest_transitions"]))
        print()
    scale = [p for p in results["phases"] if p["releases"] > 1]
    if len(scale) > 1:
        print(f"[scale] over {len(scale)} repeats (one operator process throughout: later repeats start with the "
              "earlier ones' cycles in the cluster)")
        print(header)
        print(f"{'time until all decided':<52}{spread([p['wall'] for p in scale])}")
        rss = [p["peak_rss_mib"] for p in scale]
        rss_verdict = verdict(statistics.median(rss), TARGET_RSS_MIB)
        print(f"{'operator peak RSS, MiB':<52}{spread(rss, digits=0)}   {rss_verdict}")
        print(f"{'API requests per cycle':<52}{spread([p['requests'] / p['cycles'] for p in scale], digits=1)}")
        print(f"{'operator CPU seconds':<52}{spread([p['cpu_seconds'] for p in scale], digits=1)}")
        print()
    idle = results.get("idle")
    if idle:
        print(f"[idle] {idle['seconds']:.0f} s with {idle['cycles_in_cluster']} decided cycles in the cluster: "
              f"{idle['requests']} requests ({idle['per_minute']:.1f} per minute: "
              + ", ".join(f"{k} {v}" for k, v in idle["breakdown"].items())
              + f"); peak RSS {idle['peak_rss_mib']:.0f} MiB, CPU {idle['cpu_seconds']:.1f} s")
    print(f"operator log: {results['operator_errors_logged']} error lines; bench watch errors: "
          f"{len(results['watch_errors'])}")
    print_targets(results["phases"])


def print_targets(phases: list[dict[str, Any]]) -> None:
    print("\ntargets (medians; the mode that made each figure in brackets)")
    for phase in phases:
        if phase["apply_to_first_job"]:
            first = statistics.median(phase["apply_to_first_job"])
            print(f"  first Job < {TARGET_FIRST_JOB_S:g} s after apply   [{phase['name']}, {phase['mode']}] "
                  f"{first:.2f} s: {verdict(first, TARGET_FIRST_JOB_S)}")
    for phase in phases:
        print(f"  API requests per cycle, stated  [{phase['name']}, {phase['mode']}] "
              f"{phase['requests'] / phase['cycles']:.0f} per cycle, {phase['cycles']} cycle(s)")
    for phase in phases:
        print(f"  operator < 200 MB ({TARGET_RSS_MIB:g} MiB) [{phase['name']}, {phase['mode']}] peak "
              f"{phase['peak_rss_mib']:.0f} MiB: {verdict(phase['peak_rss_mib'], TARGET_RSS_MIB)}")


if __name__ == "__main__":
    main()
