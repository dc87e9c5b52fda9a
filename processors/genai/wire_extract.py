"""Fast path of `extract`: the LLM facts of a span batch, from its protobuf bytes.

Three steps, none of them per span in Python:
1. `wire_scan.scan` (numba) reads, per span, the values of the keys the
   extractor reads, and which distinct strings occur and what for;
2. here, once per distinct string, what it means, with the very helpers the
   reference uses (`_number`, `_json_field`, `_stream_flag`, lower-casing, the
   operation tables, the rate-limit regex), as pool ids and numbers (`props`);
3. `wire_resolve.resolve` (numba) applies the precedence rules per span and,
   in the same call, `finish` (first reason, truncation, latency, the order
   the reference interns strings in).
Finish reasons held in JSON strings are parsed once per distinct string; spans
the scan cannot vouch for are parsed alone with `Span.FromString` and go
through `span_facts`, the reference logic (then `finish` runs after them).
Strings enter the batch's table in the reference's order, so both paths give
the same codes.

`resolve_wire` returns that as pool ids plus the pool-id → code map (what the
processor's accounting kernels take); `extract_wire` turns it into `Extracted`.
Both return None when the bytes are malformed or are not the batch's spans;
the reference path then answers.
"""

from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

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
    row_strings,
    span_facts,
)
from processors.genai.families import LLM_OPERATIONS, OPENINFERENCE_KINDS, REQUEST_TYPES, TRUNCATION_REASONS
from processors.genai.wire_account import account, group
from processors.genai.wire_resolve import (
    C_CHAT,
    C_EMBEDDINGS,
    C_OTHER,
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
    finish,
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
_STREAM_WORDS = {"true": 1, "false": 0}
_CONST_STRINGS = ("chat", "embeddings", "_OTHER")  # in wire_resolve's C_CHAT, C_EMBEDDINGS, C_OTHER order
_CONST_INDEX = {v: i for i, v in enumerate(_CONST_STRINGS)}
CONSTS = np.arange(len(_CONST_STRINGS), dtype=np.int64)
if (C_CHAT, C_EMBEDDINGS, C_OTHER) != (0, 1, 2):
    raise ImportError("the pool's first strings must follow wire_resolve's C_* positions")
_DEFAULTS = PROP_DEFAULTS[:R_LEN].tolist()  # a column of `props` but its length, which comes last
_EMPTY_COLUMN = PROP_DEFAULTS.tolist()  # the column of "" (no string)
if len(PROP_DEFAULTS) - 1 != R_LEN:
    raise ImportError("R_LEN must be the last row of props")
# Keys whose truthy non-string values the reference prints (as reasons, error types): spans with them
# go to the reference.
_PRINTED = np.array([SLOT["llm.finish_reason"], SLOT["error.type"]], dtype=np.int64)


class _Pool:
    """Output strings by first use; they enter the batch's table at the end, in the reference's order.

    The strings `resolve` names itself come first (ids 0, 1, 2: `CONSTS`); an id only reserves a
    string, it enters the table when a call uses it."""

    def __init__(self) -> None:
        self.values: list[str] = list(_CONST_STRINGS)
        self._index: dict[str, int] = dict(_CONST_INDEX)

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
    """What each distinct string means (rows R_* of `props`, numbers in `pnum`), for what it is read for.

    Built as Python lists, one column per string, and converted once: per-element numpy writes cost
    more than the work itself."""
    lo, hi, needs = scan.str_lo.tolist(), scan.str_hi.tolist(), scan.str_need.tolist()
    pid = pool.id
    columns = []
    numbers = []
    for s in range(len(lo)):
        need = needs[s]
        t = wire[lo[s] : hi[s]].decode()
        col = [*_DEFAULTS, hi[s] - lo[s]]
        numbers.append(_number(t) if need & NEED_NUMBER else math.nan)
        if need & NEED_ID:
            col[R_TEXT] = pid(t)
            col[R_ID] = col[R_TEXT] if t else -1  # pid(t or None)
        if need & NEED_LOWER:
            col[R_LOWER] = pid(t.lower() if t else None)
        if need & NEED_STREAM:
            col[R_STREAM] = _STREAM_WORDS.get(t.lower(), -1)
        if need & NEED_KIND:
            col[R_KIND] = pid(OPENINFERENCE_KINDS.get(t.upper()))
        if need & NEED_OPNAME:
            col[R_OPNAME] = pid(LLM_OPERATIONS.get(t.lower()))
        if need & NEED_RTYPE:
            col[R_RTYPE] = pid(REQUEST_TYPES.get(t.lower(), t.lower()))
        if need & NEED_PARAMS:
            col[R_MODEL] = _json_model(t, pool)
            col[R_PSTREAM] = _stream_flag({PARAMS: t})
        if need & NEED_LIMITED:
            col[R_LIMITED] = int(bool(_RATE_LIMIT_RE.search(t)))
        columns.append(col)
    columns.append(_EMPTY_COLUMN)
    numbers.append(math.nan)
    props = np.array(columns, dtype=np.int64).T.copy()  # C order: the kernel's argument type
    return props, np.array(numbers, dtype=np.float64)


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
    """Rows the scan left to the reference: each span parsed alone; returns its reason pairs.
    (Latency is `finish`'s, for every LLM row.)"""
    status = batch.columns["status_code"]
    pair_rows: list[int] = []
    pair_ids: list[int] = []
    for row in rows.tolist():
        facts = span_facts(
            Span.FromString(wire[int(scan.span_lo[row]) : int(scan.span_hi[row])]), int(status[row])
        )
        if facts is None:
            continue
        ex.llm[row] = True
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


class Resolved(NamedTuple):
    """The wire path's answer before string codes become columns: `ex` has every column but the
    strings and reasons; `ids` [6, n] holds pool ids (STRING_ROWS order), `code` maps a pool id to
    the batch's string code (and -1 to -1); `floats` [6, n] backs ex.floats (FLOAT_ROWS order)."""

    ex: Extracted
    ids: np.ndarray
    floats: np.ndarray
    code: np.ndarray
    pair_rows: np.ndarray
    pair_ids: np.ndarray


def resolve_wire(batch: SpanBatch) -> Resolved | None:
    """What `extract_reference` finds, from `batch.wire`, with strings interned into the batch's table;
    None when the bytes are malformed or do not hold the batch's spans."""
    if batch.wire is None:
        return None
    wire = bytes(batch.wire)
    scan = scan_wire(wire, len(batch), batch.columns["start_ns"])
    if scan.status != 0:  # malformed, or not the batch's spans (count, start times)
        return None
    try:
        return _assemble(batch, wire, scan)
    except UnicodeDecodeError:  # the receiver validated UTF-8; bytes from elsewhere may not be
        return None


def extract_wire(batch: SpanBatch) -> Extracted | None:
    """What `extract_reference` returns (string table included), from `batch.wire`; None when the bytes
    are malformed or do not hold the batch's spans."""
    res = resolve_wire(batch)
    if res is None:
        return None
    ex = res.ex
    ex.strings = {name: res.code[res.ids[j]] for j, name in enumerate(STRING_ROWS)}
    ex.finish_rows = res.pair_rows
    ex.finish_codes = res.code[res.pair_ids]
    return ex


def _assemble(batch: SpanBatch, wire: bytes, scan: Scan) -> Resolved:
    pool = _Pool()
    props, pnum = _properties(wire, scan, pool)
    ix_row, ix_idx, ix_sid = scan.ix_row, scan.ix_idx, scan.ix_sid
    if ix_row.shape[0]:
        order = np.lexsort((np.arange(ix_row.shape[0]), ix_idx, ix_row))
        ix_row, ix_idx, ix_sid = ix_row[order], ix_idx[order], ix_sid[order]
    c = batch.columns
    start_ns, end_ns = c["start_ns"], c["end_ns"]
    odd, llm, ids, floats, stream, error, limited, source, pair_rows, pair_ids, python, trunc, lat, first = (
        resolve(
            scan.kind,
            scan.num,
            scan.sid,
            c["status_code"],
            scan.odd,
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
            CONSTS,
            _PRINTED,
            _truncating(pool),
            start_ns,
            end_ns,
        )
    )
    f = dict(zip(FLOAT_ROWS, floats, strict=True))
    ex = Extracted(llm, f, {}, stream, error, limited, trunc)
    if python:  # rows for the reference, reasons held in JSON: then `finish` once they are in
        in_json = (source == SRC_JSON) | (source == SRC_MESSAGES)
        parts = _json_reasons(wire, scan, source, pool) if in_json.any() else []
        if odd.any():
            parts.append(_from_reference(batch, wire, scan, np.flatnonzero(odd), ex, ids, pool))
        if parts:
            pair_rows = np.concatenate([pair_rows] + [p[0] for p in parts])
            order = np.argsort(pair_rows, kind="stable")
            pair_rows, pair_ids = pair_rows[order], np.concatenate([pair_ids] + [p[1] for p in parts])[order]
        trunc, lat, first = finish(ids, llm, pair_rows, pair_ids, _truncating(pool), start_ns, end_ns)
    ex.truncated, f["latency_s"] = trunc, lat
    code = np.full(len(pool.values) + 1, -1, dtype=np.int32)  # code[-1] stays -1 for missing
    intern, values = batch.strings.intern, pool.values
    order = first.tolist()
    code[order] = [intern(values[p]) for p in order]
    return Resolved(ex, ids, floats, code, pair_rows, pair_ids)


def _truncating(pool: _Pool) -> np.ndarray:
    return np.array([v in TRUNCATION_REASONS for v in pool.values], dtype=np.bool_)


_warm_lock = threading.Lock()
_warm_seconds: float | None = None


def warm_up() -> float:
    """Compile or load the kernels (with the production argument types) once per process, the
    processor's accounting kernels included; seconds taken."""
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
            batch = SpanBatch.from_request(req, wire=wire)
            res = resolve_wire(batch)
            assert res is not None
            _warm_accounting(res, batch.columns["service"])
            _warm_seconds = time.perf_counter() - t0
        return _warm_seconds


def _warm_accounting(res: Resolved, service: np.ndarray) -> None:
    """The processor's kernels (`wire_account`) on `res`, with stand-in metric arrays of the real types."""
    ex = res.ex
    _, rows, price_of, price_keys, label_of, labels = group(res.ids, ex.llm, res.code, service)
    counts, sums = (np.zeros((1, 2), dtype=np.int64),) * 4, (np.zeros(1),) * 4
    account(
        res.floats,
        ex.floats["latency_s"],
        rows,
        price_of,
        np.full(price_keys.shape[0], -1, dtype=np.int64),
        np.zeros((4, 1)),
        np.zeros(4),
        label_of,
        np.zeros(labels.shape[0], dtype=np.int64),
        -1,
        ex.error,
        ex.rate_limited,
        res.pair_rows,
        res.code[res.pair_ids],
        counts,
        sums,
        (np.ones(1),) * 4,
        np.zeros((1, 3), dtype=np.int64),
        np.zeros(1),
    )
