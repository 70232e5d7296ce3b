"""A stage container that misbehaves on purpose: what tests/cluster/faults.py runs in place of (or around) a stage's
command, through the pod executor's `command_hook`. Standard library only: it runs inside gVisor pods too.

    python stagefault.py [--gate PATH] [--hang] [--message TEXT] [--stderr TEXT]
                         [--exit CODE] [-- COMMAND ...]

In order: wait until PATH exists (the test holds the stage there, Running); with --hang, sleep until killed; with a
COMMAND and none of --message/--stderr/--exit, exec it (the real stage, unchanged); otherwise write
TEXT to the termination-message file as it is, print --stderr to stderr, and exit with CODE
(default 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    command: list[str] = []
    if "--" in argv:
        argv, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="stagefault")
    parser.add_argument("--gate", type=Path, help="wait until this file exists")
    parser.add_argument("--hang", action="store_true", help="never end (until the pod is killed)")
    parser.add_argument("--message", help="the termination message to leave, exactly")
    parser.add_argument("--stderr", help="what to print to stderr")
    parser.add_argument("--exit", type=int, help="the exit code (default 0)")
    args = parser.parse_args(argv)
    if args.gate is not None:
        while not args.gate.exists():
            time.sleep(0.1)
    while args.hang:
        time.sleep(3600)
    acts = (args.message, args.stderr, args.exit)
    if command and all(act is None for act in acts):
        os.execvp(command[0], command)
    if args.message is not None:
        Path(os.environ.get("SIGMA0_TERMINATION_LOG", "/dev/termination-log")).write_text(args.message)
    if args.stderr:
        print(args.stderr, file=sys.stderr, flush=True)
    return args.exit or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
