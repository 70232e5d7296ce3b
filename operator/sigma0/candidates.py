"""Harvested rows: read them from a source, check them, give the function a real name, fingerprint the code.

A source is a JSON corpus document or a JSONL stream (docs/corpus-format.md); `parse_source` tells them apart by
content and turns either into `RawRow`s. `normalise_row` turns one raw row into a `Candidate`, or raises `RowError`
with a reason from `DROP_REASONS`. Everything here is pure: the harvest stage does the file I/O.

Renaming is by scope, not by text: the module-level function (`fn` by default) and every name that refers to it
(calls, recursion, `global fn`, references from other functions) are renamed in the code and the asserts, found
with `ast` and edited at their `tokenize` positions, so layout and comments stay; `fn` inside a string, as part of
`fnord`, as an attribute (`x.fn`), a keyword argument (`f(fn=1)`) or a local that shadows it is left alone. In the
instruction, whole-word `fn` is renamed.

The dedup fingerprint (`code_digest`) is the digest of the renamed code parsed and unparsed with every docstring
removed: comments, docstrings, layout and quoting do not count; identifiers and literals do.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import re
import textwrap
import tokenize
import unicodedata
from dataclasses import dataclass
from typing import Any

from sigma0.io import text_digest

DEFAULT_PLACEHOLDER = "fn"
MAX_NAME_LENGTH = 60
DOCUMENT_ROW_KEYS = ("rows", "tasks", "items", "data", "examples")

# Accepted spellings of each field, first match wins; keys are compared case-insensitively.
ALIASES: dict[str, tuple[str, ...]] = {
    "label": ("task", "label", "name", "title", "task_name", "slug"),
    "instruction": ("instruction", "prompt", "description", "question", "text", "docstring"),
    "code": ("code", "solution", "source_code", "program", "canonical_solution", "answer"),
    "asserts": ("asserts", "tests", "test", "assertions", "test_list", "asserts_list"),
    "fn": ("fn", "entry_point", "function", "function_name", "func_name"),
    "placeholder": ("placeholder", "placeholder_fn", "placeholder_name"),
}

DROP_REASONS = {
    "bad_json": "the line is not valid JSON",
    "not_an_object": "the row is not a JSON object",
    "missing_field": "a required field (label, instruction, code, asserts) is absent",
    "wrong_type": "a field has the wrong JSON type",
    "empty_field": "instruction or code is blank",
    "empty_asserts": "there is no assert statement",
    "syntax": "the code or an assert does not parse as Python",
    "not_an_assert": "an entry of asserts is a statement other than `assert`",
    "bad_name": "the function name or placeholder is not a Python identifier",
    "bad_label": "the label has no letters or digits to make a function name from",
    "fn_not_defined": "the code defines no top-level `def` of the function the asserts test",
    "untested_fn": "no assert mentions the function",
}

BUILTIN_NAMES = frozenset(dir(builtins))


class RowError(Exception):
    """A row that cannot be used; `reason` is a key of DROP_REASONS, `detail` says what exactly."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in DROP_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceError(ValueError):
    """A source file that holds no rows we can read at all (not a row-level problem)."""


@dataclass(frozen=True)
class RawRow:
    """One row as read: a JSON value (or the JSON error), and where it came from."""

    source: str
    line: int | None = None  # 1-based line of a JSONL stream
    index: int | None = None  # 0-based position in a corpus document's row list
    data: Any = None
    json_error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}[{self.index}]"

    def location(self) -> dict[str, Any]:
        if self.line is not None:
            return {"source": self.source, "line": self.line}
        return {"source": self.source, "index": self.index}


def source_of(where: str) -> str:
    """The source file of a row's `where` (`path:line` or `path[index]`, RawRow.where)."""
    return re.sub(r"(:\d+|\[\d+\])$", "", where)


@dataclass(frozen=True)
class Candidate:
    id: str
    fn: str
    instruction: str
    code: str
    asserts: tuple[str, ...]
    source: str
    code_digest: str

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fn": self.fn,
            "instruction": self.instruction,
            "code": self.code,
            "asserts": list(self.asserts),
            "source": self.source,
            "code_digest": self.code_digest,
        }


# --- reading sources ---


def parse_source(text: str, path: str) -> tuple[str, list[RawRow]]:
    """Split a source's text into raw rows; returns ("corpus" | "jsonl", rows).

    One JSON document that is a list, or an object with a `rows`/`tasks`/... list, is a corpus; anything else
    whose first line is JSON is a JSONL stream, where a bad line is a bad row, not a bad file.
    """
    if not text.strip():
        return "jsonl", []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        first_line = next(line for line in text.split("\n") if line.strip())
        if text.lstrip().startswith("[") or (path.endswith(".json") and not _is_json(first_line)):
            where = f"line {error.lineno}, column {error.colno}"
            raise SourceError(f"{path}: not valid JSON ({where}: {error.msg})") from None
        return "jsonl", _jsonl_rows(text, path)
    if isinstance(document, list):
        return "corpus", [RawRow(path, index=i, data=row) for i, row in enumerate(document)]
    if isinstance(document, dict):
        keys = {key.lower(): key for key in document}
        is_a_row = any(alias in keys for alias in ALIASES["code"])  # a row may have an `examples` list
        for name in DOCUMENT_ROW_KEYS:
            if name in keys and not is_a_row:
                rows = document[keys[name]]
                if not isinstance(rows, list):
                    raise SourceError(f"{path}: `{keys[name]}` must be a list of rows, got {type(rows).__name__}")
                return "corpus", [RawRow(path, index=i, data=row) for i, row in enumerate(rows)]
        return "jsonl", [RawRow(path, line=1, data=document)]  # one row on its own, perhaps pretty-printed
    raise SourceError(f"{path}: expected a list of rows or an object with a `rows` list, got {type(document).__name__}")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _jsonl_rows(text: str, path: str) -> list[RawRow]:
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold a raw U+2028
        if not line.strip():
            continue
        try:
            rows.append(RawRow(path, line=number, data=json.loads(line)))
        except json.JSONDecodeError as error:
            rows.append(RawRow(path, line=number, json_error=f"column {error.colno}: {error.msg}"))
    return rows


# --- one row ---


def normalise_row(raw: RawRow) -> Candidate:
    """Validate a raw row and return it renamed and fingerprinted; raises RowError if it cannot be used."""
    if raw.json_error is not None:
        raise RowError("bad_json", raw.json_error)
    if not isinstance(raw.data, dict):
        raise RowError("not_an_object", f"got {type(raw.data).__name__}")
    fields = _resolve_aliases(raw.data)
    instruction = newlines(_text_field(fields, "instruction"))
    code = newlines(_text_field(fields, "code"))
    if "asserts" not in fields:
        raise RowError("missing_field", f"asserts (or one of {', '.join(ALIASES['asserts'][1:])})")
    placeholder = _name_field(fields, "placeholder") or DEFAULT_PLACEHOLDER
    name = _name_field(fields, "fn") or placeholder

    tree = _parse(code, "code")
    if not any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body):
        raise RowError("fn_not_defined", f"the code has no top-level `def {name}(...)`")
    asserts = split_asserts(fields["asserts"])
    if not any(_mentions(statement, name) for statement in asserts):
        raise RowError("untested_fn", f"no assert mentions `{name}`")

    target = name
    if name in (placeholder, DEFAULT_PLACEHOLDER):
        label = fields.get("label")
        if label is None:
            raise RowError("missing_field", f"label (task/label/name), needed to rename the placeholder `{name}`")
        if not isinstance(label, str):
            raise RowError("wrong_type", f"label must be a string, got {type(label).__name__}")
        taken = _names_in(code, *asserts)  # `name` included: a label that says "fn" still gets a new name
        target = choose_name(label, taken)
        code = rename_global(code, name, target)
        asserts = [rename_global(statement, name, target) for statement in asserts]
        instruction = rename_in_text(instruction, name, target)

    digest = text_digest(normalised_code(code))
    return Candidate(
        id=f"{target}-{digest.removeprefix('sha256:')[:12]}",
        fn=target,
        instruction=instruction.strip(),
        code=code.strip("\n") + "\n",
        asserts=tuple(asserts),
        source=raw.where,
        code_digest=digest,
    )


def _resolve_aliases(data: dict[str, Any]) -> dict[str, Any]:
    lowered = {str(key).lower(): value for key, value in data.items()}
    resolved = {}
    for field, aliases in ALIASES.items():
        present = [alias for alias in aliases if alias in lowered]
        if present:
            resolved[field] = lowered[present[0]]
    return resolved


def _text_field(fields: dict[str, Any], name: str) -> str:
    if name not in fields:
        raise RowError("missing_field", f"{name} (or one of {', '.join(ALIASES[name][1:])})")
    value = fields[name]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError("empty_field", f"{name} is blank")
    return value


def _name_field(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    if not value.isidentifier() or keyword.iskeyword(value):
        raise RowError("bad_name", f"{name} {value!r} is not a Python identifier")
    return value


def _parse(source: str, what: str) -> ast.Module:
    try:
        tree = ast.parse(source)
        compile(tree, f"<{what}>", "exec", dont_inherit=True)  # also catches `return` outside a function
        return tree
    except SyntaxError as error:
        raise RowError("syntax", f"{what}: line {error.lineno}: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes; absurd nesting
        raise RowError("syntax", f"{what}: {type(error).__name__}: {error}") from None


def split_asserts(value: Any) -> list[str]:
    """One assert statement per entry, from a list of strings or one string of several (multi-line) asserts."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise RowError("wrong_type", "asserts must be a string or a list of strings")
    statements: list[str] = []
    for number, item in enumerate(items):
        text = textwrap.dedent(newlines(item)).strip()
        if not text:
            continue
        for node in _parse(text, f"asserts[{number}]").body:
            segment = ast.get_source_segment(text, node) or ast.unparse(node)
            if not isinstance(node, ast.Assert):
                first_line = segment.splitlines()[0]
                raise RowError("not_an_assert", f"asserts[{number}]: `{first_line}` is not an assert statement")
            statements.append(segment)
    if not statements:
        raise RowError("empty_asserts", "asserts holds no assert statement")
    return statements


def _mentions(source: str, name: str) -> bool:
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(ast.parse(source)))


def _names_in(*sources: str) -> set[str]:
    names: set[str] = set()
    for source in sources:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME:
                names.add(token.string)
    return names


def normalised_code(code: str) -> str:
    """The code as ast sees it, without docstrings: the text the dedup digest is taken of."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


# --- names ---


def identifier_from_label(label: str) -> str:
    """`"Count vowels"`, `"countVowels"`, `"count-vowels!"` → `count_vowels`; raises RowError if nothing is left."""
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", ascii_label)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced)
    words = re.findall(r"[a-z0-9]+", spaced.lower())
    if not words:
        raise RowError("bad_label", f"label {label!r} has no letters or digits")
    name = words[0]
    for word in words[1:]:
        if len(name) + 1 + len(word) > MAX_NAME_LENGTH:
            break
        name = f"{name}_{word}"
    return f"task_{name}" if name[0].isdigit() else name


def choose_name(label: str, taken: set[str]) -> str:
    """A descriptive identifier for the label that is no keyword, shadows no builtin and clashes with no name
    already in the row: `list` → `list_`, a clash with an existing `count_vowels` → `count_vowels_2`."""
    base = identifier_from_label(label)
    if keyword.iskeyword(base) or keyword.issoftkeyword(base) or base in BUILTIN_NAMES:
        base += "_"
    name, suffix = base, 2
    while name in taken:
        name = f"{base.rstrip('_')}_{suffix}"
        suffix += 1
    return name


def rename_in_text(text: str, old: str, new: str) -> str:
    """Whole-word rename in prose: `fn(x)` and `fn.` change, `fnord` and `my_fn` do not."""
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, text)


def rename_global(source: str, old: str, new: str) -> str:
    """Rename the module-level name `old` to `new` wherever it refers to the module-level binding.

    Line endings come back as `\n`. Lines are split on `\n` only, as Python's tokenizer does: `str.splitlines`
    would also split inside a string literal holding a form feed or U+2028.
    """
    source = newlines(source)
    tree = ast.parse(source)
    lines = [line + "\n" for line in source.split("\n")]
    lines[-1] = lines[-1][:-1]
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    starts: set[tuple[int, int]] = set()
    for kind, node in _References(old).find(tree):
        row, col = node.lineno, char_column(lines[node.lineno - 1], node.col_offset)
        if kind == "name":
            starts.add((row, col))
        elif kind == "def":  # the NAME token after `def` / `class`
            after = [t for t in tokens if t.type == tokenize.NAME and t.start > (row, col)]
            starts.add(next(t.start for t in after if t.string == old))
        else:  # a `global` statement: every `old` in its span
            end = (node.end_lineno or row, char_column(lines[(node.end_lineno or row) - 1], node.end_col_offset or 0))
            starts.update(
                t.start for t in tokens if t.type == tokenize.NAME and t.string == old and (row, col) <= t.start < end
            )
    for row, col in sorted(starts, reverse=True):
        line = lines[row - 1]
        assert line[col : col + len(old)] == old, (row, col, line)
        lines[row - 1] = line[:col] + new + line[col + len(old) :]
    return "".join(lines)


def newlines(text: str) -> str:
    """Windows and old Mac line endings as `\n`, which is what Python reads them as anyway."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def char_column(line: str, byte_col: int) -> int:
    """ast columns count UTF-8 bytes; tokenize and str indexing count characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class _References:
    """Finds the nodes that name the module-level binding of `name`, following Python's scoping rules.

    A scope is a function, lambda, class or comprehension. A name in a scope means the module-level binding
    unless the scope (or an enclosing function scope; class scopes enclose only their own body) binds it itself,
    or declares it `nonlocal`; `global name` sends it straight to the module.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.found: list[tuple[str, ast.AST]] = []

    def find(self, tree: ast.Module) -> list[tuple[str, ast.AST]]:
        self._visit_all(tree.body, [])
        return self.found

    # Each entry of `chain` is (scope node, how that scope binds the name: "local" | "global" | "nonlocal" | None).
    def _is_global(self, chain: list[tuple[ast.AST, str | None]]) -> bool:
        for depth, (scope, binding) in enumerate(reversed(chain)):
            if isinstance(scope, ast.ClassDef) and depth > 0:
                continue
            if binding == "global":
                return True
            if binding is not None:
                return False
        return True

    def _visit_all(self, nodes: list[Any], chain: list[tuple[ast.AST, str | None]]) -> None:
        for node in nodes:
            if isinstance(node, ast.AST):
                self._visit(node, chain)

    def _visit(self, node: ast.AST, chain: list[tuple[ast.AST, str | None]]) -> None:
        if isinstance(node, ast.Name) and node.id == self.name:
            if self._is_global(chain):
                self.found.append(("name", node))
            return
        if isinstance(node, ast.Global) and self.name in node.names:
            self.found.append(("global", node))
            return
        is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        if is_def and node.name == self.name and self._is_global(chain):
            self.found.append(("def", node))
        if isinstance(node, (*_FUNCTIONS, ast.ClassDef, *_COMPREHENSIONS)):
            outer, inner = _split_scope(node)
            self._visit_all(outer, chain)
            self._visit_all(inner, [*chain, (node, _binding(node, self.name))])
            return
        self._visit_all(list(ast.iter_child_nodes(node)), chain)


def _split_scope(node: ast.AST) -> tuple[list[ast.AST], list[ast.AST]]:
    """The parts of a scope node evaluated in the enclosing scope, and those evaluated in its own."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = node.args
        defaults = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
        if isinstance(node, ast.Lambda):
            return defaults, [node.body]
        every_arg = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        annotations = [a.annotation for a in every_arg if a is not None and a.annotation is not None]
        returns = [node.returns] if node.returns else []
        return [*node.decorator_list, *defaults, *annotations, *returns], list(node.body)
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *node.keywords], list(node.body)
    assert isinstance(node, _COMPREHENSIONS)
    first, *rest = node.generators
    results = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    return [first.iter], [first.target, *first.ifs, *rest, *results]


def _binding(scope: ast.AST, name: str) -> str | None:
    """How `scope` itself binds `name`: "global", "nonlocal", "local", or None if it does not."""
    if isinstance(scope, _FUNCTIONS):
        args = scope.args
        every_arg = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        if any(a is not None and a.arg == name for a in every_arg):
            return "local"
    binding: str | None = None
    _, inner = _split_scope(scope)
    stack = list(inner)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global | ast.Nonlocal) and name in node.names:
            return "global" if isinstance(node, ast.Global) else "nonlocal"
        if _binds(node, name):
            binding = "local"
        if isinstance(node, (*_FUNCTIONS, ast.ClassDef, *_COMPREHENSIONS)):
            outer, nested = _split_scope(node)
            stack.extend(outer)
            if isinstance(node, _COMPREHENSIONS) and not isinstance(scope, _COMPREHENSIONS):
                # `(x := ...)` inside a comprehension binds in the enclosing function
                stack.extend(n for part in nested for n in ast.walk(part) if isinstance(n, ast.NamedExpr))
            continue
        stack.extend(ast.iter_child_nodes(node))
    if isinstance(scope, _COMPREHENSIONS) and binding == "local":
        targets = [n for g in scope.generators for n in ast.walk(g.target)]
        if not any(isinstance(n, ast.Name) and n.id == name for n in targets):
            binding = None  # only walrus targets: they belong to the enclosing scope
    return binding


def _binds(node: ast.AST, name: str) -> bool:
    if isinstance(node, ast.Name):
        return node.id == name and isinstance(node.ctx, ast.Store | ast.Del)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name == name
    if isinstance(node, ast.Import | ast.ImportFrom):
        return any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names)
    if isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
        return node.name == name
    if isinstance(node, ast.MatchMapping):
        return node.rest == name
    return False
