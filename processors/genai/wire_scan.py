"""The numba half of the genai wire fast path: what `extract` needs, read from protobuf bytes.

`scan` walks ExportTraceServiceRequest bytes resource → scope → span, in byte
order, which is the batch's row order. Per span it reports, for every attribute
key in `WANTED_KEYS`, the AnyValue kind and its value (a number, or a string as
an id into the batch's distinct strings), the string elements of
`gen_ai.response.finish_reasons`, the indexed finish-reason keys, the last
`exception.type`/`.message` of `exception` events, the first first-chunk
event, the status message, and whether the span needs the reference logic
(encodings whose meaning protobuf merges, or values the reference would print).
`wire_extract` turns this into columns.

The kernel never reads past the buffer and never raises: malformed bytes, or
bytes holding another number of spans than the batch, give a non-zero status.
Hot helpers are compiled without numba's reference counting (`_nrt=False`, as
numba's own string helpers are): they allocate nothing, and counted array
arguments cost two atomic updates per call, which was a third of the time.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from gateway.wire.pb import (
    I64,
    LEN,
    VARINT,
    as_array,
    read_fixed64,
    read_len,
    read_tag,
    read_varint,
    skip_field,
)
from processors.genai.extract import _FIRST_CHUNK_EVENTS
from processors.genai.families import PRECEDENCE, WANTED_KEYS

# Flags of kernels that allocate nothing: compiled without numba's reference counting, as numba's
# own string helpers are (`_nrt` is not in numba's type stubs, hence the dict).
UNCOUNTED: dict[str, Any] = {"cache": True, "nogil": True, "_nrt": False}

# AnyValue kinds as `scan` reports them. ABSENT: the key is not on the span; NONE: it is, without a
# value the reference reads (no value field, nothing set, kvlist).
ABSENT, NONE, STR, INT, DOUBLE, BOOL, ARRAY, BYTES = range(8)
BAD = -1  # malformed bytes
EMPTY = -2  # string id of "": what the reference reads as `string_value` of a non-string

SLOT_KEYS: tuple[str, ...] = tuple(sorted(WANTED_KEYS))
SLOT = {key: i for i, key in enumerate(SLOT_KEYS)}

# What a string is needed for (bits), so `wire_extract` works out only that, once per distinct string.
(
    NEED_NUMBER,
    NEED_ID,
    NEED_LOWER,
    NEED_STREAM,
    NEED_KIND,
    NEED_OPNAME,
    NEED_RTYPE,
    NEED_PARAMS,
    NEED_LIMITED,
) = (1 << i for i in range(9))


def _slot_needs() -> np.ndarray:
    need = dict.fromkeys(SLOT_KEYS, 0)

    def add(keys: Any, bit: int) -> None:
        for key in keys:
            if key in need:
                need[key] |= bit

    def chain(field: str) -> list[str]:
        return [k for k, _ in PRECEDENCE[field]]

    for field in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "total_tokens"):
        add(chain(field), NEED_NUMBER)
    add(chain("cost_usd") + chain("ttft_s") + ["http.response.status_code", "http.status_code"], NEED_NUMBER)
    add(chain("provider"), NEED_LOWER)
    add(chain("request_model") + chain("response_model"), NEED_ID)
    add(chain("stream"), NEED_STREAM)
    add(["openinference.span.kind"], NEED_KIND)
    add(["gen_ai.operation.name"], NEED_OPNAME)
    add(["llm.request.type"], NEED_RTYPE)
    add(["llm.invocation_parameters"], NEED_PARAMS)
    add(["error.type"], NEED_ID | NEED_LIMITED)
    add(["llm.finish_reason"], NEED_ID)
    return np.array([need[k] for k in SLOT_KEYS], dtype=np.int64)


# Byte literals the kernel compares against, by index.
LITERALS = (
    "exception",
    "exception.type",
    "exception.message",
    "gen_ai.completion.",
    "llm.output_messages.",
    ".finish_reason",
    ".message.finish_reason",
    "finish_reason",
    *_FIRST_CHUNK_EVENTS,
)
L_EXC, L_EXC_TYPE, L_EXC_MSG, L_PREFIX_A, L_PREFIX_B, L_SUFFIX_A, L_SUFFIX_B, L_FINISH = range(8)
L_CHUNK_FIRST = 8  # first-chunk event names follow, up to tab[T_NLIT]

# `tab` (int64) starts with the offsets of its sections; key and literal bytes live in `text` (uint8).
T_CAP, T_MAXLEN, T_NLIT, T_HASH, T_SLOT, T_KEY_OFF, T_LEN_OK, T_LIT_OFF = range(8)


_K1, _K2, _K3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_M64 = (1 << 64) - 1


def _key_hash_py(key: bytes) -> int:
    """`_key_hash` in Python, to build the key table."""
    n = len(key)
    lo = int.from_bytes(key[:8].ljust(8, b"\0"), "little")
    hi = int.from_bytes(key[-8:], "little") if n >= 8 else 0
    h = ((lo * _K1) & _M64) ^ ((hi * _K2) & _M64) ^ n
    h ^= h >> 32
    h = (h * _K3) & _M64
    return h ^ (h >> 29)


@njit(cache=True, nogil=True, inline="always")
def _word(buf: np.ndarray, a: int, n: int) -> np.uint64:
    """Little-endian word of the n <= 8 bytes at buf[a:]."""
    w = np.uint64(0)
    for k in range(n):
        w |= np.uint64(buf[a + k]) << np.uint64(8 * k)
    return w


@njit(cache=True, nogil=True, inline="always")
def _key_hash(buf: np.ndarray, a: int, b: int) -> np.uint64:
    """Hash of a key from its length and first and last eight bytes: two multiplies, where FNV-1a
    takes one per byte. Keys that differ only in the middle collide, which costs the lookup of a
    wanted key a comparison more, nothing else: the table holds only the wanted keys."""
    n = b - a
    if n >= 8:
        lo, hi = _word(buf, a, 8), _word(buf, b - 8, 8)
    else:
        lo, hi = _word(buf, a, n), np.uint64(0)
    h = (lo * np.uint64(_K1)) ^ (hi * np.uint64(_K2)) ^ np.uint64(n)
    h ^= h >> np.uint64(32)
    h *= np.uint64(_K3)
    return h ^ (h >> np.uint64(29))


@njit(cache=True, nogil=True, inline="always")
def _text_hash(buf: np.ndarray, a: int, b: int) -> np.uint64:
    """Hash of all of buf[a:b], eight bytes per multiply."""
    h = np.uint64(b - a) * np.uint64(_K3)
    p = a
    while p + 8 <= b:
        h = (h ^ _word(buf, p, 8)) * np.uint64(_K1)
        h ^= h >> np.uint64(31)
        p += 8
    h = (h ^ _word(buf, p, b - p)) * np.uint64(_K2)
    return h ^ (h >> np.uint64(29))


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Open-addressing table _key_hash(key) → slot, key lengths that can match, and byte offsets."""
    keys = [k.encode() for k in SLOT_KEYS]
    lits = [w.encode() for w in LITERALS]
    cap = 1 << (2 * len(keys) - 1).bit_length()
    hashes = [0] * cap
    slots = [-1] * cap
    for slot, key in enumerate(keys):
        h = _key_hash_py(key)
        i = h & (cap - 1)
        while slots[i] >= 0:
            i = (i + 1) & (cap - 1)
        hashes[i], slots[i] = h - (1 << 64) if h >= 1 << 63 else h, slot
    max_len = max(len(k) for k in keys) + 1
    len_ok = [0] * max_len
    for key in keys:
        len_ok[len(key)] = 1
    offsets = np.cumsum([0] + [len(x) for x in keys + lits]).tolist()
    sections = [hashes, slots, offsets[: len(keys) + 1], len_ok, offsets[len(keys) :]]
    header = [cap, max_len, len(lits)]
    start = len(header) + len(sections)
    for sec in sections:
        header.append(start)
        start += len(sec)
    tab = np.array(header + [x for sec in sections for x in sec], dtype=np.int64)
    return tab, np.frombuffer(b"".join(keys + lits), dtype=np.uint8).copy()


TAB, TEXT = _tables()
SLOT_NEED = _slot_needs()
FINISH_SLOT = SLOT["gen_ai.response.finish_reasons"]
_NO_START = np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------- helpers
@njit(cache=True, nogil=True, inline="always")
def _same(buf: np.ndarray, a: int, b: int, ref: np.ndarray, ra: int, rb: int) -> bool:
    if b - a != rb - ra:
        return False
    for k in range(b - a):  # noqa: SIM110 (numba compiles loops, not generators)
        if buf[a + k] != ref[ra + k]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _is_lit(buf: np.ndarray, a: int, b: int, tab: np.ndarray, text: np.ndarray, k: int) -> bool:
    off = tab[T_LIT_OFF] + k
    return _same(buf, a, b, text, tab[off], tab[off + 1])


@njit(cache=True, nogil=True, inline="always")
def _lit_len(tab: np.ndarray, k: int) -> int:
    off = tab[T_LIT_OFF] + k
    return tab[off + 1] - tab[off]


@njit(cache=True, nogil=True, inline="always")
def _slot_of(buf: np.ndarray, a: int, b: int, tab: np.ndarray, text: np.ndarray) -> int:
    """Slot of the wanted key buf[a:b], or -1."""
    n = b - a
    if n >= tab[T_MAXLEN] or tab[tab[T_LEN_OK] + n] == 0:
        return -1
    h = np.int64(_key_hash(buf, a, b))
    mask = tab[T_CAP] - 1
    hashes, slots, key_off = tab[T_HASH], tab[T_SLOT], tab[T_KEY_OFF]
    i = h & mask
    while tab[slots + i] >= 0:
        s = tab[slots + i]
        if tab[hashes + i] == h and _same(buf, a, b, text, tab[key_off + s], tab[key_off + s + 1]):
            return s
        i = (i + 1) & mask
    return -1


@njit(cache=True, nogil=True, inline="always")
def _indexed_finish(buf: np.ndarray, a: int, b: int, tab: np.ndarray, text: np.ndarray) -> int:
    """i of a `gen_ai.completion.{i}.finish_reason` / `llm.output_messages.{i}[.message].finish_reason`
    key; -1 when it is not one, -2 when only the reference can tell (non-ASCII, huge index)."""
    n_fin = _lit_len(tab, L_FINISH)
    if not (b - a >= n_fin and _is_lit(buf, b - n_fin, b, tab, text, L_FINISH)):
        return -1
    p = -1
    for k in (L_PREFIX_A, L_PREFIX_B):
        n = _lit_len(tab, k)
        if b - a >= n and _is_lit(buf, a, a + n, tab, text, k):
            p = a + n
    if p < 0:
        return -1
    for k in range(p, b):
        if buf[k] >= 0x80:
            return -2  # a Unicode digit would match the reference's \d
    idx = 0
    q = p
    while q < b and 48 <= buf[q] <= 57:
        idx = idx * 10 + (buf[q] - 48)
        q += 1
    if q == p:
        return -1
    if q - p > 18:
        return -2
    if _is_lit(buf, q, b, tab, text, L_SUFFIX_A) or _is_lit(buf, q, b, tab, text, L_SUFFIX_B):
        return idx
    return -1


@njit(**UNCOUNTED)
def _value_of(buf: np.ndarray, a: int, b: int) -> tuple[int, float, int, int, bool]:
    """(kind, number, payload start, payload stop, odd) of an AnyValue; kind BAD when malformed.

    number: the int/bool value, or the length of a string/bytes/array (its truthiness); a double's
    eight bytes are buf[start:stop].
    odd: encodings whose meaning the kernel does not reproduce (a oneof set twice, a known field
    with another wire type); the span then goes to the reference.
    """
    kind = NONE
    num = 0.0
    lo = hi = 0
    seen = 0
    odd = False
    pos = a
    while pos < b:
        field, wtype, pos = read_tag(buf, pos, b)
        if pos < 0:
            return BAD, 0.0, 0, 0, False
        if 1 <= field <= 7:
            seen += 1
            expected = VARINT if field == 2 or field == 3 else (I64 if field == 4 else LEN)
            if wtype != expected:
                odd = True
                pos = skip_field(buf, pos, b, wtype)
            elif field == 2 or field == 3:
                v, pos = read_varint(buf, pos, b)
                kind = BOOL if field == 2 else INT
                num = (1.0 if v != 0 else 0.0) if field == 2 else float(np.int64(v))
            elif field == 4:  # the caller takes the bits at buf[lo:hi]
                kind = DOUBLE
                lo = pos
                _, pos = read_fixed64(buf, pos, b)
                hi = pos
            else:
                lo, hi = read_len(buf, pos, b)
                if lo < 0:
                    return BAD, 0.0, 0, 0, False
                pos = hi
                if field == 1:
                    kind, num = STR, float(hi - lo)
                elif field == 7:
                    kind, num = BYTES, float(hi - lo)
                elif field == 6:
                    kind, num = NONE, 0.0  # kvlist: the reference reads it as None
                else:
                    kind, count, p = ARRAY, 0, lo
                    while p < hi:
                        f, w, p = read_tag(buf, p, hi)
                        if p < 0:
                            return BAD, 0.0, 0, 0, False
                        if f == 1:
                            count += 1
                            odd = odd or w != LEN
                        p = skip_field(buf, p, hi, w)
                        if p < 0:
                            return BAD, 0.0, 0, 0, False
                    num = float(count)
        else:
            pos = skip_field(buf, pos, b, wtype)
        if pos < 0:
            return BAD, 0.0, 0, 0, False
    return kind, num, lo, hi, odd or seen > 1


@njit(cache=True, nogil=True, inline="always")
def _key_value(buf: np.ndarray, a: int, b: int) -> tuple[int, int, int, int, bool]:
    """(key start, key stop, value start, value stop, odd) of a KeyValue; value start -1 when it has
    none, key start -2 when malformed. The last key and value win, as in protobuf; a repeated value
    (which protobuf would merge) or a mistyped field is odd."""
    ka = kb = a
    va = vb = -1
    n_key = n_val = 0
    odd = False
    pos = a
    while pos < b:
        field, wtype, pos = read_tag(buf, pos, b)
        if pos < 0:
            return -2, 0, 0, 0, False
        if (field == 1 or field == 2) and wtype == LEN:
            s, e = read_len(buf, pos, b)
            if s < 0:
                return -2, 0, 0, 0, False
            pos = e
            if field == 1:
                ka, kb, n_key = s, e, n_key + 1
            else:
                va, vb, n_val = s, e, n_val + 1
        else:
            odd = odd or field == 1 or field == 2
            pos = skip_field(buf, pos, b, wtype)
            if pos < 0:
                return -2, 0, 0, 0, False
    return ka, kb, va, vb, odd or n_key > 1 or n_val > 1


@njit(**UNCOUNTED, inline="always")  # once per attribute: a call costs more than its body
def _attribute(
    buf: np.ndarray, a: int, b: int, tab: np.ndarray, text: np.ndarray
) -> tuple[int, int, int, float, int, int, bool]:
    """(slot, finish index, kind, number, payload start, stop, odd) of a span attribute.

    slot >= 0: a wanted key; else finish index >= 0: an indexed finish reason (string values only,
    others are odd: the reference prints them); both -1: a key nobody reads. kind BAD: malformed.
    """
    ka, kb, va, vb, odd = _key_value(buf, a, b)
    if ka == -2:
        return -1, -1, BAD, 0.0, 0, 0, False
    slot = _slot_of(buf, ka, kb, tab, text)
    idx = -1
    if slot < 0:
        idx = _indexed_finish(buf, ka, kb, tab, text)
        if idx == -1:
            return -1, -1, NONE, 0.0, 0, 0, False
        if idx == -2 or va < 0:
            return -1, -1, NONE, 0.0, 0, 0, True
    if va < 0:
        return slot, idx, NONE, 0.0, 0, 0, odd
    kind, num, lo, hi, v_odd = _value_of(buf, va, vb)
    return slot, idx, kind, num, lo, hi, odd or v_odd or (idx >= 0 and kind != STR)


@njit(**UNCOUNTED)
def _event(
    buf: np.ndarray, a: int, b: int, tab: np.ndarray, text: np.ndarray
) -> tuple[int, np.uint64, int, int, int, int, int, int, bool]:
    """One span event: (what, time, exception.type kind/start/stop, exception.message kind/start/stop, odd).

    what: 1 an `exception` event, 2 a first-chunk event with a time, 0 another, BAD malformed.
    The type and message are the last in the event: kind ABSENT when missing, STR for a string,
    NONE when the reference reads "" (no value, or not a string).
    """
    t = np.uint64(0)
    na = nb = a
    odd = False
    pos = a
    while pos < b:  # name and time first: they may follow the attributes
        field, wtype, pos = read_tag(buf, pos, b)
        if pos < 0:
            return BAD, t, 0, 0, 0, 0, 0, 0, False
        if field == 1 and wtype == I64:
            t, pos = read_fixed64(buf, pos, b)
        elif field == 2 and wtype == LEN:
            na, nb = read_len(buf, pos, b)
            pos = nb
        else:
            odd = odd or field == 1 or field == 2
            pos = skip_field(buf, pos, b, wtype)
        if pos < 0:
            return BAD, t, 0, 0, 0, 0, 0, 0, False
    if not _is_lit(buf, na, nb, tab, text, L_EXC):
        if t != np.uint64(0):
            for k in range(L_CHUNK_FIRST, tab[T_NLIT]):
                if _is_lit(buf, na, nb, tab, text, k):
                    return 2, t, 0, 0, 0, 0, 0, 0, odd
        return 0, t, 0, 0, 0, 0, 0, 0, odd
    tk, tlo, thi, mk, mlo, mhi = ABSENT, 0, 0, ABSENT, 0, 0
    pos = a
    while pos < b:
        field, wtype, pos = read_tag(buf, pos, b)
        if pos < 0:
            return BAD, t, 0, 0, 0, 0, 0, 0, False
        if field != 3 or wtype != LEN:
            odd = odd or field == 3
            pos = skip_field(buf, pos, b, wtype)
            if pos < 0:
                return BAD, t, 0, 0, 0, 0, 0, 0, False
            continue
        ka, kb = read_len(buf, pos, b)
        if ka < 0:
            return BAD, t, 0, 0, 0, 0, 0, 0, False
        pos = kb
        k0, k1, va, vb, kv_odd = _key_value(buf, ka, kb)
        if k0 == -2:
            return BAD, t, 0, 0, 0, 0, 0, 0, False
        is_type = _is_lit(buf, k0, k1, tab, text, L_EXC_TYPE)
        if not is_type and not _is_lit(buf, k0, k1, tab, text, L_EXC_MSG):
            continue
        odd = odd or kv_odd
        vk, lo, hi = NONE, 0, 0
        if va >= 0:
            vk, _, lo, hi, v_odd = _value_of(buf, va, vb)
            if vk == BAD:
                return BAD, t, 0, 0, 0, 0, 0, 0, False
            odd = odd or v_odd
            vk = STR if vk == STR else NONE
        if is_type:
            tk, tlo, thi = vk, lo, hi
        else:
            mk, mlo, mhi = vk, lo, hi
    return 1, t, tk, tlo, thi, mk, mlo, mhi, odd


@njit(**UNCOUNTED)
def _string_elements(
    buf: np.ndarray, a: int, b: int, occ: np.ndarray, elems: np.ndarray, n_occ: int, n_el: int
) -> tuple[int, int, bool]:
    """Append the string elements of the ArrayValue buf[a:b] as occurrences; (n_occ, n_el, odd).

    n_occ -1: malformed. A non-string element is odd: the reference prints it.
    """
    odd = False
    p = a
    while p < b:
        f, w, p = read_tag(buf, p, b)
        if p < 0:
            return -1, n_el, False
        if f != 1 or w != LEN:
            p = skip_field(buf, p, b, w)
            if p < 0:
                return -1, n_el, False
            continue
        ea, eb = read_len(buf, p, b)
        if ea < 0:
            return -1, n_el, False
        p = eb
        ek, _, lo, hi, e_odd = _value_of(buf, ea, eb)
        if ek == BAD:
            return -1, n_el, False
        if ek != STR or e_odd:
            odd = True
            continue
        occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = lo, hi, NEED_ID
        elems[n_el] = n_occ
        n_occ += 1
        n_el += 1
    return n_occ, n_el, odd


@njit(**UNCOUNTED)
def _dedup(
    buf: np.ndarray,
    occ: np.ndarray,
    n_occ: int,
    table: np.ndarray,
    hashes: np.ndarray,
    sid_of: np.ndarray,
    distinct: np.ndarray,
) -> int:
    """String id of every occurrence into `sid_of`, (start, stop, needs) of each distinct string into
    `distinct`; returns how many. `table` (all -1) is a power of two over twice the occurrences."""
    mask = table.shape[0] - 1
    n = 0
    for o in range(n_occ):
        a, b = occ[o, 0], occ[o, 1]
        h = _text_hash(buf, a, b)
        i = np.int64(h & np.uint64(mask))
        while True:
            s = table[i]
            if s < 0:
                table[i], hashes[i] = n, h
                distinct[n, 0], distinct[n, 1], distinct[n, 2] = a, b, occ[o, 2]
                sid_of[o] = n
                n += 1
                break
            if hashes[i] == h and _same(buf, a, b, buf, distinct[s, 0], distinct[s, 1]):
                sid_of[o] = s
                distinct[s, 2] |= occ[o, 2]
                break
            i = (i + 1) & mask
    return n


# ---------------------------------------------------------------- the walk
class Scan(NamedTuple):
    """What `scan` read; string ids index `str_lo`/`str_hi` (distinct byte strings)."""

    status: int  # 0 ok, -1 malformed, -2 span count differs from the batch, -3 start times differ
    kind: np.ndarray  # int8 [rows, slots]
    num: np.ndarray  # float64 [rows, slots]
    sid: np.ndarray  # int64 [rows, slots], strings only
    fin_off: np.ndarray  # finish_reasons array elements of a row: fin_sid[off : off + len]
    fin_len: np.ndarray
    fin_sid: np.ndarray
    ix_row: np.ndarray  # indexed finish reasons, in byte order
    ix_idx: np.ndarray
    ix_sid: np.ndarray
    exc_type: np.ndarray  # last exception.type / .message of `exception` events; -1 none, -2 ""
    exc_msg: np.ndarray
    status_msg: np.ndarray  # -1 when empty
    chunk_ttft: np.ndarray  # first first-chunk event − span start, seconds; NaN when none
    start_ns: np.ndarray  # uint64
    span_lo: np.ndarray  # the span's bytes, for the reference
    span_hi: np.ndarray
    odd: np.ndarray  # rows only the reference reads right
    str_lo: np.ndarray
    str_hi: np.ndarray
    str_need: np.ndarray  # NEED_* bits: what each distinct string is read for
    present: np.ndarray  # bool [slots]: the key is on some span of the batch


@njit(**UNCOUNTED)
def _walk(
    buf: np.ndarray,
    n_rows: int,
    tab: np.ndarray,
    text: np.ndarray,
    slot_need: np.ndarray,
    fin_slot: int,
    kind: np.ndarray,
    num: np.ndarray,
    sid: np.ndarray,
    fin: np.ndarray,
    per_row: np.ndarray,
    start: np.ndarray,
    chunk_ttft: np.ndarray,
    spans: np.ndarray,
    odd: np.ndarray,
    occ: np.ndarray,
    elems: np.ndarray,
    ix: np.ndarray,
    num_bits: np.ndarray,
    present: np.ndarray,
) -> tuple[int, int, int, int]:
    """The walk itself, into `scan`'s arrays: (status, occurrences, array elements, indexed keys).

    Strings are recorded as occurrences (start, stop, needs) and ids point at them; `num_bits` is
    `num` seen as uint64, where doubles go bit for bit.
    """
    end = buf.shape[0]
    n_occ = n_el = n_ix = 0
    status = 0
    row = 0
    pos = 0
    while pos < end and status == 0:
        field, wtype, pos = read_tag(buf, pos, end)
        if pos < 0:
            status = -1
            break
        if field != 1:
            pos = skip_field(buf, pos, end, wtype)
            status = -1 if pos < 0 else 0
            continue
        ra, rb = read_len(buf, pos, end) if wtype == LEN else (-1, -1)
        if ra < 0:
            status = -1  # a mistyped resource_spans is unknown to protobuf: let the reference decide
            break
        pos = rb
        p = ra
        while p < rb and status == 0:
            field, wtype, p = read_tag(buf, p, rb)
            if p < 0:
                status = -1
                break
            if field != 2:
                p = skip_field(buf, p, rb, wtype)
                status = -1 if p < 0 else 0
                continue
            sa, sb = read_len(buf, p, rb) if wtype == LEN else (-1, -1)
            if sa < 0:
                status = -1
                break
            p = sb
            q = sa
            while q < sb and status == 0:
                field, wtype, q = read_tag(buf, q, sb)
                if q < 0:
                    status = -1
                    break
                if field != 2:
                    q = skip_field(buf, q, sb, wtype)
                    status = -1 if q < 0 else 0
                    continue
                a, b = read_len(buf, q, sb) if wtype == LEN else (-1, -1)
                if a < 0:
                    status = -1
                    break
                q = b
                if row >= n_rows:
                    status = -2
                    break
                # ---- one span
                spans[row, 0], spans[row, 1] = a, b
                st = np.uint64(0)
                chunk = np.uint64(0)
                n_status = 0
                x = a
                while x < b:
                    f, w, x = read_tag(buf, x, b)
                    if x < 0:
                        break
                    if f == 7 and w == I64:
                        st, x = read_fixed64(buf, x, b)
                        if x < 0:
                            break
                        continue
                    if (f != 9 and f != 11 and f != 15) or w != LEN:
                        odd[row] = odd[row] or f == 7 or f == 9 or f == 11 or f == 15
                        x = skip_field(buf, x, b, w)
                        if x < 0:
                            break
                        continue
                    fa, fb = read_len(buf, x, b)
                    if fa < 0:
                        x = -1
                        break
                    x = fb
                    if f == 9:
                        slot, idx, vk, vnum, lo, hi, a_odd = _attribute(buf, fa, fb, tab, text)
                        if vk == BAD:
                            x = -1
                            break
                        odd[row] = odd[row] or a_odd
                        if slot >= 0:
                            kind[row, slot], num[row, slot], sid[row, slot] = vk, vnum, -1
                            present[slot] = True
                            if vk == DOUBLE:  # the exact bits, into a uint64 view of `num`
                                num_bits[row, slot], _ = read_fixed64(buf, lo, hi)
                            if vk == STR:
                                occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = lo, hi, slot_need[slot]
                                sid[row, slot] = n_occ
                                n_occ += 1
                            elif vk == ARRAY and slot == fin_slot:
                                fin[row, 0] = n_el
                                n_occ, n_el2, e_odd = _string_elements(buf, lo, hi, occ, elems, n_occ, n_el)
                                if n_occ < 0:
                                    x = -1
                                    break
                                fin[row, 1] = n_el2 - n_el
                                n_el = n_el2
                                odd[row] = odd[row] or e_odd
                        elif idx >= 0 and vk == STR:
                            occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = lo, hi, NEED_ID
                            ix[n_ix, 0], ix[n_ix, 1], ix[n_ix, 2] = row, idx, n_occ
                            n_occ += 1
                            n_ix += 1
                    elif f == 11:
                        what, t, tk, tlo, thi, mk, mlo, mhi, e_odd = _event(buf, fa, fb, tab, text)
                        if what == BAD:
                            x = -1
                            break
                        odd[row] = odd[row] or e_odd
                        if what == 2 and chunk == np.uint64(0):
                            chunk = t
                        elif what == 1:
                            if tk == STR:
                                occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = tlo, thi, NEED_ID | NEED_LIMITED
                                per_row[row, 0] = n_occ
                                n_occ += 1
                            elif tk == NONE:
                                per_row[row, 0] = EMPTY
                            if mk == STR:
                                occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = mlo, mhi, NEED_LIMITED
                                per_row[row, 1] = n_occ
                                n_occ += 1
                            elif mk == NONE:
                                per_row[row, 1] = EMPTY
                    else:
                        n_status += 1
                        y = fa
                        while y < fb:
                            g, gw, y = read_tag(buf, y, fb)
                            if y < 0:
                                break
                            if g == 2 and gw == LEN:
                                ma, mb = read_len(buf, y, fb)
                                if ma < 0:
                                    y = -1
                                    break
                                y = mb
                                per_row[row, 2] = -1
                                if mb > ma:
                                    occ[n_occ, 0], occ[n_occ, 1], occ[n_occ, 2] = ma, mb, NEED_LIMITED
                                    per_row[row, 2] = n_occ
                                    n_occ += 1
                            else:
                                odd[row] = odd[row] or g == 2
                                y = skip_field(buf, y, fb, gw)
                                if y < 0:
                                    break
                        if y < 0:
                            x = -1
                            break
                if x < 0:
                    status = -1
                    break
                if n_status > 1:
                    odd[row] = True  # protobuf merges repeated status messages
                start[row] = st
                if chunk != np.uint64(0):
                    chunk_ttft[row] = np.int64(chunk - st) / 1e9
                row += 1
    if status == 0 and row != n_rows:
        status = -2
    return status, n_occ, n_el, n_ix


@njit(cache=True, nogil=True)
def scan(
    buf: np.ndarray,
    n_rows: int,
    tab: np.ndarray,
    text: np.ndarray,
    slot_need: np.ndarray,
    fin_slot: int,
    expect_start: np.ndarray,
) -> tuple[Any, ...]:
    """Walk ExportTraceServiceRequest bytes; see `Scan` for what comes back (in that order).

    `expect_start`, unless empty: the batch's start times; other times in the bytes give status -3.
    """
    n_slots = tab[T_LEN_OK] - tab[T_KEY_OFF] - 1
    end = buf.shape[0]
    kind = np.zeros((n_rows, n_slots), dtype=np.int8)
    # Written wherever `kind` is not ABSENT, and read only there: not cleared (most of a batch is absent).
    num = np.empty((n_rows, n_slots), dtype=np.float64)
    sid = np.empty((n_rows, n_slots), dtype=np.int64)
    present = np.zeros(n_slots, dtype=np.bool_)
    fin = np.zeros((n_rows, 2), dtype=np.int64)
    per_row = np.full((n_rows, 3), -1, dtype=np.int64)  # exception type, message, status message
    start = np.zeros(n_rows, dtype=np.uint64)
    chunk_ttft = np.full(n_rows, np.nan)
    spans = np.zeros((n_rows, 2), dtype=np.int64)
    odd = np.zeros(n_rows, dtype=np.bool_)
    # Upper bounds from the bytes each one owns: a string field >= 2 (tag, length), an array
    # element >= 4 (AnyValue and string headers), an indexed key >= 16 (two headers, the key).
    occ = np.empty((end // 2 + 1, 3), dtype=np.int64)  # start, stop, NEED_* bits
    elems = np.empty(end // 4 + 1, dtype=np.int64)
    ix = np.empty((end // 16 + 1, 3), dtype=np.int64)
    bits = num.view(np.uint64)
    args = (kind, num, sid, fin, per_row, start, chunk_ttft, spans, odd, occ, elems, ix, bits, present)
    status, n_occ, n_el, n_ix = _walk(buf, n_rows, tab, text, slot_need, fin_slot, *args)
    if status == 0 and expect_start.shape[0]:
        for r in range(n_rows):
            if np.int64(start[r]) != expect_start[r]:
                status = -3  # the bytes hold other spans than the batch
                break
    if status != 0:
        n_occ = n_el = n_ix = 0
    cap = 16
    while cap < 2 * n_occ:
        cap *= 2
    sid_of = np.empty(n_occ, dtype=np.int64)
    distinct = np.empty((n_occ, 3), dtype=np.int64)
    n_str = _dedup(
        buf, occ, n_occ, np.full(cap, -1, dtype=np.int64), np.zeros(cap, np.uint64), sid_of, distinct
    )
    distinct = distinct[:n_str]
    if status == 0:
        slots = np.flatnonzero(present)
        for r in range(n_rows):
            for slot in slots:
                if kind[r, slot] == STR:
                    sid[r, slot] = sid_of[sid[r, slot]]
            for k in range(3):
                if per_row[r, k] >= 0:
                    per_row[r, k] = sid_of[per_row[r, k]]
        for k in range(n_el):
            elems[k] = sid_of[elems[k]]
        for k in range(n_ix):
            ix[k, 2] = sid_of[ix[k, 2]]
    return (
        status,
        kind,
        num,
        sid,
        fin[:, 0].copy(),
        fin[:, 1].copy(),
        elems[:n_el].copy(),
        ix[:n_ix, 0].copy(),
        ix[:n_ix, 1].copy(),
        ix[:n_ix, 2].copy(),
        per_row[:, 0].copy(),
        per_row[:, 1].copy(),
        per_row[:, 2].copy(),
        chunk_ttft,
        start,
        spans[:, 0].copy(),
        spans[:, 1].copy(),
        odd,
        distinct[:, 0].copy(),
        distinct[:, 1].copy(),
        distinct[:, 2].copy(),
        present,
    )


def scan_wire(wire: bytes | bytearray | memoryview, n_rows: int, start_ns: np.ndarray | None = None) -> Scan:
    """Run the kernel over a serialized ExportTraceServiceRequest expected to hold `n_rows` spans
    (starting at `start_ns`, the batch's column, when given)."""
    expect = _NO_START if start_ns is None else start_ns
    return Scan(*scan(as_array(wire), n_rows, TAB, TEXT, SLOT_NEED, FINISH_SLOT, expect))
