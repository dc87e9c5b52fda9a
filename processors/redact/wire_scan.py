"""Wire-bytes prefilter of the redact processor: which items could redaction change at all?

Most telemetry holds no personal data, and then `redact` must cost next to
nothing and leave the batch as it came (wire bytes kept, request not parsed).
`scan_wire` walks the serialized Export request (traces, logs or metrics) once
and visits exactly what the reference (`RedactProcessor`) inspects: attribute
keys and string values of spans, events, links and log records (with nested
arrays and kvlists), status messages and log bodies, and the keys of
resource, scope, data point and exemplar attributes (with nested kvlists).

For each item it answers, conservatively, "could redaction change this?":

* a key the reference would drop (the exact `KeyRules` verdict, looked up in a
  `KeyTable` of keys seen before; a new key is classified in Python and the
  walk repeated once);
* a string longer than `max_value_length` bytes (it may be cut);
* a string meeting a necessary condition of an enabled detector or custom
  pattern (`conditions`, compiled in `textcheck`).

Items with no hit are provably unchanged by the reference; the processor runs
the reference only on flagged items (and on resources and scopes when one of
their keys is dropped). Anything the walk does not expect (malformed bytes,
unexpected wire types, nesting deeper than MAX_DEPTH) makes it give up, and the
reference path decides, with the protobuf library's errors.

Numba's cache keys each kernel on its own file only: after editing `textcheck`,
`keytable` or `gateway/wire/pb.py`, delete `processors/redact/__pycache__/*.nb?`
so the walk is not loaded with the old code of what it calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from gateway.batch import Batch, Signal
from gateway.wire.pb import LEN, as_array, read_len, read_tag, skip_field
from processors.redact import conditions as cd
from processors.redact.keytable import ACT_ALLOW, ACT_DROP, ACT_SCAN, ACT_UNKNOWN, KeyTable, key_action
from processors.redact.patterns import CATEGORIES
from processors.redact.textcheck import text_hit

# ---------------------------------------------------------------- walk
OK, UNSURE = 0, 1
MAX_DEPTH = 256
MAX_UNKNOWN = 4096
SIG_TRACES, SIG_LOGS, SIG_METRICS = 0, 1, 2

# Message frames of the walk; KeyValue and AnyValue are read in place, not as frames.
(
    K_REQ,
    K_RES,
    K_RESOURCE,
    K_SCOPES,
    K_SCOPE,
    K_SPAN,
    K_EVENT,
    K_LINK,
    K_STATUS,
    K_LOG,
    K_METRIC,
    K_NUMBERS,
    K_HISTOGRAMS,
    K_EXP_HISTOGRAMS,
    K_SUMMARIES,
    K_NDP,
    K_HDP,
    K_EDP,
    K_SDP,
    K_EXEMPLAR,
    K_ARRAY_SCAN,
    K_KVLIST_SCAN,
    K_KVLIST_KEYS,
) = range(23)
N_KINDS = 23
# what a length-delimited field is, besides a message frame kind (>= 0)
R_NONE, R_TEXT, R_KV_SCAN, R_KV_KEYS, R_ANY_SCAN, R_ITEM = -1, -2, -3, -4, -5, -6
# item frame kind by signal
ITEM_KIND = np.array([K_SPAN, K_LOG, K_METRIC], np.int64)
# walk state (`st`): current item (-1: resource/scope level), resource-level hit, unknown keys, items seen
S_TARGET, S_RES_HIT, S_UNKNOWN, S_ITEMS = range(4)


def _routes() -> np.ndarray:
    """ROUTE[kind, field]: what a length-delimited field of a frame is (field numbers < 16)."""
    r = np.full((N_KINDS, 16), R_NONE, np.int64)
    r[K_REQ, 1] = K_RES
    r[K_RES, 1], r[K_RES, 2] = K_RESOURCE, K_SCOPES
    r[K_SCOPES, 1], r[K_SCOPES, 2] = K_SCOPE, R_ITEM
    r[K_RESOURCE, 1] = R_KV_KEYS
    r[K_SCOPE, 3] = R_KV_KEYS
    r[K_SPAN, 9], r[K_SPAN, 11], r[K_SPAN, 13], r[K_SPAN, 15] = R_KV_SCAN, K_EVENT, K_LINK, K_STATUS
    r[K_EVENT, 3] = R_KV_SCAN
    r[K_LINK, 4] = R_KV_SCAN
    r[K_STATUS, 2] = R_TEXT
    r[K_LOG, 5], r[K_LOG, 6] = R_ANY_SCAN, R_KV_SCAN
    r[K_METRIC, 5], r[K_METRIC, 7], r[K_METRIC, 9] = K_NUMBERS, K_NUMBERS, K_HISTOGRAMS
    r[K_METRIC, 10], r[K_METRIC, 11] = K_EXP_HISTOGRAMS, K_SUMMARIES
    r[K_NUMBERS, 1], r[K_HISTOGRAMS, 1], r[K_EXP_HISTOGRAMS, 1], r[K_SUMMARIES, 1] = (
        K_NDP,
        K_HDP,
        K_EDP,
        K_SDP,
    )
    r[K_NDP, 7], r[K_NDP, 5] = R_KV_KEYS, K_EXEMPLAR
    r[K_HDP, 9], r[K_HDP, 8] = R_KV_KEYS, K_EXEMPLAR
    r[K_EDP, 1], r[K_EDP, 11] = R_KV_KEYS, K_EXEMPLAR
    r[K_SDP, 7] = R_KV_KEYS
    r[K_EXEMPLAR, 7] = R_KV_KEYS
    r[K_ARRAY_SCAN, 1] = R_ANY_SCAN
    r[K_KVLIST_SCAN, 1] = R_KV_SCAN
    r[K_KVLIST_KEYS, 1] = R_KV_KEYS
    return r


ROUTE = _routes()

FIELDS = {
    # (message, field name): number, for the test that checks them against the descriptors
    ("ResourceSpans", "resource"): 1,
    ("ResourceSpans", "scope_spans"): 2,
    ("ScopeSpans", "scope"): 1,
    ("ScopeSpans", "spans"): 2,
    ("ResourceLogs", "resource"): 1,
    ("ResourceLogs", "scope_logs"): 2,
    ("ScopeLogs", "scope"): 1,
    ("ScopeLogs", "log_records"): 2,
    ("ResourceMetrics", "resource"): 1,
    ("ResourceMetrics", "scope_metrics"): 2,
    ("ScopeMetrics", "scope"): 1,
    ("ScopeMetrics", "metrics"): 2,
    ("Resource", "attributes"): 1,
    ("InstrumentationScope", "attributes"): 3,
    ("Span", "attributes"): 9,
    ("Span", "events"): 11,
    ("Span", "links"): 13,
    ("Span", "status"): 15,
    ("Span.Event", "attributes"): 3,
    ("Span.Link", "attributes"): 4,
    ("Status", "message"): 2,
    ("LogRecord", "body"): 5,
    ("LogRecord", "attributes"): 6,
    ("Metric", "gauge"): 5,
    ("Metric", "sum"): 7,
    ("Metric", "histogram"): 9,
    ("Metric", "exponential_histogram"): 10,
    ("Metric", "summary"): 11,
    ("Gauge", "data_points"): 1,
    ("Sum", "data_points"): 1,
    ("Histogram", "data_points"): 1,
    ("ExponentialHistogram", "data_points"): 1,
    ("Summary", "data_points"): 1,
    ("NumberDataPoint", "attributes"): 7,
    ("NumberDataPoint", "exemplars"): 5,
    ("HistogramDataPoint", "attributes"): 9,
    ("HistogramDataPoint", "exemplars"): 8,
    ("ExponentialHistogramDataPoint", "attributes"): 1,
    ("ExponentialHistogramDataPoint", "exemplars"): 11,
    ("SummaryDataPoint", "attributes"): 7,
    ("Exemplar", "filtered_attributes"): 7,
    ("KeyValue", "key"): 1,
    ("KeyValue", "value"): 2,
    ("AnyValue", "string_value"): 1,
    ("AnyValue", "array_value"): 5,
    ("AnyValue", "kvlist_value"): 6,
    ("ArrayValue", "values"): 1,
    ("KeyValueList", "values"): 1,
}


@njit(cache=True, nogil=True, inline="always")
def _hit(st, item_flags):  # pragma: no cover - compiled
    if st[S_TARGET] < 0:
        st[S_RES_HIT] = 1
    else:
        item_flags[st[S_TARGET]] = 1


@njit(cache=True, nogil=True, inline="always")
def _text(buf, a, b, u8, i32, params):  # pragma: no cover - compiled
    """text_hit, without the call for the many strings too short for anything (and not cut)."""
    n = b - a
    if n < params[cd.P_MIN_LEN] and params[cd.P_CUSTOM] == 0 and not 0 < params[cd.P_MAX_LEN] < n:
        return False
    return text_hit(buf, a, b, u8, i32, params)


@njit(cache=True, nogil=True, inline="always")
def _push(kind, pos, end, sp, k, a, b):  # pragma: no cover - compiled
    """Push a frame; -1 when the nesting is deeper than MAX_DEPTH."""
    if sp >= MAX_DEPTH:
        return -1
    kind[sp] = k
    pos[sp] = a
    end[sp] = b
    return sp + 1


@njit(cache=True, nogil=True, inline="always")
def _any(buf, a, b, scan, kind, pos, end, sp, st, item_flags, u8, i32, params):  # pragma: no cover - compiled
    """An AnyValue: check its string (scan), push its array (scan) and kvlist; new sp, -1 to give up."""
    q = a
    while q < b:
        field, wt, q = read_tag(buf, q, b)
        if q < 0:
            return -1
        if field == 6 or (scan and (field == 1 or field == 5)):
            if wt != LEN:
                return -1
            x, y = read_len(buf, q, b)
            if x < 0:
                return -1
            q = y
            if field == 1:
                t = st[S_TARGET]
                if (t < 0 or item_flags[t] == 0) and _text(buf, x, y, u8, i32, params):
                    _hit(st, item_flags)
            elif field == 5:
                sp = _push(kind, pos, end, sp, K_ARRAY_SCAN, x, y)
            else:
                sp = _push(kind, pos, end, sp, K_KVLIST_SCAN if scan else K_KVLIST_KEYS, x, y)
            if sp < 0:
                return -1
        else:
            q = skip_field(buf, q, b, wt)
            if q < 0:
                return -1
    return sp


@njit(cache=True, nogil=True, inline="always")
def _kv(  # pragma: no cover - compiled
    buf, a, b, scan, kind, pos, end, sp, st, item_flags, unknown, k_hash, k_meta, k_buf, u8, i32, params
):
    """A KeyValue: the key's verdict (the last key field wins, as in protobuf), then its value(s)."""
    ka = kb = va = vb = a
    n_values = 0
    q = a
    while q < b:
        field, wt, q = read_tag(buf, q, b)
        if q < 0:
            return -1
        if field == 1 or field == 2:
            if wt != LEN:
                return -1
            x, y = read_len(buf, q, b)
            if x < 0:
                return -1
            q = y
            if field == 1:
                ka, kb = x, y
            else:
                va, vb = x, y
                n_values += 1
        else:
            q = skip_field(buf, q, b, wt)
            if q < 0:
                return -1
    act = key_action(buf, ka, kb, k_hash, k_meta, k_buf)
    if act == ACT_UNKNOWN:
        n = st[S_UNKNOWN]
        if n < unknown.shape[0]:
            unknown[n, 0] = ka
            unknown[n, 1] = kb
            st[S_UNKNOWN] = n + 1
    if act in (ACT_DROP, ACT_UNKNOWN):
        _hit(st, item_flags)
    if act in (ACT_ALLOW, ACT_DROP) or n_values == 0:
        return sp
    if n_values == 1:
        return _any(buf, va, vb, scan, kind, pos, end, sp, st, item_flags, u8, i32, params)
    q = a  # several values (merged by protobuf): each one
    while q < b:
        field, wt, q = read_tag(buf, q, b)
        if field == 2:
            x, y = read_len(buf, q, b)
            q = y
            sp = _any(buf, x, y, scan, kind, pos, end, sp, st, item_flags, u8, i32, params)
            if sp < 0:
                return -1
        else:
            q = skip_field(buf, q, b, wt)
    return sp


@njit(cache=True, nogil=True)
def scan_wire(buf, signal, item_flags, unknown, keys, tables):  # pragma: no cover - compiled
    """Walk an Export request; returns (status, items seen, unknown keys recorded, resource-level hit).

    `item_flags[k]` is set to 1 for each item (in request order) redaction could change;
    `unknown[:n]` receives (start, stop) of keys the table does not know (treated as dropped).
    `keys` is `KeyTable.args()`, `tables` `Tables.kernel_args()`.
    """
    n_items = item_flags.shape[0]
    kh, km, kbuf = keys
    u8, i32, prm = tables
    kind = np.empty(MAX_DEPTH, np.int64)
    pos = np.empty(MAX_DEPTH, np.int64)
    end = np.empty(MAX_DEPTH, np.int64)
    st = np.zeros(4, np.int64)
    st[S_TARGET] = -1
    item_kind = ITEM_KIND[signal]
    sp = _push(kind, pos, end, 0, K_REQ, 0, buf.shape[0])
    while sp > 0:
        top = sp - 1
        p = pos[top]
        stop = end[top]
        if p >= stop:
            sp -= 1
            continue
        field, wt, p = read_tag(buf, p, stop)
        if p < 0:
            break
        route = ROUTE[kind[top], field] if field < 16 else R_NONE
        if wt != LEN:
            if route != R_NONE:
                break  # not what the schema says: let protobuf judge
            p = skip_field(buf, p, stop, wt)
            if p < 0:
                break
            pos[top] = p
            continue
        a, b = read_len(buf, p, stop)
        if a < 0:
            break
        pos[top] = b
        if route == R_NONE:
            continue
        if route in (R_KV_SCAN, R_KV_KEYS):
            scan = route == R_KV_SCAN
            sp = _kv(buf, a, b, scan, kind, pos, end, sp, st, item_flags, unknown, kh, km, kbuf, u8, i32, prm)
        elif route == R_TEXT:
            t = st[S_TARGET]
            if (t < 0 or item_flags[t] == 0) and _text(buf, a, b, u8, i32, prm):
                _hit(st, item_flags)
        elif route == R_ANY_SCAN:
            sp = _any(buf, a, b, True, kind, pos, end, sp, st, item_flags, u8, i32, prm)
        else:
            child = route
            if route == R_ITEM:
                if st[S_ITEMS] >= n_items:
                    break
                child = item_kind
                st[S_TARGET] = st[S_ITEMS]
                st[S_ITEMS] += 1
            elif route in (K_RESOURCE, K_SCOPE):
                st[S_TARGET] = -1
            sp = _push(kind, pos, end, sp, child, a, b)
        if sp < 0:
            break
    status = OK if sp == 0 else UNSURE
    return status, st[S_ITEMS], st[S_UNKNOWN], st[S_RES_HIT] != 0


# ---------------------------------------------------------------- driver
_SIGNALS = {Signal.TRACES: SIG_TRACES, Signal.LOGS: SIG_LOGS, Signal.METRICS: SIG_METRICS}


@dataclass(frozen=True)
class Plan:
    """What the reference must still look at: resources/scopes, and these rows (items)."""

    resources: bool
    rows: np.ndarray  # int64, ascending

    @property
    def clean(self) -> bool:
        return not self.resources and not self.rows.shape[0]


class WireScanner:
    """Runs the walk for one redact config; `plan(batch)` is None when only the reference can tell."""

    def __init__(self, tables: cd.Tables, classify: Callable[[str], int]) -> None:
        self.tables = tables
        self._args = tables.kernel_args()
        self.keys = KeyTable(classify)
        self._unknown = np.zeros((MAX_UNKNOWN, 2), np.int64)

    def plan(self, batch: Batch) -> Plan | None:
        wire = batch.wire
        signal = _SIGNALS.get(batch.signal)
        if wire is None or signal is None:
            return None
        if not isinstance(wire, bytes):  # the kernel is compiled for read-only bytes
            wire = bytes(wire)
        buf = as_array(wire)
        n = len(batch)
        for attempt in range(2):
            flags = np.zeros(n, np.uint8)
            status, items, n_unknown, res_hit = scan_wire(
                buf, signal, flags, self._unknown, self.keys.args(), self._args
            )
            if status != OK or items != n:
                return None
            if not n_unknown or attempt:
                break
            for a, b in self._unknown[:n_unknown].tolist():
                if not self.keys.add(wire[a:b]):
                    return None
        return Plan(bool(res_hit), np.flatnonzero(flags))


_warm_lock = threading.Lock()
_warm_seconds: float | None = None


def warm_up() -> float:
    """Compile (or load from the numba cache) the kernels once per process; seconds it took."""
    global _warm_seconds
    with _warm_lock:
        if _warm_seconds is None:
            t0 = time.perf_counter()
            tables = cd.build(CATEGORIES, [], 1 << 20)
            if tables is not None:
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                    ExportTraceServiceRequest,
                )

                req = ExportTraceServiceRequest()
                sp = req.resource_spans.add().scope_spans.add().spans.add(name="warm")
                sp.attributes.add(key="k").value.string_value = "warm-up text 4111 1111 1111 1111 a@b.co"
                keys = KeyTable(lambda _key: ACT_SCAN)
                keys.add(b"k")
                scan_wire(
                    as_array(req.SerializeToString()),
                    SIG_TRACES,
                    np.zeros(1, np.uint8),
                    np.zeros((1, 2), np.int64),
                    keys.args(),
                    tables.kernel_args(),
                )
            _warm_seconds = time.perf_counter() - t0
        return _warm_seconds
