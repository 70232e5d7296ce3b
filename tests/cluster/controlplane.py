"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, the upstream binaries built by
tests/cluster/build.sh.

Everything lives in one work folder: pki/ (certificates), etcd/ (data),
*.kubeconfig, logs/<component>.log. Ports are random free ports on 127.0.0.1,
so two runs do not collide. Each component runs in its own process group;
`stop()` ends every group (SIGTERM, then SIGKILL).

For fault injection, kube-apiserver alone can go away and come back on the same
port with the same flags while etcd and the controllers keep running:
`stop_apiserver()` (SIGKILL, or SIGTERM with kill=False), `start_apiserver()`,
`restart_apiserver(down_s=...)`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .pki import API_SERVER_HOSTS, Pki

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"
SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# Opt-in, for benchmarks: an audit policy file. kube-apiserver then writes the events it selects to
# logs/audit.log (JSON lines): the server's own count of the requests a client made.
AUDIT_POLICY_ENV = "SIGMA0_AUDIT_POLICY"


class ClusterError(RuntimeError):
    pass


def bin_dir() -> Path:
    """The folder with the built binaries, or ClusterError saying how to build them.

    $SIGMA0_K8S_BIN overrides; otherwise `build.sh --check` finds the cache.
    """
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    env = os.environ.get("SIGMA0_K8S_BIN")
    if env:
        d = Path(env)
    else:
        r = subprocess.run(["bash", str(BUILD_SH), "--check"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ClusterError(
                "the Kubernetes control-plane binaries are not built (or their build is stale): "
                f"run `bash {BUILD_SH.relative_to(HERE.parent.parent)}` first "
                "(a cold build takes 5 to 8 minutes on 2 cores; later runs hit the cache). " + r.stderr.strip()
            )
        d = Path(r.stdout.strip())
    missing = [n for n in names if not os.access(d / n, os.X_OK)]
    if missing:
        raise ClusterError(f"missing binaries in {d}: {', '.join(missing)}; run bash tests/cluster/build.sh")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], log: Path, *, die_with_parent: bool, env: dict | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, ended as a whole
            preexec_fn=_die_with_parent if die_with_parent else None,
            env=env,
        )
    return Proc(name, popen, log)


def kill_group(pid: int, grace_s: float = 10) -> None:
    """SIGTERM the process group `pid` leads, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap the leader if it is our child: no zombie
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sigma0-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "sigma0-test", "context": {"cluster": "sigma0-test", "user": user}}],
        "current-context": "sigma0-test",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    workdir: Path
    bins: Path
    node_name: str = "sigma0-node"
    die_with_parent: bool = True
    # where kube-apiserver listens (and what its certificate names besides API_SERVER_HOSTS): the real kubelet
    # node's bridge address, so that its pods reach it (kubeletnode.py); loopback for the stand-in node
    host: str = "127.0.0.1"
    procs: list[Proc] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.logs = self.workdir / "logs"
        self.api_port = free_port()
        self._apiserver_argv: list[str] = []  # kept for start_apiserver()

    # -- what clients need -------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        return self.workdir / "node.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """Where kube-apiserver writes audit events; only with $SIGMA0_AUDIT_POLICY set (see AUDIT_POLICY_ENV)."""
        return self.logs / "audit.log"

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout_s: float = 90) -> None:
        t0 = time.monotonic()
        self._pki()
        deadline = time.monotonic() + timeout_s
        try:
            self._etcd(deadline)
            self.timings["etcd"] = time.monotonic() - t0
            self._apiserver(deadline)
            self.timings["kube-apiserver"] = time.monotonic() - t0
            self._controllers(deadline)
            self.timings["all"] = time.monotonic() - t0
            self._save_state()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in reversed(self.procs):
            kill_group(p.popen.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
        self.procs.clear()
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    def _save_state(self) -> None:
        (self.workdir / "state.json").write_text(
            json.dumps({"pgids": [p.popen.pid for p in self.procs], "server": self.server})
        )

    # -- pieces --------------------------------------------------------------
    def _pki(self) -> None:
        pki = self.pki = Pki(self.workdir / "pki")
        self.ca = pki.ca_crt
        self.etcd_server = pki.issue("etcd-server", "etcd", server=True, client=True, hosts=("127.0.0.1", "localhost"))
        self.etcd_client = pki.issue("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True)
        hosts = API_SERVER_HOSTS if self.host in API_SERVER_HOSTS else (*API_SERVER_HOSTS, self.host)
        self.apiserver_cert = pki.issue("apiserver", "kube-apiserver", server=True, hosts=hosts)
        self.kubelet_client = pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("kubeadm:cluster-admins",), client=True
        )
        self.sa_key, self.sa_pub = pki.service_account_keys()
        admin = pki.issue("admin", "kubernetes-admin", orgs=("system:masters",), client=True)
        cm = pki.issue("controller-manager", "system:kube-controller-manager", client=True)
        sched = pki.issue("scheduler", "system:kube-scheduler", client=True)
        node = pki.issue("node", f"system:node:{self.node_name}", orgs=("system:nodes",), client=True)
        self.admin_cert, self.node_cert = admin, node
        # the node's kubelet-like log endpoint serves with this one (see node.py)
        self.kubelet_serving = pki.issue("kubelet", f"system:node:{self.node_name}", server=True, hosts=("127.0.0.1",))
        write_kubeconfig(self.kubeconfig, self.server, self.ca, *admin, "kubernetes-admin")
        write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", self.server, self.ca, *cm, "system:kube-controller-manager"
        )
        write_kubeconfig(self.workdir / "scheduler.kubeconfig", self.server, self.ca, *sched, "system:kube-scheduler")
        write_kubeconfig(self.node_kubeconfig, self.server, self.ca, *node, f"system:node:{self.node_name}")

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        p = spawn(name, argv, self.logs / f"{name}.log", die_with_parent=self.die_with_parent)
        self.procs.append(p)
        return p

    def _wait(self, proc: Proc, url: str, deadline: float, ctx: ssl.SSLContext) -> None:
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ClusterError(f"{proc.name} exited with {proc.popen.returncode}; log {proc.log}:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # not up yet
                last = str(e)
            time.sleep(0.2)
        raise ClusterError(f"{proc.name} not healthy at {url} in time ({last}); log {proc.log}:\n{proc.tail()}")

    def _client_ctx(self, cert: tuple[Path, Path]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx

    def _etcd(self, deadline: float) -> None:
        self.etcd_port, peer = free_port(), free_port()
        crt, key = self.etcd_server
        url = f"https://127.0.0.1:{self.etcd_port}"
        p = self._spawn(
            "etcd",
            [
                str(self.bins / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                f"--cert-file={crt}",
                f"--key-file={key}",
                "--client-cert-auth",
                f"--trusted-ca-file={self.ca}",
                "--unsafe-no-fsync",  # a throwaway test store: no fsync, much faster on a busy disk
                "--log-level=warn",
            ],
        )
        self._wait(p, f"{url}/health", deadline, self._client_ctx(self.etcd_client))

    # -- faults: kube-apiserver going away and coming back -----------------------
    def stop_apiserver(self, *, kill: bool = True) -> None:
        """End kube-apiserver (SIGKILL, or SIGTERM for a graceful shutdown); etcd and the rest keep running."""
        proc = self._proc("kube-apiserver")
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
        else:
            kill_group(proc.popen.pid)
        proc.popen.wait(timeout=30)

    def start_apiserver(self, timeout_s: float = 90) -> None:
        """Start kube-apiserver again, with the same flags, port and certificates, and wait until it is ready."""
        old = self._proc("kube-apiserver")
        if old.alive():
            raise ClusterError("kube-apiserver is still running: stop_apiserver() first")
        with (self.logs / "kube-apiserver.log").open("a") as log:
            log.write("\n==== restarted by the test\n")
        new = spawn("kube-apiserver", self._apiserver_argv, old.log, die_with_parent=self.die_with_parent)
        self.procs[self.procs.index(old)] = new
        self._save_state()
        self._wait(new, f"{self.server}/readyz", time.monotonic() + timeout_s, self._client_ctx(self.admin_cert))

    def restart_apiserver(self, *, down_s: float = 0.0, kill: bool = True) -> None:
        """stop_apiserver, `down_s` seconds with no API server, start_apiserver."""
        self.stop_apiserver(kill=kill)
        time.sleep(down_s)
        self.start_apiserver()

    def _proc(self, name: str) -> Proc:
        found = [p for p in self.procs if p.name == name]
        if not found:
            raise ClusterError(f"{name} is not one of this control plane's processes")
        return found[0]

    def _apiserver(self, deadline: float) -> None:
        crt, key = self.apiserver_cert
        ecrt, ekey = self.etcd_client
        kcrt, kkey = self.kubelet_client
        self._apiserver_argv = argv = [
            str(self.bins / "kube-apiserver"),
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.api_port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--etcd-servers=https://127.0.0.1:{self.etcd_port}",
            f"--etcd-cafile={self.ca}",
            f"--etcd-certfile={ecrt}",
            f"--etcd-keyfile={ekey}",
            f"--tls-cert-file={crt}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.ca}",
            "--authorization-mode=Node,RBAC",
            # the default admission plugins (NamespaceLifecycle, LimitRanger, ServiceAccount, RuntimeClass,
            # PodSecurity, Priority, DefaultTolerationSeconds, ResourceQuota, webhooks, ...) plus NodeRestriction
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.sa_pub}",
            f"--service-account-signing-key-file={self.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # no kube-proxy and no pod network here; a loopback address is not a valid Endpoints address
            "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={kcrt}",
            f"--kubelet-client-key={kkey}",
            f"--kubelet-certificate-authority={self.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false",
            "--v=1",
            *self._audit_flags(),
        ]
        p = self._spawn("kube-apiserver", argv)
        self._wait(p, f"{self.server}/readyz", deadline, self._client_ctx(self.admin_cert))

    def _audit_flags(self) -> list[str]:
        policy = os.environ.get(AUDIT_POLICY_ENV)
        if not policy:
            return []
        # the log backend's default mode, blocking: every event is written before the request goes on; one file,
        # never rotated (the default rotates at 100 MB, under a reader that follows the file)
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-maxsize=1000000"]

    def _controllers(self, deadline: float) -> None:
        cm_port, sched_port = free_port(), free_port()
        cm_kc = self.workdir / "controller-manager.kubeconfig"
        cm = self._spawn(
            "kube-controller-manager",
            [
                str(self.bins / "kube-controller-manager"),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={self.workdir / 'pki' / 'controller-manager'}",
                "--leader-elect=false",
                # every default controller: job, cronjob, garbage-collector, namespace, serviceaccount,
                # serviceaccount-token, ttl-after-finished, persistentvolume-binder, node-lifecycle, ...
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa_key}",
                f"--root-ca-file={self.ca}",
                f"--cluster-signing-cert-file={self.ca}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched_kc = self.workdir / "scheduler.kubeconfig"
        sched = self._spawn(
            "kube-scheduler",
            [
                str(self.bins / "kube-scheduler"),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.workdir / 'pki' / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed in --cert-dir
        self._wait(cm, f"https://127.0.0.1:{cm_port}/healthz", deadline, insecure)
        self._wait(sched, f"https://127.0.0.1:{sched_port}/healthz", deadline, insecure)

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            p = dead[0]
            raise ClusterError(f"{p.name} exited with {p.popen.returncode}; log {p.log}:\n{p.tail()}")


def stop_from_state(workdir: Path) -> bool:
    """End the process groups a `ControlPlane` in `workdir` recorded; False if none was recorded."""
    state = Path(workdir) / "state.json"
    if not state.exists():
        return False
    for pgid in reversed(json.loads(state.read_text())["pgids"]):
        kill_group(pgid)
    state.unlink()
    return True
