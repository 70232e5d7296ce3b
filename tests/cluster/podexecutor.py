"""The pod executor: test infrastructure standing in for kubelet + a container runtime.

Everything else in the test cluster is upstream Kubernetes; this is not. It
watches the pods that the real kube-scheduler binds to the test node (as the
node's identity, system:node:<name>) and runs each container's command as a
local process:

- command + args, with $(VAR) expansion, env and envFrom (values, ConfigMaps,
  Secrets, fieldRef, resourceFieldRef), workingDir;
- volumes mapped to local folders: emptyDir (a folder in the pod's folder),
  hostPath (the host path itself), persistentVolumeClaim (the bound PV's
  hostPath / local path), configMap, secret, downwardAPI and projected
  (ServiceAccount token from the TokenRequest API, kube-root-ca.crt, namespace)
  written into the pod's folder;
- host processes run in a private mount namespace (tests/cluster/_nsexec.py)
  where each volume folder is bind-mounted at its mountPath and a per-container
  file at terminationMessagePath (default /dev/termination-log), so the
  container sees the paths its spec names; mount targets that do not exist on
  the host are created and removed again (if empty) when the executor stops;
- pods whose RuntimeClass handler is `runsc` run under gVisor: `runsc
  --network=none run` with an OCI bundle whose root is the host `/` read-only
  and whose mounts are the pod's volumes (rbind, rw unless readOnly), as a
  container runtime does it;
- PATH is the container's own if it sets one, else the folder of the Python
  running the tests (its venv's bin, where the `sigma0` command lives) followed
  by the host's PATH; HOME is the host's; KUBERNETES_SERVICE_HOST/PORT point at
  the API server on 127.0.0.1, so in-cluster config works for host processes;
- volumeMounts' readOnly is honoured (a read-only bind mount, as kubelet
  makes it; writes fail with EROFS), also for a read-write subPath mount
  nested inside a read-only one; a missing subPath folder is made with the
  mode of the volume's root, as kubelet's SafeMakeDir does;
- the image is recorded in the status, never pulled; securityContext
  runAsUser/runAsGroup are honoured, readOnlyRootFilesystem is honoured under
  gVisor (whose root is always read-only here), the rest (capabilities
  included: a gVisor pod gets runsc's small default set) is recorded only;
  resource limits are not enforced.

It reports Running, then Succeeded or Failed with each container's exit code
and the termination message read from its terminationMessagePath (its last
4096 bytes, as kubelet keeps them; or the log tail with FallbackToLogsOnError),
retrying a status write while kube-apiserver cannot take it (as kubelet's
status manager does), restarts containers per restartPolicy
OnFailure/Always with kubelet's back-off (10 s doubling, at most 300 s), runs
init containers first, honours activeDeadlineSeconds (phase Failed, reason
DeadlineExceeded) and pod deletion (SIGTERM to the process group, SIGKILL after
the grace period, then the pod object is removed as kubelet does). Each
container's output goes to <workdir>/pods/<ns>_<pod>_<uid>/<container>/<restart>.log.

Fault injection (tests only): `PodExecutor.command_hook`, when set, is called
with (pod, container spec, argv) just before a container starts and returns the
argv to run instead, e.g. a wrapper that fails, hangs, holds the stage until a
file appears, or writes a bad termination message (tests/cluster/stagefault.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .controlplane import _die_with_parent, kill_group
from .kube import ApiError, Kube
from .node import now

log = logging.getLogger("sigma0.test.podexecutor")

NSEXEC = Path(__file__).resolve().parent / "_nsexec.py"
# The host folders a stage command needs: the venv (its `sigma0` command) and the checkout its editable install points
# into. They stay visible in a container even where a pod volume (an emptyDir at /tmp, say) covers a folder above them.
CHECKOUT = Path(__file__).resolve().parents[2]
HOST_PATHS = tuple(sorted({sys.prefix, str(CHECKOUT)}))


def shadowed(paths: tuple[str, ...], targets: list[str]) -> list[str]:
    """The paths that lie at or under one of the mount targets, so a mount there would hide them."""
    roots = [target.rstrip("/") for target in targets]
    return [path for path in paths if any(path == root or path.startswith(root + "/") for root in roots)]


MAX_MESSAGE = 4096  # kubelet's limit on a termination message: it keeps the file's last 4096 bytes
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
STATUS_RETRY_S = 180.0  # how long a status write is retried while kube-apiserver cannot take it

# A test's hook on what a container runs: (pod, container spec, argv after $(VAR) expansion) -> the argv to run.
CommandHook = Callable[[dict, dict, list[str]], list[str]]


def hard_kill(popen: subprocess.Popen) -> None:
    """SIGKILL a container: first every process in its group but the leader (_nsexec.py, which
    reaps them and exits; `runsc run`, which tears its sandbox down), then, if need be, the leader."""
    group = popen.pid
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != group:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == group:
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, IndexError, ValueError):
                pass
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        kill_group(group, grace_s=0)
        popen.wait()


IMAGE_USER = 65532  # the non-root user of images/*/Dockerfile


def stage_pod_user() -> int:
    """The user stage pods run as here: the images' non-root user when this machine lets that user run the
    current Python, else root. Where the interpreter sits in a folder only root can enter, pods run as root (a
    test-harness limit, said in the operator's --run-as-user help; the Job builder's default stays non-root, see
    tests/test_kube_jobs.py)."""
    try:
        probe = subprocess.run([sys.executable, "-c", "import sigma0"], capture_output=True, check=False,
                               user=IMAGE_USER, group=IMAGE_USER, extra_groups=[], timeout=60)
    except PermissionError:
        return 0
    return IMAGE_USER if probe.returncode == 0 else 0


def can_run_as(uid: int, argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 120) -> bool:
    """Whether `argv` runs (exit 0) when started the way the executor starts a container with
    runAsUser/runAsGroup `uid`: setgroups, setgid, setuid, then execvpe with PATH = the venv's bin first.

    Use it to decide whether pods on this machine can run as non-root: a venv whose interpreter lives under
    a folder the user cannot search (/root, 0700, as with pyenv here) cannot be exec'd by uid 65532 in a
    real container either. (`setpriv --reuid` is no test of that: it looks the program up while it still
    holds root's capabilities.)
    """
    import tempfile

    base = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])}
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "argv": argv,
                    "env": {**base, **(env or {})},
                    "cwd": "/",
                    "mounts": [],
                    "namespaces": False,
                    "uid": uid,
                    "gid": uid,
                    "groups": [uid],
                }
            )
        )
        r = subprocess.run(
            [sys.executable, str(NSEXEC), str(spec)],
            capture_output=True,
            timeout=timeout_s,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    return r.returncode == 0


def make_sub_path(volume: Path, sub_path: str) -> Path:
    """A volumeMount's subPath folder, made as kubelet makes it (SafeMakeDir in makeMounts): each missing folder
    with the mode of the volume's root (so that fsGroup's g+rwx, or a 0777 test folder, carries over), owned by
    whoever runs the node; and never outside the volume."""
    folder = (volume / sub_path).resolve()
    if folder != volume.resolve() and volume.resolve() not in folder.parents:
        raise PodSetupError("CreateContainerConfigError", f"subPath {sub_path!r} leaves its volume")
    mode = volume.stat().st_mode & 0o7777
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir()
        path.chmod(mode)
    return folder


class PodSetupError(Exception):
    """The pod cannot start yet (missing ConfigMap, ...); reported as a waiting reason and retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _quantity(q: str) -> float:
    m = re.fullmatch(r"([0-9.e+-]+)([a-zA-Z]*)", str(q))
    if not m:
        raise ValueError(q)
    n, unit = float(m.group(1)), m.group(2)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    return n * (binary.get(unit) or decimal[unit])


def _expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: $(VAR) from env, $$ escapes, unknown references stay as written."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "$" and i + 1 < len(s):
            if s[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if s[i + 1] == "(":
                j = s.find(")", i + 2)
                if j != -1:
                    name = s[i + 2 : j]
                    out.append(env[name] if name in env else s[i : j + 1])
                    i = j + 1
                    continue
        out.append(s[i])
        i += 1
    return "".join(out)


class Container:
    """One run of one container (a restart makes a new one)."""

    def __init__(self, spec: dict, restart: int, log_path: Path, term_path: Path) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.restart = restart
        self.log_path = log_path
        self.term_path = term_path
        self.popen: subprocess.Popen | None = None
        self.started_at = ""
        self.finished_at = ""
        self.exit_code: int | None = None
        self.runsc_id = ""

    def running(self) -> bool:
        return self.popen is not None and self.exit_code is None


class PodWorker:
    """Runs one pod to its end on a thread of its own."""

    def __init__(self, ex: PodExecutor, pod: dict) -> None:
        self.ex = ex
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = ex.workdir / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        self.deleted = threading.Event()
        self.grace_s = 30.0
        self.lock = threading.Lock()
        self.current: dict[str, Container] = {}  # container name -> latest run
        self.previous: dict[str, Container] = {}
        self.restarts: dict[str, int] = {}
        self.waiting: dict[str, tuple[str, str]] = {}  # name -> (reason, message)
        self.phase = "Pending"
        self.reason = self.message = None
        self.start_time = ""
        self.init_done = False
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.ns}/{self.name}", daemon=True)

    # -- spec helpers --------------------------------------------------------
    @property
    def spec(self) -> dict:
        return self.pod["spec"]

    def _api(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.ns}/{path}"

    def _get_retry(self, path: str, kind: str, name: str, optional: bool) -> dict | None:
        """GET a ConfigMap/Secret/PVC referenced by the pod; the Node authorizer learns of the
        reference a moment after the pod is bound, so a 403 is retried briefly."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.ex.kube.get(path)
            except ApiError as e:
                if e.status == 404:
                    if optional:
                        return None
                    raise PodSetupError("CreateContainerConfigError", f'{kind} "{name}" not found') from e
                if e.status == 403 and time.monotonic() < deadline and not self.deleted.is_set():
                    time.sleep(0.2)
                    continue
                raise PodSetupError("CreateContainerConfigError", f"{kind} {name}: {e}") from e

    def _configmap(self, name: str, optional: bool = False) -> dict[str, str] | None:
        cm = self._get_retry(self._api(f"configmaps/{name}"), "configmap", name, optional)
        if cm is None:
            return None
        data = dict(cm.get("data") or {})
        for k, v in (cm.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v).decode(errors="replace")
        return data

    def _secret(self, name: str, optional: bool = False) -> dict[str, bytes] | None:
        s = self._get_retry(self._api(f"secrets/{name}"), "secret", name, optional)
        if s is None:
            return None
        out = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
        out.update({k: v.encode() for k, v in (s.get("stringData") or {}).items()})
        return out

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.spec.get("nodeName", ""),
            "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        if path in ("metadata.labels", "metadata.annotations"):
            items = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise PodSetupError("CreateContainerConfigError", f"fieldRef {path} is not supported by the test executor")

    def _resource_field(self, ref: dict, container: dict) -> str:
        cname = ref.get("containerName") or container["name"]
        c = next((c for c in self._all_containers() if c["name"] == cname), container)
        kind, _, res = ref["resource"].partition(".")
        res_map = (c.get("resources") or {}).get(kind) or {}
        # unset limits default to the node's allocatable, as kubelet does
        value = _quantity(res_map[res] if res in res_map else self.ex.node_capacity.get(res, "0"))
        divisor = _quantity(ref.get("divisor") or "1")
        return str(math.ceil(value / divisor))

    def _all_containers(self) -> list[dict]:
        return list(self.spec.get("initContainers") or []) + list(self.spec.get("containers") or [])

    # -- volumes -------------------------------------------------------------
    def _write_files(self, folder: Path, files: dict[str, bytes], items: list | None, mode: int | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        mode = 0o644 if mode is None else mode
        if items:
            chosen = {}
            for it in items:
                if it["key"] in files:
                    chosen[it["path"]] = (files[it["key"]], it.get("mode", mode))
                elif not it.get("optional"):
                    raise PodSetupError("CreateContainerConfigError", f"key {it['key']} not found")
        else:
            chosen = {k: (v, mode) for k, v in files.items()}
        for rel, (data, m) in chosen.items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(m)

    def _token(self, sa: str, audience: str | None, seconds: int) -> bytes:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        deadline = time.monotonic() + 10
        while True:
            try:
                r = self.ex.kube.create(self._api(f"serviceaccounts/{sa}/token"), body)
                return r["status"]["token"].encode()
            except ApiError as e:
                if e.status == 403 and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise PodSetupError("CreateContainerConfigError", f"token for serviceaccount {sa}: {e}") from e

    def _volumes(self) -> dict[str, Path]:
        vols: dict[str, Path] = {}
        for v in self.spec.get("volumes") or []:
            name = v["name"]
            here = self.dir / "volumes" / name
            if "emptyDir" in v:
                here.mkdir(parents=True, exist_ok=True)
                here.chmod(0o777)
                vols[name] = here
            elif "hostPath" in v:
                hp = v["hostPath"]
                p = Path(hp["path"])
                t = hp.get("type") or ""
                if t == "FileOrCreate" and not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                elif not p.exists():
                    if t in ("", "DirectoryOrCreate"):
                        p.mkdir(parents=True, exist_ok=True)
                    else:
                        raise PodSetupError("CreateContainerConfigError", f"hostPath {p} ({t}) does not exist")
                vols[name] = p
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self._get_retry(
                    self._api(f"persistentvolumeclaims/{claim}"), "persistentvolumeclaim", claim, False
                )
                pv_name = (pvc.get("spec") or {}).get("volumeName")
                if not pv_name:
                    raise PodSetupError("CreateContainerConfigError", f"persistentvolumeclaim {claim} is not bound")
                pv = self._get_retry(f"/api/v1/persistentvolumes/{pv_name}", "persistentvolume", pv_name, False)
                src = (pv["spec"].get("hostPath") or pv["spec"].get("local") or {}).get("path")
                if not src:
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f"persistentvolume {pv_name} has no hostPath or local path for this node",
                    )
                Path(src).mkdir(parents=True, exist_ok=True)
                vols[name] = Path(src)
            elif "configMap" in v:
                src = v["configMap"]
                data = self._configmap(src["name"], src.get("optional", False)) or {}
                self._write_files(
                    here, {k: s.encode() for k, s in data.items()}, src.get("items"), src.get("defaultMode")
                )
                vols[name] = here
            elif "secret" in v:
                src = v["secret"]
                data = self._secret(src["secretName"], src.get("optional", False)) or {}
                self._write_files(here, data, src.get("items"), src.get("defaultMode"))
                vols[name] = here
            elif "downwardAPI" in v:
                files = {
                    it["path"]: self._field(it["fieldRef"]["fieldPath"]).encode()
                    for it in v["downwardAPI"].get("items") or []
                    if "fieldRef" in it
                }
                self._write_files(here, files, None, v["downwardAPI"].get("defaultMode"))
                vols[name] = here
            elif "projected" in v:
                files: dict[str, bytes] = {}
                for s in v["projected"].get("sources") or []:
                    if "serviceAccountToken" in s:
                        t = s["serviceAccountToken"]
                        files[t["path"]] = self._token(
                            self.spec.get("serviceAccountName") or "default",
                            t.get("audience"),
                            t.get("expirationSeconds", 3607),
                        )
                    elif "configMap" in s:
                        cm = self._configmap(s["configMap"]["name"], s["configMap"].get("optional", False)) or {}
                        files.update(self._items(s["configMap"].get("items"), {k: x.encode() for k, x in cm.items()}))
                    elif "secret" in s:
                        sec = self._secret(s["secret"]["name"], s["secret"].get("optional", False)) or {}
                        files.update(self._items(s["secret"].get("items"), sec))
                    elif "downwardAPI" in s:
                        for it in s["downwardAPI"].get("items") or []:
                            if "fieldRef" in it:
                                files[it["path"]] = self._field(it["fieldRef"]["fieldPath"]).encode()
                self._write_files(here, files, None, v["projected"].get("defaultMode"))
                vols[name] = here
            else:
                kind = next((k for k in v if k != "name"), "?")
                raise PodSetupError(
                    "CreateContainerConfigError",
                    f"volume {name}: {kind} volumes are not supported by the test pod executor",
                )
        return vols

    @staticmethod
    def _items(items: list | None, data: dict[str, bytes]) -> dict[str, bytes]:
        if not items:
            return data
        return {it["path"]: data[it["key"]] for it in items if it["key"] in data}

    # -- env -----------------------------------------------------------------
    def _env(self, c: dict) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": os.environ.get("HOME", "/root"),
            # the checkout under test, not whichever one the venv's editable install points into (a git worktree
            # shares the venv of the main checkout): stage pods run the code the operator runs
            "PYTHONPATH": str(CHECKOUT / "operator"),
            "HOSTNAME": self.spec.get("hostname") or self.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.ex.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.ex.api_port),
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.ex.api_port}",
        }
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._configmap(ref["name"], ref.get("optional", False)) or {}
                env.update({prefix + k: v for k, v in data.items()})
            elif "secretRef" in src:
                ref = src["secretRef"]
                data = self._secret(ref["name"], ref.get("optional", False)) or {}
                env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = _expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                data = self._configmap(ref["name"], ref.get("optional", False))
                if data is not None and ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in ConfigMap {self.ns}/{ref['name']}",
                    )
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                data = self._secret(ref["name"], ref.get("optional", False))
                if data is not None and ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in Secret {self.ns}/{ref['name']}",
                    )
            elif "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = self._resource_field(vf["resourceFieldRef"], c)
        return env

    # -- running -------------------------------------------------------------
    def _gvisor(self) -> bool:
        return self.ex.runtime_handler(self.spec.get("runtimeClassName")) == "runsc"

    def _start(self, c: dict, vols: dict[str, Path]) -> Container:
        name = c["name"]
        restart = self.restarts.get(name, 0)
        cdir = self.dir / name
        cdir.mkdir(parents=True, exist_ok=True)
        run = Container(c, restart, cdir / f"{restart}.log", cdir / f"termination-log.{restart}")
        run.term_path.write_bytes(b"")
        run.term_path.chmod(0o666)
        env = self._env(c)
        if not c.get("command"):
            raise PodSetupError(
                "CreateContainerConfigError",
                f"container {name} has no command: the test pod executor runs no image, so it has no entrypoint "
                f"to take from {c.get('image')!r}; set command (and args)",
            )
        argv = [_expand(a, env) for a in list(c.get("command") or []) + list(c.get("args") or [])]
        if self.ex.command_hook is not None:
            argv = self.ex.command_hook(self.pod, c, argv)
        mounts = []
        for m in c.get("volumeMounts") or []:
            if m["name"] not in vols:
                raise PodSetupError("CreateContainerConfigError", f"volumeMount {m['name']} names no volume")
            src = vols[m["name"]]
            if m.get("subPath"):
                src = make_sub_path(vols[m["name"]], m["subPath"])
            mounts.append({"source": str(src), "target": m["mountPath"], "readonly": bool(m.get("readOnly"))})
        mounts.append(
            {
                "source": str(run.term_path),
                "target": c.get("terminationMessagePath") or "/dev/termination-log",
                "readonly": False,
            }
        )
        sc = {**(self.spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        # runAsUser/runAsGroup as given (the image's USER is unknown: unset means root), and, as kubelet adds
        # them, fsGroup and supplementalGroups as supplementary groups
        uid = sc.get("runAsUser")
        gid = sc.get("runAsGroup", 0 if uid is not None else None)
        pod_sc = self.spec.get("securityContext") or {}
        groups = [pod_sc["fsGroup"]] if pod_sc.get("fsGroup") is not None else []
        groups += list(pod_sc.get("supplementalGroups") or [])
        if sc.get("runAsNonRoot") and uid == 0:
            raise PodSetupError("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        cwd = c.get("workingDir") or "/"
        run.started_at = now()
        with open(run.log_path, "ab") as out:
            spec_path = cdir / f"exec.{restart}.json"
            if self._gvisor():
                runsc = self._runsc_bundle(run, argv, env, cwd, mounts, uid, gid, groups)
                spec_path.write_text(
                    json.dumps(
                        {
                            "argv": runsc,
                            "env": dict(os.environ),
                            "cwd": str(self.dir),
                            "mounts": [],
                            "namespaces": False,
                        }
                    )
                )
            else:
                for m in mounts:
                    self.ex.ensure_target(Path(m["target"]), Path(m["source"]).is_dir())
                if cwd != "/" and not any(cwd == m["target"] or cwd.startswith(m["target"] + "/") for m in mounts):
                    self.ex.ensure_target(Path(cwd), True)
                spec_path.write_text(
                    json.dumps(
                        {
                            "argv": argv,
                            "env": env,
                            "cwd": cwd,
                            "mounts": mounts,
                            "keep": shadowed(HOST_PATHS, [m["target"] for m in mounts]),
                            "hostname": env["HOSTNAME"],
                            "uid": uid,
                            "gid": gid,
                            "groups": groups,
                        }
                    )
                )
            argv_run = [sys.executable, str(NSEXEC), str(spec_path)]
            run.popen = subprocess.Popen(
                argv_run,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(self.dir),
                preexec_fn=_die_with_parent,
            )  # if the tests die, so do their pods
        with self.lock:
            self.current[name] = run
            self.waiting.pop(name, None)
        self.ex.track(run)
        return run

    def _runsc_bundle(
        self,
        run: Container,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        mounts: list[dict],
        uid: int | None,
        gid: int | None,
        groups: list[int],
    ) -> list[str]:
        bundle = self.dir / run.name / f"bundle.{run.restart}"
        bundle.mkdir(parents=True, exist_ok=True)
        oci_mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        ]
        for m in mounts:
            # runsc makes missing mount points in the (host) root; make them ourselves to clean them up later
            if not m["target"].startswith(("/dev/", "/proc/", "/sys/", "/tmp/")):
                self.ex.ensure_target(Path(m["target"]), Path(m["source"]).is_dir())
            oci_mounts.append(
                {
                    "destination": m["target"],
                    "type": "bind",
                    "source": m["source"],
                    "options": ["rbind", "ro" if m["readonly"] else "rw"],
                }
            )
        for path in shadowed(HOST_PATHS, ["/tmp", *(m["target"] for m in mounts)]):
            oci_mounts.append({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
        config = {
            "ociVersion": "1.0.0",
            "process": {
                "terminal": False,
                "user": {"uid": uid or 0, "gid": gid or 0, "additionalGids": groups},
                "args": argv,
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": cwd,
                "capabilities": {
                    k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                    for k in ("bounding", "effective", "inheritable", "permitted")
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": {"path": "/", "readonly": True},
            "hostname": env["HOSTNAME"],
            "mounts": oci_mounts,
            "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        run.runsc_id = f"{self.uid[:8]}-{run.name}-{run.restart}"
        return [
            "runsc",
            "--root",
            str(self.ex.runsc_root),
            f"--platform={self.ex.runsc_platform}",
            "--network=none",
            "run",
            "--bundle",
            str(bundle),
            run.runsc_id,
        ]

    def _wait_exit(self, runs: list[Container], deadline: float | None) -> str | None:
        """Wait until every run has exited; return 'deleted' or 'deadline' if cut short."""
        while True:
            for r in runs:
                if r.exit_code is None and r.popen is not None and r.popen.poll() is not None:
                    self._finish(r)
            if all(r.exit_code is not None for r in runs):
                return None
            if self.deleted.is_set():
                return "deleted"
            if deadline is not None and time.monotonic() >= deadline:
                return "deadline"
            self.deleted.wait(0.1)

    def _finish(self, r: Container) -> None:
        rc = r.popen.returncode
        r.exit_code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, as runtimes report it
        r.finished_at = now()
        self.ex.untrack(r)
        self.report()

    def _kill(self, runs: list[Container], grace_s: float) -> None:
        """Stop containers as kubelet does: SIGTERM, then SIGKILL once the grace period is over."""
        for r in runs:
            if r.running():
                if r.runsc_id:
                    self.ex.runsc("kill", "--all", r.runsc_id, "TERM")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.popen.pid, signal.SIGTERM)
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(r.popen.poll() is None for r in runs if r.running()):
            time.sleep(0.05)
        for r in runs:
            if r.running():
                if r.runsc_id:
                    self.ex.runsc("kill", "--all", r.runsc_id, "KILL")
                hard_kill(r.popen)
                self._finish(r)
            elif r.popen is not None and r.exit_code is None:
                self._finish(r)

    def _backoff(self, name: str) -> bool:
        """Sleep kubelet's crash-loop back-off before restart number n; False if the pod went away."""
        n = self.restarts.get(name, 0)
        delay = min(BACKOFF_START * 2 ** max(n - 1, 0), BACKOFF_MAX)
        with self.lock:
            self.waiting[name] = ("CrashLoopBackOff", f"back-off {int(delay)}s restarting failed container={name}")
        self.report()
        return not self.deleted.wait(delay)

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as e:  # a bug here must not take the executor down; say it on the pod
            log.exception("pod %s/%s", self.ns, self.name)
            self.phase, self.reason, self.message = "Failed", "ExecutorError", f"sigma0 test pod executor: {e!r}"
            self.report()
        finally:
            self.ex.done(self)

    def _run_pod(self) -> None:
        self.start_time = now()
        self.dir.mkdir(parents=True, exist_ok=True)
        policy = self.spec.get("restartPolicy", "Always")
        ads = self.spec.get("activeDeadlineSeconds")
        deadline = time.monotonic() + ads if ads is not None else None
        vols: dict[str, Path] | None = None
        while vols is None:
            try:
                vols = self._volumes()
            except PodSetupError as e:
                for c in self._all_containers():
                    self.waiting[c["name"]] = (e.reason, str(e))
                self.report()
                if self.deleted.wait(1):
                    return self._deleted([])
        # init containers, one after another
        for c in self.spec.get("initContainers") or []:
            while True:
                try:
                    run = self._start(c, vols)
                except PodSetupError as e:
                    self.waiting[c["name"]] = (e.reason, str(e))
                    self.report()
                    if self.deleted.wait(1):
                        return self._deleted([])
                    continue
                self.report()
                cut = self._wait_exit([run], deadline)
                if cut == "deleted":
                    return self._deleted([run])
                if cut == "deadline":
                    return self._deadline([run])
                if run.exit_code == 0:
                    break
                if policy == "Never":
                    self.phase = "Failed"
                    self.report()
                    return None
                self._next_restart(run)
                if not self._backoff(c["name"]):
                    return self._deleted([])
        self.init_done = True
        # app containers, together
        runs: dict[str, Container] = {}
        pending = [c for c in self.spec["containers"]]
        while pending:
            c = pending[0]
            try:
                runs[c["name"]] = self._start(c, vols)
                pending.pop(0)
            except PodSetupError as e:
                self.waiting[c["name"]] = (e.reason, str(e))
                self.report()
                if self.deleted.wait(1):
                    return self._deleted(list(runs.values()))
        self.phase = "Running"
        self.report()
        while True:
            if policy == "Never":
                cut = self._wait_exit(list(runs.values()), deadline)
            else:
                cut = self._wait_any(runs, deadline)
            if cut == "deleted":
                return self._deleted(list(runs.values()))
            if cut == "deadline":
                return self._deadline(list(runs.values()))
            if policy == "Never":
                break
            exited = [r for r in runs.values() if r.exit_code is not None]
            if policy == "OnFailure" and len(exited) == len(runs) and all(r.exit_code == 0 for r in exited):
                break
            # restart what exited (Always: any exit; OnFailure: a failure)
            for name, r in list(runs.items()):
                if r.exit_code is None or (policy == "OnFailure" and r.exit_code == 0):
                    continue
                self._next_restart(r)
                if not self._backoff(name):
                    return self._deleted(list(runs.values()))
                c = next(c for c in self.spec["containers"] if c["name"] == name)
                runs[name] = self._start(c, vols)
                self.report()
        codes = [r.exit_code for r in runs.values()]
        self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        self.report()
        return None

    def _wait_any(self, runs: dict[str, Container], deadline: float | None) -> str | None:
        """For OnFailure/Always: wait until some container needs a restart or all are done."""
        policy = self.spec.get("restartPolicy", "Always")
        while True:
            for r in runs.values():
                if r.exit_code is None and r.popen.poll() is not None:
                    self._finish(r)
            exited = [r for r in runs.values() if r.exit_code is not None]
            if policy == "Always" and exited:
                return None
            if any(r.exit_code != 0 for r in exited):
                return None
            if len(exited) == len(runs):
                return None
            if self.deleted.is_set():
                return "deleted"
            if deadline is not None and time.monotonic() >= deadline:
                return "deadline"
            self.deleted.wait(0.1)

    def _next_restart(self, r: Container) -> None:
        with self.lock:
            self.previous[r.name] = r
            self.restarts[r.name] = r.restart + 1

    def _deleted(self, runs: list[Container]) -> None:
        self._kill(runs, self.grace_s)
        if self.phase not in ("Succeeded", "Failed"):
            codes = [r.exit_code for r in runs if r.exit_code is not None]
            policy = self.spec.get("restartPolicy", "Always")
            self.phase = "Succeeded" if codes and all(c == 0 for c in codes) and policy != "Always" else "Failed"
        self.report()

    def _deadline(self, runs: list[Container]) -> None:
        self._kill(runs, float(self.spec.get("terminationGracePeriodSeconds", 30)))
        self.phase, self.reason = "Failed", "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self.report()

    # -- status --------------------------------------------------------------
    def _container_status(self, c: dict, init: bool) -> dict:
        name = c["name"]
        gv = self._gvisor()
        st: dict[str, Any] = {
            "name": name,
            "image": c.get("image", ""),
            "imageID": "",
            "restartCount": self.restarts.get(name, 0),
            "ready": False,
            "started": False,
        }
        with self.lock:
            run, prev, waiting = self.current.get(name), self.previous.get(name), self.waiting.get(name)
        if prev is not None and prev.exit_code is not None:
            st["lastState"] = {"terminated": self._terminated(prev)}
        if waiting is not None and (run is None or run.exit_code is not None):
            st["state"] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        elif run is None:
            st["state"] = {
                "waiting": {"reason": "PodInitializing" if not init and not self.init_done else "ContainerCreating"}
            }
        elif run.exit_code is None:
            st["state"] = {"running": {"startedAt": run.started_at}}
            st["ready"] = not init
            st["started"] = True
        else:
            st["state"] = {"terminated": self._terminated(run)}
        if run is not None:
            st["containerID"] = f"{'runsc' if gv else 'sigma0-host'}://{self.uid}-{name}-{run.restart}"
        return st

    def _terminated(self, r: Container) -> dict:
        msg = b""
        with contextlib.suppress(OSError):
            msg = r.term_path.read_bytes()[-MAX_MESSAGE:]  # kubelet: tail.ReadAtMost(path, 4096)
        if not msg and r.exit_code != 0 and r.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                tail = r.log_path.read_bytes().splitlines(keepends=True)[-80:]
                msg = b"".join(tail)[-2048:]
            except OSError:
                pass
        t = {
            "exitCode": r.exit_code,
            "reason": "Completed" if r.exit_code == 0 else "Error",
            "startedAt": r.started_at,
            "finishedAt": r.finished_at,
            "containerID": f"{'runsc' if r.runsc_id else 'sigma0-host'}://{self.uid}-{r.name}-{r.restart}",
        }
        if msg:
            t["message"] = msg.decode(errors="replace")
        return t

    def report(self) -> None:
        """Write the pod's status as kubelet would (a merge patch of pods/status). While kube-apiserver cannot take
        it (restarting, say), keep trying, as kubelet's status manager does, for up to STATUS_RETRY_S: a pod whose
        end went unreported would look Running for ever. Each try sends the status as it is then."""
        deadline = time.monotonic() + STATUS_RETRY_S
        while True:
            try:
                self.ex.kube.merge_patch(self._api(f"pods/{self.name}/status"), {"status": self._status()})
                return
            except ApiError as e:
                if e.status in (404, 409, 422):  # the pod is gone, or the write can never succeed
                    return
                error: Exception = e
            except OSError as e:  # connection refused or reset: the API server is restarting
                error = e
            if time.monotonic() > deadline or self.ex.stopping():
                log.warning("status of %s/%s: %s", self.ns, self.name, error)
                return
            time.sleep(0.5)

    def _status(self) -> dict:
        init = [self._container_status(c, True) for c in self.spec.get("initContainers") or []]
        app = [self._container_status(c, False) for c in self.spec["containers"]]
        t = now()
        running_ready = self.phase == "Running" and all(s["ready"] for s in app)
        terminal = self.phase in ("Succeeded", "Failed")

        def cond(type_: str, ok: bool, reason: str | None = None) -> dict:
            d = {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": t, "lastProbeTime": None}
            if reason:
                d["reason"] = reason
            return d

        ready_reason = "PodCompleted" if terminal else (None if running_ready else "ContainersNotReady")
        mine = {
            "PodReadyToStartContainers": cond("PodReadyToStartContainers", not terminal),
            "Initialized": cond(
                "Initialized",
                self.init_done or not init,
                None if (self.init_done or not init) else "ContainersNotInitialized",
            ),
            "Ready": cond("Ready", running_ready, ready_reason),
            "ContainersReady": cond("ContainersReady", running_ready, ready_reason),
        }
        old = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        conditions = []
        for type_, c in {**old, **mine}.items():
            prev = old.get(type_)
            if prev and type_ in mine and prev.get("status") == c["status"]:
                c = {**c, "lastTransitionTime": prev.get("lastTransitionTime", t)}
            conditions.append(c)
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time or t,
            "containerStatuses": app,
        }
        if init:
            status["initContainerStatuses"] = init
        if self.reason:
            status["reason"] = self.reason
            status["message"] = self.message
        return status


class PodExecutor:
    """Watches the pods bound to `node_name` and runs them (see the module doc).

    `worker_factory` makes the PodWorker of each new pod; opt-in, for benchmarks: replace it (on the instance) with
    another PodWorker subclass, as bench/replay.py does to end stage pods at once with a recorded termination message.
    """

    worker_factory: Callable[[PodExecutor, dict], PodWorker] = PodWorker

    def __init__(
        self,
        kube: Kube,
        node_name: str,
        workdir: Path,
        api_port: int,
        *,
        node_capacity: dict[str, str] | None = None,
        runsc_platform: str | None = None,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.workdir = Path(workdir)
        self.api_port = api_port
        self.node_capacity = node_capacity or {}
        self.runsc_platform = runsc_platform or os.environ.get("SIGMA0_RUNSC_PLATFORM", "ptrace")
        self.runsc_root = self.workdir / "runsc"
        self.workers: dict[str, PodWorker] = {}
        self.finished: dict[str, PodWorker] = {}  # kept so logs and statuses stay readable
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._created: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-executor", daemon=True)
        self._runtime_classes: dict[str, str] = {}
        self.error: BaseException | None = None
        # Test only (fault injection): rewrites what a container runs, e.g. a wrapper that fails or holds it.
        self.command_hook: CommandHook | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.runsc_root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:  # as for a node shutting down: a short grace period, then SIGKILL
            w.grace_s = min(w.grace_s, 2.0)
            w.deleted.set()
        for w in workers:
            w.thread.join(timeout=15)
        with self._lock:
            leftover = list(self._running)
        for pid in leftover:  # belt and braces: every process group we started
            kill_group(pid, grace_s=1)
        self._thread.join(timeout=5)
        for p in reversed(self._created):
            try:
                if p.is_dir():
                    p.rmdir()
                elif p.is_file() and p.stat().st_size == 0:
                    p.unlink()
            except OSError:
                pass
        shutil.rmtree(self.runsc_root, ignore_errors=True)

    def stopping(self) -> bool:
        return self._stop.is_set()

    def runsc(self, *args: str) -> None:
        subprocess.run(["runsc", "--root", str(self.runsc_root), *args], capture_output=True, timeout=30)

    def track(self, run: Container) -> None:
        with self._lock:
            self._running.add(run.popen.pid)

    def untrack(self, run: Container) -> None:
        with self._lock:
            self._running.discard(run.popen.pid)

    def done(self, w: PodWorker) -> None:
        with self._lock:
            self.workers.pop(w.uid, None)
            self.finished[w.uid] = w
        if w.deleted.is_set() and not self._stop.is_set():
            self._remove(w)

    def ensure_target(self, path: Path, is_dir: bool) -> None:
        """Create a missing mount target on the host, remembering it for removal at stop()."""
        with self._lock:
            if path.exists():
                return
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            for q in reversed(missing):
                if q == path and not is_dir:
                    q.touch()
                else:
                    q.mkdir()
                self._created.append(q)

    def runtime_handler(self, runtime_class: str | None) -> str | None:
        if not runtime_class:
            return None
        if runtime_class not in self._runtime_classes:
            rc = self.kube.get(f"/apis/node.k8s.io/v1/runtimeclasses/{runtime_class}")
            self._runtime_classes[runtime_class] = rc["handler"]
        return self._runtime_classes[runtime_class]

    # -- logs (for tests and for the node's /containerLogs) --------------------
    def find(self, namespace: str, pod: str) -> PodWorker | None:
        with self._lock:
            candidates = [
                w for w in (*self.workers.values(), *self.finished.values()) if w.ns == namespace and w.name == pod
            ]
        return max(candidates, key=lambda w: w.start_time or "", default=None)

    def log_file(self, namespace: str, pod: str, container: str | None = None, previous: bool = False):
        w = self.find(namespace, pod)
        if w is None:
            return None
        name = container or w.spec["containers"][0]["name"]
        with w.lock:
            run = (w.previous if previous else w.current).get(name)
        if run is None:
            return None
        return run.log_path, run.running

    # -- the watch ---------------------------------------------------------------
    def _loop(self) -> None:
        path = "/api/v1/pods"
        selector = f"spec.nodeName={self.node_name}"
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    lst = self.kube.get(path, fieldSelector=selector)
                    for pod in lst["items"]:
                        self._handle("ADDED", pod)
                    rv = lst["metadata"]["resourceVersion"]
                for ev in self.kube.watch(path, rv, timeout_s=30, fieldSelector=selector):
                    if self._stop.is_set():
                        return
                    if ev["type"] == "ERROR":
                        rv = None
                        break
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self._handle(ev["type"], ev["object"])
            except Exception as e:  # API restarting or going away at teardown: relist after a pause
                self.error = e
                rv = None
                self._stop.wait(0.5)

    def _handle(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            w = self.workers.get(uid)
            finished = uid in self.finished
        if kind == "DELETED":
            if w is not None:
                w.grace_s = 0
                w.deleted.set()
            return
        if w is not None:
            w.pod = {**pod, "status": pod.get("status") or {}}
            if pod["metadata"].get("deletionTimestamp"):
                w.grace_s = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                w.deleted.set()
            return
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        phase = (pod.get("status") or {}).get("phase")
        if finished or phase in ("Succeeded", "Failed"):
            if deleting:
                self._remove_pod(pod)
            return
        if deleting:  # never started here: nothing to stop
            self._remove_pod(pod)
            return
        w = self.worker_factory(self, pod)
        with self._lock:
            self.workers[uid] = w
        w.thread.start()

    def _remove(self, w: PodWorker) -> None:
        self._remove_pod(w.pod)

    def _remove_pod(self, pod: dict) -> None:
        """What kubelet does once a deleted pod's containers are gone: delete it for good."""
        meta = pod["metadata"]
        with contextlib.suppress(ApiError, OSError):
            self.kube.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
