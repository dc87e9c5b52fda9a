"""OTLP/JSON trace requests → protobuf wire bytes in one numba pass (the fast path for JSON input).

Why: `otlpjson.decode` builds Python objects (orjson) and then protobuf messages, ~25 µs per span;
protobuf input parses in ~0.5 µs. Transcoding the JSON text straight into the wire bytes of the
same ExportTraceServiceRequest lets JSON input take the protobuf fast path.

Contract: `transcode_traces(data)` returns bytes that are byte-identical to
``otlpjson.decode(data, ExportTraceServiceRequest).SerializeToString()``, or None. None means "not
sure": the caller falls back to `otlpjson.decode`, which stays the reference and the source of error
messages. So every input that decoder rejects gives None here, and so does anything this module does
not model exactly (ints written as 1.0 or 1e3 or " 1", unknown enum names, duplicate keys, two
members of one oneof, nesting deeper than 64, numbers near the double range limits, the leniencies
of json_format that the reference falls back to, ...).

How: an iterative JSON tokenizer (strict: RFC 8259 grammar, UTF-8 validation, escapes incl.
surrogate pairs, orjson's rejection of control characters) driven by tables built from the protobuf
descriptors (JSON and proto field names → field number, kind, sub-message). Nested messages get a
5-byte length slot while writing; a final pass copies everything once, writing minimal varints. Fields
are written in JSON order and each message whose fields came out of number order is permuted at its
end (upb serialises in field-number order). Doubles are exact: Clinger's fast path in the kernel;
any other (moderate, well-formed) number gets an 8-byte hole that the final pass fills from Python's
correctly rounded ``float()`` of its text, which is what the reference gets too (orjson parses
doubles correctly rounded). Real traffic needs this: latencies and scores have 16-17 digits.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import otlpjson
from gateway.otlpjson import _ID_FIELDS, _ID_OWNERS  # the reference decoder's rule for hex ids
from gateway.wire.pb import I32, I64, LEN, VARINT, as_array

__all__ = ["ready", "start_warm_up", "transcode_traces", "usable", "warm_up"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- field kinds
K_MSG = 0
K_STR = 1
K_B64 = 2  # bytes, base64 in JSON
K_HEX = 3  # trace/span ids, hex in OTLP/JSON
K_BOOL = 4
K_INT64 = 5
K_INT32 = 6
K_UINT32 = 7
K_UINT64 = 8
K_FIXED32 = 9
K_FIXED64 = 10
K_ENUM = 11
K_DOUBLE = 12
K_UNSUPPORTED = 13  # present in the schema, not modelled here: its presence in the input gives None

# slot kinds: a reserved length varint, or a double to patch from its JSON text afterwards
S_LEN = 0
S_NUM = 1  # JSON number token
S_STR = 2  # contents of a JSON string

OK = 0
FAIL = -1
FAIL_ROOM = -2  # out of slot (or reordering) space: worth one retry with the worst-case sizes

MAX_DEPTH = 64  # JSON nesting; orjson allows 1024, upb parses messages nested up to 100
MAX_FIELDS = 64  # per message (a bit per field in the duplicate-key mask)
MAX_INPUT = 64 << 20
SLOT = 5  # reserved bytes for a length while writing: lengths < 2**35

# Helpers that allocate nothing are compiled without numba's reference counting (`_nrt=False`):
# with it, every call of a helper with several exits increfs and decrefs each array argument
# (atomic operations), which cost a quarter of the transcoder's time. (`_nrt` is not in numba's
# type stubs, hence the cast.) Nothing here allocates: the caller passes every array in.
_leaf = cast(Any, njit)(cache=True, nogil=True, _nrt=False)

_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- schema tables
def _kind(fd: FieldDescriptor, hex_id: bool) -> int:
    t = fd.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        sub = fd.message_type
        if sub.full_name.startswith("google.protobuf.") or sub.GetOptions().map_entry:
            return K_UNSUPPORTED  # the reference hands these to json_format
        return K_MSG
    if fd.is_repeated and t not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return K_UNSUPPORTED  # packed scalars: none in the trace schema
    if t == FieldDescriptor.TYPE_BYTES:
        return K_HEX if hex_id else K_B64
    return {
        FieldDescriptor.TYPE_STRING: K_STR,
        FieldDescriptor.TYPE_BOOL: K_BOOL,
        FieldDescriptor.TYPE_INT64: K_INT64,
        FieldDescriptor.TYPE_INT32: K_INT32,
        FieldDescriptor.TYPE_UINT32: K_UINT32,
        FieldDescriptor.TYPE_UINT64: K_UINT64,
        FieldDescriptor.TYPE_FIXED32: K_FIXED32,
        FieldDescriptor.TYPE_FIXED64: K_FIXED64,
        FieldDescriptor.TYPE_ENUM: K_ENUM,
        FieldDescriptor.TYPE_DOUBLE: K_DOUBLE,
    }.get(t, K_UNSUPPORTED)


def _wire_type(kind: int) -> int:
    if kind in (K_MSG, K_STR, K_B64, K_HEX):
        return LEN
    if kind in (K_DOUBLE, K_FIXED64):
        return I64
    if kind == K_FIXED32:
        return I32
    return VARINT


# table rows
F_NUM, F_KIND, F_REP, F_PRES, F_GROUP, F_SUB, F_TAG = range(7)
H_HASH, H_NS, H_VAL, H_S, H_E, H_W0, H_W1, H_W2 = range(8)


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def build_tables(root: Descriptor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Numba-friendly tables for the messages reachable from `root` (message 0).

    (first field of each message + total, field rows F_*, name hash table rows H_*, name bytes).
    Namespaces of the hash table: message m's field names (JSON and proto) → field row; enum e's
    value names (namespace messages + e) → number.
    """
    msgs: list[Descriptor] = [root]
    index = {root.full_name: 0}
    enums: list[Any] = []
    enum_index: dict[str, int] = {}
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    firsts: list[int] = []
    groups: dict[tuple[str, str], int] = {}
    names: list[tuple[int, bytes, int]] = []  # (namespace, name, value)
    k = 0
    while k < len(msgs):
        desc = msgs[k]
        if len(desc.fields) > MAX_FIELDS:
            raise ValueError(f"{desc.full_name}: more than {MAX_FIELDS} fields")
        firsts.append(len(rows))
        hex_owner = desc.full_name in _ID_OWNERS
        for fd in desc.fields:
            kind = _kind(fd, hex_owner and fd.name in _ID_FIELDS)
            sub = -1
            if kind == K_MSG:
                full = fd.message_type.full_name
                if full not in index:
                    index[full] = len(msgs)
                    msgs.append(fd.message_type)
                sub = index[full]
            elif kind == K_ENUM:
                full = fd.enum_type.full_name
                if full not in enum_index:
                    enum_index[full] = len(enums)
                    enums.append(fd.enum_type)
                sub = enum_index[full]
            oneof = fd.containing_oneof
            group = -1 if oneof is None else groups.setdefault((desc.full_name, oneof.name), len(groups))
            if group >= 63:
                raise ValueError("more than 63 oneofs")
            pres = int(oneof is not None or (fd.has_presence and kind != K_MSG))
            tag = (fd.number << 3) | _wire_type(kind)
            row = len(rows)
            rows.append((fd.number, kind, int(fd.is_repeated), pres, group, sub, tag))
            for name in {fd.name, fd.json_name}:
                names.append((k, name.encode(), row))
        k += 1
    firsts.append(len(rows))
    for e, enum in enumerate(enums):
        for v in enum.values:
            names.append((len(msgs) + e, v.name.encode(), v.number))
    size = 1 << max(6, (2 * len(names) - 1).bit_length())
    ht = np.zeros((8, size), np.int64)
    ht[H_NS] = -1
    blob = bytearray()
    for ns, name, val in names:
        h = _name_hash_py(name, ns)
        slot = h & (size - 1)
        while ht[H_NS, slot] != -1:
            slot = (slot + 1) & (size - 1)
        words = [_signed(x) for x in _name_words(name)]
        ht[:, slot] = (h, ns, val, len(blob), len(blob) + len(name), *words)
        blob += name
    ftab = np.ascontiguousarray(np.array(rows, dtype=np.int64).T)
    return np.array(firsts, np.int64), ftab, ht, np.frombuffer(bytes(blob), np.uint8).copy()


# ---------------------------------------------------------------- small kernels
@_leaf
def _ws(buf: np.ndarray, i: int, n: int) -> int:
    while i < n:
        c = _at(buf, i)
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            return i
        i += 1
    return i


@_leaf
def _put_varint(out: np.ndarray, w: int, v: np.uint64) -> int:
    while v >= np.uint64(0x80):
        out[w] = np.uint8((v & np.uint64(0x7F)) | np.uint64(0x80))
        v >>= np.uint64(7)
        w += 1
    out[w] = np.uint8(v)
    return w + 1


@_leaf
def _varint_size(v: int) -> int:
    s = 1
    while v >= 0x80:
        v >>= 7
        s += 1
    return s


@_leaf
def _put_fixed(out: np.ndarray, w: int, v: np.uint64, nbytes: int) -> int:
    for k in range(nbytes):
        out[w + k] = np.uint8((v >> np.uint64(8 * k)) & np.uint64(0xFF))
    return w + nbytes


@_leaf
def _hexval(c: int) -> int:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    return -1


@_leaf
def _hex4(buf: np.ndarray, j: int, n: int) -> int:
    """Value of 4 hex digits at j, -1 if not."""
    if j + 4 > n:
        return -1
    v = 0
    for k in range(4):
        d = _hexval(_at(buf, j + k))
        if d < 0:
            return -1
        v = (v << 4) | d
    return v


def _byte_pointer(context: Any, builder: Any, aryty: Any, ary: Any, idxty: Any, idx: Any) -> Any:
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(data, [context.cast(builder, idx, idxty, types.intp)])


def _load8_typing(typingctx: Any, buf: Any, j: Any) -> Any:
    """buf[j:j+8] as one unaligned little-endian word load; the caller guarantees j + 8 <= buf.size.

    (Byte by byte, numba's negative-index handling on every byte keeps LLVM from merging the loads.)
    """

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load(builder.bitcast(ptr, llvm_ir.IntType(64).as_pointer()), align=1)

    return types.uint64(buf, j), codegen


_load8 = cast("Callable[[np.ndarray, int], np.uint64]", intrinsic(_load8_typing))


@_leaf
def _zero_bytes(x: np.uint64) -> np.uint64:
    """High bit set in each zero byte of x (and possibly in bytes above one: a borrow)."""
    return (x - np.uint64(0x0101010101010101)) & ~x


def _cttz_typing(typingctx: Any, x: Any) -> Any:
    """Count of trailing zero bits of a uint64 (LLVM cttz)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.cttz(args[0], llvm_ir.IntType(1)(1))

    return types.uint64(types.uint64), codegen


_cttz = cast("Callable[[np.uint64], int]", intrinsic(_cttz_typing))


@_leaf
def _scan_string(buf: np.ndarray, i: int, n: int) -> tuple[int, bool]:
    """Index of the closing quote of the string opening at i (-1 if invalid) and whether it has escapes.

    Validates what orjson validates: escapes (incl. paired surrogates), no raw control characters,
    well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
    """
    j = i + 1
    esc = False
    while j < n:
        # 8 bytes at a time to the next quote, backslash, control or non-ASCII byte
        while j + 8 <= n:
            x = _load8(buf, j)
            m = _zero_bytes(x ^ np.uint64(0x2222222222222222)) | _zero_bytes(
                x ^ np.uint64(0x5C5C5C5C5C5C5C5C)
            )
            m |= ((x - np.uint64(0x2020202020202020)) & ~x) | x
            m &= np.uint64(0x8080808080808080)
            if m:
                j += _cttz(m) >> 3  # the lowest flagged byte is a true match (borrows only go up)
                break
            j += 8
        if j >= n:
            break
        c = _at(buf, j)
        if c == 0x22:
            return j, esc
        if c < 0x80:
            if c == 0x5C:
                esc = True
                if j + 1 >= n:
                    return -1, esc
                e = _at(buf, j + 1)
                if e == 0x75:  # \uXXXX
                    cp = _hex4(buf, j + 2, n)
                    if cp < 0:
                        return -1, esc
                    j += 6
                    if 0xD800 <= cp <= 0xDBFF:
                        if j + 1 >= n or _at(buf, j) != 0x5C or _at(buf, j + 1) != 0x75:
                            return -1, esc
                        lo = _hex4(buf, j + 2, n)
                        if lo < 0xDC00 or lo > 0xDFFF:
                            return -1, esc
                        j += 6
                    elif 0xDC00 <= cp <= 0xDFFF:
                        return -1, esc
                    continue
                if (
                    e == 0x22
                    or e == 0x5C
                    or e == 0x2F
                    or e == 0x62
                    or e == 0x66
                    or e == 0x6E
                    or e == 0x72
                    or e == 0x74
                ):
                    j += 2
                    continue
                return -1, esc
            if c < 0x20:
                return -1, esc
            j += 1
            continue
        if c < 0xC2:
            return -1, esc
        if c < 0xE0:
            if j + 1 >= n or (_at(buf, j + 1) & 0xC0) != 0x80:
                return -1, esc
            j += 2
            continue
        if c < 0xF0:
            if j + 2 >= n:
                return -1, esc
            b1 = _at(buf, j + 1)
            lo1, hi1 = 0x80, 0xBF
            if c == 0xE0:
                lo1 = 0xA0
            elif c == 0xED:
                hi1 = 0x9F
            if b1 < lo1 or b1 > hi1 or (_at(buf, j + 2) & 0xC0) != 0x80:
                return -1, esc
            j += 3
            continue
        if c < 0xF5:
            if j + 3 >= n:
                return -1, esc
            b1 = _at(buf, j + 1)
            lo1, hi1 = 0x80, 0xBF
            if c == 0xF0:
                lo1 = 0x90
            elif c == 0xF4:
                hi1 = 0x8F
            if b1 < lo1 or b1 > hi1 or (_at(buf, j + 2) & 0xC0) != 0x80 or (_at(buf, j + 3) & 0xC0) != 0x80:
                return -1, esc
            j += 4
            continue
        return -1, esc
    return -1, esc


@_leaf
def _unescape(buf: np.ndarray, s: int, e: int, dst: np.ndarray) -> int:
    """Decoded UTF-8 of the (already validated) string contents buf[s:e] into dst; its length."""
    o = 0
    j = s
    while j < e:
        c = buf[j]
        if c != 0x5C:
            dst[o] = c
            o += 1
            j += 1
            continue
        x = buf[j + 1]
        j += 2
        if x == 0x75:
            cp = _hex4(buf, j, e)
            j += 4
            if 0xD800 <= cp <= 0xDBFF:
                lo = _hex4(buf, j + 2, e)
                j += 6
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
            if cp < 0x80:
                dst[o] = cp
                o += 1
            elif cp < 0x800:
                dst[o] = 0xC0 | (cp >> 6)
                dst[o + 1] = 0x80 | (cp & 0x3F)
                o += 2
            elif cp < 0x10000:
                dst[o] = 0xE0 | (cp >> 12)
                dst[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
                dst[o + 2] = 0x80 | (cp & 0x3F)
                o += 3
            else:
                dst[o] = 0xF0 | (cp >> 18)
                dst[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
                dst[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
                dst[o + 3] = 0x80 | (cp & 0x3F)
                o += 4
        elif x == 0x62:
            dst[o] = 0x08
            o += 1
        elif x == 0x66:
            dst[o] = 0x0C
            o += 1
        elif x == 0x6E:
            dst[o] = 0x0A
            o += 1
        elif x == 0x72:
            dst[o] = 0x0D
            o += 1
        elif x == 0x74:
            dst[o] = 0x09
            o += 1
        else:  # " \ /
            dst[o] = x
            o += 1
    return o


@_leaf
def _scan_number(buf: np.ndarray, i: int, n: int) -> tuple[int, bool, np.uint64, int, int, bool]:
    """A JSON number at i: (end or -1, negative, first ≤19 significant digits, significant digit
    count, decimal exponent of those digits, integer syntax). Value ≈ digits × 10**exponent, exact
    when the count is ≤ 19."""
    j = i
    neg = False
    mant = np.uint64(0)
    nsig = 0
    exp10 = 0
    if j < n and _at(buf, j) == 0x2D:
        neg = True
        j += 1
    if j >= n:
        return -1, neg, mant, nsig, exp10, True
    c = _at(buf, j)
    if c == 0x30:
        j += 1
        if j < n and 0x30 <= _at(buf, j) <= 0x39:
            return -1, neg, mant, nsig, exp10, True  # leading zero
    elif 0x31 <= c <= 0x39:
        while j < n and 0x30 <= _at(buf, j) <= 0x39:
            if nsig < 19:
                mant = mant * np.uint64(10) + np.uint64(_at(buf, j) - 0x30)
            else:
                exp10 += 1
            nsig += 1
            j += 1
    else:
        return -1, neg, mant, nsig, exp10, True
    is_int = True
    if j < n and _at(buf, j) == 0x2E:
        is_int = False
        j += 1
        if j >= n or not (0x30 <= _at(buf, j) <= 0x39):
            return -1, neg, mant, nsig, exp10, False
        while j < n and 0x30 <= _at(buf, j) <= 0x39:
            d = _at(buf, j) - 0x30
            if nsig == 0 and d == 0:
                exp10 -= 1
            elif nsig < 19:
                mant = mant * np.uint64(10) + np.uint64(d)
                exp10 -= 1
                nsig += 1
            else:
                nsig += 1
            j += 1
    if j < n and (_at(buf, j) == 0x65 or _at(buf, j) == 0x45):
        is_int = False
        j += 1
        eneg = False
        if j < n and (_at(buf, j) == 0x2B or _at(buf, j) == 0x2D):
            eneg = _at(buf, j) == 0x2D
            j += 1
        if j >= n or not (0x30 <= _at(buf, j) <= 0x39):
            return -1, neg, mant, nsig, exp10, False
        ex = 0
        while j < n and 0x30 <= _at(buf, j) <= 0x39:
            if ex < 100000:
                ex = ex * 10 + (_at(buf, j) - 0x30)
            j += 1
        exp10 += -ex if eneg else ex
    return j, neg, mant, nsig, exp10, is_int


@_leaf
def _finite_magnitude(mant: np.uint64, nsig: int, exp10: int) -> bool:
    """Zero, or comfortably inside the normal double range (no overflow or underflow edge cases)."""
    if mant == np.uint64(0):
        return True
    lead = min(nsig, 19) - 1 + exp10  # decimal exponent of the leading digit
    return -300 <= lead <= 307


@_leaf
def _parse_int(arr: np.ndarray, s: int, e: int) -> tuple[bool, np.uint64, bool]:
    """(negative, magnitude, ok) of -?[0-9]+ in arr[s:e]; not ok on anything else or past 2**64-1."""
    neg = False
    if s < e and _at(arr, s) == 0x2D:
        neg = True
        s += 1
    if s >= e:
        return neg, np.uint64(0), False
    mag = np.uint64(0)
    for j in range(s, e):
        d = _at(arr, j) - 0x30
        if d < 0 or d > 9:
            return neg, mag, False
        if mag > np.uint64(1844674407370955161) or (mag == np.uint64(1844674407370955161) and d > 5):
            return neg, mag, False
        mag = mag * np.uint64(10) + np.uint64(d)
    return neg, mag, True


@_leaf
def _int_value(neg: bool, mag: np.uint64, kind: int) -> tuple[np.uint64, bool]:
    """Range check for the field kind; the value as the uint64 the wire carries (two's complement)."""
    if kind == K_INT64 or kind == K_INT32 or kind == K_ENUM:  # noqa: SIM109 - numba code
        lim = np.uint64(1) << np.uint64(63 if kind == K_INT64 else 31)
        if neg:
            if mag > lim:
                return np.uint64(0), False
            return (~mag) + np.uint64(1), True
        if mag >= lim:
            return np.uint64(0), False
        return mag, True
    if neg and mag != np.uint64(0):
        return np.uint64(0), False
    if (kind == K_UINT32 or kind == K_FIXED32) and mag > np.uint64(0xFFFFFFFF):  # noqa: SIM109
        return np.uint64(0), False
    return mag, True


@_leaf
def _clinger(neg: bool, mant: np.uint64, nsig: int, exp10: int) -> tuple[float, bool]:
    """The correctly rounded double when one IEEE multiply or divide gives it; else not ok."""
    if nsig > 19 or mant > np.uint64(1 << 53) or exp10 < -22 or exp10 > 22:
        return 0.0, False
    v = float(mant)
    p = 1.0
    for _ in range(abs(exp10)):
        p *= 10.0
    v = v * p if exp10 >= 0 else v / p
    return (-v if neg else v), True


@_leaf
def _word(arr: np.ndarray, s: int, e: int) -> np.uint64:
    """Bytes arr[s:min(s+8, e)] as a little-endian word, zero-padded (0 when s >= e)."""
    m = e - s
    if m <= 0:
        return np.uint64(0)
    if s + 8 <= arr.size:
        x = _load8(arr, s)
        return x if m >= 8 else x & ((np.uint64(1) << np.uint64(8 * m)) - np.uint64(1))
    x = np.uint64(0)
    for k in range(min(m, 8)):
        x |= np.uint64(arr[s + k]) << np.uint64(8 * k)
    return x


@_leaf
def _name_hash(w0: np.uint64, m: int, ns: int) -> np.int64:
    """Hash of a field or enum name for the lookup table from its first 8 bytes, length and namespace
    (names are confirmed word by word anyway); `_name_hash_py` is the same in Python."""
    h = w0 * np.uint64(0x9E3779B97F4A7C15) + np.uint64(m) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(ns)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    return np.int64(h ^ (h >> np.uint64(29)))


def _name_words(name: bytes) -> list[int]:
    padded = name[:24].ljust(24, b"\0")
    return [int.from_bytes(padded[k : k + 8], "little") for k in (0, 8, 16)]


def _name_hash_py(name: bytes, ns: int) -> int:
    h = (_name_words(name)[0] * 0x9E3779B97F4A7C15 + len(name) * 0xC2B2AE3D27D4EB4F + ns) & _MASK64
    h ^= h >> 31
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    return _signed(h ^ (h >> 29))


@_leaf
def _lookup(arr: np.ndarray, s: int, e: int, ns: int, ht: np.ndarray, blob: np.ndarray) -> tuple[bool, int]:
    """(found, value) for the name arr[s:e] in namespace `ns` (a message's fields, an enum's names)."""
    m = e - s
    w0 = np.int64(_word(arr, s, e))
    w1 = np.int64(_word(arr, s + 8, e))
    w2 = np.int64(_word(arr, s + 16, e))
    h = _name_hash(np.uint64(w0), m, ns)
    mask = ht.shape[1] - 1
    k = h & mask
    while ht[H_NS, k] != -1:
        if (
            ht[H_HASH, k] == h
            and ht[H_W0, k] == w0
            and ht[H_W1, k] == w1
            and ht[H_W2, k] == w2
            and ht[H_NS, k] == ns
            and ht[H_E, k] - ht[H_S, k] == m
        ):
            b = ht[H_S, k]
            same = True
            for j in range(24, m):  # names longer than the three words
                if blob[b + j] != arr[s + j]:
                    same = False
                    break
            if same:
                return True, ht[H_VAL, k]
        k = (k + 1) & mask
    return False, 0


@_leaf
def _copy(dst: np.ndarray, o: int, src: np.ndarray, s: int, m: int) -> int:
    """dst[o:o+m] = src[s:s+m], 8 bytes at a time (numba's slice assignment allocates); new o.
    The ranges must not overlap."""
    k = 0
    while k + 8 <= m:
        _store8(dst, o + k, _load8(src, s + k))
        k += 8
    while k < m:
        dst[o + k] = src[s + k]
        k += 1
    return o + m


def _at_typing(typingctx: Any, arr: Any, j: Any) -> Any:
    """arr[j] for a 1-D array without numba's negative-index fix-up (a compare and a select on every
    access in the hot loops); the caller guarantees 0 <= j < arr.size, as for any index here."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load(
            builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])
        )

    return arr.dtype(arr, j), codegen


_at = cast("Callable[[np.ndarray, int], Any]", intrinsic(_at_typing))


def _store8_typing(typingctx: Any, dst: Any, o: Any, x: Any) -> Any:
    """dst[o:o+8] = the little-endian word x, one unaligned store; the caller guarantees the room."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        value = context.cast(builder, args[2], signature.args[2], types.uint64)
        builder.store(value, builder.bitcast(ptr, llvm_ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(dst, o, x), codegen


_store8 = cast("Callable[[np.ndarray, int, np.uint64], None]", intrinsic(_store8_typing))


@_leaf
def _b64val(c: int) -> int:
    if 0x41 <= c <= 0x5A:
        return c - 0x41
    if 0x61 <= c <= 0x7A:
        return c - 0x61 + 26
    if 0x30 <= c <= 0x39:
        return c - 0x30 + 52
    if c == 0x2B or c == 0x2D:
        return 62
    if c == 0x2F or c == 0x5F:
        return 63
    return -1


@_leaf
def _b64_len(arr: np.ndarray, s: int, e: int) -> int:
    """Decoded length of base64 (standard or URL alphabet, padding optional) in arr[s:e]; -1 if the
    reference would reject it (or accepts it only in an odd form, like padding after a full quantum)."""
    nd = e - s
    while nd > 0 and arr[s + nd - 1] == 0x3D:
        nd -= 1
    pad = e - s - nd
    r = nd % 4
    if r == 1 or (r == 0 and pad > 0) or (r == 2 and pad > 2) or (r == 3 and pad > 1):
        return -1
    for j in range(s, s + nd):
        if _b64val(arr[j]) < 0:
            return -1
    return nd // 4 * 3 + (r * 3) // 4


@_leaf
def _b64_put(arr: np.ndarray, s: int, nbytes: int, out: np.ndarray, w: int) -> int:
    acc = 0
    bits = 0
    o = 0
    j = s
    while o < nbytes:
        acc = ((acc << 6) | _b64val(arr[j])) & 0xFFFFFF
        bits += 6
        j += 1
        if bits >= 8:
            bits -= 8
            out[w + o] = (acc >> bits) & 0xFF
            o += 1
    return w + nbytes


@_leaf
def _is_infinity(arr: np.ndarray, s: int) -> bool:
    return (
        arr[s] == 0x49
        and arr[s + 1] == 0x6E
        and arr[s + 2] == 0x66
        and arr[s + 3] == 0x69
        and arr[s + 4] == 0x6E
        and arr[s + 5] == 0x69
        and arr[s + 6] == 0x74
        and arr[s + 7] == 0x79
    )


def _double_bits_typing(typingctx: Any, v: Any) -> Any:
    """The IEEE-754 bits of a float64 (a bitcast: no array round trip, so no allocation)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return types.uint64(types.float64), codegen


_double_bits = cast("Callable[[float], np.uint64]", intrinsic(_double_bits_typing))


# ---------------------------------------------------------------- scalar fields
@_leaf
def _int_field(
    neg: bool, mag: np.uint64, kind: int, tag: np.uint64, pres: bool, out: np.ndarray, w: int
) -> int:
    """Write an integer-valued field: new w, or -1 when out of range for the kind."""
    if kind < K_INT64 or kind > K_ENUM:
        return -1
    v, ok = _int_value(neg, mag, kind)
    if not ok:
        return -1
    if v == np.uint64(0) and not pres:
        return w
    w = _put_varint(out, w, tag)
    if kind == K_FIXED64:
        return _put_fixed(out, w, v, 8)
    if kind == K_FIXED32:
        return _put_fixed(out, w, v, 4)
    return _put_varint(out, w, v)


NOT_HERE = -2


@_leaf
def _plain_string_field(
    arr: np.ndarray, s: int, e: int, kind: int, tag: np.uint64, pres: bool, out: np.ndarray, w: int
) -> int:
    """Write a field whose JSON value is the (unescaped) string arr[s:e], for the kinds that need
    no tables: new w, -1 when the value is not taken, NOT_HERE for doubles and enums."""
    if kind == K_STR:
        if e == s and not pres:
            return w
        w = _put_varint(out, w, tag)
        w = _put_varint(out, w, np.uint64(e - s))
        return _copy(out, w, arr, s, e - s)
    if kind == K_HEX:
        if (e - s) % 2:
            return -1
        nb = (e - s) // 2
        if nb == 0 and not pres:
            return w
        w = _put_varint(out, w, tag)
        w = _put_varint(out, w, np.uint64(nb))
        for k in range(nb):
            hi = _hexval(_at(arr, s + 2 * k))
            lo = _hexval(_at(arr, s + 2 * k + 1))
            if hi < 0 or lo < 0:
                return -1
            out[w + k] = (hi << 4) | lo
        return w + nb
    if kind == K_B64:
        nb = _b64_len(arr, s, e)
        if nb < 0:
            return -1
        if nb == 0 and not pres:
            return w
        w = _put_varint(out, w, tag)
        w = _put_varint(out, w, np.uint64(nb))
        return _b64_put(arr, s, nb, out, w)
    if kind == K_DOUBLE or kind == K_ENUM:  # noqa: SIM109 - numba code
        return NOT_HERE
    neg, mag, ok = _parse_int(arr, s, e)
    if not ok:
        return -1
    return _int_field(neg, mag, kind, tag, pres, out, w)


@_leaf
def _string_field(
    arr: np.ndarray,
    s: int,
    e: int,
    kind: int,
    tag: np.uint64,
    pres: bool,
    enum_ns: int,
    out: np.ndarray,
    w: int,
    ht: np.ndarray,
    blob: np.ndarray,
) -> tuple[int, bool]:
    """Write a field whose JSON value is the (unescaped) string arr[s:e]: (new w or -1 when the value
    is not taken, whether 8 bytes for a double must still be patched in from this text)."""
    w2 = _plain_string_field(arr, s, e, kind, tag, pres, out, w)
    if w2 != NOT_HERE:
        return w2, False
    if kind == K_DOUBLE:
        if e - s == 3 and arr[s] == 0x4E and arr[s + 1] == 0x61 and arr[s + 2] == 0x4E:
            bits = np.uint64(0x7FF8000000000000)
        elif e - s == 8 and _is_infinity(arr, s):
            bits = np.uint64(0x7FF0000000000000)
        elif e - s == 9 and arr[s] == 0x2D and _is_infinity(arr, s + 1):
            bits = np.uint64(0xFFF0000000000000)
        else:
            end, neg, mant, nsig, exp10, _ = _scan_number(arr, s, e)
            if end != e or not _finite_magnitude(mant, nsig, exp10):
                return -1, False
            v, exact = _clinger(neg, mant, nsig, exp10)
            if not exact:
                return _put_varint(out, w, tag), True
            if mant == np.uint64(0):
                v = -0.0 if neg else 0.0  # float("-0") is -0.0 (unlike the JSON number -0)
            bits = _double_bits(v)
        if bits == np.uint64(0) and not pres:
            return w, False
        w = _put_varint(out, w, tag)
        return _put_fixed(out, w, bits, 8), False
    found, val = _lookup(arr, s, e, enum_ns, ht, blob)  # an enum: a value name, or digits
    if found:
        return _int_field(val < 0, np.uint64(abs(val)), kind, tag, pres, out, w), False
    neg, mag, ok = _parse_int(arr, s, e)
    if not ok:
        return -1, False
    return _int_field(neg, mag, kind, tag, pres, out, w), False


@_leaf
def _scalar(
    buf: np.ndarray,
    i: int,
    n: int,
    kind: int,
    tag: np.uint64,
    pres: bool,
    enum_ns: int,
    out: np.ndarray,
    w: int,
    scratch: np.ndarray,
    slots: np.ndarray,
    nslots: int,
    ht: np.ndarray,
    blob: np.ndarray,
) -> tuple[int, int, int]:
    """Parse the JSON value at i for a scalar field and write it: (new i, new w, slots used); i or w
    is -1 when the value is not taken."""
    c = buf[i]
    if c == 0x22:
        end, esc = _scan_string(buf, i, n)
        if end < 0 or end - i + 64 > out.size - w:
            return -1, -1, nslots
        if esc:
            ln = _unescape(buf, i + 1, end, scratch)
            w2, patch = _string_field(scratch, 0, ln, kind, tag, pres, enum_ns, out, w, ht, blob)
            if patch:
                return -1, -1, nslots  # escaped number text: leave it to the reference
        else:
            w2, patch = _string_field(buf, i + 1, end, kind, tag, pres, enum_ns, out, w, ht, blob)
        if w2 >= 0 and patch:
            if nslots >= slots.shape[1] or end - i > 100:
                return -1, -1, nslots
            slots[0, nslots] = w2
            slots[1, nslots] = i + 1
            slots[2, nslots] = end
            slots[3, nslots] = S_STR
            nslots += 1
            w2 += 8
        return end + 1, w2, nslots
    if c == 0x2D or 0x30 <= c <= 0x39:
        end, neg, mant, nsig, exp10, is_int = _scan_number(buf, i, n)
        if end < 0 or not _finite_magnitude(mant, nsig, exp10):
            return -1, -1, nslots
        if kind == K_DOUBLE:
            if mant == np.uint64(0):
                v = 0.0 if is_int or not neg else -0.0  # orjson: -0 is the int 0, -0.0 a float
                exact = True
            else:
                v, exact = _clinger(neg, mant, nsig, exp10)
            if not exact:  # patched after the kernel with Python's float() of the text
                if nslots >= slots.shape[1] or end - i > 100:
                    return -1, -1, nslots
                w = _put_varint(out, w, tag)
                slots[0, nslots] = w
                slots[1, nslots] = i
                slots[2, nslots] = end
                slots[3, nslots] = S_NUM
                return end, w + 8, nslots + 1
            bits = _double_bits(v)
            if bits == np.uint64(0) and not pres:
                return end, w, nslots
            w = _put_varint(out, w, tag)
            return end, _put_fixed(out, w, bits, 8), nslots
        if not is_int or nsig > 20:
            return -1, -1, nslots
        neg, mag, ok = _parse_int(buf, i, end)
        if not ok:
            return -1, -1, nslots
        return end, _int_field(neg, mag, kind, tag, pres, out, w), nslots
    if c == 0x74 or c == 0x66:
        end = _literal(buf, i, n)
        if end < 0 or kind != K_BOOL:
            return -1, -1, nslots
        if c == 0x66 and not pres:
            return end, w, nslots
        w = _put_varint(out, w, tag)
        out[w] = 1 if c == 0x74 else 0
        return end, w + 1, nslots
    return -1, -1, nslots  # an object or array for a scalar, null in a list


# ---------------------------------------------------------------- structure
@_leaf
def _literal(buf: np.ndarray, i: int, n: int) -> int:
    """Position after true/false/null at i, -1 if none."""
    c = _at(buf, i)
    if c == 0x74:  # true
        if i + 4 <= n and _at(buf, i + 1) == 0x72 and _at(buf, i + 2) == 0x75 and _at(buf, i + 3) == 0x65:
            return i + 4
    elif c == 0x66:  # false
        if (
            i + 5 <= n
            and _at(buf, i + 1) == 0x61
            and _at(buf, i + 2) == 0x6C
            and _at(buf, i + 3) == 0x73
            and _at(buf, i + 4) == 0x65
        ):
            return i + 5
    elif (
        c == 0x6E
        and i + 4 <= n
        and _at(buf, i + 1) == 0x75
        and _at(buf, i + 2) == 0x6C
        and _at(buf, i + 3) == 0x6C
    ):
        return i + 4  # null
    return -1


@_leaf
def _skip_value(buf: np.ndarray, i: int, n: int, depth_left: int) -> int:
    """Position after the (validated) JSON value at i, for unknown fields; -1 if invalid or too deep."""
    is_obj = np.uint64(0)  # bit d-1: the container at depth d is an object
    d = 0
    while True:
        # a value starts at i
        i = _ws(buf, i, n)
        if i >= n:
            return -1
        c = _at(buf, i)
        if c == 0x7B or c == 0x5B:
            d += 1
            if d > depth_left or d > 64:
                return -1
            bit = np.uint64(1) << np.uint64(d - 1)
            is_obj = (is_obj | bit) if c == 0x7B else (is_obj & ~bit)
            i = _ws(buf, i + 1, n)
            if i >= n:
                return -1
            if _at(buf, i) == (0x7D if c == 0x7B else 0x5D):
                i += 1
                d -= 1
            elif c == 0x7B:
                i = _member_key(buf, i, n)
                if i < 0:
                    return -1
                continue
            else:
                continue
        elif c == 0x22:
            end, _ = _scan_string(buf, i, n)
            if end < 0:
                return -1
            i = end + 1
        elif c == 0x2D or 0x30 <= c <= 0x39:
            end, _, mant, nsig, exp10, _ = _scan_number(buf, i, n)
            if end < 0 or not _finite_magnitude(mant, nsig, exp10):
                return -1
            i = end
        else:
            i = _literal(buf, i, n)
            if i < 0:
                return -1
        # after a value: close containers, or move on to the next member
        while True:
            if d == 0:
                return i
            i = _ws(buf, i, n)
            if i >= n:
                return -1
            c = _at(buf, i)
            if c == 0x2C:
                i = _ws(buf, i + 1, n)
                obj = (is_obj >> np.uint64(d - 1)) & np.uint64(1)
                if obj:
                    i = _member_key(buf, i, n)
                    if i < 0:
                        return -1
                break
            if c == (0x7D if (is_obj >> np.uint64(d - 1)) & np.uint64(1) else 0x5D):
                i += 1
                d -= 1
                continue
            return -1


@_leaf
def _member_key(buf: np.ndarray, i: int, n: int) -> int:
    """Position after `"key" :` at i (whitespace skipped), -1 if not there."""
    if i >= n or _at(buf, i) != 0x22:
        return -1
    end, _ = _scan_string(buf, i, n)
    if end < 0:
        return -1
    i = _ws(buf, end + 1, n)
    if i >= n or _at(buf, i) != 0x3A:
        return -1
    return i + 1


@_leaf
def _close_reorder(
    out: np.ndarray,
    cstart: int,
    w: int,
    ck: np.ndarray,
    c0: int,
    c1: int,
    slots: np.ndarray,
    s0: int,
    s1: int,
) -> bool:
    """Put a message's fields (chunks c0..c1 of its content out[cstart:w]) in field-number order,
    moving the slots inside them along. Works in the unused tails of `out` and `slots`; False when
    they are too short (only for inputs that expand a lot: the caller gives up)."""
    size = w - cstart
    if w + size > out.size or s1 + (s1 - s0) > slots.shape[1]:
        return False
    m = c1 - c0
    for a in range(m):  # insertion sort of chunk indices by field number, in row 3
        x = c0 + a
        b = a - 1
        while b >= 0 and ck[0, ck[3, c0 + b]] > ck[0, x]:
            ck[3, c0 + b + 1] = ck[3, c0 + b]
            b -= 1
        ck[3, c0 + b + 1] = x
    pos = cstart
    ns = s1
    for a in range(m):
        c = ck[3, c0 + a]
        bs = ck[1, c]
        be = ck[1, c + 1] if c + 1 < c1 else w
        ss = ck[2, c]
        se = ck[2, c + 1] if c + 1 < c1 else s1
        _copy(out, w + pos - cstart, out, bs, be - bs)
        for k in range(ss, se):
            slots[0, ns] = slots[0, k] + pos - bs
            slots[1, ns] = slots[1, k]
            slots[2, ns] = slots[2, k]
            slots[3, ns] = slots[3, k]
            ns += 1
        pos += be - bs
    _copy(out, cstart, out, w, size)
    for r in range(4):
        for k in range(s1 - s0):
            slots[r, s0 + k] = slots[r, s1 + k]
    return True


# frame kinds and frame stack rows
F_OBJ = 0
F_ARR_MSG = 1
F_ARR_SCALAR = 2
R_TYPE, R_MSG, R_SLOT, R_CSTART, R_SEEN, R_ONEOF, R_CK0, R_LAST, R_DIS, R_SAV0 = range(10)


@_leaf
def _transcode(
    buf: np.ndarray,
    out: np.ndarray,
    scratch: np.ndarray,
    slots: np.ndarray,
    fr: np.ndarray,
    ck: np.ndarray,
    mfirst: np.ndarray,
    ftab: np.ndarray,
    ht: np.ndarray,
    blob: np.ndarray,
) -> tuple[int, int, int, int]:
    """(status, bytes written, slots used, bytes the length slots will shrink by).

    `fr` is the frame stack (R_* rows, zeroed), `ck` the chunks of the open messages (field number,
    start, first slot; row 3 is sorting space).
    """
    n = buf.size
    cap = out.size
    slot_cap = slots.shape[1]
    nmsgs = mfirst.size - 1
    nck = 0
    nslots = 0
    sav = 0
    w = 0

    i = _ws(buf, 0, n)
    if i >= n or _at(buf, i) != 0x7B:
        return FAIL, 0, 0, 0
    i += 1
    d = 0
    fr[R_TYPE, 0] = F_OBJ
    fr[R_SLOT, 0] = -1
    first = True
    while True:
        if nslots + 1 >= slot_cap:
            return FAIL_ROOM, 0, 0, 0  # every token may take one slot: the caller retries with more
        i = _ws(buf, i, n)
        if i >= n:
            return FAIL, 0, 0, 0
        c = _at(buf, i)
        t = fr[R_TYPE, d]
        close = False
        elem = -1  # a field whose message value starts at i
        if t == F_OBJ:
            if c == 0x7D:
                close = True
            elif first:
                if c != 0x22:
                    return FAIL, 0, 0, 0
            elif c == 0x2C:
                i = _ws(buf, i + 1, n)
                if i >= n or _at(buf, i) != 0x22:
                    return FAIL, 0, 0, 0
            else:
                return FAIL, 0, 0, 0
            if not close:
                m = fr[R_MSG, d]
                end, esc = _scan_string(buf, i, n)
                if end < 0:
                    return FAIL, 0, 0, 0
                if esc:
                    kl = _unescape(buf, i + 1, end, scratch)
                    found, f = _lookup(scratch, 0, kl, m, ht, blob)
                else:
                    found, f = _lookup(buf, i + 1, end, m, ht, blob)
                i = _ws(buf, end + 1, n)
                if i >= n or _at(buf, i) != 0x3A:
                    return FAIL, 0, 0, 0
                i = _ws(buf, i + 1, n)
                if i >= n:
                    return FAIL, 0, 0, 0
                first = False
                if not found:  # unknown field: ignored, but it must be valid JSON
                    i = _skip_value(buf, i, n, MAX_DEPTH - d)
                    if i < 0:
                        return FAIL, 0, 0, 0
                    continue
                bit = np.int64(1) << (f - mfirst[m])
                if fr[R_SEEN, d] & bit:
                    return FAIL, 0, 0, 0  # the same field twice (or under both its names)
                fr[R_SEEN, d] |= bit
                c = _at(buf, i)
                if c == 0x6E:  # null: the default
                    i = _literal(buf, i, n)
                    if i < 0:
                        return FAIL, 0, 0, 0
                    continue
                kind = ftab[F_KIND, f]
                if kind == K_UNSUPPORTED:
                    return FAIL, 0, 0, 0
                g = ftab[F_GROUP, f]
                if g >= 0:
                    gbit = np.int64(1) << g
                    if fr[R_ONEOF, d] & gbit:
                        return FAIL, 0, 0, 0  # a second member of a oneof
                    fr[R_ONEOF, d] |= gbit
                fnum = ftab[F_NUM, f]
                if fnum < fr[R_LAST, d]:
                    fr[R_DIS, d] = 1
                fr[R_LAST, d] = fnum
                ck[0, nck] = fnum
                ck[1, nck] = w
                ck[2, nck] = nslots
                nck += 1
                if ftab[F_REP, f]:
                    if c != 0x5B:
                        return FAIL, 0, 0, 0
                    d += 1
                    if d >= MAX_DEPTH:
                        return FAIL, 0, 0, 0
                    fr[R_TYPE, d] = F_ARR_MSG if kind == K_MSG else F_ARR_SCALAR
                    fr[R_MSG, d] = f
                    first = True
                    i += 1
                    continue
                if kind == K_MSG:
                    if c != 0x7B:
                        return FAIL, 0, 0, 0
                    elem = f
                else:
                    if c == 0x22:  # the common case: a string without escapes, no tables needed
                        end, esc = _scan_string(buf, i, n)
                        if end < 0 or end - i + 64 > cap - w:
                            return FAIL, 0, 0, 0
                        if not esc:
                            w2 = _plain_string_field(
                                buf, i + 1, end, kind, np.uint64(ftab[F_TAG, f]), ftab[F_PRES, f] != 0, out, w
                            )
                            if w2 != NOT_HERE:
                                if w2 < 0:
                                    return FAIL, 0, 0, 0
                                w = w2
                                i = end + 1
                                continue
                    i, w, nslots = _scalar(
                        buf,
                        i,
                        n,
                        kind,
                        np.uint64(ftab[F_TAG, f]),
                        ftab[F_PRES, f] != 0,
                        nmsgs + ftab[F_SUB, f],
                        out,
                        w,
                        scratch,
                        slots,
                        nslots,
                        ht,
                        blob,
                    )
                    if i < 0 or w < 0 or w + 64 > cap:
                        return FAIL, 0, 0, 0
                    continue
        else:
            f = fr[R_MSG, d]
            if c == 0x5D:
                close = True
            elif not first:
                if c != 0x2C:
                    return FAIL, 0, 0, 0
                i = _ws(buf, i + 1, n)
                if i >= n:
                    return FAIL, 0, 0, 0
                c = _at(buf, i)
            first = False
            if not close:
                if t == F_ARR_SCALAR:
                    i, w, nslots = _scalar(
                        buf,
                        i,
                        n,
                        ftab[F_KIND, f],
                        np.uint64(ftab[F_TAG, f]),
                        True,  # elements of repeated fields are written even when empty
                        nmsgs + ftab[F_SUB, f],
                        out,
                        w,
                        scratch,
                        slots,
                        nslots,
                        ht,
                        blob,
                    )
                    if i < 0 or w < 0 or w + 64 > cap:
                        return FAIL, 0, 0, 0
                    continue
                if c != 0x7B:
                    return FAIL, 0, 0, 0
                elem = f
        if close:
            i += 1
            if t == F_OBJ:
                c0 = fr[R_CK0, d]
                if fr[R_DIS, d] and not _close_reorder(
                    out, fr[R_CSTART, d], w, ck, c0, nck, slots, fr[R_SLOT, d] + 1, nslots
                ):
                    return FAIL_ROOM, 0, 0, 0
                nck = c0
                k = fr[R_SLOT, d]
                if k >= 0:
                    length = w - fr[R_CSTART, d] - (sav - fr[R_SAV0, d])
                    slots[1, k] = length
                    sav += SLOT - _varint_size(length)
            d -= 1
            if d < 0:
                break
            first = False
            continue
        # open the message value of field `elem`: tag, a length slot, a new frame
        if w + 64 > cap or nslots >= slot_cap:
            return FAIL, 0, 0, 0
        d += 1
        if d >= MAX_DEPTH:
            return FAIL, 0, 0, 0
        w = _put_varint(out, w, np.uint64(ftab[F_TAG, elem]))
        slots[0, nslots] = w
        slots[3, nslots] = S_LEN
        w += SLOT
        fr[R_TYPE, d] = F_OBJ
        fr[R_MSG, d] = ftab[F_SUB, elem]
        fr[R_SLOT, d] = nslots
        fr[R_CSTART, d] = w
        fr[R_SEEN, d] = 0
        fr[R_ONEOF, d] = 0
        fr[R_CK0, d] = nck
        fr[R_LAST, d] = 0
        fr[R_DIS, d] = 0
        fr[R_SAV0, d] = sav
        nslots += 1
        first = True
        i += 1
    i = _ws(buf, i, n)
    if i != n:
        return FAIL, 0, 0, 0
    return OK, w, nslots, sav


@_leaf
def _compact(
    out: np.ndarray, w: int, slots: np.ndarray, nslots: int, doubles: np.ndarray, final: np.ndarray
) -> int:
    """Copy out[:w] to final, replacing each 5-byte length slot by its minimal varint and filling
    the 8-byte holes of deferred doubles from `doubles` (in slot order)."""
    r = 0
    o = 0
    nd = 0
    for k in range(nslots):
        p = slots[0, k]
        o = _copy(final, o, out, r, p - r)
        if slots[3, k] == S_LEN:
            o = _put_varint(final, o, np.uint64(slots[1, k]))
            r = p + SLOT
        else:
            o = _put_fixed(final, o, _double_bits(doubles[nd]), 8)
            nd += 1
            r = p + 8
    return _copy(final, o, out, r, w - r)


# ---------------------------------------------------------------- API
_TABLES = build_tables(ExportTraceServiceRequest.DESCRIPTOR)
_NO_DOUBLES = np.zeros(0, np.float64)
_LITTLE_ENDIAN = sys.byteorder == "little"  # the word tricks read bytes in little-endian order


def transcode_traces(data: bytes | bytearray | memoryview) -> bytes | None:
    """Protobuf wire bytes of the OTLP/JSON ExportTraceServiceRequest `data`, or None (use otlpjson)."""
    try:
        buf = as_array(data)
    except (TypeError, ValueError):  # not a contiguous byte buffer
        return None
    n = buf.size
    if n == 0 or n > MAX_INPUT or not _LITTLE_ENDIAN:
        return None
    # Sizes: `out` holds any expansion (a message costs at most 7 bytes for the 3 of "{}," in JSON)
    # plus room to reorder; slots are ~1 per 50 bytes of typical OTLP/JSON, so n/16 rarely runs out.
    out = np.empty(3 * n + 128, np.uint8)
    scratch = np.empty(n, np.uint8)
    ck = np.empty((4, (MAX_DEPTH + 1) * MAX_FIELDS), np.int64)
    for slot_cap in (n // 16 + 64, n + 16):
        slots = np.empty((4, slot_cap), np.int64)
        fr = np.zeros((10, MAX_DEPTH + 1), np.int64)
        status, w, nslots, sav = _transcode(buf, out, scratch, slots, fr, ck, *_TABLES)
        if status != FAIL_ROOM:
            break
    if status != OK:
        return None
    deferred = np.flatnonzero(slots[3, :nslots] != S_LEN)
    doubles = _deferred_doubles(data, slots, deferred) if deferred.size else _NO_DOUBLES
    if doubles is None:
        return None
    final = np.empty(w - sav, np.uint8)
    if _compact(out, w, slots, nslots, doubles, final) != final.size:  # pragma: no cover - a bug
        return None
    return final.tobytes()


def _deferred_doubles(
    data: bytes | bytearray | memoryview, slots: np.ndarray, which: np.ndarray
) -> np.ndarray | None:
    """The doubles the kernel could not convert exactly, from Python's correctly rounded float()
    of their text (what the reference gets too: orjson's doubles are correctly rounded)."""
    raw = bytes(data)
    starts, ends = slots[1, which].tolist(), slots[2, which].tolist()
    vals = np.array([float(raw[s:e]) for s, e in zip(starts, ends, strict=True)], np.float64)
    if not np.isfinite(vals).all():  # pragma: no cover - the kernel only defers moderate magnitudes
        return None
    return vals


# ---------------------------------------------------------------- warm-up
_warm_done = threading.Event()  # warm-up finished, successfully or not
_usable = threading.Event()  # the kernels are loaded and gave the reference's answer on a sample
_warm_lock = threading.Lock()
_warm_started = False
_WARM_SAMPLE = (
    b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"w"}}]},'
    b'"scopeSpans":[{"scope":{"name":"s"},"spans":[{"name":"n\\u00e9",'
    b'"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","kind":"SPAN_KIND_CLIENT",'
    b'"startTimeUnixNano":"1",'
    b'"endTimeUnixNano":2,"attributes":[{"key":"d","value":{"doubleValue":0.34838341132856154}},'
    b'{"key":"b","value":{"bytesValue":"AQI="}},{"key":"x","value":{"arrayValue":{"values":'
    b'[{"boolValue":true},{"intValue":"-3"},{"doubleValue":"NaN"}]}}}],"status":{"code":2},'
    b'"flags":1,"unknown":[1,{"a":null}]}]}]}]}'
)


def warm_up() -> None:
    """Compile the kernels (or load them from numba's cache) and check them against the reference."""
    want = otlpjson.decode(_WARM_SAMPLE, ExportTraceServiceRequest).SerializeToString()
    if transcode_traces(_WARM_SAMPLE) != want:  # pragma: no cover - would be a bug in this module
        raise RuntimeError("the OTLP/JSON transcoder disagrees with otlpjson on its warm-up sample")
    _usable.set()
    _warm_done.set()


def _warm_up_logged() -> None:
    try:
        warm_up()
    except Exception:  # pragma: no cover - JSON traces then keep using otlpjson
        log.exception("OTLP/JSON transcoder unavailable; JSON traces use otlpjson")
    finally:
        _warm_done.set()


def start_warm_up() -> None:
    """Warm up once per process, in a background thread (start-up is not delayed)."""
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
    threading.Thread(target=_warm_up_logged, name="json-traces-warm-up", daemon=True).start()


def ready() -> bool:
    """True once warm-up has finished (either way): no compilation left to slow the process down."""
    return _warm_done.is_set()


def usable() -> bool:
    """True once the kernels are loaded and checked; before that callers use otlpjson, not block."""
    return _usable.is_set()
