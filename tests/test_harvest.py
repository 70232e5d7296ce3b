"""`sigma0 stage harvest`: reading sources, every drop reason, renaming, dedup, eval overlap, sources left alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from sigma0.candidates import (
    DROP_REASONS,
    Candidate,
    RawRow,
    RowError,
    choose_name,
    normalise_row,
    parse_source,
    rename_global,
    rename_in_text,
    split_asserts,
)
from sigma0.stages import StageInputError
from sigma0.stages import harvest as stage

GOOD = {
    "task": "count vowels",
    "instruction": "Count the vowels in text: fn('abc') is 1.",
    "code": 'def fn(text):\n    return sum(1 for ch in text.lower() if ch in "aeiou")\n',
    "asserts": ['assert fn("Hello") == 2', 'assert fn("") == 0'],
}


def row(**changes: Any) -> dict[str, Any]:
    data = {**GOOD, **changes}
    return {key: value for key, value in data.items() if value is not None}


def candidate(data: Any) -> Candidate:
    return normalise_row(RawRow("test.json", index=0, data=data))


def drop_reason(data: Any) -> str:
    with pytest.raises(RowError) as caught:
        candidate(data)
    return caught.value.reason


def run_stage(tmp_path: Path, *sources: Path, extra: list[str] | None = None) -> tuple[dict, list[dict], dict]:
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    argv = [arg for source in sources for arg in ("--source", str(source))]
    argv += ["--output", str(tmp_path / "out" / "candidates.jsonl"), "--report", str(tmp_path / "out" / "report.json")]
    summary = stage.run(parser.parse_args(argv + (extra or [])))
    rows = [json.loads(line) for line in (tmp_path / "out" / "candidates.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return summary, rows, report


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --- one row ---


def test_a_good_row_is_renamed_and_fingerprinted():
    kept = candidate(row())
    assert kept.fn == "count_vowels"
    assert kept.code.startswith("def count_vowels(text):")
    assert kept.asserts == ('assert count_vowels("Hello") == 2', 'assert count_vowels("") == 0')
    assert kept.instruction == "Count the vowels in text: count_vowels('abc') is 1."
    assert kept.code_digest.startswith("sha256:")
    assert kept.id == f"count_vowels-{kept.code_digest.removeprefix('sha256:')[:12]}"
    assert kept.source == "test.json[0]"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("just a string", "not_an_object"),
        (["a", "list"], "not_an_object"),
        (row(instruction=None), "missing_field"),
        (row(code=None), "missing_field"),
        (row(asserts=None), "missing_field"),
        (row(task=None), "missing_field"),  # the placeholder needs a label to be renamed
        (row(instruction=42), "wrong_type"),
        (row(code=["def fn(): pass"]), "wrong_type"),
        (row(asserts={"fn(1)": 1}), "wrong_type"),
        (row(asserts=["assert fn('a') == 1", 3]), "wrong_type"),
        (row(task=7), "wrong_type"),
        (row(fn=["fn"]), "wrong_type"),
        (row(instruction="  \n "), "empty_field"),
        (row(code=""), "empty_field"),
        (row(asserts=[]), "empty_asserts"),
        (row(asserts="  \n"), "empty_asserts"),
        (row(asserts=["", "   "]), "empty_asserts"),
        (row(code="def fn(text)\n    return 1\n"), "syntax"),
        (row(code="return 1\n"), "syntax"),  # parses, but does not compile
        (row(code="def fn(text):\n    return " + "(" * 300 + "1" + ")" * 300 + "\n"), "syntax"),  # too deep
        (row(asserts=["assert fn('a') == = 1"]), "syntax"),
        (row(asserts=["fn('a')"]), "not_an_assert"),
        (row(asserts="x = fn('a')\nassert x == 1"), "not_an_assert"),
        (row(fn="2fast"), "bad_name"),
        (row(fn="class"), "bad_name"),
        (row(placeholder="not an identifier"), "bad_name"),
        (row(task="???"), "bad_label"),
        (row(task=""), "bad_label"),
        (row(code="def solve(text):\n    return 1\n"), "fn_not_defined"),
        (row(code="def outer():\n    def fn(text):\n        return 1\n    return fn\n"), "fn_not_defined"),
        (row(code="async def fn(text):\n    return 1\n"), "fn_not_defined"),
        (row(asserts=["assert True", "assert 1 + 1 == 2"]), "untested_fn"),
    ],
)
def test_every_kind_of_bad_row_is_dropped_with_its_reason(data, reason):
    assert drop_reason(data) == reason


def test_a_bad_json_line_is_a_dropped_row_not_a_crash():
    with pytest.raises(RowError) as caught:
        normalise_row(RawRow("s.jsonl", line=3, json_error="column 9: Expecting value"))
    assert caught.value.reason == "bad_json" and "column 9" in caught.value.detail


def test_field_aliases_and_any_case_are_accepted():
    kept = candidate(
        {
            "Label": "Shout It",
            "Prompt": "Upper-case text.",
            "solution": "def solve(text):\n    return text.upper()\n",
            "TESTS": "assert solve('a') == 'A'",
            "placeholder": "solve",
        }
    )
    assert (kept.fn, kept.asserts) == ("shout_it", ("assert shout_it('a') == 'A'",))


def test_a_row_whose_function_already_has_a_real_name_keeps_it():
    kept = candidate(
        {
            "fn": "count_vowels",
            "instruction": "Count vowels; fn is not renamed here.",
            "code": GOOD["code"].replace("def fn", "def count_vowels"),
            "asserts": ["assert count_vowels('a') == 1"],
        }
    )
    assert kept.fn == "count_vowels"
    assert kept.instruction == "Count vowels; fn is not renamed here."


# --- asserts ---


def test_one_string_of_asserts_is_split_with_multiline_asserts_kept_whole():
    text = (
        "\n    assert fn([1, 2]) == [\n        2,\n        1,\n    ]\n    assert fn([]) == []; assert fn([3]) == [3]\n"
    )
    assert split_asserts(text) == [
        "assert fn([1, 2]) == [\n    2,\n    1,\n]",
        "assert fn([]) == []",
        "assert fn([3]) == [3]",
    ]


def test_list_entries_holding_several_asserts_are_split():
    assert split_asserts(["assert fn(1)\nassert fn(2)", "assert fn(3)"]) == [
        "assert fn(1)",
        "assert fn(2)",
        "assert fn(3)",
    ]


# --- renaming ---


def test_rename_follows_scopes_not_text():
    source = (
        "def fn(n):\n"
        '    """fn computes things; "fn" stays in strings."""\n'
        "    return 1 if n < 2 else n * fn(n - 1)  # fn in a comment stays\n"
        "def apply(fn, x):\n"
        "    return fn(x) + len('fn') + fnord + obj.fn + call(fn=1)\n"
        "def uses_global():\n"
        "    global fn\n"
        "    return [fn(i) for i in range(3)] + [fn for fn in range(2)]\n"
        "def shadow():\n"
        "    fn = 3\n"
        "    def inner():\n"
        "        return fn\n"
        "    return inner\n"
        "class Box:\n"
        "    fn = 1\n"
        "    copy = fn\n"
        "    def method(self):\n"
        "        return fn(2)\n"
        "handler = lambda fn=fn: fn\n"
        "label = f'{fn(3)}'\n"
    )
    renamed = rename_global(source, "fn", "factorial")
    assert renamed == (
        "def factorial(n):\n"
        '    """fn computes things; "fn" stays in strings."""\n'
        "    return 1 if n < 2 else n * factorial(n - 1)  # fn in a comment stays\n"
        "def apply(fn, x):\n"
        "    return fn(x) + len('fn') + fnord + obj.fn + call(fn=1)\n"
        "def uses_global():\n"
        "    global factorial\n"
        "    return [factorial(i) for i in range(3)] + [fn for fn in range(2)]\n"
        "def shadow():\n"
        "    fn = 3\n"
        "    def inner():\n"
        "        return fn\n"
        "    return inner\n"
        "class Box:\n"
        "    fn = 1\n"
        "    copy = fn\n"
        "    def method(self):\n"
        "        return factorial(2)\n"
        "handler = lambda fn=factorial: fn\n"
        "label = f'{factorial(3)}'\n"
    )


def test_rename_handles_non_ascii_columns_odd_line_breaks_and_line_endings():
    assert rename_global("é = 'é'; x = fn(1) + fn(2)\n", "fn", "go") == "é = 'é'; x = go(1) + go(2)\n"
    # a form feed or U+2028 inside a string is no line break to Python, whatever str.splitlines thinks
    source = "def fn():\n    return '\u2028' + '\x0c' + str(fn)\n\x0cx = fn()\n"
    assert rename_global(source, "fn", "go") == "def go():\n    return '\u2028' + '\x0c' + str(go)\n\x0cx = go()\n"
    assert rename_global("def fn():\r\n    return fn\r\n", "fn", "go") == "def go():\n    return go\n"


def test_instruction_rename_is_whole_word():
    text = "Write fn(x). Unlike fnord or my_fn or fn_2, fn returns x; see `fn`."
    assert rename_in_text(text, "fn", "echo") == (
        "Write echo(x). Unlike fnord or my_fn or fn_2, echo returns x; see `echo`."
    )


@pytest.mark.parametrize(
    ("label", "taken", "name"),
    [
        ("Count vowels", set(), "count_vowels"),
        ("countVowels", set(), "count_vowels"),
        ("parseHTTPResponse", set(), "parse_http_response"),
        ("  reverse-words!  ", set(), "reverse_words"),
        ("Café total", set(), "cafe_total"),
        ("2 sum", set(), "task_2_sum"),
        ("class", set(), "class_"),  # keyword
        ("match", set(), "match_"),  # soft keyword
        ("list", set(), "list_"),  # builtin
        ("Sum", set(), "sum_"),
        ("helper", {"helper"}, "helper_2"),  # already a name in the row
        ("helper", {"helper", "helper_2"}, "helper_3"),
        ("list", {"list_"}, "list_2"),
    ],
)
def test_labels_become_safe_descriptive_identifiers(label, taken, name):
    assert choose_name(label, taken) == name


def test_long_labels_are_cut_at_a_word_boundary():
    name = choose_name("return the number of distinct characters in the string ignoring case and spaces", set())
    assert len(name) <= 60 and name.startswith("return_the_number_of") and not name.endswith("_")


def test_a_label_that_clashes_with_a_name_in_the_code_is_disambiguated():
    kept = candidate(
        row(
            task="helper",
            code="def helper(x):\n    return x\n\ndef fn(text):\n    return helper(len(text))\n",
            asserts=["assert fn('ab') == 2"],
        )
    )
    assert kept.fn == "helper_2"
    assert "def helper(x)" in kept.code and "def helper_2(text)" in kept.code


def test_a_recursive_placeholder_is_renamed_everywhere():
    kept = candidate(
        row(
            task="factorial",
            code="def fn(n):\n    return 1 if n < 2 else n * fn(n - 1)\n",
            asserts=["assert fn(5) == 120", "assert [fn(i) for i in range(3)] == [1, 1, 2]"],
        )
    )
    assert "fn" not in kept.code.replace("factorial", "")
    assert kept.asserts == ("assert factorial(5) == 120", "assert [factorial(i) for i in range(3)] == [1, 1, 2]")


# --- reading sources ---


def test_format_is_detected_from_content():
    corpus = json.dumps([GOOD, GOOD])
    assert parse_source(corpus, "a.jsonl")[0] == "corpus"  # a JSON list, whatever the extension
    assert [r.index for r in parse_source(json.dumps({"tasks": [GOOD]}), "b.json")[1]] == [0]
    lines = json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n"
    kind, rows = parse_source(lines, "c.json")  # JSON lines, whatever the extension
    assert kind == "jsonl" and [r.line for r in rows] == [1, 3]
    kind, rows = parse_source(json.dumps(GOOD, indent=2), "d.json")  # one pretty-printed row
    assert kind == "jsonl" and len(rows) == 1 and rows[0].data == GOOD
    assert parse_source("", "e.jsonl") == ("jsonl", [])
    with_examples = {**GOOD, "examples": [{"input": 1}]}  # a row, not a document with an `examples` row list
    assert parse_source(json.dumps(with_examples), "f.jsonl") == (
        "jsonl",
        [RawRow("f.jsonl", line=1, data=with_examples)],
    )


def test_bad_lines_of_a_jsonl_stream_are_rows_not_errors():
    text = json.dumps(GOOD) + "\n{not json\n[1, 2]\n"
    kind, rows = parse_source(text, "s.jsonl")
    assert kind == "jsonl" and [r.line for r in rows] == [1, 2, 3]
    assert rows[1].json_error is not None and rows[2].data == [1, 2]


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ('[{"task": "x",', "broken.json", "not valid JSON"),
        ('{\n  "rows": [\n', "broken.json", "not valid JSON"),
        ('{"rows": "nope"}', "r.json", "must be a list"),
        ("42", "n.json", "expected a list of rows"),
    ],
)
def test_a_source_that_is_no_corpus_at_all_is_an_input_error(tmp_path, text, path, message):
    source = write(tmp_path / path, text)
    with pytest.raises(StageInputError, match=message) as caught:
        run_stage(tmp_path, source)
    assert str(source) in str(caught.value)


def test_a_missing_or_undecodable_source_is_an_input_error_naming_it(tmp_path):
    with pytest.raises(StageInputError, match=r"nowhere\.jsonl does not exist"):
        run_stage(tmp_path, tmp_path / "nowhere.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"task": "caf\xe9"}\n')
    with pytest.raises(StageInputError, match=r"latin\.jsonl is not UTF-8"):
        run_stage(tmp_path, latin)


# --- the stage ---


def test_the_stage_sorts_every_row_into_one_bucket_and_reports_it(tmp_path):
    corpus = write(
        tmp_path / "corpus.json",
        {
            "rows": [
                GOOD,
                row(asserts=[]),
                "not a row",
                # HumanEval/0's canonical solution, placeholder and all
                row(
                    task="close elements",
                    code=(
                        "def fn(numbers, threshold):\n"
                        "    for idx, elem in enumerate(numbers):\n"
                        "        for idx2, elem2 in enumerate(numbers):\n"
                        "            if idx != idx2:\n"
                        "                distance = abs(elem - elem2)\n"
                        "                if distance < threshold:\n"
                        "                    return True\n"
                        "    return False\n"
                    ),
                    asserts=["assert fn([1.0, 1.1], 0.5)"],
                ),
                # HumanEval/53 is `return x + y`: trivial, kept
                row(
                    task="add",
                    instruction="Add a and b.",
                    code="def fn(a, b):\n    return a + b\n",
                    asserts=["assert fn(1, 2) == 3"],
                ),
            ]
        },
    )
    stream = tmp_path / "stream.jsonl"
    same_code_new_layout = {
        "fn": "count_vowels",
        "instruction": "Vowels.",
        "code": "def count_vowels(text):\n    '''Docstrings and comments do not count.'''\n"
        "    return sum(1 for ch in text.lower() if ch in 'aeiou')  # note\n",
        "asserts": ["assert count_vowels('a') == 1"],
    }
    other_name_same_body = {
        **same_code_new_layout,
        "fn": "vowels",
        "code": same_code_new_layout["code"].replace("count_vowels", "vowels"),
        "asserts": ["assert vowels('a') == 1"],
    }
    stream.write_text(
        json.dumps(same_code_new_layout) + "\n{broken\n" + json.dumps(other_name_same_body) + "\n", encoding="utf-8"
    )

    summary, rows, report = run_stage(tmp_path, corpus, stream)

    assert summary == {
        "harvested": 8,
        "kept": 3,
        "excluded": 1,
        "duplicates": 1,
        "dropped": {"bad_json": 1, "empty_asserts": 1, "not_an_object": 1},
        # rows read and kept per source, what a dry run reports (bucket sums: 5 = 2 kept + 3 out, 3 = 1 + 2)
        "by_source": {str(corpus): {"harvested": 5, "kept": 2}, str(stream): {"harvested": 3, "kept": 1}},
    }
    assert len(json.dumps(summary)) < 3000
    assert [r["fn"] for r in rows] == ["count_vowels", "add", "vowels"]
    assert all(set(r) == {"id", "fn", "instruction", "code", "asserts", "source", "code_digest"} for r in rows)
    assert rows[0]["source"] == f"{corpus}[0]"
    assert report["excluded_rows"] == [
        {
            "source": str(corpus),
            "index": 3,
            "fn": "close_elements",
            "task_id": "HumanEval/0",
            "kind": "exact_code",
            "score": 1.0,
            "shared": report["excluded_rows"][0]["shared"],
            "detail": report["excluded_rows"][0]["detail"],
        }
    ]
    assert "HumanEval/0" in report["excluded_rows"][0]["detail"]
    assert report["duplicate_rows"] == [
        {
            "source": str(stream),
            "line": 1,
            "fn": "count_vowels",
            "duplicate_of": rows[0]["id"],
            "first_seen": f"{corpus}[0]",
        }
    ]
    dropped = {(d.get("index", d.get("line")), d["reason"]) for d in report["dropped_rows"]}
    assert dropped == {(1, "empty_asserts"), (2, "not_an_object"), (2, "bad_json")}
    assert all(d["detail"] and d["reason"] in DROP_REASONS for d in report["dropped_rows"])
    assert report["settings"] == {"exclude_suites": ["humaneval"], "ngram_size": 8, "ngram_threshold": 0.5}
    assert report["sources"] == [
        {"path": str(corpus), "format": "corpus"},
        {"path": str(stream), "format": "jsonl"},
    ]


def test_sources_are_never_written(tmp_path):
    corpus = write(tmp_path / "corpus.json", [GOOD, row(code="def fn(:\n")])
    stream = write(tmp_path / "stream.jsonl", json.dumps(GOOD) + "\n")
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (corpus, stream)}
    run_stage(tmp_path, corpus, stream)
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (corpus, stream)} == before
    with pytest.raises(StageInputError, match="also a --source"):
        parser = argparse.ArgumentParser()
        stage.add_arguments(parser)
        stage.run(parser.parse_args(["--source", str(stream), "--output", str(stream), "--report", "r.json"]))
    assert stream.read_bytes() == before[stream][0]


def test_output_is_identical_run_after_run(tmp_path):
    corpus = write(tmp_path / "corpus.json", [GOOD, row(task="other", code=GOOD["code"] + "\nX = 1\n")])
    run_stage(tmp_path, corpus)
    first = (tmp_path / "out" / "candidates.jsonl").read_bytes()
    run_stage(tmp_path, corpus)
    assert (tmp_path / "out" / "candidates.jsonl").read_bytes() == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ngram-size", "0"], "--ngram-size"),
        (["--ngram-threshold", "0"], "--ngram-threshold"),
        (["--exclude-suite", "no-such-suite"], "no-such-suite"),
    ],
)
def test_bad_settings_are_input_errors(tmp_path, extra, message):
    corpus = write(tmp_path / "corpus.json", [GOOD])
    with pytest.raises(StageInputError, match=message):
        run_stage(tmp_path, corpus, extra=extra)
