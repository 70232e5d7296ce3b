"""Start one container's process on the host, the way the pod executor needs it.

    python _nsexec.py SPEC.json

SPEC.json: {"argv": [...], "env": {...}, "cwd": "/...", "hostname": "...",
            "mounts": [{"source": "/host/dir", "target": "/container/path", "readonly": false}, ...],
            "uid": null | int, "gid": null | int, "groups": [int, ...], "namespaces": true,
            "keep": ["/host/path", ...]}   # host folders bound back if a volume hides them

With "namespaces": false it only runs argv as a subreaper (the executor starts
`runsc run` that way, so the sandbox processes runsc leaves behind are reaped).

In a private mount namespace (and UTS namespace, for the pod's hostname) it
bind-mounts each volume's local folder at the container's absolute mountPath
(and the per-container termination-message file at terminationMessagePath),
changes to the working directory, drops to runAsUser/runAsGroup if the pod set
them, and runs the command as its child. Like a container runtime's shim it is
the child-subreaper of everything the command starts: when the command exits,
whatever it left running in the process group is killed (a container's
processes end with it) and every process is reaped, so nothing lingers, not
even as a zombie. SIGTERM reaches the command through its process group (the
executor signals the group); this process ignores it and reports the command's
exit status (128+N if a signal N ended it). The mounts exist only for this process and its
children; the host sees none of them. Mount targets must already exist (the
executor creates missing ones). Needs root, or unprivileged user namespaces.
"""

import ctypes
import json
import os
import signal
import sys
import warnings  # noqa: F401  os.execvpe imports it lazily, and after setuid the stdlib may be unreadable

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("namespaces", True):
        enter_namespaces(spec)
    run(spec)


def enter_namespaces(spec: dict) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWUTS
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    check(libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        check(libc.sethostname(name, len(name)), "sethostname")
    # Open every source before mounting anything: a volume mounted at /tmp must not hide the
    # host folders (under /tmp too, often) that later mounts come from. Shallow targets first.
    mounts = sorted(spec["mounts"], key=lambda m: len(m["target"].rstrip("/").split("/")))
    sources = [os.open(m["source"], os.O_PATH | os.O_CLOEXEC) for m in mounts]
    kept = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in spec.get("keep", [])]
    for m, fd in zip(mounts, sources, strict=True):
        src, dst = f"/proc/self/fd/{fd}".encode(), m["target"].encode()
        check(libc.mount(src, dst, None, MS_BIND | MS_REC, None), f"bind {m['source']} on {m['target']}")
        if m.get("readonly"):
            check(
                libc.mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC, None), f"read-only {m['target']}"
            )
    # Host folders the command itself needs (the venv, the checkout) that a volume just hid: bind them back.
    for path, fd in kept:
        os.makedirs(path, exist_ok=True)
        check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None), f"keep {path}")


def run(spec: dict) -> None:
    check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become child subreaper")
    argv, env = spec["argv"], spec["env"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        # the command gets these through the process group; exec resets them for it
        signal.signal(sig, lambda *_: None)
    child = os.fork()
    if child == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.chdir(spec["cwd"])
            if spec.get("gid") is not None or spec.get("groups"):
                os.setgroups(spec.get("groups") or [])
            if spec.get("gid") is not None:
                os.setgid(spec["gid"])
            if spec.get("uid") is not None:
                os.setuid(spec["uid"])
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            sys.stderr.write(f"sigma0 pod executor: cannot start {argv[0]!r}: {e}\n")
            sys.stderr.flush()
            os._exit(127)
    code = None
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        if code is not None:  # the command is gone: so is the rest of the container
            kill_leftovers()
    sys.exit(code if code is not None else 128)


def kill_leftovers() -> None:
    """SIGKILL every other process in this process group, and every child (orphans come to us)."""
    me, group = os.getpid(), os.getpgrp()
    if group != me:  # not started as a group leader (by hand, from a shell): leave the caller's group alone
        group = -1
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == group or int(fields[1]) == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.stderr.write(f"sigma0 pod executor: cannot set up the container: {e}\n")
        sys.exit(128)
