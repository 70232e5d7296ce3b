"""Writes the demo corpus beside this file, and says what each row is meant to show.

    python examples/corpus/make_corpus.py           # rewrite agent_corpus.json, tasks.jsonl, base_train.jsonl,
                                                    # expected.json
    python examples/corpus/make_corpus.py --check   # also run every row meant to pass with plain python

The corpus is a few dozen small coding tasks: good ones, and ones broken on purpose so that one demo cycle shows
every way a row can fall out (docs/corpus-format.md). expected.json records, per row, the outcome it is written
for: `kept` (passes verify), `verify:<reason>` (kept by harvest, refused by verify for that reason),
`dropped:<reason>`, `excluded:<task_id>` (overlaps HumanEval) or `duplicate`; tests/test_demo_corpus.py holds
harvest to it, and checks these files are what this script writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _code(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


# --- the agent corpus: rows with a descriptive label and a placeholder `def fn(...)` ---

AGENT_ROWS: list[tuple[str, Any]] = [
    (
        "kept",
        {
            "task": "reverse words",
            "instruction": "Write fn(sentence) that returns the words of sentence in reverse order, joined by "
            "single spaces. Runs of whitespace count as one separator.",
            "code": _code("""
                def fn(sentence: str) -> str:
                    return " ".join(reversed(sentence.split()))
            """),
            "asserts": [
                'assert fn("hello big world") == "world big hello"',
                'assert fn("  spaced   out ") == "out spaced"',
                'assert fn("") == ""',
            ],
        },
    ),
    (
        "kept",
        {
            "task": "count vowels",
            "instruction": "Count the vowels (a, e, i, o, u, in either case) in text.",
            "code": _code("""
                def fn(text: str) -> int:
                    return sum(1 for ch in text.lower() if ch in "aeiou")
            """),
            "asserts": _code("""
                assert fn("Hello World") == 3
                assert fn("rhythm") == 0
                assert fn("AEIOU aeiou") == 10
            """),
        },
    ),
    (
        "kept",
        {
            "label": "Flatten nested list",
            "instruction": "Flatten arbitrarily nested lists into one flat list, keeping the order of the items. "
            "fn calls itself on every inner list.",
            "code": _code("""
                def fn(items: list) -> list:
                    flat = []
                    for item in items:
                        if isinstance(item, list):
                            flat.extend(fn(item))  # recursion: renamed with the function
                        else:
                            flat.append(item)
                    return flat
            """),
            "asserts": [
                "assert fn([1, [2, [3, [4]], 5]]) == [1, 2, 3, 4, 5]",
                "assert fn([]) == []",
                'assert fn([["fn"], "fnord"]) == ["fn", "fnord"]',
            ],
        },
    ),
    (
        "kept",
        {
            "task": "run length encoding",
            "instruction": "Encode text as a list of (character, run length) pairs, one pair per run of equal "
            "consecutive characters.",
            "code": _code("""
                def fn(text: str) -> list[tuple[str, int]]:
                    runs: list[tuple[str, int]] = []
                    for ch in text:
                        if runs and runs[-1][0] == ch:
                            runs[-1] = (ch, runs[-1][1] + 1)
                        else:
                            runs.append((ch, 1))
                    return runs
            """),
            "asserts": [
                'assert fn("aaabcc") == [("a", 3), ("b", 1), ("c", 2)]',
                'assert fn("") == []',
                'assert fn("abab") == [("a", 1), ("b", 1), ("a", 1), ("b", 1)]',
            ],
        },
    ),
    (
        "kept",
        {
            "task": "chunk list",
            "instruction": "Split items into consecutive chunks of the given size; the last chunk may be "
            "shorter. A size below 1 raises ValueError.",
            "code": _code("""
                def fn(items: list, size: int) -> list[list]:
                    if size < 1:
                        raise ValueError("size must be positive")
                    return [items[i : i + size] for i in range(0, len(items), size)]
            """),
            "asserts": [
                "assert fn([1, 2, 3, 4, 5], 2) == [\n    [1, 2],\n    [3, 4],\n    [5],\n]",
                "assert fn([], 3) == []",
                "assert fn([1, 2], 5) == [[1, 2]]",
            ],
        },
    ),
    (
        "kept",
        {
            "task": "merge counts",
            "instruction": "Merge two dictionaries of counts into a new one, adding the counts of keys present "
            "in both. Neither input is modified.",
            "code": _code("""
                def fn(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
                    merged = dict(first)
                    for key, value in second.items():
                        merged[key] = merged.get(key, 0) + value
                    return merged
            """),
            "asserts": [
                'assert fn({"a": 1, "b": 2}, {"b": 3, "c": 4}) == {"a": 1, "b": 5, "c": 4}',
                "assert fn({}, {}) == {}",
            ],
        },
    ),
    (
        "kept",
        {
            "task": "invert mapping",
            "instruction": "Invert a dictionary: map each value to the list of keys that had it, in the order "
            "the keys appear.",
            "code": _code("""
                def fn(mapping: dict) -> dict:
                    inverted: dict = {}
                    for key, value in mapping.items():
                        inverted.setdefault(value, []).append(key)
                    return inverted
            """),
            "asserts": [
                'assert fn({"a": 1, "b": 2, "c": 1}) == {1: ["a", "c"], 2: ["b"]}',
                "assert fn({}) == {}",
            ],
        },
    ),
    (
        "kept",
        {
            "task": "word frequencies",
            "instruction": "Return how often each word occurs in text, ignoring case and the punctuation "
            "marks . , ! ? ; : around words.",
            "code": _code("""
                from collections import Counter


                def fn(text: str) -> dict[str, int]:
                    words = [word.strip(".,!?;:").lower() for word in text.split()]
                    return dict(Counter(word for word in words if word))
            """),
            "asserts": [
                'assert fn("The cat and the hat.") == {"the": 2, "cat": 1, "and": 1, "hat": 1}',
                'assert fn("") == {}',
                'assert fn("Go! go, GO?") == {"go": 3}',
            ],
        },
    ),
    (
        "kept",
        {
            "task": "greatest common divisor",
            "instruction": "Return the greatest common divisor of two non-negative integers with Euclid's "
            "algorithm, written recursively.",
            "code": _code("""
                def fn(a: int, b: int) -> int:
                    return a if b == 0 else fn(b, a % b)
            """),
            "asserts": ["assert fn(12, 18) == 6", "assert fn(7, 0) == 7", "assert fn(17, 5) == 1"],
        },
    ),
    (
        "kept",
        {
            "task": "is prime",
            "instruction": "Tell whether n is a prime number, trying divisors up to the square root of n.",
            "code": _code("""
                def fn(n: int) -> bool:
                    if n < 2:
                        return False
                    divisor = 2
                    while divisor * divisor <= n:
                        if n % divisor == 0:
                            return False
                        divisor += 1
                    return True
            """),
            "asserts": [
                "assert [k for k in range(20) if fn(k)] == [2, 3, 5, 7, 11, 13, 17, 19]",
                "assert fn(7919)",
                "assert not fn(7917)",
            ],
        },
    ),
    (
        "kept",
        {
            # a trivial body that HumanEval/53 also has (`return x + y`): no evidence of contamination
            "task": "add",
            "instruction": "Return the sum of a and b.",
            "code": _code("""
                def fn(a: int, b: int) -> int:
                    return a + b
            """),
            "asserts": ["assert fn(2, 3) == 5", "assert fn(-1, 1) == 0"],
        },
    ),
    (
        "kept",
        {
            # a label that is a builtin's name: the function becomes `zip_`, never a shadow of zip()
            "task": "zip",
            "instruction": "Pair up the items of two lists by position, stopping at the end of the shorter one, "
            "without calling the builtin zip.",
            "code": _code("""
                def fn(first: list, second: list) -> list[tuple]:
                    pairs = []
                    for index in range(min(len(first), len(second))):
                        pairs.append((first[index], second[index]))
                    return pairs
            """),
            "asserts": [
                'assert fn([1, 2, 3], "ab") == [(1, "a"), (2, "b")]',
                "assert fn([], [1]) == []",
            ],
        },
    ),
    (
        "kept",
        {
            "task": "celsiusToFahrenheit",
            "instruction": "Convert a temperature from degrees Celsius to degrees Fahrenheit.",
            "code": _code("""
                def fn(celsius: float) -> float:
                    return celsius * 9 / 5 + 32
            """),
            "asserts": ["assert fn(100) == 212", "assert fn(-40) == -40", "assert abs(fn(37) - 98.6) < 1e-9"],
        },
    ),
    (
        "kept",
        {
            "task": "apply twice",
            "instruction": "Apply the function f to x two times: fn(f, x) is f(f(x)).",
            "code": _code("""
                def fn(f, x):
                    return f(f(x))
            """),
            "asserts": ["assert fn(lambda v: v * 3, 2) == 18", 'assert fn(str.upper, "fn") == "FN"'],
        },
    ),
    # --- kept by harvest, refused by verify ---
    (
        "verify:assertion",
        {
            "task": "average",
            "instruction": "Return the arithmetic mean of a non-empty list of numbers.",
            "code": _code("""
                def fn(values: list[float]) -> float:
                    return sum(values) / len(values)
            """),
            "asserts": ["assert fn([1, 2, 3]) == 3"],  # wrong on purpose: the mean is 2.0
        },
    ),
    (
        "verify:timeout",
        {
            "task": "next multiple",
            "instruction": "Return the smallest multiple of k that is greater than n.",
            "code": _code("""
                def fn(n: int, k: int) -> int:
                    candidate = n
                    while candidate % k != 0 or candidate <= n:
                        candidate += 0  # never moves: an infinite loop
                    return candidate
            """),
            "asserts": ["assert fn(10, 4) == 12"],
        },
    ),
    (
        "verify:asserts_without_call",
        {
            "task": "shout",
            "instruction": "Return text in upper case with an exclamation mark appended.",
            "code": _code("""
                def fn(text: str) -> str:
                    return text.upper() + "!"
            """),
            "asserts": ["assert True", 'assert fn("hi") == "HI!"'],
        },
    ),
    # --- eval-set overlap: HumanEval/0's canonical solution under a placeholder name ---
    (
        "excluded:HumanEval/0",
        {
            "task": "has close elements",
            "instruction": "Tell whether any two numbers in the list are closer to each other than threshold.",
            "code": _code("""
                def fn(numbers: list[float], threshold: float) -> bool:
                    for idx, elem in enumerate(numbers):
                        for idx2, elem2 in enumerate(numbers):
                            if idx != idx2:
                                distance = abs(elem - elem2)
                                if distance < threshold:
                                    return True

                    return False
            """),
            "asserts": ["assert fn([1.0, 2.8, 3.0], 0.3)", "assert not fn([1.0, 2.0], 0.5)"],
        },
    ),
    # --- dropped by harvest ---
    (
        "dropped:missing_field",
        {
            "task": "square",
            "code": "def fn(x):\n    return x * x\n",
            "asserts": ["assert fn(3) == 9"],
        },
    ),
    (
        "dropped:wrong_type",
        {
            "task": "cube",
            "instruction": "Return x cubed.",
            "code": "def fn(x):\n    return x ** 3\n",
            "asserts": {"fn(2)": 8},
        },
    ),
    (
        "dropped:empty_asserts",
        {
            "task": "negate",
            "instruction": "Return -x.",
            "code": "def fn(x):\n    return -x\n",
            "asserts": [],
        },
    ),
    (
        "dropped:syntax",
        {
            "task": "halve",
            "instruction": "Return half of x.",
            "code": "def fn(x)\n    return x / 2\n",
            "asserts": ["assert fn(4) == 2"],
        },
    ),
    (
        "dropped:not_an_assert",
        {
            "task": "double",
            "instruction": "Return twice x.",
            "code": "def fn(x):\n    return 2 * x\n",
            "asserts": ["print(fn(2))", "assert fn(2) == 4"],
        },
    ),
    (
        "dropped:bad_label",
        {
            "task": "???",
            "instruction": "Return x plus one.",
            "code": "def fn(x):\n    return x + 1\n",
            "asserts": ["assert fn(1) == 2"],
        },
    ),
    (
        "dropped:fn_not_defined",
        {
            "task": "is even",
            "instruction": "Tell whether n is even.",
            "code": "def solve(n):\n    return n % 2 == 0\n",
            "asserts": ["assert fn(4)"],
        },
    ),
    (
        "dropped:untested_fn",
        {
            "task": "identity",
            "instruction": "Return x unchanged.",
            "code": "def fn(x):\n    return x\n",
            "asserts": ["assert True"],
        },
    ),
    (
        "dropped:empty_field",
        {
            "task": "is odd",
            "instruction": "   ",
            "code": "def fn(n):\n    return n % 2 == 1\n",
            "asserts": ["assert fn(3)"],
        },
    ),
    ("dropped:not_an_object", "def fn(x): return x  # a bare string where a row should be"),
]


# --- the JSONL stream: {fn, instruction, code, asserts} rows with descriptive names ---

JSONL_ROWS: list[tuple[str, Any]] = [
    (
        "kept",
        {
            "fn": "snake_to_camel",
            "instruction": "Convert a snake_case identifier to camelCase.",
            "code": _code("""
                def snake_to_camel(name: str) -> str:
                    head, *rest = name.split("_")
                    return head + "".join(part.capitalize() for part in rest)
            """),
            "asserts": [
                'assert snake_to_camel("max_line_length") == "maxLineLength"',
                'assert snake_to_camel("word") == "word"',
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "second_largest",
            "instruction": "Return the second largest distinct value in numbers, or None if there is none.",
            "code": _code("""
                def second_largest(numbers: list[int]) -> int | None:
                    distinct = sorted(set(numbers), reverse=True)
                    return distinct[1] if len(distinct) > 1 else None
            """),
            "asserts": [
                "assert second_largest([4, 1, 4, 3]) == 3",
                "assert second_largest([5, 5]) is None",
                "assert second_largest([]) is None",
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "rotate_left",
            "instruction": "Rotate a list k places to the left; k may exceed the length of the list.",
            "code": _code("""
                def rotate_left(items: list, k: int) -> list:
                    if not items:
                        return []
                    k %= len(items)
                    return items[k:] + items[:k]
            """),
            "asserts": [
                "assert rotate_left([1, 2, 3, 4], 1) == [2, 3, 4, 1]",
                "assert rotate_left([1, 2, 3], 5) == [3, 1, 2]",
                "assert rotate_left([], 2) == []",
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "transpose",
            "instruction": "Transpose a rectangular matrix given as a list of rows.",
            "code": _code("""
                def transpose(matrix: list[list[int]]) -> list[list[int]]:
                    return [list(column) for column in zip(*matrix)]
            """),
            "asserts": [
                "assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]",
                "assert transpose([]) == []",
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "are_anagrams",
            "instruction": "Tell whether two strings are anagrams of each other, ignoring case and spaces.",
            "code": _code("""
                def are_anagrams(first: str, second: str) -> bool:
                    def letters(text: str) -> list[str]:
                        return sorted(text.replace(" ", "").lower())

                    return letters(first) == letters(second)
            """),
            "asserts": [
                'assert are_anagrams("Dormitory", "dirty room")',
                'assert not are_anagrams("abc", "abd")',
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "running_total",
            "instruction": "Return the running totals of values: element i is the sum of values[0..i].",
            "code": _code("""
                def running_total(values: list[int]) -> list[int]:
                    totals = []
                    current = 0
                    for value in values:
                        current += value
                        totals.append(current)
                    return totals
            """),
            "asserts": ["assert running_total([1, 2, 3, 4]) == [1, 3, 6, 10]", "assert running_total([]) == []"],
        },
    ),
    (
        "kept",
        {
            "fn": "unique_in_order",
            "instruction": "Remove repeated items from a list, keeping the first occurrence of each in order.",
            "code": _code("""
                def unique_in_order(items: list) -> list:
                    seen = set()
                    result = []
                    for item in items:
                        if item not in seen:
                            seen.add(item)
                            result.append(item)
                    return result
            """),
            "asserts": [
                "assert unique_in_order([3, 1, 3, 2, 1]) == [3, 1, 2]",
                'assert unique_in_order("abca") == ["a", "b", "c"]',
            ],
        },
    ),
    (
        "kept",
        {
            "fn": "digit_sum",
            "instruction": "Return the sum of the decimal digits of an integer (the sign is ignored).",
            "code": _code("""
                def digit_sum(n: int) -> int:
                    return sum(int(digit) for digit in str(abs(n)))
            """),
            "asserts": ["assert digit_sum(1234) == 10", "assert digit_sum(-907) == 16", "assert digit_sum(0) == 0"],
        },
    ),
    (
        # a JSONL row may use the placeholder too, with a label to name it
        "kept",
        {
            "fn": "fn",
            "task": "clamp value",
            "instruction": "Clamp value into the closed range [low, high]: fn(5, 0, 3) is 3.",
            "code": _code("""
                def fn(value: float, low: float, high: float) -> float:
                    return max(low, min(high, value))
            """),
            "asserts": ["assert fn(5, 0, 3) == 3", "assert fn(-1, 0, 3) == 0", "assert fn(2, 0, 3) == 2"],
        },
    ),
    (
        "kept",
        {
            "fn": "longest_word",
            "instruction": "Return the longest word of a sentence; on a tie, the first one. An empty sentence "
            "gives an empty string.",
            "code": _code("""
                def longest_word(sentence: str) -> str:
                    best = ""
                    for word in sentence.split():
                        if len(word) > len(best):
                            best = word
                    return best
            """),
            "asserts": [
                'assert longest_word("a quick brown fox") == "quick"',
                'assert longest_word("") == ""',
            ],
        },
    ),
    # --- duplicates: the same function as an earlier row ---
    (
        # "count vowels" above once renamed, with a docstring and a comment: the normalised code is the same
        "duplicate",
        {
            "fn": "count_vowels",
            "instruction": "Return the number of vowels in text.",
            "code": _code('''
                def count_vowels(text: str) -> int:
                    """How many of a, e, i, o, u are in text."""
                    return sum(1 for ch in text.lower() if ch in 'aeiou')  # either case
            '''),
            "asserts": ['assert count_vowels("banana") == 3'],
        },
    ),
    # --- kept by harvest, refused by verify ---
    (
        "verify:exit_before_asserts",
        {
            "fn": "is_even",
            "instruction": "Tell whether n is even.",
            "code": _code("""
                import os


                def is_even(n: int) -> bool:
                    return n % 2 == 1  # wrong, and the next line hides it


                os._exit(0)
            """),
            "asserts": ["assert is_even(2)", "assert not is_even(3)"],
        },
    ),
    (
        "verify:assertion",
        {
            "fn": "parse_int",
            "instruction": "Parse a decimal integer from text, allowing surrounding whitespace.",
            "code": _code("""
                class _Anything:
                    def __eq__(self, other):
                        return True  # "equal" to everything: asserts with == would pass vacuously


                def parse_int(text: str):
                    return _Anything()
            """),
            "asserts": ['assert parse_int(" 42 ") == 42', 'assert parse_int("-7") == -7'],
        },
    ),
    (
        "verify:error",
        {
            "fn": "lookup_price",
            "instruction": "Return the price of item from the price list, or 0.0 when it is not listed.",
            "code": _code("""
                PRICES = {"apple": 0.5, "pear": 0.75}


                def lookup_price(item: str) -> float:
                    return PRICES[item]  # raises KeyError instead of returning 0.0
            """),
            "asserts": ['assert lookup_price("apple") == 0.5', 'assert lookup_price("kiwi") == 0.0'],
        },
    ),
    # --- eval-set overlap ---
    (
        # HumanEval/3 with every name changed: still the same solution
        "excluded:HumanEval/3",
        {
            "fn": "goes_negative",
            "instruction": "Given the changes to an account that starts at zero, tell whether it ever drops below "
            "zero.",
            "code": _code("""
                def goes_negative(changes: list[int]) -> bool:
                    total = 0

                    for amount in changes:
                        total += amount
                        if total < 0:
                            return True

                    return False
            """),
            "asserts": ["assert goes_negative([1, 2, -4, 5])", "assert not goes_negative([1, 2, 3])"],
        },
    ),
    (
        # HumanEval/12's docstring as the instruction, with a different solution
        "excluded:HumanEval/12",
        {
            "fn": "first_longest",
            "instruction": "Out of list of strings, return the longest one. Return the first one in case of "
            "multiple strings of the same length. Return None in case the input list is empty.",
            "code": _code("""
                def first_longest(strings: list[str]) -> str | None:
                    return max(strings, key=len) if strings else None
            """),
            "asserts": ['assert first_longest(["a", "bb", "cc"]) == "bb"', "assert first_longest([]) is None"],
        },
    ),
    # --- dropped by harvest ---
    ("dropped:bad_json", '{"fn": "triple", "instruction": "Return 3 * x.", "code": "def triple(x):'),
    (
        "dropped:bad_name",
        {
            "fn": "2fast",
            "instruction": "Return x.",
            "code": "def fast(x):\n    return x\n",
            "asserts": ["assert fast(1) == 1"],
        },
    ),
    (
        "dropped:missing_field",
        {
            "fn": "fn",
            "instruction": "Return x squared (but no label says what to call it).",
            "code": "def fn(x):\n    return x * x\n",
            "asserts": ["assert fn(3) == 9"],
        },
    ),
    (
        "dropped:syntax",
        {
            "fn": "increment",
            "instruction": "Return n + 1.",
            "code": "def increment(n):\n    return n + 1\n",
            "asserts": ["assert increment(1) == = 2"],
        },
    ),
]

# the same line twice: the second is a duplicate of the first
JSONL_ROWS.insert(2, ("duplicate", JSONL_ROWS[1][1]))


# --- base training rows: already in the prompt/completion shape the dataset stage writes ---

BASE_TASKS = [
    (
        "is_palindrome_word",
        "Tell whether word reads the same backwards, ignoring case.",
        """
        def is_palindrome_word(word: str) -> bool:
            lowered = word.lower()
            return lowered == lowered[::-1]
    """,
    ),
    (
        "count_positive",
        "Count the strictly positive numbers in values.",
        """
        def count_positive(values: list[int]) -> int:
            return sum(1 for value in values if value > 0)
    """,
    ),
    (
        "join_nonempty",
        "Join the non-empty strings of parts with sep.",
        """
        def join_nonempty(parts: list[str], sep: str = ", ") -> str:
            return sep.join(part for part in parts if part)
    """,
    ),
    (
        "index_of_min",
        "Return the index of the smallest element of a non-empty list (the first, on a tie).",
        """
        def index_of_min(values: list[float]) -> int:
            best = 0
            for index, value in enumerate(values):
                if value < values[best]:
                    best = index
            return best
    """,
    ),
    (
        "pairwise_sums",
        "Return the sums of each pair of neighbouring elements.",
        """
        def pairwise_sums(values: list[int]) -> list[int]:
            return [left + right for left, right in zip(values, values[1:])]
    """,
    ),
    (
        "key_with_max_value",
        "Return the key of the largest value in a non-empty dictionary.",
        """
        def key_with_max_value(scores: dict[str, float]) -> str:
            return max(scores, key=scores.__getitem__)
    """,
    ),
]


def base_rows() -> list[dict[str, str]]:
    from sigma0.stages.dataset import to_prompt_completion

    rows = []
    for name, instruction, code in BASE_TASKS:
        prompt, completion = to_prompt_completion(_code(code), name, instruction)
        rows.append(
            {
                "id": f"base-{name}",
                "source": "examples/corpus/base_train.jsonl",
                "prompt": prompt,
                "completion": completion,
            }
        )
    return rows


def build() -> dict[str, str]:
    """The text of every file this script writes, by file name."""
    corpus = {
        "description": "sigma0 demo corpus: agent-style rows with a placeholder `fn` (docs/corpus-format.md)",
        "rows": [row for _, row in AGENT_ROWS],
    }
    jsonl_lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for _, row in JSONL_ROWS]
    expected_rows = {f"agent_corpus.json[{i}]": outcome for i, (outcome, _) in enumerate(AGENT_ROWS)}
    expected_rows.update({f"tasks.jsonl:{i + 1}": outcome for i, (outcome, _) in enumerate(JSONL_ROWS)})
    outcomes = list(expected_rows.values())
    dropped: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.startswith("dropped:"):
            reason = outcome.removeprefix("dropped:")
            dropped[reason] = dropped.get(reason, 0) + 1
    harvest = {
        "harvested": len(outcomes),
        "kept": sum(o == "kept" or o.startswith("verify:") for o in outcomes),
        "excluded": sum(o.startswith("excluded:") for o in outcomes),
        "duplicates": outcomes.count("duplicate"),
        "dropped": dict(sorted(dropped.items())),
    }
    expected = {"harvest": harvest, "rows": expected_rows}
    return {
        "agent_corpus.json": json.dumps(corpus, indent=2, ensure_ascii=False) + "\n",
        "tasks.jsonl": "\n".join(jsonl_lines) + "\n",
        "base_train.jsonl": "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in base_rows()),
        "expected.json": json.dumps(expected, indent=2) + "\n",
    }


def passing_rows() -> list[tuple[str, dict[str, Any]]]:
    """(where, row) of every row written to pass verify, as it stands in the files (placeholder names and all)."""
    rows = [(f"agent_corpus.json[{i}]", row) for i, (outcome, row) in enumerate(AGENT_ROWS) if outcome == "kept"]
    rows += [(f"tasks.jsonl:{i + 1}", row) for i, (outcome, row) in enumerate(JSONL_ROWS) if outcome == "kept"]
    return rows


def check_passing_rows() -> list[str]:
    """Run each row meant to pass with plain python (our own code, not harvested); returns the failures."""
    failures = []
    for where, row in passing_rows():
        asserts = row["asserts"] if isinstance(row["asserts"], str) else "\n".join(row["asserts"])
        program = row["code"] + "\n" + asserts + "\n"
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            failures.append(f"{where}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
    return failures


def main() -> int:
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")
    if "--check" in sys.argv[1:]:
        failures = check_passing_rows()
        for failure in failures:
            print(f"FAIL {failure}")
        print(f"{len(passing_rows()) - len(failures)}/{len(passing_rows())} rows meant to pass do pass")
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
