"""Fast path: ExportTraceServiceRequest wire bytes straight into a SpanBatch, no protobuf objects.

`decode_spans` walks the bytes once in a numba kernel and fills exactly the columns that
`SpanBatch.from_request` builds from the parsed request (same dtypes, values, string table in
the same intern order), so the two are interchangeable; the request itself is parsed only if a
later stage asks for `batch.request`.

It must never accept what the protobuf library rejects (the request may be parsed again later,
e.g. by an exporter) and never guess. So it returns None, and the caller falls back to the
reference decoder and its error, whenever it cannot prove the outcome is identical:

* malformed bytes: truncation, bad varints, lengths past their parent, tags or length prefixes
  over 5 bytes (upb's limits), field number 0, wire types 6/7, end-group tags;
* invalid UTF-8 in any `string` field anywhere (upb validates every proto3 string);
* protobuf features it does not replicate: groups (valid as unknown fields), a known field with
  an unexpected wire type (upb keeps it as an unknown field), nesting deeper than `MAX_DEPTH`.

Values the columns cannot hold exactly are converted as the reference does (gateway.batch
`time_column`, `enum_column`): times >= 2**63 keep their bits (the receivers reject those
spans), kinds and status codes outside int8 saturate.

What it does replicate: unknown fields are skipped, scalars occurring twice are last-wins, and a
singular message occurring twice (`resource`, `status`, a KeyValue's `value`) merges, which for
the columns means "keep filling the same state". Which fields exist and which are strings comes
from the installed protobuf descriptors (`build_schema`), so a newer opentelemetry-proto with a
new string field is validated, not skipped; if the descriptors lack a field the columns need,
the fast path is disabled.

The walk is one loop over an explicit stack of (message type, end) frames, driven by those
tables; the few fields the columns need are picked up on the way. ResourceSpans' own attributes
get their own ids (M_RES_KV, M_RES_ANY) so `service.name` is found without a second pass.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
from numba import njit
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gateway.batch import SpanBatch, StringTable
from gateway.wire.pb import (
    I32,
    I64,
    LEN,
    VARINT,
    as_array,
    fnv1a,
    read_fixed64,
    read_len,
    read_tag,
    read_varint,
    skip_field,
)

# ---------------------------------------------------------------- schema tables
# Message ids the kernel acts on; every other message type gets a generic id after these.
M_REQUEST, M_RS, M_RESOURCE, M_SS, M_SPAN, M_STATUS = 0, 1, 2, 3, 4, 5
M_RES_KV, M_RES_ANY = 6, 7  # a Resource's own attributes and their values (service.name lives here)
M_KV, M_ANY = 8, 9  # every other KeyValue / AnyValue

# What a field is, by how the kernel must read it.
F_UNKNOWN, F_VARINT, F_I64, F_I32, F_STRING, F_BYTES, F_MESSAGE, F_UNSUPPORTED = range(8)

MAX_DEPTH = 64  # nested messages; upb allows 100, deeper input goes to the reference decoder

_FIXED = {
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": M_REQUEST,
    "opentelemetry.proto.trace.v1.ResourceSpans": M_RS,
    "opentelemetry.proto.resource.v1.Resource": M_RESOURCE,
    "opentelemetry.proto.trace.v1.ScopeSpans": M_SS,
    "opentelemetry.proto.trace.v1.Span": M_SPAN,
    "opentelemetry.proto.trace.v1.Status": M_STATUS,
    "opentelemetry.proto.common.v1.KeyValue": M_KV,
    "opentelemetry.proto.common.v1.AnyValue": M_ANY,
}

# (message id, field number) -> (field name, kind) the kernel relies on.
_REQUIRED = {
    (M_REQUEST, 1): ("resource_spans", F_MESSAGE),
    (M_RS, 1): ("resource", F_MESSAGE),
    (M_RS, 2): ("scope_spans", F_MESSAGE),
    (M_RESOURCE, 1): ("attributes", F_MESSAGE),
    (M_SS, 2): ("spans", F_MESSAGE),
    (M_SPAN, 1): ("trace_id", F_BYTES),
    (M_SPAN, 2): ("span_id", F_BYTES),
    (M_SPAN, 4): ("parent_span_id", F_BYTES),
    (M_SPAN, 5): ("name", F_STRING),
    (M_SPAN, 6): ("kind", F_VARINT),
    (M_SPAN, 7): ("start_time_unix_nano", F_I64),
    (M_SPAN, 8): ("end_time_unix_nano", F_I64),
    (M_SPAN, 15): ("status", F_MESSAGE),
    (M_STATUS, 3): ("code", F_VARINT),
    (M_RES_KV, 1): ("key", F_STRING),
    (M_RES_KV, 2): ("value", F_MESSAGE),
    (M_RES_ANY, 1): ("string_value", F_STRING),
}


class Schema(NamedTuple):
    kinds: np.ndarray  # int8 [message id, field number] -> F_*
    child: np.ndarray  # int32 [message id, field number] -> message id of a F_MESSAGE field
    names: tuple[str, ...]  # full message name by id
    problem: str  # why the fast path is off for this schema ("" when it is on)


def _field_kind(fd: Any) -> int:
    t = fd.type
    if fd.is_repeated and t not in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE):
        return F_UNSUPPORTED  # packed or not: not needed by OTLP traces, not replicated
    if t == fd.TYPE_MESSAGE:
        return F_MESSAGE
    if t == fd.TYPE_GROUP:
        return F_UNSUPPORTED
    if t == fd.TYPE_STRING:
        return F_STRING
    if t == fd.TYPE_BYTES:
        return F_BYTES
    if t in (fd.TYPE_FIXED64, fd.TYPE_SFIXED64, fd.TYPE_DOUBLE):
        return F_I64
    if t in (fd.TYPE_FIXED32, fd.TYPE_SFIXED32, fd.TYPE_FLOAT):
        return F_I32
    return F_VARINT  # int32/64, uint32/64, sint32/64, bool, enum


def build_schema(root: Any = ExportTraceServiceRequest.DESCRIPTOR) -> Schema:
    """Field tables for every message reachable from `root`, from the installed descriptors."""
    ids: dict[tuple[str, int], int] = {}  # (full name, context) -> id; context tells resource attrs apart
    descs: dict[int, Any] = {}
    pending: list[int] = []

    def id_of(desc: Any, parent: int, field_no: int) -> int:
        name = desc.full_name
        ctx = 0
        if parent == M_RESOURCE and field_no == 1 and _FIXED.get(name) == M_KV:
            ctx = M_RES_KV
        elif parent == M_RES_KV and field_no == 2 and _FIXED.get(name) == M_ANY:
            ctx = M_RES_ANY
        key = (name, ctx)
        if key not in ids:
            generic = 10 + sum(1 for i in descs if i >= 10)
            mid = ids[key] = ctx or _FIXED.get(name, generic)
            descs[mid] = desc
            pending.append(mid)
        return ids[key]

    id_of(root, -1, 0)
    rows: list[tuple[int, int, int, int]] = []  # message id, field number, kind, child id
    while pending:
        mid = pending.pop()
        for fd in descs[mid].fields:
            kind = _field_kind(fd)
            cid = id_of(fd.message_type, mid, fd.number) if kind == F_MESSAGE else -1
            rows.append((mid, fd.number, kind, cid))
    width = max((r[1] for r in rows), default=0) + 1
    kinds = np.zeros((max(descs) + 1, width), dtype=np.int8)
    child = np.full((max(descs) + 1, width), -1, dtype=np.int32)
    for mid, number, kind, cid in rows:
        kinds[mid, number] = kind
        child[mid, number] = cid
    names = tuple(descs[i].full_name if i in descs else "" for i in range(max(descs) + 1))
    return Schema(kinds, child, names, _check(kinds, child, descs))


def _check(kinds: np.ndarray, child: np.ndarray, descs: dict[int, Any]) -> str:
    """Empty when the schema has every field the kernel reads, with the expected kind."""
    for mid in (M_REQUEST, M_RS, M_RESOURCE, M_SS, M_SPAN, M_STATUS, M_RES_KV, M_RES_ANY):
        if mid >= kinds.shape[0] or mid not in descs:
            return f"message id {mid} missing from the descriptors"
    for (mid, number), (name, kind) in _REQUIRED.items():
        desc = descs[mid]
        fd = desc.fields_by_number.get(number)
        if (
            fd is None
            or fd.name != name
            or kinds[mid, number] != kind
            or fd.is_repeated
            != (kind == F_MESSAGE and name in ("resource_spans", "scope_spans", "attributes", "spans"))
        ):
            return f"{desc.full_name}.{name} is not field {number} as expected"
    expected_children = {
        (M_REQUEST, 1): M_RS,
        (M_RS, 1): M_RESOURCE,
        (M_RS, 2): M_SS,
        (M_RESOURCE, 1): M_RES_KV,
        (M_SS, 2): M_SPAN,
        (M_SPAN, 15): M_STATUS,
        (M_RES_KV, 2): M_RES_ANY,
    }
    for (mid, number), cid in expected_children.items():
        if child[mid, number] != cid:
            return f"{descs[mid].full_name} field {number} has an unexpected type"
    if len(descs[M_REQUEST].fields) != 1:
        return "ExportTraceServiceRequest has more than resource_spans (wire concatenation unsafe)"
    any_desc = descs[M_RES_ANY]
    if any(fd.containing_oneof is None or fd.containing_oneof.name != "value" for fd in any_desc.fields):
        return "AnyValue has fields outside its `value` oneof"
    return ""


# ---------------------------------------------------------------- kernels
# Kernels that allocate nothing are compiled without numba's reference counting: with it, every
# inlined wire reader increfs and decrefs `buf` (two atomic operations per tag or length), which
# was a third of the decoder's time. Python allocates the outputs and scratch space instead.
_NO_NRT: dict[str, Any] = {"_nrt": False}
_leaf = njit(cache=True, nogil=True, **_NO_NRT)


@_leaf
def utf8_valid(buf: np.ndarray, start: int, stop: int) -> bool:
    """Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as upb checks it."""
    k = start
    while k < stop:
        if k + 8 <= stop:
            m = (
                buf[k]
                | buf[k + 1]
                | buf[k + 2]
                | buf[k + 3]
                | buf[k + 4]
                | buf[k + 5]
                | buf[k + 6]
                | buf[k + 7]
            )
            if m < 0x80:
                k += 8
                continue
        c = buf[k]
        if c < 0x80:
            k += 1
            continue
        if c < 0xC2:
            return False
        if c < 0xE0:
            if k + 1 >= stop or (buf[k + 1] & 0xC0) != 0x80:
                return False
            k += 2
            continue
        if c < 0xF0:
            if k + 2 >= stop:
                return False
            c1 = buf[k + 1]
            if (c1 & 0xC0) != 0x80 or (buf[k + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            k += 3
            continue
        if c < 0xF5:
            if k + 3 >= stop:
                return False
            c1 = buf[k + 1]
            if (c1 & 0xC0) != 0x80 or (buf[k + 2] & 0xC0) != 0x80 or (buf[k + 3] & 0xC0) != 0x80:
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return False
            k += 4
            continue
        return False
    return True


@_leaf
def count_items(buf: np.ndarray) -> tuple[int, int]:
    """(ResourceSpans, Spans) in the request, to size the output; (-1, -1) when malformed.

    Only the top three levels are read; the full walk checks everything else.
    """
    n = buf.shape[0]
    n_res = 0
    n_spans = 0
    pos = 0
    while pos < n:
        field, wt, pos = read_tag(buf, pos, n)
        if pos < 0:
            return -1, -1
        if field != 1 or wt != LEN:
            pos = skip_field(buf, pos, n, wt)
            if pos < 0:
                return -1, -1
            continue
        rs_pos, rs_end = read_len(buf, pos, n)
        if rs_pos < 0:
            return -1, -1
        n_res += 1
        pos = rs_end
        while rs_pos < rs_end:
            field, wt, rs_pos = read_tag(buf, rs_pos, rs_end)
            if rs_pos < 0:
                return -1, -1
            if field != 2 or wt != LEN:
                rs_pos = skip_field(buf, rs_pos, rs_end, wt)
                if rs_pos < 0:
                    return -1, -1
                continue
            ss_pos, ss_end = read_len(buf, rs_pos, rs_end)
            if ss_pos < 0:
                return -1, -1
            rs_pos = ss_end
            while ss_pos < ss_end:
                field, wt, ss_pos = read_tag(buf, ss_pos, ss_end)
                if ss_pos < 0:
                    return -1, -1
                if field == 2 and wt == LEN:
                    n_spans += 1
                ss_pos = skip_field(buf, ss_pos, ss_end, wt)
                if ss_pos < 0:
                    return -1, -1
    return n_res, n_spans


@njit(cache=True, nogil=True, inline="always")
def _be64(buf: np.ndarray, pos: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return v


@njit(cache=True, nogil=True, inline="always")
def _equal(buf: np.ndarray, a: int, b: int, key: np.ndarray) -> bool:
    n = b - a
    if n != key.shape[0]:
        return False
    k = 0
    while k < n and buf[a + k] == key[k]:
        k += 1
    return k == n


@njit(cache=True, nogil=True, inline="always")
def _as_int8(v: np.uint64) -> int:
    """An enum varint as upb stores it (int32 truncation), saturated to int8 like `enum_column`."""
    x = np.int64(v & np.uint64(0xFFFFFFFF))
    if x >= 0x80000000:
        x -= 0x100000000
    return -128 if x < -128 else (127 if x > 127 else int(x))


@_leaf
def _intern(buf: np.ndarray, a: int, b: int, ht: np.ndarray, strs: np.ndarray, n_str: int) -> tuple[int, int]:
    """Code of buf[a:b] in the batch dictionary (added when new) and the new string count.

    ht: open-addressing table, row 0 the code (-1 empty), row 1 the hash; strs: (start, stop) pairs.
    """
    h = np.int64(fnv1a(buf, a, b))
    mask = ht.shape[1] - 1
    slot = h & mask
    ln = b - a
    while True:
        code = ht[0, slot]
        if code < 0:
            ht[0, slot] = n_str
            ht[1, slot] = h
            strs[2 * n_str] = a
            strs[2 * n_str + 1] = b
            return n_str, n_str + 1
        if ht[1, slot] == h and strs[2 * code + 1] - strs[2 * code] == ln:
            o = strs[2 * code]
            k = 0
            while k < ln and buf[o + k] == buf[a + k]:
                k += 1
            if k == ln:
                return int(code), n_str
        slot = (slot + 1) & mask


@_leaf
def walk(
    buf: np.ndarray,
    kinds: np.ndarray,
    child: np.ndarray,
    svc_key: np.ndarray,
    u64: np.ndarray,
    i64: np.ndarray,
    i32: np.ndarray,
    i8: np.ndarray,
    ids_ok: np.ndarray,
    scratch: np.ndarray,
    n_res_cap: int,
) -> tuple[int, int, int, int]:
    """Walk the whole request, filling the preallocated outputs; (error, n_res, n_rows, n_str).

    Rows of u64: trace_id hi/lo, span_id, parent_span_id; i64: start/end; i32: res/scope/item
    index, name, service; i8: kind, status code. `scratch` (int64, `scratch_size` words) holds
    the (start, stop) pairs of the distinct strings first, then each resource's service.name
    bounds, the stack and the string hash table. error is 0 on success, else the byte position
    (+1) where proving equivalence failed.
    """
    n = buf.shape[0]
    width = kinds.shape[1]
    n_cap = ids_ok.shape[0]
    o1 = 2 * (n_cap + n_res_cap + 1)
    o2 = o1 + 2 * n_res_cap
    o3 = o2 + 2 * MAX_DEPTH
    strs = scratch[:o1]
    svc = scratch[o1:o2].reshape((2, n_res_cap))
    stack = scratch[o2:o3].reshape((2, MAX_DEPTH))
    ht = scratch[o3:].reshape((2, (scratch.shape[0] - o3) // 2))
    ht[0, :] = -1
    res_idx, scope_idx, item_idx, name, service = i32[0], i32[1], i32[2], i32[3], i32[4]
    tid_hi, tid_lo, sid, pid = u64[0], u64[1], u64[2], u64[3]
    start_ns, end_ns = i64[0], i64[1]
    kind, status = i8[0], i8[1]
    svc_a, svc_b = svc[0], svc[1]
    for r in range(n_res_cap):
        svc_a[r] = -1
    n_str = 0

    st_type, st_end = stack[0], stack[1]
    sp = 0
    st_type[0] = M_REQUEST
    st_end[0] = n
    pos = 0
    fail = 0

    n_res = 0
    n_rows = 0
    scope_count = 0
    cur_scope = 0
    item_count = 0
    # current span
    tid_a = tid_b = sid_a = sid_b = pid_a = pid_b = name_a = name_b = 0
    t_start = t_end = np.uint64(0)
    v_kind = v_status = np.uint64(0)
    # current resource attribute (KeyValue under Resource) and its value's oneof state
    key_a = key_b = str_a = str_b = 0
    case = 0
    found = False
    fa = fb = 0

    while True:
        end = st_end[sp]
        if pos >= end:
            t = st_type[sp]
            if t == M_SPAN:
                if n_rows >= n_cap:
                    fail = pos + 1
                    break
                row = n_rows
                n_rows += 1
                res_idx[row] = n_res - 1
                scope_idx[row] = cur_scope
                item_idx[row] = item_count
                item_count += 1
                ok = True
                if tid_b - tid_a == 16:
                    tid_hi[row] = _be64(buf, tid_a)
                    tid_lo[row] = _be64(buf, tid_a + 8)
                else:
                    tid_hi[row] = 0
                    tid_lo[row] = 0
                    ok = False
                if sid_b - sid_a == 8:
                    sid[row] = _be64(buf, sid_a)
                else:
                    sid[row] = 0
                    ok = False
                if pid_b - pid_a == 8:
                    pid[row] = _be64(buf, pid_a)
                else:
                    pid[row] = 0
                    if pid_b != pid_a:
                        ok = False
                ids_ok[row] = ok
                start_ns[row] = np.int64(t_start)  # >= 2**63 keeps its bits, as `time_column`
                end_ns[row] = np.int64(t_end)
                kind[row] = _as_int8(v_kind)
                status[row] = _as_int8(v_status)
                code, n_str = _intern(buf, name_a, name_b, ht, strs, n_str)
                name[row] = code
            elif t == M_RES_KV:
                if not found and _equal(buf, key_a, key_b, svc_key):
                    found = True
                    if case == 1:
                        fa, fb = str_a, str_b
                    else:  # not a string value: the reference reads string_value == ""
                        fa, fb = 0, 0
            elif t == M_RS and found:
                svc_a[n_res - 1] = fa
                svc_b[n_res - 1] = fb
            if sp == 0:
                break
            sp -= 1
            continue

        field, wt, pos = read_tag(buf, pos, end)
        if pos < 0:
            fail = end + 1
            break
        t = st_type[sp]
        fk = kinds[t, field] if field < width else F_UNKNOWN
        if fk == F_UNKNOWN:
            pos = skip_field(buf, pos, end, wt)
            if pos < 0:
                fail = end + 1
                break
            continue
        if fk == F_VARINT:
            if wt != VARINT:
                fail = pos + 1
                break
            v, pos = read_varint(buf, pos, end)
            if pos < 0:
                fail = end + 1
                break
            if t == M_SPAN:
                if field == 6:
                    v_kind = v
            elif t == M_STATUS:
                if field == 3:
                    v_status = v
            elif t == M_RES_ANY:
                case = field
            continue
        if fk == F_I64:
            if wt != I64:
                fail = pos + 1
                break
            v, pos = read_fixed64(buf, pos, end)
            if pos < 0:
                fail = end + 1
                break
            if t == M_SPAN:
                if field == 7:
                    t_start = v
                elif field == 8:
                    t_end = v
            elif t == M_RES_ANY:
                case = field
            continue
        if fk == F_I32:
            if wt != I32 or pos + 4 > end:
                fail = pos + 1
                break
            pos += 4
            if t == M_RES_ANY:
                case = field
            continue
        if fk in (F_STRING, F_BYTES):
            if wt != LEN:
                fail = pos + 1
                break
            a, b = read_len(buf, pos, end)
            if a < 0:
                fail = end + 1
                break
            if fk == F_STRING and not utf8_valid(buf, a, b):
                fail = a + 1
                break
            pos = b
            if t == M_SPAN:
                if field == 1:
                    tid_a, tid_b = a, b
                elif field == 2:
                    sid_a, sid_b = a, b
                elif field == 4:
                    pid_a, pid_b = a, b
                elif field == 5:
                    name_a, name_b = a, b
            elif t == M_RES_KV:
                if field == 1:
                    key_a, key_b = a, b
            elif t == M_RES_ANY:
                case = field
                if field == 1:
                    str_a, str_b = a, b
            continue
        if fk == F_MESSAGE:
            if wt != LEN:
                fail = pos + 1
                break
            a, b = read_len(buf, pos, end)
            if a < 0:
                fail = end + 1
                break
            if sp + 1 >= MAX_DEPTH:
                fail = pos + 1
                break
            c = child[t, field]
            sp += 1
            st_type[sp] = c
            st_end[sp] = b
            pos = a
            if c == M_RS:
                if n_res >= n_res_cap:
                    fail = pos + 1
                    break
                n_res += 1
                scope_count = 0
                found = False
            elif c == M_SS:
                cur_scope = scope_count
                scope_count += 1
                item_count = 0
            elif c == M_SPAN:
                tid_a = tid_b = sid_a = sid_b = pid_a = pid_b = name_a = name_b = 0
                t_start = t_end = np.uint64(0)
                v_kind = v_status = np.uint64(0)
            elif c == M_RES_KV:
                key_a = key_b = str_a = str_b = 0
                case = 0
            elif t == M_RES_ANY:
                case = field  # array_value / kvlist_value
            continue
        fail = pos + 1  # F_UNSUPPORTED
        break

    if fail == 0:
        for r in range(n_res):  # services after all names: the reference interns them in this order
            if svc_a[r] >= 0:
                code, n_str = _intern(buf, svc_a[r], svc_b[r], ht, strs, n_str)
                svc_b[r] = code
            else:
                svc_b[r] = -1
        for row in range(n_rows):
            service[row] = svc_b[res_idx[row]]
    return fail, n_res, n_rows, n_str


# ---------------------------------------------------------------- Python API
SCHEMA = build_schema()
_SERVICE_NAME = np.frombuffer(b"service.name", dtype=np.uint8)


def decode_spans(data: bytes) -> SpanBatch | None:
    """The batch `SpanBatch.from_request` would build from `data`, or None (use the reference)."""
    if SCHEMA.problem:
        return None
    if not isinstance(data, bytes):
        data = bytes(data)
    buf = as_array(data)
    n_res, n = count_items(buf)
    if n_res < 0:
        return None
    u64 = np.empty((4, n), np.uint64)
    i64 = np.empty((2, n), np.int64)
    i32 = np.empty((5, n), np.int32)
    i8 = np.empty((2, n), np.int8)
    ids_ok = np.empty(n, np.bool_)
    scratch = np.empty(scratch_size(n, n_res), np.int64)
    fail, n_res, n_rows, n_str = walk(
        buf, SCHEMA.kinds, SCHEMA.child, _SERVICE_NAME, u64, i64, i32, i8, ids_ok, scratch, n_res
    )
    if fail or n_rows != n:
        return None
    b = scratch[: 2 * n_str].tolist()
    values = [data[b[k] : b[k + 1]].decode("utf-8") for k in range(0, 2 * n_str, 2)]
    cols = dict(zip(_COLUMNS, (*i32[:3], *u64, *i64, *i8, i32[3], i32[4], ids_ok), strict=True))
    strings = StringTable.from_index({v: k for k, v in enumerate(values)})  # distinct already
    return SpanBatch(None, cols, strings, {"name", "service"}, wire=data, n_resources=n_res)


def scratch_size(n_spans: int, n_res: int) -> int:
    """int64 words `walk` needs: string bounds, resource state, stack, hash table (load <= 1/2)."""
    n_str = n_spans + n_res + 1
    return 2 * n_str + 2 * n_res + 2 * MAX_DEPTH + 2 * max(16, 1 << (2 * n_str - 1).bit_length())


_COLUMNS = (
    "res_idx",
    "scope_idx",
    "item_idx",
    "trace_id_hi",
    "trace_id_lo",
    "span_id",
    "parent_span_id",
    "start_ns",
    "end_ns",
    "kind",
    "status_code",
    "name",
    "service",
    "_ids_ok",
)


def warm_up() -> float:
    """Compile (or load from numba's cache) and run the kernels once; returns the seconds taken."""
    t0 = time.perf_counter()
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value="warm-up"))]
                ),
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes(range(1, 17)),
                                span_id=bytes(range(1, 9)),
                                name="warm-up",
                                kind=Span.SPAN_KIND_INTERNAL,
                                start_time_unix_nano=1,
                                end_time_unix_nano=2,
                                status=Status(code=Status.STATUS_CODE_OK),
                            )
                        ]
                    )
                ],
            )
        ]
    )
    batch = decode_spans(req.SerializeToString())
    if batch is None or len(batch) != 1 or batch.invalid_reasons()[1]:  # compiles that check too
        raise RuntimeError("wire decoder warm-up failed")
    return time.perf_counter() - t0
