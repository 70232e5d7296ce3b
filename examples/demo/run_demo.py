"""`make demo`: the demo's three TrainingCycles in order, each with `sigma0 run`, then one table of what happened.

    python examples/demo/run_demo.py [--workdir .sigma0]

The manifests are examples/demo/[0-9]-*.yaml, run in name order against one release, `demo-coder` (the story is in
examples/demo/make_demo.py). Every figure is what the cycle's own stages measured: the adapter trained, completions
generated, scored in the sandbox. A cycle that already finished in this workdir is shown again, not run again.
Exit status: 0 when every cycle succeeded, else 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RELEASE = "demo-coder"


def manifests() -> list[Path]:
    return sorted(HERE.glob("[0-9]-*.yaml"))


def cycle_name(manifest: Path) -> str:
    return str(yaml.safe_load(manifest.read_text())["metadata"]["name"])


def run_cycles(workdir: Path, console: Console) -> list[dict[str, Any]]:
    """`sigma0 run` each manifest (its progress shown as it goes); the state.json of each cycle that ran."""
    states = []
    for manifest in manifests():
        console.rule(f"[bold]{manifest.name}[/]")
        done = subprocess.run([sys.executable, "-m", "sigma0", "run", str(manifest), "--workdir", str(workdir)],
                              check=False)  # fmt: skip
        state_file = workdir / "cycles" / cycle_name(manifest) / "state.json"
        if done.returncode != 0 or not state_file.is_file():
            console.print(f"[red]{manifest.name}: sigma0 run exited {done.returncode}; stopping the demo[/]")
            break
        states.append(json.loads(state_file.read_text()))
    return states


def figures(state: dict[str, Any]) -> dict[str, Any]:
    """One cycle's row of the closing table, from its state.json."""
    steps = {name: step.get("summary", {}) for name, step in state["steps"].items()}
    finished = state.get("finished") or {}
    verify = steps.get("verify", {})
    return {
        "cycle": state["name"],
        "verified": f"{verify.get('passed', '—')}/{verify.get('total', '—')}",
        "candidate": _pass(steps.get("score-candidate")),
        "incumbent": _pass(steps.get("score-incumbent")) if "score-incumbent" in steps else "— (none yet)",
        "humaneval": _pass(steps.get("score-candidate-report0")),
        "p_value": _p(steps.get("decide", {}).get("p_value")),
        "decision": finished.get("outcome") or finished.get("phase") or "—",
        "revision": (state.get("published") or {}).get("revision", "—"),
        "why": finished.get("reason", ""),
    }


def closing_table(states: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=f"release {RELEASE}: pass@1 on the gate suite (48 held-out problems) per cycle",
                  title_justify="left", show_lines=True)  # fmt: skip
    columns = {"cycle": "cycle", "verified": "rows verified", "candidate": "candidate", "incumbent": "incumbent",
               "humaneval": "HumanEval (report only)", "p_value": "McNemar p", "decision": "decision",
               "revision": "release rev", "why": "why"}  # fmt: skip
    for title in columns.values():
        table.add_column(title, overflow="fold")
    for state in states:
        row = figures(state)
        table.add_row(*(str(row[key]) for key in columns))
    return table


def _pass(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("pass_at_1") is None:
        return "—"
    return f"{summary['pass_at_1']:.3f} ({summary.get('passed')}/{summary.get('total')})"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".sigma0", help="where cycles and releases live (as for sigma0 run)")
    args = parser.parse_args(argv)
    console = Console()
    workdir = Path(args.workdir)
    states = run_cycles(workdir, console)
    console.rule("[bold]the demo, cycle by cycle[/]")
    console.print(closing_table(states))
    console.print(f"revisions: sigma0 release history {RELEASE} --workdir {workdir} -o json", highlight=False)
    return 0 if len(states) == len(manifests()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
