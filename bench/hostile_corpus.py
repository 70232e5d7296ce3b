"""The hostile sandbox corpus (tests/hostile/corpus.py), every case including those kept out of the test because
they depend on the machine, under gVisor and under the process fallback: one batch per sandbox, then the host checks.

    python bench/hostile_corpus.py                  # both sandboxes, the table on stdout
    python bench/hostile_corpus.py --markdown       # the same table in Markdown (docs/sandbox-guarantees.md)
    python bench/hostile_corpus.py --json out.json

Per case: the expected verdict, the verdict under each sandbox, whether it was contained there (the host check found
nothing and, for an attack probe, the attack failed) and its seconds. Cases marked * are bench-only (not asserted in
tests/test_hostile.py). Exits 1 when a verdict or a containment differs from what the corpus expects, or when the
batch left something behind or leaked the host's secret.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile.corpus import CASES
from hostile.run import TIMEOUT, Batch, run_corpus


def rows(batches: dict[str, Batch]) -> list[dict[str, object]]:
    table = []
    for case in CASES:
        row: dict[str, object] = {"case": case.id, "bench_only": not case.in_test, "expected": {}, "ok": True}
        for sandbox, batch in batches.items():
            outcome = batch.outcomes[case.id]
            reason, contained = case.expected(sandbox)
            got = case.is_contained(outcome.verdict.passed, outcome.problems)
            row["expected"][sandbox] = reason.value  # type: ignore[index]
            row[sandbox] = {"verdict": outcome.verdict.reason.value, "contained": got,
                            "seconds": outcome.verdict.seconds, "problems": outcome.problems}  # fmt: skip
            row["ok"] = row["ok"] and outcome.verdict.reason is reason and got is contained
        table.append(row)
    return table


def render(table: list[dict[str, object]], sandboxes: list[str], markdown: bool) -> str:
    head = ["case", "expected"]
    for sandbox in sandboxes:
        head += [f"{sandbox} verdict", f"{sandbox} contained", f"{sandbox} s"]
    lines = []
    for row in table:
        expected = row["expected"]
        shown = sorted(set(expected.values()))  # type: ignore[attr-defined]
        cells = [
            f"{row['case']}{'*' if row['bench_only'] else ''}{'' if row['ok'] else ' (UNEXPECTED)'}",
            " / ".join(f"{s}: {expected[s]}" for s in sandboxes) if len(shown) > 1 else shown[0],
        ]  # type: ignore[index]
        for sandbox in sandboxes:
            result = row[sandbox]
            cells += [result["verdict"], "yes" if result["contained"] else "NO", f"{result['seconds']:.2f}"]  # type: ignore[index]
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(str(cells[i])) for cells in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in [head, *lines])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", choices=("both", "gvisor", "process"), default="both")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sandboxes = ["gvisor", "process"] if args.sandbox == "both" else [args.sandbox]
    if "gvisor" in sandboxes and not shutil.which("runsc"):
        parser.error("runsc is not on PATH: pass --sandbox process")
    batches = {sandbox: run_corpus(CASES, sandbox, workers=args.workers) for sandbox in sandboxes}
    table = rows(batches)
    print(render(table, sandboxes, args.markdown))
    summary = {}
    for sandbox, batch in batches.items():
        contained = sum(row[sandbox]["contained"] for row in table)  # type: ignore[index]
        summary[sandbox] = {"cases": len(table), "contained": contained, "seconds": round(batch.seconds, 1),
                            "lingering": batch.lingering, "leaks": batch.leaks}  # fmt: skip
        print(
            f"\n{sandbox}: {contained}/{len(table)} contained, batch {batch.seconds:.1f} s "
            f"(timeout {TIMEOUT:g} s, {args.workers} workers), lingering: {batch.lingering or 'none'}, "
            f"secret leaked in: {batch.leaks or 'nothing'}"
        )
    unexpected = [row["case"] for row in table if not row["ok"]]
    print(f"unexpected: {unexpected or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "cases": table}, indent=1))
    failed = unexpected or any(batch.lingering or batch.leaks for batch in batches.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
