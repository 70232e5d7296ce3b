"""The test cluster's real node: upstream kubelet on containerd, runc and gVisor.

    net = NodeNetwork.create()             # the bridge pods live on; kube-apiserver binds its address
    node = KubeletNode(workdir, control_plane, net, bins=..., node_dir=...)
    node.start()                           # containerd, images imported, kubelet registered and Ready
    node.stop()                            # every process, mount, cgroup, rule and the bridge gone

What it sets up on this machine, all of it named by one random tag and
recorded first in a footprint file (/run/sigma0-node/<tag>.json):

    bridge s0br<tag> 10.213.<x>.1/24       the pods' network (CNI bridge + host-local, no masquerading)
    iptables nat rules "sigma0-node:<tag>" the `kubernetes` Service ClusterIP DNATed to kube-apiserver
                                           (there is no kube-proxy)
    cgroup /sigma0-<tag> in every v1 hierarchy, kubelet's cgroupRoot
    /run/sigma0-node/<tag>/                containerd's state: sockets, shims' sockets, pods' netns
    <workdir>/node/                        containerd's root, kubelet's root, pod logs, configs

A run killed before stop() leaves all that behind; the next KubeletNode start
sweeps every footprint whose owner process is gone (sweep_stale), so tests can
start many clusters. tests/cluster/README.md says why each setting is what it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .controlplane import ClusterError, ControlPlane, Proc, free_port, spawn, write_kubeconfig
from .kube import ApiError, Kube
from .node import DEFAULT_LABELS

HERE = Path(__file__).resolve().parent
BUILD_NODE_SH = HERE / "build-node.sh"
RUN_DIR = Path("/run/sigma0-node")
CGROUP_FS = Path("/sys/fs/cgroup")
SHIM_SOCKET_DIR = Path("/run/containerd/s")  # where gVisor's shim (built against containerd 2.1) puts its socket
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"  # Debian's runc
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of controlplane.SERVICE_CIDR
RUNSC_HANDLER = "runsc"  # the containerd runtime handler RuntimeClass `gvisor` names
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"  # an OCI index's name for one of its images
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin (and so kubelet) uses


def node_dir() -> Path:
    """The folder build-node.sh filled (bin/, images/), or ClusterError saying how to build it."""
    env = os.environ.get("SIGMA0_NODE_DIR")
    if env:
        return Path(env)
    r = subprocess.run(["bash", str(BUILD_NODE_SH), "--check"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(
            "the kubelet node's containerd, gVisor shim and images are not built: run "
            f"`bash tests/cluster/build-node.sh` first (minutes cold, seconds warm). {r.stderr.strip()}"
        )
    return Path(r.stdout.strip())


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


# ---------------------------------------------------------------------------
# What one node leaves on the machine, and how to take it all away again.


@dataclass
class Footprint:
    tag: str
    owner_pid: int  # the test process; the footprint is stale once it is gone
    workdir: str
    bridge: str
    subnet_octet: int
    own_workdir: bool = False  # a temporary folder the cluster made for itself: swept with the rest

    @property
    def file(self) -> Path:
        return RUN_DIR / f"{self.tag}.json"

    @property
    def state_dir(self) -> Path:
        return RUN_DIR / self.tag

    @property
    def cgroup(self) -> str:
        return f"sigma0-{self.tag}"

    @property
    def rule_comment(self) -> str:
        return f"sigma0-node:{self.tag}"

    def save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(asdict(self)))

    def owner_alive(self) -> bool:
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def remove(self) -> None:
        """End every process, unmount every mount, delete rules, bridge and cgroups, then the footprint file."""
        self._kill_processes()
        self._unmount()
        delete_nat_rules(self.rule_comment)
        run("ip", "link", "del", self.bridge, check=False)
        self._remove_cgroups()
        self._remove_shim_sockets()
        folders = [self.state_dir, Path(self.workdir) / "node"]
        if self.own_workdir and not self.owner_alive():  # a killed run's temporary cluster folder goes too
            folders.append(Path(self.workdir))
        for d in folders:  # containerd's state, and its root: the snapshots
            subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)
        self.file.unlink(missing_ok=True)

    def _remove_shim_sockets(self) -> None:
        """gVisor's shim listens in /run/containerd/s/ whatever containerd's socket_dir says, and a killed shim leaves
        its socket file there; each shim wrote the address it used into its bundle folder, under our state folder."""
        for address in self.state_dir.rglob("address") if self.state_dir.is_dir() else ():
            with contextlib.suppress(OSError):
                socket = Path(address.read_text().strip().removeprefix("unix://"))
                if socket.parent == SHIM_SOCKET_DIR:
                    socket.unlink(missing_ok=True)

    def _pids(self) -> set[int]:
        """Processes in this node's cgroups or naming its folders (containerd, kubelet, shims, runsc, pods)."""
        pids: set[int] = set()
        for hierarchy in cgroup_hierarchies():
            root = hierarchy / self.cgroup
            for procs in root.rglob("cgroup.procs") if root.is_dir() else ():
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        # the node's own folders, not the cluster's: `python -m tests.cluster down --workdir DIR` names DIR too
        marks = (f"{Path(self.workdir) / 'node'}/".encode(), f"{self.state_dir}/".encode())
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes()
                    if any(m in cmdline for m in marks):
                        pids.add(int(entry.name))
        pids.discard(os.getpid())
        return pids

    def _kill_processes(self) -> None:
        # SIGKILL at once: kubelet and containerd are gone by now or are being swept; pods get no grace here
        for _ in range(20):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        raise ClusterError(f"processes of node {self.tag} survive SIGKILL: {sorted(self._pids())}")

    def _unmount(self) -> None:
        roots = (self.workdir.rstrip("/") + "/", str(self.state_dir) + "/")
        for _ in range(5):
            mounts = [m for m in mount_points() if m.startswith(roots)]
            if not mounts:
                return
            for m in sorted(mounts, key=len, reverse=True):  # the deepest first
                run("umount", "-l", m, check=False)
        raise ClusterError(f"mounts of node {self.tag} stay: {mount_points()}")

    def _remove_cgroups(self) -> None:
        for hierarchy in cgroup_hierarchies():
            root = hierarchy / self.cgroup
            if root.is_dir():
                # cgroup folders go with rmdir, the deepest first; their files are not real files
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies (v1 controllers, name=systemd, and the hybrid unified one)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and fields[4].startswith(str(CGROUP_FS)):
            found.append(Path(fields[4]))
    return found


def delete_nat_rules(comment: str) -> None:
    """Delete every nat rule carrying `comment` (iptables -S prints each as the -A line to undo)."""
    listing = run("iptables", "-t", "nat", "-S", check=False).stdout
    for line in listing.splitlines():
        if f'"{comment}"' in line or f" {comment} " in f"{line} ":
            args = line.split()
            args[0] = "-D"
            run("iptables", "-t", "nat", *[a.strip('"') for a in args], check=False)


def sweep_stale() -> list[str]:
    """Remove what every node whose owner process is gone left behind; return their tags."""
    swept = []
    for f in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else ():
        try:
            fp = Footprint(**json.loads(f.read_text()))
        except (OSError, ValueError, TypeError):
            f.unlink(missing_ok=True)
            continue
        if not fp.owner_alive():
            fp.remove()
            swept.append(fp.tag)
    return swept


# ---------------------------------------------------------------------------
# The network: a bridge, the CNI configuration, the Service DNAT.


class NodeNetwork:
    """Bridge s0br<tag> on 10.213.<x>.0/24; `address` (.1) is the node's and kube-apiserver's address."""

    def __init__(self, footprint: Footprint) -> None:
        self.fp = footprint
        self.bridge = footprint.bridge
        self.subnet = f"10.213.{footprint.subnet_octet}.0/24"
        self.address = f"10.213.{footprint.subnet_octet}.1"

    @classmethod
    def create(cls, workdir: Path, *, own_workdir: bool = False) -> NodeNetwork:
        """Sweep stale nodes, record a new footprint, and bring the bridge up."""
        sweep_stale()
        taken = (
            {Footprint(**json.loads(f.read_text())).subnet_octet for f in RUN_DIR.glob("*.json")}
            if (RUN_DIR.is_dir())
            else set()
        )
        tag = secrets.token_hex(4)
        octet = random.choice([x for x in range(1, 255) if x not in taken])
        fp = Footprint(
            tag=tag,
            owner_pid=os.getpid(),
            workdir=str(workdir),
            bridge=f"s0br{tag}",
            subnet_octet=octet,
            own_workdir=own_workdir,
        )
        fp.save()  # before anything it names exists: a run killed from here on is swept
        net = cls(fp)
        run("ip", "link", "add", net.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{net.address}/24", "dev", net.bridge)
        run("ip", "link", "set", net.bridge, "up")
        return net

    def route_service(self, api_port: int) -> None:
        """DNAT the `kubernetes` Service (SERVICE_IP:443) to kube-apiserver, for pods (PREROUTING) and this
        machine (OUTPUT)."""
        for chain in ("PREROUTING", "OUTPUT"):
            run(
                "iptables",
                "-t",
                "nat",
                "-A",
                chain,
                "-d",
                f"{SERVICE_IP}/32",
                "-p",
                "tcp",
                "--dport",
                "443",
                "-m",
                "comment",
                "--comment",
                self.fp.rule_comment,
                "-j",
                "DNAT",
                "--to-destination",
                f"{self.address}:{api_port}",
            )

    def cni_config(self, ipam_dir: Path) -> dict:
        return {
            "cniVersion": "1.0.0",
            "name": "sigma0",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,  # pods' default route is the bridge address: the Service DNAT is there
                    "ipMasq": False,  # nothing routes off this machine; with it on, gVisor pods leaked NAT rules
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.address}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(ipam_dir),
                    },
                },
                {"type": "loopback"},
            ],
        }


# ---------------------------------------------------------------------------
# containerd and kubelet.


def containerd_config(fp: Footprint, root: Path, node_bins: Path, cni_conf_dir: Path, pause_ref: str) -> str:
    """containerd's config.toml (version 3 schema, which containerd 2.x reads and migrates)."""
    state = fp.state_dir
    runsc_toml = root.parent / "runsc.toml"
    return f"""version = 3
root = '{root}'
state = '{state}'
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '{state}/containerd.sock'
[ttrpc]
  address = '{state}/containerd.sock.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{pause_ref}'

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{CNI_BIN_DIR}']
    conf_dir = '{cni_conf_dir}'
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      runtime_path = '{node_bins}/containerd-shim-runc-v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{RUNSC_HANDLER}]
      runtime_type = 'io.containerd.runsc.v1'
      runtime_path = '{node_bins}/containerd-shim-runsc-v1'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{RUNSC_HANDLER}.options]
        TypeUrl = 'io.containerd.runsc.v1.options'
        ConfigPath = '{runsc_toml}'

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '{state}/s'
"""


def runsc_config(runsc: Path, runsc_root: Path) -> str:
    # binary_name and root are the shim's own keys: they must come before the [runsc_config] table, or TOML
    # puts them inside it and the shim runs `runsc` from PATH with the default root
    return f"""binary_name = '{runsc}'
root = '{runsc_root}'

[runsc_config]
  platform = 'systrap'
"""


def kubelet_config(
    fp: Footprint,
    net: NodeNetwork,
    ca: Path,
    serving: tuple[Path, Path],
    dirs: dict[str, Path],
    port: int,
    healthz_port: int,
) -> dict:
    """KubeletConfiguration; README.md's "The kubelet node" section gives the reason for each setting."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{fp.cgroup}",
        "containerRuntimeEndpoint": f"unix://{fp.state_dir}/containerd.sock",
        "address": net.address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "authentication": {
            "x509": {"clientCAFile": str(ca)},
            "webhook": {"enabled": False},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(dirs["logs"]),
        "failSwapOn": False,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "localStorageCapacityIsolation": True,
    }


class KubeletNode:
    """containerd + kubelet as node `name` of `cp`, on network `net`; see the module doc."""

    def __init__(
        self,
        workdir: Path,
        cp: ControlPlane,
        net: NodeNetwork,
        *,
        bins: Path,
        node_bins: Path,
        images: Path,
        name: str,
        labels: dict[str, str] | None = None,
        gpus: int = 1,
        die_with_parent: bool = True,
    ) -> None:
        self.workdir = Path(workdir) / "node"
        self.cp, self.net, self.fp = cp, net, net.fp
        self.bins, self.node_bins, self.images = bins, node_bins, images
        self.name = name
        self.labels = dict(DEFAULT_LABELS if labels is None else labels)
        self.gpus = gpus
        self.die_with_parent = die_with_parent
        self.procs: list[Proc] = []
        self.logs = Path(workdir) / "logs"
        self.dirs = {n: self.workdir / n for n in ("containerd", "kubelet", "logs", "cni", "ipam", "runsc")}
        self.socket = self.fp.state_dir / "containerd.sock"

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.fp.state_dir.mkdir(parents=True, exist_ok=True)
        self._cgroups()
        self._containerd(deadline)
        for image in json.loads((self.images / "images.json").read_text()):
            self.import_image(self.images / image["archive"], image["ref"])
        self._kubelet(deadline)

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=10)
        self.procs.clear()
        self.fp.remove()

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise ClusterError(f"{p.name} exited with {p.popen.returncode}; log {p.log}:\n{p.tail()}")

    # -- containerd ---------------------------------------------------------------
    def _cgroups(self) -> None:
        """kubelet's cgroupRoot, in every hierarchy (kubelet checks each); cpuset needs its cpus and mems set."""
        for hierarchy in cgroup_hierarchies():
            d = hierarchy / self.fp.cgroup
            d.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (d / name).exists() and not (d / name).read_text().strip():
                    (d / name).write_text((hierarchy / name).read_text())

    def _containerd(self, deadline: float) -> None:
        cni_conf = self.dirs["cni"]
        (cni_conf / "10-sigma0.conflist").write_text(json.dumps(self.net.cni_config(self.dirs["ipam"]), indent=2))
        images = json.loads((self.images / "images.json").read_text())
        pause_ref = next(i["ref"] for i in images if i["name"] == "pause")
        (self.workdir / "runsc.toml").write_text(runsc_config(self.node_bins / "runsc", self.dirs["runsc"]))
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(self.fp, self.dirs["containerd"], self.node_bins, cni_conf, pause_ref))
        env = {**os.environ, "PATH": f"{self.node_bins}{os.pathsep}{os.environ.get('PATH', '')}"}
        p = spawn(
            "containerd",
            [str(self.node_bins / "containerd"), "--config", str(config)],
            self.logs / "containerd.log",
            die_with_parent=self.die_with_parent,
            env=env,
        )
        self.procs.append(p)
        while not self.socket.exists() or self.ctr("version", check=False).returncode != 0:
            if not p.alive() or time.monotonic() > deadline:
                raise ClusterError(f"containerd did not start; log {p.log}:\n{p.tail()}")
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """containerd's ctr against this node, in the k8s.io namespace (where kubelet's images and containers are)."""
        return run(
            str(self.node_bins / "ctr"),
            "--address",
            str(self.socket),
            "--namespace",
            K8S_NAMESPACE,
            *args,
            check=check,
            timeout=timeout,
        )

    def import_image(self, archive: Path, ref: str) -> None:
        """Import an OCI archive into containerd as `ref`; nothing is ever pulled.

        An archive whose index names ref's tag (or ref itself) is imported under ref's repository (ctr's
        --base-name); any other gets ref as the name of its whole index (--index-name), and its own tags under ref's
        repository besides. (Both for one name would make ctr import it twice and delete it.)"""
        repo, _, tag = ref.rpartition(":")
        if not repo or "/" in tag:
            raise ClusterError(f"image ref {ref!r} has no tag")
        try:
            with tarfile.open(archive) as tar:
                member = next(m for m in tar.getmembers() if m.name.removeprefix("./") == "index.json")
                index = json.load(tar.extractfile(member))
        except (OSError, StopIteration, tarfile.TarError, ValueError) as e:
            raise ClusterError(f"{archive} is not an OCI archive with an index.json: {e}") from e
        names = {(m.get("annotations") or {}).get(REF_NAME_ANNOTATION) for m in index.get("manifests", [])}
        # Unpacking is the slow part: the trainer image (3.2 GB) took about 110 s on 2 busy cores, and once more
        # than ctr's usual 120 s; the timeout is there to catch a hang, not to race a loaded machine.
        timeout = max(120.0, archive.stat().st_size / 2**30 * 180)
        if tag in names or ref in names:
            self.ctr("images", "import", "--base-name", repo, str(archive), timeout=timeout)
        else:
            self.ctr("images", "import", "--index-name", ref, "--base-name", repo, str(archive), timeout=timeout)
        if ref not in self.ctr("images", "list", "--quiet").stdout.split():
            raise ClusterError(f"importing {archive} gave no image {ref}")

    def runtime_handler(self, container_id: str) -> str:
        """The runtime (io.containerd.runc.v2 or io.containerd.runsc.v1) containerd ran a container with."""
        info = json.loads(self.ctr("containers", "info", container_id).stdout)
        return info["Runtime"]["Name"]

    # -- kubelet -------------------------------------------------------------------
    def _kubelet(self, deadline: float) -> None:
        cp = self.cp
        serving = cp.pki.issue(
            "kubelet-node", f"system:node:{self.name}", server=True, hosts=(self.net.address, "127.0.0.1", self.name)
        )
        kubeconfig = write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", cp.server, cp.ca, *cp.node_cert, f"system:node:{self.name}"
        )
        healthz = free_port()
        config = self.workdir / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                kubelet_config(self.fp, self.net, cp.ca, serving, self.dirs, free_port(), healthz), sort_keys=False
            )
        )
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        p = spawn(
            "kubelet",
            [
                str(self.bins / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.net.address}",
                f"--root-dir={self.dirs['kubelet']}",
                f"--cert-dir={self.dirs['kubelet'] / 'pki'}",
                f"--node-labels={labels}",
                "--v=1",
            ],
            self.logs / "kubelet.log",
            die_with_parent=self.die_with_parent,
        )
        self.procs.append(p)
        kube = Kube(cp.host, cp.api_port, cp.ca, *cp.node_cert)
        while not self._ready(kube):
            if not p.alive() or time.monotonic() > deadline:
                raise ClusterError(f"kubelet did not make node {self.name} Ready; log {p.log}:\n{p.tail()}")
            time.sleep(0.2)
        # extended resources are advertised by PATCHing the node's status (kubelet keeps what it does not manage)
        gpus = {"nvidia.com/gpu": str(self.gpus)}
        kube.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": {"capacity": gpus, "allocatable": gpus}})

    def _ready(self, kube: Kube) -> bool:
        try:
            node = kube.get(f"/api/v1/nodes/{self.name}")
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        conditions = (node.get("status") or {}).get("conditions") or []
        taints = (node.get("spec") or {}).get("taints") or []
        # Ready, and the node-lifecycle controller has lifted its not-ready taint: pods can be scheduled
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and not any(
            t["key"] == "node.kubernetes.io/not-ready" for t in taints
        )
