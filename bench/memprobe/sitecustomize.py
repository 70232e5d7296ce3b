"""Diagnostics for bench/operator_cycles.py, not part of sigma0: put this folder first on the operator's PYTHONPATH
and set SIGMA0_MEMPROBE=FILE (`--operator-env PYTHONPATH=bench/memprobe --operator-env SIGMA0_MEMPROBE=mem.txt`).
Python then traces allocations from the start (tracemalloc, 12 frames; it slows the operator several times) and
writes the biggest allocation sites to FILE whenever the traced total reaches a new peak (checked every 5 s)."""

import os
import threading
import time
import tracemalloc

_out = os.environ.get("SIGMA0_MEMPROBE")


def _watch(out: str) -> None:
    best = 0
    while True:
        time.sleep(5)
        current, _ = tracemalloc.get_traced_memory()
        if current < best * 1.05:
            continue
        best = current
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines = [f"traced now {current / 2**20:.1f} MiB at {time.strftime('%H:%M:%S')}"]
        for stat in snapshot.statistics("traceback")[:12]:
            lines.append(f"\n{stat.size / 2**20:8.1f} MiB in {stat.count} blocks")
            lines += ["    " + line for line in stat.traceback.format()[-14:]]
        lines.append("\n--- by line")
        for stat in snapshot.statistics("lineno")[:25]:
            lines.append(f"{stat.size / 2**20:8.1f} MiB {stat.count:8d} {stat.traceback}")
        with open(out, "w") as handle:
            handle.write("\n".join(lines))


if _out:
    tracemalloc.start(12)
    threading.Thread(target=_watch, args=(_out,), daemon=True).start()
