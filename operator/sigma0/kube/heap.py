"""Keep the operator's resident memory close to what its Python objects use.

With the C library's allocator (glibc), every thread that allocates gets an arena of its own, up to 8 per core,
and memory freed in an arena stays with the process. The operator decodes a Kubernetes list in whichever of kopf's
worker threads runs the reconcile, so its resident size crept up with every cycle it handled while its live Python
objects did not (bench/operator_cycles.py with the tracemalloc probe in bench/memprobe shows both). Two arenas and
a `malloc_trim` after each resync hand that memory back. Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("sigma0.operator")

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None
    return libc


_libc = _glibc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the allocator's arenas; call before the worker threads start. False where the C library is not glibc."""
    if _libc is None:
        return False
    return bool(_libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> None:
    """Give the free memory of every arena back to the system."""
    if _libc is not None:
        _libc.malloc_trim(0)
