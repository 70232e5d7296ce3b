"""Start or stop the test cluster by hand.

    python -m tests.cluster up   [--workdir DIR] [--gpus N] [--runtime kubelet]   # runs until Ctrl-C or `down`
    python -m tests.cluster down [--workdir DIR]

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and the node: the stand-in
node and the pod executor, or with --runtime kubelet the real node (kubelet, containerd, runc, gVisor);
it prints the lines to paste into another shell (export KUBECONFIG=...), writes them to
DIR/env.sh as well, and stays in the foreground: the node's heartbeats and the pod executor live
in this process. Ctrl-C, SIGTERM or `down` tears everything down. The default DIR is
/tmp/sigma0-cluster; it is wiped when `up` starts and kept after `down` (its logs/ are useful).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from .cluster import K8S_VERSION, RUNTIMES, Cluster
from .controlplane import ClusterError, stop_from_state
from .kubeletnode import sweep_stale

DEFAULT_DIR = Path("/tmp/sigma0-cluster")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def up(workdir: Path, gpus: int, runtime: str = "podexecutor") -> int:
    pidfile = workdir / "up.pid"
    if pidfile.exists() and _alive(int(pidfile.read_text())):
        print(
            f"a cluster is already up in {workdir} (pid {pidfile.read_text()}); "
            f"`python -m tests.cluster down --workdir {workdir}` stops it",
            file=sys.stderr,
        )
        return 1
    if workdir.exists():
        stop_from_state(workdir)
        sweep_stale()  # a killed kubelet node's processes and mounts go before its folder does
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    pidfile.write_text(str(os.getpid()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    c = Cluster(workdir, gpus=gpus, runtime=runtime)
    try:
        try:
            c.start()
        except ClusterError as e:
            print(f"cluster did not start: {e}", file=sys.stderr)
            return 1
        env = f"export KUBECONFIG={c.kubeconfig}\nexport PATH={c.bin_dir}:$PATH  # kubectl {K8S_VERSION}\n"
        (workdir / "env.sh").write_text(env)
        print(
            f"cluster up in {c.start_seconds:.1f} s: API server {c.server}, node {c.node_name}\n"
            f"in another shell:\n\n{env}\n"
            f"or: source {workdir / 'env.sh'}\n"
            f"pod logs: {workdir / 'pods'}; component logs: {workdir / 'logs'}\n"
            f"stop with Ctrl-C here or: python -m tests.cluster down --workdir {workdir}",
            flush=True,
        )
        while not stop.wait(1):
            c.check_alive()
        return 0
    except ClusterError as e:
        print(f"cluster failed: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping the cluster ...", file=sys.stderr, flush=True)
        c.stop(keep_workdir=True)
        pidfile.unlink(missing_ok=True)
        print("stopped", file=sys.stderr)


def down(workdir: Path) -> int:
    pidfile = workdir / "up.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
    if stop_from_state(workdir):  # `up` was killed before it could clean up
        print(f"ended the control-plane processes recorded in {workdir}/state.json")
    for tag in sweep_stale():
        print(f"removed what the killed kubelet node {tag} left (processes, mounts, cgroups, bridge, rules)")
    print(f"cluster in {workdir} is down")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--workdir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--gpus", type=int, default=1, help="nvidia.com/gpu capacity of the node (default 1)")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="podexecutor",
        help="the node: kubelet (real, on containerd) or podexecutor (the stand-in; default)",
    )
    a = p.parse_args(argv)
    return up(a.workdir, a.gpus, a.runtime) if a.command == "up" else down(a.workdir)


if __name__ == "__main__":
    sys.exit(main())
