"""Writes heldout.jsonl: a small report-only eval suite in HumanEval's format, disjoint from the demo corpus.

Its pass@1 is recorded in every demo cycle and never used by the gate, so that an adapter chosen on HumanEval is also
seen on problems it was not chosen on. Run `python examples/suites/make_heldout.py` after editing PROBLEMS.
"""

from __future__ import annotations

import json
from pathlib import Path

PROBLEMS = [
    ("is_pangram", "sentence: str", "bool", "Return True if the sentence uses every letter a-z at least once.",
     "    return set('abcdefghijklmnopqrstuvwxyz') <= set(sentence.lower())\n",
     ["candidate('The quick brown fox jumps over the lazy dog') is True", "candidate('hello') is False",
      "candidate('') is False"]),
    ("interleave", "a: list, b: list", "list",
     "Interleave two lists, taking items alternately; leftovers of the longer list come last.",
     "    out = []\n    for i in range(max(len(a), len(b))):\n        if i < len(a):\n            out.append(a[i])\n"
     "        if i < len(b):\n            out.append(b[i])\n    return out\n",
     ["candidate([1, 2, 3], ['a']) == [1, 'a', 2, 3]", "candidate([], [4]) == [4]", "candidate([], []) == []"]),
    ("running_max", "values: list", "list", "Return the running maximum of values, element by element.",
     "    out, best = [], None\n    for v in values:\n        best = v if best is None or v > best else best\n"
     "        out.append(best)\n    return out\n",
     ["candidate([1, 3, 2, 5, 4]) == [1, 3, 3, 5, 5]", "candidate([]) == []", "candidate([-2, -3]) == [-2, -2]"]),
    ("count_islands", "grid: list", "int",
     "Count the groups of 1s in a grid of 0s and 1s, where cells join when they share an edge.",
     "    seen = set()\n    count = 0\n    for r in range(len(grid)):\n        for c in range(len(grid[r])):\n"
     "            if grid[r][c] == 1 and (r, c) not in seen:\n                count += 1\n"
     "                stack = [(r, c)]\n                while stack:\n                    y, x = stack.pop()\n"
     "                    if (y, x) in seen or not (0 <= y < len(grid) and 0 <= x < len(grid[y])):\n"
     "                        continue\n                    if grid[y][x] != 1:\n                        continue\n"
     "                    seen.add((y, x))\n"
     "                    stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]\n    return count\n",
     ["candidate([[1, 1, 0], [0, 0, 1], [1, 0, 1]]) == 3", "candidate([]) == 0", "candidate([[0]]) == 0"]),
    ("title_case", "text: str", "str", "Capitalise the first letter of every word and lower-case the rest.",
     "    return ' '.join(word[:1].upper() + word[1:].lower() for word in text.split(' '))\n",
     ["candidate('hello wORLD') == 'Hello World'", "candidate('') == ''", "candidate('a  b') == 'A  B'"]),
]


def problem(index: int, name: str, params: str, returns: str, doc: str, body: str, checks: list[str]) -> dict:
    prompt = f'def {name}({params}) -> {returns}:\n    """{doc}"""\n'
    test = "def check(candidate):\n" + "".join(f"    assert {check}\n" for check in checks)
    return {"task_id": f"Heldout/{index}", "prompt": prompt, "canonical_solution": body, "test": test,
            "entry_point": name}


def main() -> None:
    rows = [problem(i, *spec) for i, spec in enumerate(PROBLEMS)]
    target = Path(__file__).with_name("heldout.jsonl")
    target.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} problems to {target}")


if __name__ == "__main__":
    main()
