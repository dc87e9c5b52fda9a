"""Protobuf wire-format primitives for numba kernels.

Every reader takes the message bytes as a ``uint8[:]`` array and a position and
returns the new position; a negative position means the bytes are malformed
(truncated varint, length past the end, unknown wire type). Kernels built on
these never raise: they report failure and the caller falls back to the
protobuf library, whose error message is the one users see.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT = 0
I64 = 1
LEN = 2
SGROUP = 3
EGROUP = 4
I32 = 5

MALFORMED = -1
MAX_FIELD = 0x1FFFFFFF  # largest field number protobuf allows
MAX_PREFIX = 5  # bytes a tag or length varint may take (upb rejects longer ones)


@njit(cache=True, nogil=True, inline="always")
def read_varint(buf: np.ndarray, pos: int, end: int) -> tuple[np.uint64, int]:
    """Value and position after a base-128 varint; position -1 when it runs past `end` or 10 bytes."""
    result = np.uint64(0)
    shift = np.uint64(0)
    for _ in range(10):
        if pos >= end:
            return np.uint64(0), MALFORMED
        b = buf[pos]
        pos += 1
        result |= np.uint64(b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += np.uint64(7)
    return np.uint64(0), MALFORMED


@njit(cache=True, nogil=True, inline="always")
def read_tag(buf: np.ndarray, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, new position); position -1 when malformed, longer than 5 bytes,
    or the field number is 0 or above 2**29 − 1 (limits the protobuf library enforces)."""
    key, npos = read_varint(buf, pos, end)
    if npos < 0 or npos - pos > MAX_PREFIX:
        return 0, 0, MALFORMED
    pos = npos
    field = np.int64(key >> np.uint64(3))
    wtype = np.int64(key & np.uint64(7))
    if field == 0 or field > MAX_FIELD:
        return field, wtype, MALFORMED  # type: ignore[return-value]
    return field, wtype, pos  # type: ignore[return-value]


@njit(cache=True, nogil=True, inline="always")
def read_len(buf: np.ndarray, pos: int, end: int) -> tuple[int, int]:
    """(start, stop) of a length-delimited payload at `pos`; start -1 when it does not fit or its
    length prefix is longer than 5 bytes."""
    n, npos = read_varint(buf, pos, end)
    if npos < 0 or npos - pos > MAX_PREFIX:
        return MALFORMED, MALFORMED
    pos = npos
    if n > np.uint64(end - pos):
        return MALFORMED, MALFORMED
    return pos, pos + np.int64(n)  # type: ignore[return-value]


@njit(cache=True, nogil=True, inline="always")
def read_fixed64(buf: np.ndarray, pos: int, end: int) -> tuple[np.uint64, int]:
    """Little-endian fixed64 and the position after it."""
    if pos + 8 > end:
        return np.uint64(0), MALFORMED
    v = np.uint64(0)
    for k in range(7, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return v, pos + 8


@njit(cache=True, nogil=True, inline="always")
def read_fixed32(buf: np.ndarray, pos: int, end: int) -> tuple[np.uint32, int]:
    if pos + 4 > end:
        return np.uint32(0), MALFORMED
    v = np.uint32(0)
    for k in range(3, -1, -1):
        v = (v << np.uint32(8)) | np.uint32(buf[pos + k])
    return v, pos + 4


@njit(cache=True, nogil=True, inline="always")
def read_double(buf: np.ndarray, pos: int, end: int) -> tuple[float, int]:
    bits, pos = read_fixed64(buf, pos, end)
    if pos < 0:
        return 0.0, MALFORMED
    return bits.view(np.float64), pos  # a bit cast, no allocation


@njit(cache=True, nogil=True, inline="always")
def skip_field(buf: np.ndarray, pos: int, end: int, wtype: int) -> int:
    """Position after the value of a field of wire type `wtype` (unknown fields are skipped)."""
    if wtype == VARINT:
        _, pos = read_varint(buf, pos, end)
        return pos
    if wtype == I64:
        return pos + 8 if pos + 8 <= end else MALFORMED
    if wtype == LEN:
        _, stop = read_len(buf, pos, end)
        return int(stop)
    if wtype == I32:
        return pos + 4 if pos + 4 <= end else MALFORMED
    # Groups are deprecated and never used by OTLP; treat them as malformed input.
    return MALFORMED


@njit(cache=True, nogil=True, inline="always")
def fnv1a(buf: np.ndarray, start: int, stop: int) -> np.uint64:
    """64-bit FNV-1a of buf[start:stop], for dictionary lookups of keys and strings."""
    h = np.uint64(0xCBF29CE484222325)
    for k in range(start, stop):
        h ^= np.uint64(buf[k])
        h *= np.uint64(0x100000001B3)
    return h


def fnv1a_py(data: bytes) -> int:
    """The same hash in Python, to build lookup tables for the kernels."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def as_array(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Zero-copy uint8 view of a message's bytes."""
    return np.frombuffer(data, dtype=np.uint8)
