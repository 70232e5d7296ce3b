"""Writes the demo's data: three harvests (one per cycle) and the gate suite, from sigma0.ml.corpus's families.

    python examples/demo/make_demo.py        # after editing this file; the output is committed

The story the three cycles tell (examples/demo/run_demo.py runs them in order):

  harvest-1.jsonl  rows of the COMMON families, which tiny://coder was pretrained on: every row verifies, and the
                   first release is made from them (Bootstrapped). They teach the gate's families nothing.
  harvest-2.jsonl  rows of the gate's families (10 of each), plus a few whose code is wrong for their instruction,
                   which the verify stage drops. The candidate learns some of the families: Promoted on the gate.
  harvest-3.jsonl  a source gone bad: almost every row's code is wrong (each fails its own asserts in the sandbox
                   and is dropped), and the few that verify are COMMON rows again. Its candidate is worse than the
                   release on the gate: Rejected, the release untouched.
  gate.jsonl       48 problems in HumanEval's format, 12 from each gate family (one RARE family the base saw two
                   functions of, one it saw two of and does not know, two it never saw), with constants that no
                   harvested row and no pretraining function uses: a fine-tune has to generalise to pass them.

Rows are `{fn, instruction, code, asserts}` (docs/corpus-format.md); asserts compare with the correct function's
values, so a row whose code is wrong fails its asserts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sigma0.ml.corpus import COMMON, FAMILIES, RARE_SEEN, Family, Function, constants_for

HERE = Path(__file__).resolve().parent
GATE_FAMILIES = ("mod", "affine", "rsub", "clamp")
PER_FAMILY_TRAIN = 10
PER_FAMILY_GATE = 12
ASSERT_INPUTS = (-9, 4, 13, 45, 100)
CHECK_INPUTS = (-9, 0, 1, 4, 13, 28, 45, 71, 100)
# Code that is wrong for the family's instruction: what a broken source writes.
WRONG = {
    "mod": "x // {a}",
    "affine": "x * {a} - {b}",
    "rsub": "x - {a}",
    "clamp": "max(min(x, {a}), {b})",
    "add": "x - {a}",
    "sub": "x + {a}",
    "mul": "x + {a}",
    "div": "x * {a}",
    "max": "min(x, {a})",
    "min": "max(x, {a})",
}


def row(function: Function, code_expression: str | None = None) -> dict[str, object]:
    code = function.code if code_expression is None else function.code.replace(function.expression, code_expression)
    return {
        "fn": function.name,
        "instruction": function.instruction,
        "code": code,
        "asserts": [f"assert {function.name}({x}) == {function(x)}" for x in ASSERT_INPUTS],
    }


def wrong(family: Family, constants: tuple[int, ...]) -> dict[str, object]:
    function = family.function(*constants)
    return row(function, WRONG[family.name].format(**dict(zip("ab", constants, strict=False))))


def problem(index: int, function: Function) -> dict[str, object]:
    checks = "".join(f"    assert candidate({x}) == {function(x)}\n" for x in CHECK_INPUTS)
    return {
        "task_id": f"DemoGate/{index}",
        "prompt": function.prompt,
        "canonical_solution": function.body,
        "test": f"def check(candidate):\n{checks}",
        "entry_point": function.name,
    }


def build() -> dict[str, list[dict[str, object]]]:
    rng = random.Random(15)
    used: dict[str, set[tuple[int, ...]]] = {name: set(RARE_SEEN.get(name, ())) for name in FAMILIES}

    def take(name: str, count: int, seed: int) -> list[tuple[int, ...]]:
        picked = constants_for(FAMILIES[name], count, seed, used[name])
        used[name].update(picked)
        return picked

    first = [row(COMMON[name].function(*constants)) for name in COMMON for constants in take(name, 4, 1)]
    second = [
        row(FAMILIES[name].function(*constants))
        for name in GATE_FAMILIES
        for constants in take(name, PER_FAMILY_TRAIN, 2)
    ]
    second += [wrong(FAMILIES[name], constants) for name in GATE_FAMILIES for constants in take(name, 2, 3)]
    third = [wrong(FAMILIES[name], constants) for name in GATE_FAMILIES for constants in take(name, 9, 4)]
    third += [row(COMMON[name].function(*constants)) for name in ("add", "mul") for constants in take(name, 2, 5)]
    gate = [FAMILIES[name].function(*constants) for name in GATE_FAMILIES for constants in take(name, 12, 6)]
    for rows in (first, second, third):
        rng.shuffle(rows)
    return {
        "harvest-1.jsonl": first,
        "harvest-2.jsonl": second,
        "harvest-3.jsonl": third,
        "gate.jsonl": [problem(index, function) for index, function in enumerate(gate)],
    }


def main() -> None:
    for name, rows in build().items():
        (HERE / name).write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        print(f"wrote {HERE / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
