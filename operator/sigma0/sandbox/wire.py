"""The channel between the judge and a candidate's child: length-prefixed JSON messages carrying plain data only.

Standard library only (the worker loads it inside a bare sandbox image). Both sides use it: the child to encode what
the candidate's functions return, the judge to decode it. What crosses is exact builtin data: None, bool, int, float,
complex, str, bytes, list, tuple, dict, set, frozenset, range and Ellipsis, nested. Anything else stays in the child
and crosses as a handle: `{"h": id, "k": type name, "c": true}` for a function or class, `{"h": id, "k": type name,
"c": false, "s": its data}` for an object (its fields as plain data, see harness.py); a module as `{"m": name}`.

The functions it calls (os.write, json's encoder...) are bound when it is loaded, and the worker loads it with a
builtins dictionary of its own, so that an honest candidate that replaces `os.write` or `builtins.len` for its own
purposes still gets its answers through. A dishonest one can break its own channel, which only fails it.

Decoding never builds anything but builtin data and the handles the judge makes itself (the `handle` callback), so
no byte the child sends can make the judge run the candidate's code: no pickle, no marshal, no eval.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from typing import Any

MESSAGE_CAP = 16 << 20
"""The largest message either side accepts, in bytes."""

DEPTH = 100
"""How deeply nested a value may be."""

_HEADER = struct.Struct(">I")
_SMALL = 1 << 53  # ints beyond this travel as hex, which has no digit limit and no float rounding on the way


class Malformed(ValueError):
    """A message that the other side could not have meant: not JSON, a bad tag, too large, too deep."""


class NotPlain(Exception):
    """A value that is not plain data (the encoder's `other` hook decides what happens to it)."""


_DUMPS = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_RAW_DECODE = json.JSONDecoder().raw_decode  # json.loads adds tens of µs per small message here
_WRITE = os.write
_READ = os.read


def frame(message: Any) -> bytes:
    """A message as bytes on the wire: a 4-byte big-endian length, then compact JSON."""
    body = _DUMPS(message).encode()
    if len(body) > MESSAGE_CAP:
        raise Malformed(f"a message of {len(body)} bytes is over the cap of {MESSAGE_CAP}")
    return _HEADER.pack(len(body)) + body


def parse(body: bytes) -> Any:
    try:
        text = body.decode()
        value, end = _RAW_DECODE(text)
    except (ValueError, RecursionError) as error:
        raise Malformed(f"not JSON: {error}") from None
    if end != len(text):
        raise Malformed("not JSON: extra data after the value")
    return value


def split(buffer: bytearray) -> bytes | None:
    """Take one whole message body off the front of `buffer`, or None while it is incomplete."""
    if len(buffer) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack_from(buffer)
    if size > MESSAGE_CAP:
        raise Malformed(f"a message of {size} bytes is over the cap of {MESSAGE_CAP}")
    end = _HEADER.size + size
    if len(buffer) < end:
        return None
    body = bytes(buffer[_HEADER.size : end])
    del buffer[:end]
    return body


def send(fd: int, message: Any) -> None:
    data = memoryview(frame(message))
    while data:
        data = data[_WRITE(fd, data) :]


def receive(fd: int) -> Any:
    """Blocking read of one message (the child's side; the judge multiplexes with its own loop)."""
    buffer = bytearray()
    while True:
        body = split(buffer)
        if body is not None:
            return parse(body)
        chunk = _READ(fd, 1 << 16)
        if not chunk:
            raise EOFError("the other side closed the channel")
        buffer += chunk


def encode(value: Any, other: Callable[[Any], Any], depth: int = 0) -> Any:
    """`value` as JSON-able data; `other(value)` is called for anything that is not plain (it may raise NotPlain).

    Exact types only decide what is plain. Subclasses of builtin types (a namedtuple, a Counter, an int with its own
    __eq__) are read through the builtin type's own methods, called unbound, so what crosses is their stored data.
    """
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -_SMALL < value < _SMALL else {"i": format(value, "x")}
    if depth > DEPTH:
        raise NotPlain("nested too deeply")
    below = depth + 1
    if kind is list:
        return [encode(item, other, below) for item in value]
    if kind is tuple:
        return {"t": [encode(item, other, below) for item in value]}
    if kind is dict:
        return {"d": [[encode(key, other, below), encode(item, other, below)] for key, item in value.items()]}
    if kind is set:
        return {"s": [encode(item, other, below) for item in value]}
    if kind is frozenset:
        return {"f": [encode(item, other, below) for item in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if kind is range:
        return {"r": [encode(value.start, other), encode(value.stop, other), encode(value.step, other)]}
    if value is Ellipsis:
        return {"E": 0}
    view = _builtin_view(value)
    if view is not _NONE:
        return encode(view, other, depth)
    return other(value)


_NONE = object()


def _builtin_view(value: Any) -> Any:
    """A subclass instance of a builtin data type as that builtin type, read with the builtin's own methods."""
    kind = type(value)
    for base, read in _VIEWS:
        if issubclass(kind, base):
            return read(value)
    return _NONE


_VIEWS: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (bool, bool.__bool__),
    (int, int.__int__),
    (float, float.__float__),
    (complex, complex.__complex__),
    (str, str.__str__),
    (bytes, bytes.__bytes__),
    (list, list.copy),
    (tuple, lambda value: tuple.__getitem__(value, slice(None))),
    (dict, lambda value: dict(dict.items(value))),
    (frozenset, lambda value: frozenset(frozenset.__iter__(value))),
    (set, lambda value: set(set.__iter__(value))),
)


def decode(
    data: Any,
    handle: Callable[[int, str, bool, Any], Any],
    module: Callable[[str], Any],
    depth: int = 0,
    function: Callable[[str, Any], Any] | None = None,
) -> Any:
    """The value a message carries, built from builtin types and what `handle`/`module` return; Malformed if the
    data is not something `encode` writes. Only the child passes `function`, which makes the judge's functions
    (`{"L": [lambda source, captured]}`, `{"M": [type, method]}`) into its own; the judge never accepts one."""
    try:
        return _decode(data, handle, module, depth, function)
    except Malformed:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError) as error:
        raise Malformed(f"undecodable value: {type(error).__name__}: {error}") from None


def _decode(
    data: Any,
    handle: Callable[[int, str, bool, Any], Any],
    module: Callable[[str], Any],
    depth: int,
    function: Callable[[str, Any], Any] | None = None,
) -> Any:
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is float or kind is str:
        return data
    if depth > DEPTH + 1:
        raise Malformed("nested too deeply")
    below = depth + 1
    if kind is list:
        return [_decode(item, handle, module, below, function) for item in data]
    if kind is not dict or len(data) not in (1, 3, 4):
        raise Malformed(f"unexpected {kind.__name__}")
    if "h" in data:
        ref, name, callable_ = data["h"], data.get("k"), data.get("c")
        if type(ref) is not int or type(name) is not str or type(callable_) is not bool:
            raise Malformed("a bad handle")
        if len(data) == 3 and callable_:
            return handle(ref, name, callable_, None)
        if len(data) == 4 and "s" in data and not callable_:
            return handle(ref, name, callable_, _decode(data["s"], handle, module, below, function))
        raise Malformed("a bad handle")
    if len(data) != 1:
        raise Malformed("unexpected keys")
    ((tag, value),) = data.items()
    if tag == "i" and type(value) is str and len(value) <= MESSAGE_CAP:
        return int(value, 16)
    if tag == "b" and type(value) is str:
        return bytes.fromhex(value)
    if tag == "m" and type(value) is str:
        return module(value)
    if tag == "E":
        return Ellipsis
    if type(value) is not list:
        raise Malformed(f"a bad {tag!r} value")
    items = [_decode(item, handle, module, below, function) for item in value]
    if tag == "t":
        return tuple(items)
    if tag == "d":
        if not all(type(pair) is list and len(pair) == 2 for pair in items):
            raise Malformed("a dict entry is not a pair")
        return {key: item for key, item in items}
    if tag == "s":
        return set(items)
    if tag == "f":
        return frozenset(items)
    if tag == "c" and len(items) == 2 and all(type(part) is float for part in items):
        return complex(items[0], items[1])
    if tag == "r" and len(items) == 3 and all(type(bound) is int for bound in items):
        return range(items[0], items[1], items[2])
    if tag in ("L", "M") and function is not None and len(value) == 2:
        return function(tag, [value[0], items[1]])
    raise Malformed(f"unknown tag {tag!r}")
