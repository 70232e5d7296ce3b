'''The synthetic code that `tiny://coder` is pretrained on, and the demo's tasks: small Python functions of one int.

A family is a one-line function shape with integer constants, e.g. `add`:

    def add_7(x: int) -> int:
        """Return x plus 7."""
        return x + 7

The name and the docstring say the constants; the body must use them. Pretraining covers the COMMON families with
every constant in CONSTANTS, the RARE ones with a handful of functions, and never sees the NEW ones: so the base model
knows the format and copies numbers well, and a fine-tune on rows of a rare or new family has something to teach
that is measurable on held-out constants (examples/demo/make_demo.py writes the demo's rows and its gate suite
from these). Pure Python, no ML imports: the demo's generator reads it too.
'''

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

CONSTANTS = range(2, 60)


@dataclass(frozen=True)
class Family:
    name: str
    instruction: str  # format string over the constants a, b
    expression: str  # the returned expression, a format string over a, b (x is the argument)
    arity: int = 1

    def function(self, *constants: int) -> Function:
        if len(constants) != self.arity:
            raise ValueError(f"family {self.name} takes {self.arity} constant(s), got {constants}")
        values = dict(zip("ab", constants, strict=False))
        return Function(
            name="_".join([self.name, *map(str, constants)]),
            instruction=self.instruction.format(**values),
            expression=self.expression.format(**values),
        )


@dataclass(frozen=True)
class Function:
    name: str
    instruction: str
    expression: str

    @property
    def prompt(self) -> str:
        """The signature and docstring, as a HumanEval prompt is."""
        return f'def {self.name}(x: int) -> int:\n    """{self.instruction}"""\n'

    @property
    def body(self) -> str:
        return f"    return {self.expression}\n"

    @property
    def code(self) -> str:
        """The function without its docstring (a harvested row's `code`)."""
        return f"def {self.name}(x: int) -> int:\n{self.body}"

    def __call__(self, x: int) -> int:
        value = eval(self.expression, {"__builtins__": {"max": max, "min": min, "abs": abs}}, {"x": x})
        return int(value)


COMMON = {
    family.name: family
    for family in (
        Family("add", "Return x plus {a}.", "x + {a}"),
        Family("sub", "Return x minus {a}.", "x - {a}"),
        Family("mul", "Return x times {a}.", "x * {a}"),
        Family("div", "Return x divided by {a}, rounded down.", "x // {a}"),
        Family("max", "Return the larger of x and {a}.", "max(x, {a})"),
        Family("min", "Return the smaller of x and {a}.", "min(x, {a})"),
    )
}
RARE = {
    family.name: family
    for family in (
        Family("affine", "Return x times {a} plus {b}.", "x * {a} + {b}", arity=2),
        Family("mod", "Return the remainder of x divided by {a}.", "x % {a}"),
    )
}
NEW = {
    family.name: family
    for family in (
        Family("clamp", "Return x limited to the range {a} to {b}.", "min(max(x, {a}), {b})", arity=2),
        Family("rsub", "Return {a} minus x.", "{a} - x"),
    )
}
FAMILIES = COMMON | RARE | NEW
# The rare families' few pretraining functions: the only ones the base model sees.
RARE_SEEN = {"affine": ((2, 3), (4, 1)), "mod": ((3,), (5,))}


def pretraining_functions() -> list[Function]:
    """Every common family with every constant, plus the few rare functions; in a fixed order."""
    functions = [family.function(a) for family in COMMON.values() for a in CONSTANTS]
    functions += [RARE[name].function(*constants) for name, seen in RARE_SEEN.items() for constants in seen]
    return functions


def constants_for(
    family: Family, count: int, seed: int, exclude: Collection[tuple[int, ...]] = ()
) -> list[tuple[int, ...]]:
    """`count` distinct constant tuples for the family (b > a for two-constant ones), none in `exclude`."""
    rng = random.Random(f"{family.name}:{seed}")
    pairs = [(a, b) for a in CONSTANTS for b in CONSTANTS if b > a]
    pool = [(a,) for a in CONSTANTS] if family.arity == 1 else pairs
    pool = [constants for constants in pool if constants not in exclude]
    if count > len(pool):
        raise ValueError(f"family {family.name} has only {len(pool)} constant tuples left, asked for {count}")
    return rng.sample(pool, count)
