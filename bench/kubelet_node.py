"""How fast the test cluster's real kubelet node is: cluster start, and a pod from creation to Succeeded under runc
and under gVisor (RuntimeClass gvisor), timed from outside through the API.

    python bench/kubelet_node.py --pods 5 [--json results.json]

Needs root and the builds of tests/cluster/build.sh and build-node.sh (see tests/cluster/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from tests.cluster.cluster import GVISOR_RUNTIME_CLASS, Cluster


def pod_seconds(c: Cluster, namespace: str, name: str, runtime_class: str | None) -> float:
    spec: dict = {
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": "docker.io/library/busybox:1.36", "command": ["true"]}],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    t0 = time.monotonic()
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    c.admin.create(f"/api/v1/namespaces/{namespace}/pods", body)
    p = c.wait_for_pod_phase(namespace, name, timeout_s=120)
    if p["status"]["phase"] != "Succeeded":
        raise SystemExit(f"pod {name} ended {p['status']['phase']}: {p['status']}")
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=5, help="pods per runtime, one after another (default 5)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    results: dict = {"machine": describe()}
    with open("/proc/loadavg", encoding="utf-8") as f:
        results["load_before"] = f.read().split()[:3]
    c = Cluster(runtime="kubelet")
    t0 = time.monotonic()
    c.start()
    try:
        results["cluster_start_s"] = round(time.monotonic() - t0, 2)
        ns = c.create_namespace("bench")
        for label, runtime_class in (("runc", None), ("gvisor", GVISOR_RUNTIME_CLASS)):
            times = [pod_seconds(c, ns, f"{label}-{i}", runtime_class) for i in range(a.pods)]
            results[f"pod_{label}_s"] = {
                "median": round(statistics.median(times), 2),
                "min": round(min(times), 2),
                "max": round(max(times), 2),
            }
    finally:
        t1 = time.monotonic()
        c.stop()
        results["cluster_stop_s"] = round(time.monotonic() - t1, 2)
    print(json.dumps(results, indent=2))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
