"""Fast path of `extract`: the LLM facts of a span batch, from its protobuf bytes.

Three steps, none of them per span in Python:
1. `wire_scan.scan` (numba) reads, per span, the values of the keys the
   extractor reads, and which distinct strings occur and what for;
2. here, once per distinct string, what it means, with the very helpers the
   reference uses (`_number`, `_json_field`, `_stream_flag`, lower-casing, the
   operation tables, the rate-limit regex), as pool ids and numbers (`props`);
3. `wire_resolve.resolve` (numba) applies the precedence rules per span.
Finish reasons held in JSON strings are parsed once per distinct string; spans
the scan cannot vouch for are parsed alone with `Span.FromString` and go
through `span_facts`, the reference logic. Strings enter the batch's table in
the reference's order, so both paths give the same codes.

`extract_wire` returns None when the bytes are malformed or are not the
batch's spans; `extract` then takes the reference path.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import SpanBatch
from processors.genai.extract import (
    _RATE_LIMIT_RE,
    FLOAT_COLUMNS,
    Extracted,
    _finish_reasons,
    _json_field,
    _number,
    _stream_flag,
    latency_of,
    row_strings,
    span_facts,
)
from processors.genai.families import LLM_OPERATIONS, OPENINFERENCE_KINDS, REQUEST_TYPES, TRUNCATION_REASONS
from processors.genai.wire_resolve import (
    CHAINS,
    FLOAT_ROWS,
    PROP_DEFAULTS,
    R_ID,
    R_KIND,
    R_LEN,
    R_LIMITED,
    R_LOWER,
    R_MODEL,
    R_OPNAME,
    R_PSTREAM,
    R_RTYPE,
    R_STREAM,
    R_TEXT,
    SRC_JSON,
    SRC_MESSAGES,
    STRING_ROWS,
    first_use,
    resolve,
)
from processors.genai.wire_scan import (
    NEED_ID,
    NEED_KIND,
    NEED_LIMITED,
    NEED_LOWER,
    NEED_NUMBER,
    NEED_OPNAME,
    NEED_PARAMS,
    NEED_RTYPE,
    NEED_STREAM,
    SLOT,
    Scan,
    scan_wire,
)

PARAMS = "llm.invocation_parameters"
_NON_STRING_VALUE = np.array([False, False, False, True, True, True, True, True])  # by AnyValue kind
_STREAM_WORDS = {"true": 1, "false": 0}


class _Pool:
    """Output strings by first use; they enter the batch's table at the end, in the reference's order."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def id(self, value: str | None) -> int:
        if value is None:
            return -1
        i = self._index.get(value)
        if i is None:
            i = self._index[value] = len(self.values)
            self.values.append(value)
        return i


def _json_model(text: str, pool: _Pool) -> int:
    """-2: no truthy "model" (the next key decides); -1: not a string; else its pool id."""
    model = _json_field(text, "model")
    if not model:
        return -2
    return pool.id(model) if isinstance(model, str) else -1


def _properties(wire: bytes, scan: Scan, pool: _Pool) -> tuple[np.ndarray, np.ndarray]:
    """What each distinct string means (rows R_* of `props`, numbers in `pnum`), for what it is read for."""
    lo, hi = scan.str_lo.tolist(), scan.str_hi.tolist()
    n = len(lo)
    props = np.repeat(PROP_DEFAULTS[:, None], n + 1, axis=1)
    props[R_LEN, :n] = scan.str_hi - scan.str_lo
    pnum = np.full(n + 1, np.nan)
    needs = scan.str_need.tolist()
    for s in range(n):
        need = needs[s]
        t = wire[lo[s] : hi[s]].decode()
        if need & NEED_NUMBER:
            pnum[s] = _number(t)
        if need & NEED_ID:
            props[R_ID, s] = pool.id(t or None)
            props[R_TEXT, s] = pool.id(t)
        if need & NEED_LOWER:
            props[R_LOWER, s] = pool.id(t.lower() if t else None)
        if need & NEED_STREAM:
            props[R_STREAM, s] = _STREAM_WORDS.get(t.lower(), -1)
        if need & NEED_KIND:
            props[R_KIND, s] = pool.id(OPENINFERENCE_KINDS.get(t.upper()))
        if need & NEED_OPNAME:
            props[R_OPNAME, s] = pool.id(LLM_OPERATIONS.get(t.lower()))
        if need & NEED_RTYPE:
            props[R_RTYPE, s] = pool.id(REQUEST_TYPES.get(t.lower(), t.lower()))
        if need & NEED_PARAMS:
            props[R_MODEL, s] = _json_model(t, pool)
            props[R_PSTREAM, s] = _stream_flag({PARAMS: t})
        if need & NEED_LIMITED:
            props[R_LIMITED, s] = bool(_RATE_LIMIT_RE.search(t))
    return props, pnum


def _json_reasons(
    wire: bytes, scan: Scan, source: np.ndarray, pool: _Pool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row, pool id) pairs of the reasons held in JSON strings, parsed once per distinct string."""
    parts = []
    for src, key in ((SRC_JSON, "gen_ai.response.finish_reasons"), (SRC_MESSAGES, "gen_ai.output.messages")):
        rows = np.flatnonzero(source == src)
        if not rows.shape[0]:
            continue
        uniq, inverse = np.unique(scan.sid[rows, SLOT[key]], return_inverse=True)
        lists = [
            [pool.id(r) for r in _finish_reasons({key: wire[scan.str_lo[s] : scan.str_hi[s]].decode()}, {})]
            for s in uniq.tolist()
        ]
        lens = np.array([len(x) for x in lists], dtype=np.int64)[inverse.reshape(-1)]
        flat = np.array([p for x in lists for p in x], dtype=np.int64)
        starts = (np.cumsum([len(x) for x in lists]) - [len(x) for x in lists]).astype(np.int64)
        within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        parts.append((np.repeat(rows, lens), flat[np.repeat(starts[inverse.reshape(-1)], lens) + within]))
    return parts


def _from_reference(
    batch: SpanBatch, wire: bytes, scan: Scan, rows: np.ndarray, ex: Extracted, ids: np.ndarray, pool: _Pool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows the scan left to the reference: each span parsed alone; returns its reason pairs."""
    status = batch.columns["status_code"]
    latency = latency_of(batch)
    pair_rows: list[int] = []
    pair_ids: list[int] = []
    for row in rows.tolist():
        facts = span_facts(
            Span.FromString(wire[int(scan.span_lo[row]) : int(scan.span_hi[row])]), int(status[row])
        )
        if facts is None:
            continue
        ex.llm[row] = True
        ex.floats["latency_s"][row] = latency[row]
        for name in FLOAT_COLUMNS:
            if name != "latency_s":
                ex.floats[name][row] = getattr(facts, name)
        ex.stream[row] = facts.stream
        ex.error[row] = facts.error
        ex.rate_limited[row] = facts.rate_limited
        ids[:, row] = [pool.id(v) for v in row_strings(facts)]
        pair_rows.extend([row] * len(facts.reasons))
        pair_ids.extend(pool.id(r) for r in facts.reasons)
    return np.array(pair_rows, dtype=np.int64), np.array(pair_ids, dtype=np.int64)


def extract_wire(batch: SpanBatch) -> Extracted | None:
    """What `extract_reference` returns (string table included), from `batch.wire`; None when the bytes
    are malformed or do not hold the batch's spans."""
    if batch.wire is None:
        return None
    wire = bytes(batch.wire)
    scan = scan_wire(wire, len(batch))
    if scan.status != 0 or not np.array_equal(scan.start_ns.view(np.int64), batch.columns["start_ns"]):
        return None
    try:
        return _assemble(batch, wire, scan)
    except UnicodeDecodeError:  # the receiver validated UTF-8; bytes from elsewhere may not be
        return None


def _assemble(batch: SpanBatch, wire: bytes, scan: Scan) -> Extracted:
    pool = _Pool()
    props, pnum = _properties(wire, scan, pool)
    consts = np.array([pool.id("chat"), pool.id("embeddings"), pool.id("_OTHER")], dtype=np.int64)
    odd = scan.odd
    for key in ("llm.finish_reason", "error.type"):  # the reference prints truthy non-strings
        k = SLOT[key]
        if scan.present[k]:
            odd = odd | (_NON_STRING_VALUE[scan.kind[:, k]] & (scan.num[:, k] != 0))
    ix_row, ix_idx, ix_sid = scan.ix_row, scan.ix_idx, scan.ix_sid
    if ix_row.shape[0]:
        order = np.lexsort((np.arange(ix_row.shape[0]), ix_idx, ix_row))
        ix_row, ix_idx, ix_sid = ix_row[order], ix_idx[order], ix_sid[order]
    llm, ids, floats, stream, error, limited, source, pair_rows, pair_ids = resolve(
        scan.kind,
        scan.num,
        scan.sid,
        batch.columns["status_code"],
        odd,
        scan.exc_type,
        scan.exc_msg,
        scan.status_msg,
        scan.chunk_ttft,
        scan.fin_off,
        scan.fin_len,
        scan.fin_sid,
        ix_row,
        ix_idx,
        ix_sid,
        props,
        pnum,
        CHAINS,
        consts,
    )
    f = dict(zip(FLOAT_ROWS, floats, strict=True))
    f["latency_s"] = np.where(llm, latency_of(batch), np.nan)
    ex = Extracted(llm, f, {}, stream, error, limited, np.zeros(llm.shape[0], dtype=np.bool_))
    parts = _json_reasons(wire, scan, source, pool)
    odd_rows = np.flatnonzero(odd)
    if odd_rows.shape[0]:
        parts.append(_from_reference(batch, wire, scan, odd_rows, ex, ids, pool))
    if parts:
        pair_rows = np.concatenate([pair_rows] + [p[0] for p in parts])
        order = np.argsort(pair_rows, kind="stable")
        pair_rows, pair_ids = pair_rows[order], np.concatenate([pair_ids] + [p[1] for p in parts])[order]
    if pair_rows.shape[0]:
        first = np.ones(pair_rows.shape[0], dtype=np.bool_)
        first[1:] = pair_rows[1:] != pair_rows[:-1]
        ids[STRING_ROWS.index("finish_reason"), pair_rows[first]] = pair_ids[first]
        truncating = np.array([v in TRUNCATION_REASONS for v in pool.values], dtype=np.bool_)
        ex.truncated[pair_rows[truncating[pair_ids]]] = True
    code = np.full(len(pool.values) + 1, -1, dtype=np.int32)  # code[-1] stays -1 for missing
    table = batch.strings
    for p in first_use(ids, ex.llm, pair_ids, len(pool.values)).tolist():
        code[p] = table.intern(pool.values[p])
    ex.strings = {name: code[ids[j]] for j, name in enumerate(STRING_ROWS)}
    ex.finish_rows = pair_rows
    ex.finish_codes = code[pair_ids]
    return ex


_warm_lock = threading.Lock()
_warm_seconds: float | None = None


def warm_up() -> float:
    """Compile or load the kernels (with the production argument types) once per process; seconds taken."""
    global _warm_seconds
    with _warm_lock:
        if _warm_seconds is None:
            t0 = time.perf_counter()
            req = ExportTraceServiceRequest()
            span = req.resource_spans.add().scope_spans.add().spans.add()
            span.start_time_unix_nano = 1
            kv = span.attributes.add()
            kv.key, kv.value.string_value = "gen_ai.system", "openai"
            wire = req.SerializeToString()
            assert extract_wire(SpanBatch.from_request(req, wire=wire)) is not None
            _warm_seconds = time.perf_counter() - t0
        return _warm_seconds
