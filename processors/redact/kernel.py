"""Numba building blocks of the redact kernels: decorators without reference counting, unchecked loads.

The kernels allocate nothing (callers pass every array in), so they are compiled without numba's
reference counting (`_nrt=False`): with it, every inlined helper increfs and decrefs each array
it is passed, atomic operations that were more than half of the wire prefilter's time. (`_nrt`
is not in numba's type stubs, hence the casts.)

numba also indexes arrays with a negative-index fix-up and reads a word byte by byte; `at` and
`load8` do neither, for the per-key and per-byte loops. Their callers guarantee the bounds
(0 <= i < size for `at`, 0 <= i and i + 8 <= size for `load8`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

kernel = cast(Any, njit)(cache=True, nogil=True, _nrt=False)
"""A compiled function of the prefilter."""
inline = cast(Any, njit)(cache=True, nogil=True, inline="always", _nrt=False)
"""A helper inlined into its callers (numba IR inlining: it sees their argument types)."""


def _pointer(context: Any, builder: Any, aryty: Any, ary: Any, idxty: Any, idx: Any) -> Any:
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [context.cast(builder, idx, idxty, types.intp)])


def _contiguous_bytes(buf: Any) -> bool:
    """The loads below address `data + i`: only right for C-contiguous one-dimensional arrays."""
    return isinstance(buf, types.Array) and buf.ndim == 1 and buf.layout == "C"


def _load8_typing(typingctx: Any, buf: Any, i: Any) -> Any:
    if not _contiguous_bytes(buf) or buf.dtype != types.uint8:
        return None  # typing error at compile time instead of wrong reads

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, llvm_ir.IntType(64).as_pointer()), align=1)

    return types.uint64(buf, i), codegen


def _at_typing(typingctx: Any, buf: Any, i: Any) -> Any:
    if not _contiguous_bytes(buf):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(ptr)

    return buf.dtype(buf, i), codegen


load8 = cast("Callable[[np.ndarray, int], np.uint64]", intrinsic(_load8_typing))
"""buf[i:i+8] as a little-endian uint64, one unaligned load."""
at = cast("Callable[[np.ndarray, int], Any]", intrinsic(_at_typing))
"""buf[i], without the negative-index fix-up."""


@inline
def word(buf, a, n):  # pragma: no cover - compiled
    """The first min(n, 8) bytes at a as a little-endian word (the bytes above zero)."""
    if n >= 8:
        return load8(buf, a)
    if a + 8 <= buf.shape[0]:
        return load8(buf, a) & ((np.uint64(1) << np.uint64(8 * n)) - np.uint64(1))
    w = np.uint64(0)
    for k in range(n):
        w |= np.uint64(at(buf, a + k)) << np.uint64(8 * k)
    return w
