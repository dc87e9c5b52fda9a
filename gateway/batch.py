"""The one data model: a columnar batch over an OTLP Export request.

A batch keeps the original protobuf request (so data can be forwarded unchanged)
and, beside it, one row per item (span, metric, log record) as fixed-width numpy
columns plus a per-batch string dictionary. Processors read and add columns;
numba kernels take the arrays directly. Every row knows where its item lives in
the request (resource index, scope index, item index), which is all `take` and
`concat` need to keep columns and request in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"
    ANOMALIES = "anomalies"  # alerts produced by detection (gateway.anomaly), not an OTLP signal


OTLP_SIGNALS = frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS})


class StringTable:
    """Interned strings for one batch; columns hold int32 indices, -1 means missing."""

    __slots__ = ("_index", "values")

    def __init__(self, values: Sequence[str] = ()) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}
        for v in values:
            self.intern(v)

    @classmethod
    def from_index(cls, index: dict[str, int]) -> StringTable:
        """A table over `index` (value -> code, codes 0.. in insertion order), which it takes over."""
        table = cls()
        table._index = index
        table.values = list(index)
        return table

    def intern(self, value: str) -> int:
        idx = self._index.get(value)
        if idx is None:
            idx = len(self.values)
            self.values.append(value)
            self._index[value] = idx
        return idx

    def lookup(self, value: str) -> int:
        """Index of `value`, or -1 when the batch never saw it."""
        return self._index.get(value, -1)

    def decode(self, codes: np.ndarray) -> list[str | None]:
        return [self.values[c] if c >= 0 else None for c in codes.tolist()]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Layout:
    """Where items sit inside an Export request of one signal."""

    signal: Signal
    request_cls: type
    resource_field: str
    scope_field: str
    item_field: str


TRACES_LAYOUT = Layout(Signal.TRACES, ExportTraceServiceRequest, "resource_spans", "scope_spans", "spans")
METRICS_LAYOUT = Layout(
    Signal.METRICS, ExportMetricsServiceRequest, "resource_metrics", "scope_metrics", "metrics"
)
LOGS_LAYOUT = Layout(Signal.LOGS, ExportLogsServiceRequest, "resource_logs", "scope_logs", "log_records")

# Row-location columns present in every batch.
LOC_COLUMNS = ("res_idx", "scope_idx", "item_idx")
_EMPTY_I32 = np.zeros(0, dtype=np.int32)


def service_name_of(resource: Any) -> str | None:
    for kv in resource.attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value)
    return None


class Batch:
    """Columns + string table + the OTLP request they describe.

    The request may be held only as its wire bytes (`wire`, e.g. from the fast decoder in
    gateway.wire.traces): `request` parses them on first access. Hot paths that must not parse
    use `resource_count`, `copy`, `concat` and the columns, which work on the bytes.
    """

    layout: ClassVar[Layout]

    def __init__(
        self,
        request: Any,
        columns: dict[str, np.ndarray],
        strings: StringTable | None = None,
        string_columns: set[str] | None = None,
        wire: bytes | None = None,
        _nbytes: int | None = None,
        n_resources: int | None = None,
        wire_parts: Sequence[bytes] | None = None,
    ) -> None:
        if request is None and wire is None and not wire_parts:
            raise ValueError("a batch needs its request or the request's wire bytes")
        self._request = request
        self.columns = columns
        self.strings = strings if strings is not None else StringTable()
        self.string_columns = string_columns if string_columns is not None else set()
        # serialized request when unchanged since receipt; after `concat`, possibly still the
        # requests' bytes side by side (`_parts`), joined only if someone reads `wire`
        self._wire = wire
        self._parts: tuple[bytes, ...] | None = None
        if wire is None and wire_parts:
            if len(wire_parts) == 1:
                self._wire = wire_parts[0]
            else:
                self._parts = tuple(wire_parts)
        self._nbytes = _nbytes
        self._n_resources = n_resources  # used only while the request is not parsed

    def __repr__(self) -> str:
        state = "parsed" if self._request is not None else "wire only"
        return f"{type(self).__name__}({len(self)} rows, {self.resource_count} resources, {state})"

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_request(cls, request: Any, wire: bytes | None = None) -> Batch:
        raise NotImplementedError

    @classmethod
    def empty(cls) -> Batch:
        return cls.from_request(cls.layout.request_cls())

    # ---- the request ----------------------------------------------------------
    @property
    def wire(self) -> bytes | None:
        """The serialized request while it is unchanged since receipt (None once modified)."""
        if self._parts is not None:
            self._wire, self._parts = b"".join(self._parts), None
        return self._wire

    @wire.setter
    def wire(self, value: bytes | None) -> None:
        self._wire, self._parts = value, None

    def wire_chunks(self) -> tuple[bytes, ...] | None:
        """`wire` as pieces whose concatenation it is, without joining them (None: no wire)."""
        if self._parts is not None:
            return self._parts
        return None if self._wire is None else (self._wire,)

    @property
    def request(self) -> Any:
        """The protobuf request, parsed from `wire` on first access."""
        if self._request is None:
            assert self.wire is not None
            req = self.layout.request_cls()
            req.ParseFromString(self.wire)
            self._request = req
        return self._request

    @request.setter
    def request(self, value: Any) -> None:
        self._request = value

    @property
    def request_parsed(self) -> bool:
        """False while the batch holds only wire bytes (nothing has needed the objects yet)."""
        return self._request is not None

    @property
    def resource_count(self) -> int:
        """ResourceSpans/-Metrics/-Logs in the request, without parsing it when it is not parsed yet."""
        if self._request is None and self._n_resources is not None:
            return self._n_resources
        return len(self.resources())

    # ---- size ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.columns["res_idx"].shape[0])

    @property
    def signal(self) -> Signal:
        return self.layout.signal

    @property
    def item_count(self) -> int:
        """Items as the Collector counts them (spans, metric data points, log records)."""
        return len(self)

    @property
    def nbytes(self) -> int:
        """Serialized size of the request, computed once."""
        if self._nbytes is None:
            chunks = self.wire_chunks()
            if chunks is not None:
                self._nbytes = sum(len(c) for c in chunks)
            else:
                self._nbytes = int(self.request.ByteSize())
        return self._nbytes

    def serialize(self) -> bytes:
        if self.wire is None:
            self.wire = self.request.SerializeToString()
        return self.wire

    def mark_modified(self) -> None:
        """Call after mutating `request` in place so cached bytes are not reused."""
        if self._request is None:
            self.request  # noqa: B018 - parse before dropping the only copy of the data
        self.wire = None
        self._nbytes = None

    # ---- access -------------------------------------------------------------
    def resources(self) -> Any:
        return getattr(self.request, self.layout.resource_field)

    def item(self, row: int) -> Any:
        c = self.columns
        res = self.resources()[int(c["res_idx"][row])]
        scope = getattr(res, self.layout.scope_field)[int(c["scope_idx"][row])]
        return getattr(scope, self.layout.item_field)[int(c["item_idx"][row])]

    def iter_items(self) -> Iterator[Any]:
        lay = self.layout
        for res in self.resources():
            for scope in getattr(res, lay.scope_field):
                yield from getattr(scope, lay.item_field)

    def string_column(self, name: str) -> list[str | None]:
        return self.strings.decode(self.columns[name])

    def add_column(self, name: str, values: np.ndarray, *, is_string: bool = False) -> None:
        if values.shape[0] != len(self):
            raise ValueError(f"column {name!r} has {values.shape[0]} rows, batch has {len(self)}")
        self.columns[name] = values
        if is_string:
            self.string_columns.add(name)

    def copy(self) -> Batch:
        """An independent copy, so a processor in one pipeline cannot change another's data.

        An unparsed batch shares its (immutable) wire bytes and stays unparsed.
        """
        req = None
        if self._request is not None:
            req = self.layout.request_cls()
            req.CopyFrom(self._request)
        return type(self)(
            request=req,
            columns={k: v.copy() for k, v in self.columns.items()},
            strings=StringTable(self.strings.values),
            string_columns=set(self.string_columns),
            _nbytes=self._nbytes,
            n_resources=self._n_resources,
            wire_parts=self.wire_chunks(),
        )

    # ---- reshaping ----------------------------------------------------------
    def take(self, rows: np.ndarray) -> Batch:
        """A new batch holding only `rows` (in ascending order); the request is rebuilt to match."""
        rows = np.asarray(rows)
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        if rows.shape[0] == len(self) and (rows.shape[0] == 0 or np.all(rows == np.arange(len(self)))):
            return self
        lay = self.layout
        src_res = self.resources()
        req = lay.request_cls()
        dst_res_list = getattr(req, lay.resource_field)
        c = self.columns
        r_col, s_col, i_col = c["res_idx"][rows], c["scope_idx"][rows], c["item_idx"][rows]
        new_r = np.empty(rows.shape[0], dtype=np.int32)
        new_s = np.empty(rows.shape[0], dtype=np.int32)
        new_i = np.empty(rows.shape[0], dtype=np.int32)
        last_r = last_s = -1
        dst_res = dst_scope = None
        n_res = n_scope = n_item = 0
        for k, (r, s, i) in enumerate(zip(r_col.tolist(), s_col.tolist(), i_col.tolist(), strict=True)):
            if r != last_r:
                res = src_res[r]
                dst_res = dst_res_list.add()
                dst_res.resource.CopyFrom(res.resource)
                dst_res.schema_url = res.schema_url
                last_r, last_s = r, -1
                n_res += 1
                n_scope = 0
            if s != last_s:
                scope = getattr(src_res[r], lay.scope_field)[s]
                dst_scope = getattr(dst_res, lay.scope_field).add()
                dst_scope.scope.CopyFrom(scope.scope)
                dst_scope.schema_url = scope.schema_url
                last_s = s
                n_scope += 1
                n_item = 0
                src_items = getattr(scope, lay.item_field)
            getattr(dst_scope, lay.item_field).append(src_items[i])
            new_r[k], new_s[k], new_i[k] = n_res - 1, n_scope - 1, n_item
            n_item += 1
        cols = {name: col[rows] for name, col in c.items() if name not in LOC_COLUMNS}
        cols.update(res_idx=new_r, scope_idx=new_s, item_idx=new_i)
        return type(self)(
            request=req, columns=cols, strings=self.strings, string_columns=set(self.string_columns)
        )

    @classmethod
    def concat(cls, batches: Sequence[Batch]) -> Batch:
        """One batch holding all rows of `batches`, in order; string tables are merged.

        When every batch still has its wire bytes the result is their concatenation (an Export
        request is a single repeated field, so joined messages parse as the joined lists) and
        nothing is parsed.
        """
        batches = [b for b in batches if len(b) or b.resource_count]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        lay = cls.layout
        chunks = [b.wire_chunks() for b in batches]
        req = None
        if any(c is None for c in chunks):
            req = lay.request_cls()
            dst = getattr(req, lay.resource_field)
            for b in batches:
                dst.extend(b.resources())
        keys = batches[0].columns.keys()
        if all(b.columns.keys() == keys for b in batches[1:]):
            names = list(keys)
        else:
            names = [n for n in keys if all(n in b.columns for b in batches[1:])]
        str_cols = set().union(*(b.string_columns for b in batches)).intersection(names)
        rows = np.fromiter((len(b) for b in batches), np.int64, len(batches))
        n_res = [b.resource_count for b in batches]
        strings, codes = _merge_strings(batches, rows)
        cols: dict[str, np.ndarray] = {}
        for n in names:
            col = np.concatenate([b.columns[n] for b in batches])
            if n == "res_idx":
                res_base = np.repeat(np.cumsum([0, *n_res[:-1]]), rows)
                col = (col + res_base).astype(col.dtype, copy=False)
            elif n in str_cols:
                col = codes(col)
            cols[n] = col
        if req is not None:
            return cls(request=req, columns=cols, strings=strings, string_columns=str_cols)
        parts = [w for c in chunks if c is not None for w in c]
        return cls(None, cols, strings, str_cols, n_resources=sum(n_res), wire_parts=parts)

    def split(self, max_items: int) -> list[Batch]:
        """Chunks of at most `max_items` rows (by item count), in order."""
        n = len(self)
        if max_items <= 0 or n <= max_items:
            return [self]
        return [self.take(np.arange(lo, min(lo + max_items, n))) for lo in range(0, n, max_items)]


def _merge_strings(
    batches: Sequence[Batch], rows: np.ndarray
) -> tuple[StringTable, Callable[[np.ndarray], np.ndarray]]:
    """The merged string table of `batches` and a function mapping a concatenated string column
    (each batch's codes) to codes in that table. Batches received alike often share one table,
    in which case codes stay as they are."""
    first = batches[0].strings.values
    if all(b.strings.values == first for b in batches[1:]):
        return StringTable(first), lambda col: np.maximum(col, -1).astype(np.int32, copy=False)
    index: dict[str, int] = {}
    remap = np.array(
        [index.setdefault(v, len(index)) for b in batches for v in b.strings.values], dtype=np.int32
    )
    strings = StringTable.from_index(index)
    if not len(remap):
        return strings, lambda col: np.full(col.shape[0], -1, np.int32)
    base = np.repeat(np.cumsum([0] + [len(b.strings) for b in batches[:-1]]), rows)

    def codes(col: np.ndarray) -> np.ndarray:
        ok = col >= 0
        return np.where(ok, remap[np.where(ok, col + base, 0)], -1).astype(np.int32)

    return strings, codes


def _locations(request: Any, lay: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], list[int]]:
    """Row locations, the items in row order, and the resource index of each row."""
    r_l: list[int] = []
    s_l: list[int] = []
    i_l: list[int] = []
    items: list[Any] = []
    for r, res in enumerate(getattr(request, lay.resource_field)):
        for s, scope in enumerate(getattr(res, lay.scope_field)):
            its = getattr(scope, lay.item_field)
            k = len(its)
            if not k:
                continue
            r_l.extend([r] * k)
            s_l.extend([s] * k)
            i_l.extend(range(k))
            items.extend(its)
    return (
        np.array(r_l, dtype=np.int32),
        np.array(s_l, dtype=np.int32),
        np.array(i_l, dtype=np.int32),
        items,
        r_l,
    )


def _service_column(request: Any, lay: Layout, res_idx: np.ndarray, strings: StringTable) -> np.ndarray:
    codes = []
    for res in getattr(request, lay.resource_field):
        name = service_name_of(res.resource)
        codes.append(strings.intern(name) if name is not None else -1)
    table = np.array(codes, dtype=np.int32) if codes else _EMPTY_I32
    return table[res_idx] if res_idx.shape[0] else _EMPTY_I32.copy()


_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


def ids_to_columns(ids: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-width ids as big-endian uint64 words plus a mask of rows whose length was right."""
    n = len(ids)
    ok = np.fromiter((len(x) == width for x in ids), dtype=np.bool_, count=n)
    pad = bytes(width)
    buf = b"".join(x if len(x) == width else pad for x in ids)
    words = np.frombuffer(buf, dtype=">u8").astype(np.uint64).reshape(n, width // 8)
    return words, ok


TIME_MAX = 2**63 - 1
"""Largest time the int64 time columns hold. OTLP times are fixed64: a larger value keeps its bits
(so the column reads negative) and the receivers reject the span (see `invalid_reasons`)."""


def time_column(values: Iterable[int], n: int) -> np.ndarray:
    """`n` fixed64 nanosecond times as int64; values >= 2**63 keep their bits and read negative."""
    return np.fromiter(values, np.uint64, n).view(np.int64)


def enum_column(values: Iterable[int], n: int) -> np.ndarray:
    """Enum values (open int32 in proto3) as int8; values outside int8 saturate to -128 / 127.

    Those are no defined SpanKind or StatusCode either, so an unknown value stays unknown; the
    request keeps the exact value."""
    return np.clip(np.fromiter(values, np.int64, n), -128, 127).astype(np.int8)


class SpanBatch(Batch):
    layout = TRACES_LAYOUT

    @classmethod
    def from_request(cls, request: Any, wire: bytes | None = None) -> SpanBatch:
        r, s, i, spans, _ = _locations(request, cls.layout)
        n = len(spans)
        strings = StringTable()
        tid, tid_ok = ids_to_columns([sp.trace_id for sp in spans], 16)
        sid, sid_ok = ids_to_columns([sp.span_id for sp in spans], 8)
        pids = [sp.parent_span_id for sp in spans]
        pid_ok = np.fromiter((len(p) in (0, 8) for p in pids), np.bool_, n)
        pid, _ = ids_to_columns([p if len(p) == 8 else _ZERO8 for p in pids], 8)
        cols = {
            "res_idx": r,
            "scope_idx": s,
            "item_idx": i,
            "trace_id_hi": tid[:, 0].copy(),
            "trace_id_lo": tid[:, 1].copy(),
            "span_id": sid[:, 0].copy(),
            "parent_span_id": pid[:, 0].copy(),
            "start_ns": time_column((sp.start_time_unix_nano for sp in spans), n),
            "end_ns": time_column((sp.end_time_unix_nano for sp in spans), n),
            "kind": enum_column((sp.kind for sp in spans), n),
            "status_code": enum_column((sp.status.code for sp in spans), n),
            "name": np.fromiter((strings.intern(sp.name) for sp in spans), np.int32, n),
            "service": _service_column(request, cls.layout, r, strings),
            # structural validity, used by receivers for partial_success
            "_ids_ok": tid_ok & sid_ok & pid_ok,
        }
        return cls(
            request=request, columns=cols, strings=strings, string_columns={"name", "service"}, wire=wire
        )

    def invalid_reasons(self) -> tuple[np.ndarray, list[str]]:
        """Mask of spans to reject and one message per kind of problem found.

        Rejected: ids of the wrong length or all zero, times past int64 (fixed64 values >= 2**63
        ns, after the year 2262, which no column can hold without changing event time), and
        an end before the start.
        """
        from gateway.wire.checks import span_problems  # numba: loaded by receivers, not by every user

        c = self.columns
        start, end = c["start_ns"], c["end_ns"]
        counts = span_problems(c["_ids_ok"], c["trace_id_hi"], c["trace_id_lo"], c["span_id"], start, end)
        if counts == (0, 0, 0):
            return np.zeros(len(self), np.bool_), []
        bad_ids = ~c["_ids_ok"]
        bad_ids |= (c["trace_id_hi"] | c["trace_id_lo"]) == 0
        bad_ids |= c["span_id"] == 0
        out_of_range = (start | end) < 0  # the sign bit of either: a fixed64 time >= 2**63
        bad_order = (end < start) & ~out_of_range
        msgs = []
        if bad_ids.any():
            msgs.append(
                f"{int(bad_ids.sum())} span(s) with an invalid trace_id/span_id "
                "(trace_id must be 16 bytes, span_id and parent_span_id 8 bytes, not all zero)"
            )
        if out_of_range.any():
            row = int(np.flatnonzero(out_of_range)[0])
            field, value = ("start_time_unix_nano", start) if start[row] < 0 else ("end_time_unix_nano", end)
            msgs.append(
                f"{int(out_of_range.sum())} span(s) with a time past the supported range "
                f"(at most {TIME_MAX} ns since the epoch), e.g. {field}={int(value[row]) % 2**64}"
            )
        if bad_order.any():
            msgs.append(f"{int(bad_order.sum())} span(s) with end_time_unix_nano before start_time_unix_nano")
        return bad_ids | out_of_range | bad_order, msgs


def _metric_points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0
    return len(getattr(metric, kind).data_points)


class MetricBatch(Batch):
    """One row per metric; `points` holds its data point count (what the Collector counts)."""

    layout = METRICS_LAYOUT

    @classmethod
    def from_request(cls, request: Any, wire: bytes | None = None) -> MetricBatch:
        r, s, i, metrics, _ = _locations(request, cls.layout)
        n = len(metrics)
        strings = StringTable()
        cols = {
            "res_idx": r,
            "scope_idx": s,
            "item_idx": i,
            "points": np.fromiter((_metric_points(m) for m in metrics), np.int64, n),
            "name": np.fromiter((strings.intern(m.name) for m in metrics), np.int32, n),
            "service": _service_column(request, cls.layout, r, strings),
        }
        return cls(
            request=request, columns=cols, strings=strings, string_columns={"name", "service"}, wire=wire
        )

    @property
    def item_count(self) -> int:
        return int(self.columns["points"].sum())

    def split(self, max_items: int) -> list[Batch]:
        """Chunks of at most `max_items` data points; a single larger metric stays whole."""
        if max_items <= 0 or self.item_count <= max_items:
            return [self]
        out: list[Batch] = []
        start, acc = 0, 0
        pts = self.columns["points"].tolist()
        for k, p in enumerate(pts):
            if acc and acc + p > max_items:
                out.append(self.take(np.arange(start, k)))
                start, acc = k, 0
            acc += p
        out.append(self.take(np.arange(start, len(pts))))
        return out


class LogBatch(Batch):
    layout = LOGS_LAYOUT

    @classmethod
    def from_request(cls, request: Any, wire: bytes | None = None) -> LogBatch:
        r, s, i, records, _ = _locations(request, cls.layout)
        n = len(records)
        strings = StringTable()
        cols = {
            "res_idx": r,
            "scope_idx": s,
            "item_idx": i,
            # same conversions as spans, so well-formed protobuf never fails here
            "time_ns": time_column((lr.time_unix_nano for lr in records), n),
            "observed_ns": time_column((lr.observed_time_unix_nano for lr in records), n),
            "severity": enum_column((lr.severity_number for lr in records), n),
            "service": _service_column(request, cls.layout, r, strings),
        }
        return cls(request=request, columns=cols, strings=strings, string_columns={"service"}, wire=wire)


BATCH_TYPES: dict[Signal, type[Batch]] = {
    Signal.TRACES: SpanBatch,
    Signal.METRICS: MetricBatch,
    Signal.LOGS: LogBatch,
}
