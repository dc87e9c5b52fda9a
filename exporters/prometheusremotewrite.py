"""`prometheusremotewrite` exporter: Prometheus Remote-Write 1.0 to Prometheus, VictoriaMetrics, Mimir, ...

What it sends (https://prometheus.io/docs/specs/remote_write_spec/):

* **The gateway's own metrics**, every `interval`: the families of the self-telemetry registry whose
  names match `include` (default the LLM metrics, `gen_ai_*` and `llm_sentinel_*`) and none of
  `exclude`; the same series as `/metrics` (histograms as `_bucket{le}`/`_sum`/`_count`, counters with
  `_total`; the `_created` series are left out), stamped with the snapshot time, plus `job`/`instance`
  labels (`job`, `instance` config; default `llm-sentinel` and the host name) so that several
  replicas do not write into one series.
* **OTLP metrics** of a `metrics` pipeline, converted as the Collector's prometheusremotewrite
  exporter does: gauge -> gauge; cumulative monotonic sum -> counter (`_total`); cumulative
  non-monotonic sum -> gauge; cumulative histogram -> `_bucket{le}` (cumulative counts, `+Inf` = count)
  / `_sum` / `_count`; summary -> `{quantile}` / `_sum` / `_count`. Delta temporality and exponential
  histograms cannot be expressed in Remote-Write 1.0 and are dropped (counted as failed, logged once
  per metric). Names follow the Collector's normalisation (unit and `_total` suffixes unless
  `add_metric_suffixes: false`, optional `namespace`); `service.namespace`/`service.name` -> `job`,
  `service.instance.id` -> `instance`; scope name/version -> `otel_scope_name`/`otel_scope_version`;
  data point flag "no recorded value" -> the staleness marker.
* **Alerts** of an `anomalies` pipeline: counted into the exporter's own counter
  `llm_sentinel_alerts_total{type,severity,service_name,gen_ai_request_model}` (+1 per alert event),
  sent with the next snapshot. A new series first gets a 0 sample at the previous snapshot time so
  that `increase()` sees its first alert.

Labels: names sanitised like the Collector (`[a-zA-Z0-9_]`, `key_` prefix before a digit or a
single `_`); attributes that collide after sanitising are joined with `;` (in key order);
precedence, lowest first: `external_labels` < attributes < job/instance < scope labels <
`__name__`/`le`/`quantile`; empty values are dropped; names sorted, unique (Prometheus answers a
repeated label name with a 500, which would be retried forever).

Requests: protobuf WriteRequest, hand-encoded (four tiny messages), snappy *block* format, at most
`max_series_per_request` series each, headers `Content-Encoding: snappy`, `Content-Type:
application/x-protobuf`, `X-Prometheus-Remote-Write-Version: 0.1.0`, `User-Agent`.

Failures: 5xx, 429 (Retry-After honoured) and connection errors are retried with the queued
sender's backoff; any other status is permanent: the request is dropped, its points are counted in
`otelcol_exporter_send_failed_metric_points`, and the server's message is logged once per distinct
message (numbers and client addresses ignored when comparing), not once per request.

Ordering (the spec: samples of a series MUST be sent in timestamp order):

* one sending consumer (`sending_queue.num_consumers` must be 1) and a FIFO queue: a request is
  retried until it succeeds or is given up *before* the next one is sent, so a newer sample of a
  series can never overtake an older one; with the queue disabled a lock serialises whole
  send-with-retry sequences instead;
* every queue item is exactly one HTTP request (split at enqueue time), so a retry never resends
  an already accepted part (and a timeout covers one request only);
* no new snapshot of the registry is taken while one is still queued or being retried; the tick is
  skipped (counted in the debug log) and the next one after delivery carries the current values;
  snapshot timestamps are kept strictly increasing even if the wall clock steps back;
* samples of one series inside a request are sorted by timestamp.

A final snapshot is queued at shutdown (the queue drains within the runtime's shutdown timeout).
`interval: 0` turns snapshots off, the alert counter included.

Self-metrics: `otelcol_exporter_sent_metric_points` / `send_failed_metric_points` count OTLP data
points (a histogram point is one point, as in the Collector) and, for snapshots, one point per
gateway series (a histogram label set is one). A queue item's `item_count` turns 0 once the
exporter has accounted a permanent rejection itself, so the queued sender's own counting stays
right; `_give_up` is extended only to release a pending snapshot. Alerts are counted in
`otelcol_exporter_sent_anomalies` when folded into the counter. The persistent queue
(`sending_queue.storage`) is not supported: it stores OTLP batches, this exporter queues encoded
requests.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import math
import re
import socket
import ssl
import struct
import time
from bisect import insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import cramjam
import orjson
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator, model_validator

from exporters.otlp import parse_retry_after
from gateway.anomaly import AnomalyBatch
from gateway.batch import Batch, MetricBatch, Signal
from gateway.component import (
    ComponentConfig,
    ComponentContext,
    Duration,
    Factory,
    Kind,
    ThrottledError,
)
from gateway.exporterhelper import QueuedExporter, QueuedExporterConfig, QueueSettings, RetryableError

USER_AGENT = "LLM-Sentinel/0.1.0"
REMOTE_WRITE_VERSION = "0.1.0"
# The staleness marker of the spec; never used for anything else.
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
ALERTS_METRIC = "llm_sentinel_alerts_total"
# Headers a user must not override (spec: "MUST NOT allow users to ... send reserved headers").
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Encoding",
        "Content-Type",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "Connection",
        "User-Agent",
        "X-Prometheus-Remote-Write-Version",
    )
)
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]+")
_FORBIDDEN_IN_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_FLAG_NO_RECORDED_VALUE = 1
_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_LOG_KEYS_MAX = 256
_LABEL_CACHE_MAX = 200_000

Labels = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------- wire format
def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf does it: negatives take ten bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` is the whole key byte: field number << 3 | 2)."""
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + _varint(n) + payload


_pack_sample_head = struct.Struct("<BdB").pack  # Sample.value key, the double, Sample.timestamp key


def encode_labels(labels: Labels) -> bytes:
    """The `labels` fields (1) of a TimeSeries: Label{name=1, value=2} each."""
    return b"".join(_field(0x0A, _field(0x0A, n.encode()) + _field(0x12, v.encode())) for n, v in labels)


def encode_sample(ts_varint: bytes, value: float) -> bytes:
    """One `samples` field (2) of a TimeSeries: Sample{value=1 (double), timestamp=2 (int64)}."""
    body = _pack_sample_head(0x09, value, 0x10) + ts_varint
    return bytes((0x12, len(body))) + body  # a Sample is always < 128 bytes


def encode_samples(samples: Iterable[tuple[int, float]]) -> bytes:
    return b"".join(encode_sample(_varint(ts), value) for ts, value in samples)


def encode_timeseries(label_blob: bytes, samples: Iterable[tuple[int, float]]) -> bytes:
    """One `timeseries` field (1) of a WriteRequest."""
    return _field(0x0A, label_blob + encode_samples(samples))


def snappy_block(data: bytes) -> bytes:
    """Snappy block format (the spec forbids the framed/stream format)."""
    return bytes(cramjam.snappy.compress_raw(data))


# ---------------------------------------------------------------- names and values
def sanitize_label_name(name: str) -> str:
    """The Collector's label normalisation, restricted to what Prometheus accepts (ASCII)."""
    if not name:
        return name
    out = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if out[0].isdigit():
        return "key_" + out
    if out.startswith("_") and not out.startswith("__"):
        return "key" + out
    return out


_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
    "$": "dollars",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}


def _tokens(s: str) -> list[str]:
    return [t for t in _NOT_ALNUM.split(s) if t]


def metric_name(
    name: str, unit: str, kind: str, monotonic: bool, *, add_suffixes: bool = True, namespace: str = ""
) -> str:
    """Prometheus name of an OTLP metric, as the Collector's `BuildCompliantName` builds it.

    `kind` is the OTLP data field (gauge, sum, histogram, summary).
    """
    if not add_suffixes:
        out = "_".join(t for t in _FORBIDDEN_IN_NAME.split(name) if t)
        if namespace:
            return f"{namespace}_{out}"
        return "_" + out if out[:1].isdigit() else out
    tokens = _tokens(name)
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    if main and "{" not in main and "}" not in main:
        prom = "_".join(_tokens(_UNITS.get(main, main)))
        if prom and prom not in tokens:
            tokens.append(prom)
    if per and "{" not in per and "}" not in per:
        prom = "_".join(_tokens(_PER_UNITS.get(per, per)))
        if prom and prom not in tokens:
            tokens += ["per", prom]
    if kind == "sum" and monotonic:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    if namespace:
        tokens.insert(0, namespace)
    out = "_".join(tokens)
    return "_" + out if out[:1].isdigit() else out


def format_float(x: float) -> str:
    """Go's strconv.FormatFloat(x, 'f', -1, 64): shortest round-trip digits, never an exponent."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x.is_integer():
        return str(int(x))
    return format(Decimal(repr(x)), "f")


def attribute_string(value: Any) -> str:
    """An OTLP AnyValue as a label value (pdata's AsString)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return format_float(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind in ("array_value", "kvlist_value"):
        return orjson.dumps(_plain(value)).decode()
    return ""


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind) if kind else None


def finalize_labels(labels: dict[str, str]) -> Labels:
    """Sorted, unique (a dict already), no empty values."""
    return tuple(sorted((n, v) for n, v in labels.items() if v != ""))


# ---------------------------------------------------------------- series
@dataclass
class Chunk:
    body: bytes  # uncompressed WriteRequest
    series: int
    samples: int
    points: int


class Chunker:
    """Encoded TimeSeries -> WriteRequests of at most `max_series` series each."""

    __slots__ = ("_parts", "_points", "_samples", "chunks", "max_series")

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.chunks: list[Chunk] = []
        self._parts: list[bytes] = []
        self._samples = self._points = 0

    def add(self, timeseries: bytes, samples: int, points: int) -> None:
        self._parts.append(timeseries)
        self._samples += samples
        self._points += points
        if len(self._parts) >= self.max_series:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            self.chunks.append(Chunk(b"".join(self._parts), len(self._parts), self._samples, self._points))
            self._parts, self._samples, self._points = [], 0, 0

    def finish(self) -> list[Chunk]:
        self._flush()
        return self.chunks


class SeriesSet:
    """Samples grouped by label set, in insertion order; encoded into requests of <= N series."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        # labels -> [samples, points]
        self._series: dict[Labels, list[Any]] = {}

    def add(self, labels: Labels, ts: int, value: float, points: int = 0) -> None:
        entry = self._series.get(labels)
        if entry is None:
            self._series[labels] = [[(ts, value)], points]
        else:
            entry[0].append((ts, value))
            entry[1] += points

    def __len__(self) -> int:
        return len(self._series)

    def items(self) -> Iterator[tuple[Labels, list[tuple[int, float]], int]]:
        for labels, (samples, points) in self._series.items():
            yield labels, samples, points

    def encode_into(self, out: Chunker, label_cache: dict[Labels, bytes] | None = None) -> None:
        cache = label_cache if label_cache is not None else {}
        ts_cache: dict[int, bytes] = {}
        for labels, (samples, points) in self._series.items():
            blob = cache.get(labels)
            if blob is None:
                if len(cache) >= _LABEL_CACHE_MAX:
                    cache.clear()
                blob = cache[labels] = encode_labels(labels)
            if len(samples) > 1:
                samples.sort(key=lambda s: s[0])  # stable: equal timestamps keep arrival order
            parts = []
            for ts, value in samples:
                tsv = ts_cache.get(ts)
                if tsv is None:
                    tsv = ts_cache[ts] = _varint(ts)
                parts.append(encode_sample(tsv, value))
            out.add(_field(0x0A, blob + b"".join(parts)), len(samples), points)

    def encode(self, max_series: int, label_cache: dict[Labels, bytes] | None = None) -> list[Chunk]:
        out = Chunker(max_series)
        self.encode_into(out, label_cache)
        return out.finish()


# ---------------------------------------------------------------- gateway registry
_CREATED_TYPES = ("counter", "histogram", "summary", "gaugehistogram")
_POINT_SUFFIX = {"histogram": "_count", "summary": "_count", "gaugehistogram": "_gcount"}


class RegistryEncoder:
    """Encodes registry samples straight to TimeSeries bytes, caching each series' label bytes.

    A snapshot repeats the same series every interval, so after the first one a sample costs a dict
    lookup and a few bytes of packing.
    """

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self._blobs: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}

    def blob(self, name: str, labels: dict[str, str]) -> bytes:
        key = (name, tuple(labels.items()))
        blob = self._blobs.get(key)
        if blob is None:
            if len(self._blobs) >= _LABEL_CACHE_MAX:
                self._blobs.clear()
            full = dict(self.base)
            full.update(labels)
            full["__name__"] = name
            blob = self._blobs[key] = encode_labels(finalize_labels(full))
        return blob


def registry_series(
    registry: CollectorRegistry,
    include: list[str],
    exclude: list[str],
    now_ms: int,
    encoder: RegistryEncoder,
    out: Chunker,
) -> None:
    """The registry's matching families, as /metrics shows them (minus `_created`), into `out`."""

    def wanted(names: tuple[str, ...]) -> bool:
        if not any(fnmatch.fnmatchcase(n, g) for g in include for n in names):
            return False
        return not any(fnmatch.fnmatchcase(n, g) for g in exclude for n in names)

    now_varint = _varint(now_ms)
    blob, add = encoder.blob, out.add
    for fam in registry.collect():
        names = (fam.name, fam.name + "_total") if fam.type == "counter" else (fam.name,)
        if not wanted(names):
            continue
        created = fam.name + "_created" if fam.type in _CREATED_TYPES else None
        point_name = fam.name + _POINT_SUFFIX[fam.type] if fam.type in _POINT_SUFFIX else None
        for s in fam.samples:
            if s.name == created:
                continue
            tsv = now_varint if s.timestamp is None else _varint(int(float(s.timestamp) * 1000))
            sample = encode_sample(tsv, float(s.value))
            add(_field(0x0A, blob(s.name, s.labels) + sample), 1, 1 if point_name in (None, s.name) else 0)


# ---------------------------------------------------------------- OTLP conversion
@dataclass
class Conversion:
    series: SeriesSet
    points: int = 0
    dropped: dict[str, tuple[str, int]] | None = None  # metric name -> (reason, points)


class OtlpConverter:
    """OTLP ExportMetricsServiceRequest -> series, as the Collector's translator does it."""

    def __init__(self, external: dict[str, str], add_suffixes: bool, namespace: str) -> None:
        self.external = external
        self.add_suffixes = add_suffixes
        self.namespace = namespace
        self._names: dict[tuple[str, str, str, bool], str] = {}
        self._label_names: dict[str, str] = {}
        self._le: dict[float, tuple[str, str]] = {}

    def _name(self, m: Any, kind: str, monotonic: bool) -> str:
        key = (m.name, m.unit, kind, monotonic)
        name = self._names.get(key)
        if name is None:
            if len(self._names) > 100_000:
                self._names.clear()
            name = self._names[key] = metric_name(
                m.name, m.unit, kind, monotonic, add_suffixes=self.add_suffixes, namespace=self.namespace
            )
        return name

    def _label(self, key: str) -> str:
        name = self._label_names.get(key)
        if name is None:
            if len(self._label_names) > 100_000:
                self._label_names.clear()
            name = self._label_names[key] = sanitize_label_name(key)
        return name

    def _attributes(self, attrs: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for kv in attrs:
            name = self._label(kv.key)
            if not name:
                continue
            if name in out:  # a collision after sanitising: merge in key order, as the Collector does
                return self._attributes_merged(attrs)
            out[name] = attribute_string(kv.value)
        return out

    def _attributes_merged(self, attrs: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for kv in sorted(attrs, key=lambda kv: kv.key):
            name = self._label(kv.key)
            if name:
                value = attribute_string(kv.value)
                out[name] = out[name] + ";" + value if name in out else value
        return out

    def convert(self, request: Any, now_ms: int) -> Conversion:
        conv = Conversion(SeriesSet())
        for rm in request.resource_metrics:
            res = {kv.key: kv.value for kv in rm.resource.attributes}
            top: dict[str, str] = {}
            if "service.name" in res:
                job = attribute_string(res["service.name"])
                if "service.namespace" in res:
                    job = f"{attribute_string(res['service.namespace'])}/{job}"
                top["job"] = job
            if "service.instance.id" in res:
                top["instance"] = attribute_string(res["service.instance.id"])
            for sm in rm.scope_metrics:
                scope = dict(top)
                if sm.scope.name:
                    scope["otel_scope_name"] = sm.scope.name
                if sm.scope.version:
                    scope["otel_scope_version"] = sm.scope.version
                for m in sm.metrics:
                    self._metric(m, scope, now_ms, conv)
        return conv

    def _base(self, attrs: Any, scope: dict[str, str], reserved: tuple[str, ...]) -> list[tuple[str, str]]:
        """The sorted labels of one data point, without `__name__` and the `reserved` ones it adds."""
        labels = dict(self.external)
        if attrs:
            labels.update(self._attributes(attrs))
        labels.update(scope)
        for r in reserved:
            labels.pop(r, None)
        return sorted((n, v) for n, v in labels.items() if v != "")

    @staticmethod
    def _with(base: list[tuple[str, str]], *extra: tuple[str, str]) -> Labels:
        items = list(base)
        for pair in extra:
            insort(items, pair)
        return tuple(items)

    def _drop(self, conv: Conversion, m: Any, reason: str, n: int) -> None:
        if conv.dropped is None:
            conv.dropped = {}
        prev = conv.dropped.get(m.name, (reason, 0))[1]
        conv.dropped[m.name] = (reason, prev + n)

    def _metric(self, m: Any, scope: dict[str, str], now_ms: int, conv: Conversion) -> None:
        kind = m.WhichOneof("data")
        out = conv.series
        add, with_ = out.add, self._with
        if kind is None:
            return
        if kind in ("gauge", "sum"):
            data = getattr(m, kind)
            monotonic = kind == "sum" and data.is_monotonic
            if kind == "sum" and data.aggregation_temporality != _CUMULATIVE:
                self._drop(conv, m, "delta temporality", len(data.data_points))
                return
            name = ("__name__", self._name(m, kind, monotonic))
            for p in data.data_points:
                v = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
                if p.flags & _FLAG_NO_RECORDED_VALUE:
                    v = STALE_NAN
                ts = p.time_unix_nano // 1_000_000 or now_ms
                add(with_(self._base(p.attributes, scope, _NAME), name), ts, v, 1)
                conv.points += 1
        elif kind == "histogram":
            data = m.histogram
            if data.aggregation_temporality != _CUMULATIVE:
                self._drop(conv, m, "delta temporality", len(data.data_points))
                return
            base_name = self._name(m, kind, False)
            count_name = ("__name__", base_name + "_count")
            sum_name = ("__name__", base_name + "_sum")
            bucket_name = ("__name__", base_name + "_bucket")
            for p in data.data_points:
                stale = bool(p.flags & _FLAG_NO_RECORDED_VALUE)
                ts = p.time_unix_nano // 1_000_000 or now_ms
                base = self._base(p.attributes, scope, _NAME_LE)
                add(with_(base, count_name), ts, STALE_NAN if stale else float(p.count), 1)
                if p.HasField("sum"):
                    add(with_(base, sum_name), ts, STALE_NAN if stale else p.sum)
                cum = 0
                for bound, n in zip(p.explicit_bounds, p.bucket_counts, strict=False):
                    cum += n
                    le = self._le.get(bound)
                    if le is None:
                        if len(self._le) > 10_000:
                            self._le.clear()
                        le = self._le[bound] = ("le", format_float(bound))
                    add(with_(base, bucket_name, le), ts, STALE_NAN if stale else float(cum))
                add(with_(base, bucket_name, ("le", "+Inf")), ts, STALE_NAN if stale else float(p.count))
                conv.points += 1
        elif kind == "summary":
            base_name = self._name(m, kind, False)
            name = ("__name__", base_name)
            count_name = ("__name__", base_name + "_count")
            sum_name = ("__name__", base_name + "_sum")
            for p in m.summary.data_points:
                stale = bool(p.flags & _FLAG_NO_RECORDED_VALUE)
                ts = p.time_unix_nano // 1_000_000 or now_ms
                base = self._base(p.attributes, scope, _NAME_QUANTILE)
                add(with_(base, count_name), ts, STALE_NAN if stale else float(p.count), 1)
                add(with_(base, sum_name), ts, STALE_NAN if stale else p.sum)
                for q in p.quantile_values:
                    quantile = ("quantile", format_float(q.quantile))
                    add(with_(base, name, quantile), ts, STALE_NAN if stale else q.value)
                conv.points += 1
        else:  # exponential_histogram: needs native histograms, not in Remote-Write 1.0
            self._drop(conv, m, "exponential histograms are not supported by remote write 1.0", _points(m))


_NAME = ("__name__",)
_NAME_LE = ("__name__", "le")
_NAME_QUANTILE = ("__name__", "quantile")


def _points(m: Any) -> int:
    kind = m.WhichOneof("data")
    return len(getattr(m, kind).data_points) if kind else 0


# ---------------------------------------------------------------- config
class TLSSettings(ComponentConfig):
    insecure: bool = Field(
        default=False, description="https only: do not verify the server certificate (tests, never prod)."
    )
    ca_file: str | None = Field(default=None, description="PEM bundle to verify the server with.")
    cert_file: str | None = Field(default=None, description="Client certificate (mTLS), with key_file.")
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> TLSSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        return self


class SingleConsumerQueue(QueueSettings):
    num_consumers: int = Field(default=1, description="Must be 1: one sender keeps per-series order.")

    @field_validator("num_consumers")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError(
                "must be 1: remote write requires samples of a series in timestamp order, which one "
                "sender with a FIFO queue guarantees (also across retries)"
            )
        return v

    @model_validator(mode="after")
    def _no_storage(self) -> SingleConsumerQueue:
        # The persistent queue stores OTLP batches; this exporter queues encoded requests.
        if getattr(self, "storage", None) is not None:
            raise ValueError("storage (a persistent queue) is not supported by prometheusremotewrite")
        return self


class PrometheusRemoteWriteConfig(QueuedExporterConfig):
    endpoint: str = Field(description="Full URL, e.g. http://prometheus:9090/api/v1/write")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (e.g. auth).")
    tls: TLSSettings = TLSSettings()
    timeout: Duration = Field(default=5.0, gt=0, description="Timeout of one request.")
    interval: Duration = Field(
        default=15.0, ge=0, description="How often the gateway's own metrics are sent; 0 disables."
    )
    include: list[str] = Field(
        default_factory=lambda: ["gen_ai_*", "llm_sentinel_*"],
        description="Globs over registry family names (e.g. otelcol_* for the Collector self-metrics).",
    )
    exclude: list[str] = Field(default_factory=list)
    job: str = Field(default="llm-sentinel", description="`job` label of the gateway's own series.")
    instance: str | None = Field(
        default=None, description="`instance` label of the gateway's own series; default: host name."
    )
    external_labels: dict[str, str] = Field(default_factory=dict, description="Added to every series.")
    max_series_per_request: int = Field(default=500, ge=1, le=100_000)
    add_metric_suffixes: bool = Field(default=True, description="Unit and _total suffixes (OTLP metrics).")
    namespace: str = Field(default="", description="Prefix of converted OTLP metric names.")
    sending_queue: SingleConsumerQueue = SingleConsumerQueue()

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
            raise ValueError(f"invalid endpoint {v!r}: expected a URL such as http://host:9090/api/v1/write")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid endpoint {v!r}: {exc}") from None
        return v.strip()

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if k.lower() in RESERVED_HEADERS)
        if bad:
            raise ValueError(f"reserved header(s) {', '.join(bad)} cannot be set; the exporter sends them")
        return v

    @field_validator("external_labels")
    @classmethod
    def _external(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not LABEL_NAME_RE.match(name) or name.startswith("__"):
                raise ValueError(
                    f"invalid label name {name!r}: expected [a-zA-Z_][a-zA-Z0-9_]* not starting with __"
                )
            if value == "":
                raise ValueError(f"external label {name!r} has an empty value")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        if any(not g.strip() for g in v):
            raise ValueError("empty glob")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if v and not METRIC_NAME_RE.match(v):
            raise ValueError(f"invalid namespace {v!r}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")
        return v

    @model_validator(mode="after")
    def _tls(self) -> PrometheusRemoteWriteConfig:
        tls_set = self.tls.insecure or self.tls.ca_file or self.tls.cert_file
        if tls_set and not self.endpoint.lower().startswith("https://"):
            raise ValueError("tls settings need an https:// endpoint")
        return self


# ---------------------------------------------------------------- exporter
@dataclass(eq=False)
class WriteJob:
    """One queued HTTP request; quacks like a Batch for the queued sender.

    `item_count` is what the sender's otelcol counters add: the points this request carries until
    the exporter has accounted them itself (a permanent rejection), then 0.
    """

    body: bytes  # snappy-compressed WriteRequest
    series: int
    samples: int
    points: int
    snapshot: bool = False
    accounted: bool = False

    signal: ClassVar[Signal] = Signal.METRICS

    @property
    def item_count(self) -> int:
        return 0 if self.accounted else self.points

    @property
    def nbytes(self) -> int:
        return len(self.body)

    def __len__(self) -> int:
        return self.series

    def serialize(self) -> bytes:
        return self.body

    def copy(self) -> WriteJob:
        return self


_MSG_NOISE = re.compile(r'remoteAddr: "[^"]*";?\s*|requestURI: [^;]*;?\s*|\d+')


class PrometheusRemoteWriteExporter(QueuedExporter):
    config: PrometheusRemoteWriteConfig

    def __init__(self, ctx: ComponentContext, config: PrometheusRemoteWriteConfig) -> None:
        super().__init__(ctx, config)
        cfg = config
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._headers = {
            **cfg.headers,
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": REMOTE_WRITE_VERSION,
            "User-Agent": USER_AGENT,
        }
        self._ticker: asyncio.Task[None] | None = None
        self._order_lock = asyncio.Lock()  # queue disabled: whole send-with-retry sequences in order
        self._converter = OtlpConverter(cfg.external_labels, cfg.add_metric_suffixes, cfg.namespace)
        self._label_cache: dict[Labels, bytes] = {}
        instance = socket.gethostname() if cfg.instance is None else cfg.instance
        # external_labels < job/instance (as resource attributes win for OTLP metrics); "" omits one
        self._self_labels = dict(cfg.external_labels)
        self._self_labels.update({k: v for k, v in (("job", cfg.job), ("instance", instance)) if v})
        self._registry_encoder = RegistryEncoder(self._self_labels)
        self._pending_snapshot: set[WriteJob] = set()
        self._last_snapshot_ms = 0
        self._alerts: dict[Labels, float] = {}
        self._new_alert_series: set[Labels] = set()
        self._logged: set[tuple[int, str]] = set()
        self._logged_overflow = False
        self._dropped_logged: set[str] = set()
        # plain counters for tests and benchmarks
        self.requests = 0
        self.snapshots = 0
        self.snapshots_skipped = 0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        cfg = self.config
        if cfg.endpoint.lower().startswith("https://"):
            try:
                self._ssl = self._ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise RuntimeError(f"exporter {self.id}: TLS setup failed: {exc}") from exc
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            connector=aiohttp.TCPConnector(limit=4),
        )
        await super().start()
        if cfg.interval > 0:
            self._ticker = asyncio.create_task(self._tick_loop(), name=f"{self.id}-snapshots")

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
            try:
                await self.snapshot()  # the final values, so the last interval is not lost
            except Exception as exc:
                self.logger.warning(f"final snapshot not sent: {exc}")
        await super().shutdown()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # ---------------------------------------------------------------- input
    async def consume(self, batch: Batch) -> None:
        if isinstance(batch, AnomalyBatch):
            self._count_alerts(batch)
            return
        assert isinstance(batch, MetricBatch), f"unexpected {type(batch).__name__}"
        conv = self._converter.convert(batch.request, int(time.time() * 1000))
        if conv.dropped:
            self._account_dropped(conv.dropped)
        jobs = self._jobs(conv.series, snapshot=False)
        await self._enqueue(jobs)

    def _count_alerts(self, batch: AnomalyBatch) -> None:
        for ev in batch.events:
            labels = dict(self._self_labels)
            labels.update(
                {
                    "__name__": ALERTS_METRIC,
                    "type": str(ev.type),
                    "severity": str(ev.severity),
                    "service_name": ev.service,
                    "gen_ai_request_model": ev.model,
                }
            )
            key = finalize_labels(labels)
            if key not in self._alerts:
                self._alerts[key] = 0.0
                self._new_alert_series.add(key)
            self._alerts[key] += 1.0
        self._m_sent[Signal.ANOMALIES].inc(len(batch.events))

    def _account_dropped(self, dropped: dict[str, tuple[str, int]]) -> None:
        total = sum(n for _, n in dropped.values())
        self._m_failed[Signal.METRICS].inc(total)
        for name, (reason, n) in dropped.items():
            if name in self._dropped_logged or len(self._dropped_logged) >= _LOG_KEYS_MAX:
                self.logger.debug(f"dropped {n} point(s) of {name}: {reason}")
                continue
            self._dropped_logged.add(name)
            self.logger.warning(
                f"dropping metric {name!r} ({reason}); further drops of it are only counted "
                "in otelcol_exporter_send_failed_metric_points"
            )

    def _jobs(self, series: SeriesSet, *, snapshot: bool) -> list[WriteJob]:
        chunks = series.encode(self.config.max_series_per_request, self._label_cache)
        return self._jobs_from(chunks, snapshot=snapshot)

    @staticmethod
    def _jobs_from(chunks: list[Chunk], *, snapshot: bool) -> list[WriteJob]:
        return [
            WriteJob(snappy_block(c.body), c.series, c.samples, c.points, snapshot=snapshot) for c in chunks
        ]

    async def _enqueue(self, jobs: list[WriteJob]) -> None:
        if not jobs:
            return
        q = self.config.sending_queue
        if not q.enabled:
            async with self._order_lock:  # the whole retry sequence: a later batch must wait
                for job in jobs:
                    await super().consume(job)  # type: ignore[arg-type]
            return
        if self.queue_len() + len(jobs) > q.queue_size:
            points = sum(j.points for j in jobs)
            self._m_enqueue_failed[Signal.METRICS].inc(points)
            raise ThrottledError(f"sending queue of exporter {self.id} is full", retry_after=1.0)
        for job in jobs:
            await super().consume(job)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- snapshots
    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if next_at < loop.time():  # fell behind (e.g. a blocked loop): skip missed ticks
                next_at = loop.time() + interval
            try:
                await self.snapshot()
            except ThrottledError:
                self.logger.debug("snapshot skipped: sending queue full")
            except Exception:
                self.logger.exception("snapshot failed")

    def snapshot_pending(self) -> bool:
        return bool(self._pending_snapshot)

    async def snapshot(self) -> bool:
        """Queue the current registry values (and alert counts); False when one is still pending."""
        if self._pending_snapshot:
            self.snapshots_skipped += 1
            self.logger.debug("previous snapshot not delivered yet (retrying): tick skipped")
            return False
        now_ms = max(int(time.time() * 1000), self._last_snapshot_ms + 1)
        cfg = self.config
        chunker = Chunker(cfg.max_series_per_request)
        registry_series(
            self.ctx.telemetry.registry, cfg.include, cfg.exclude, now_ms, self._registry_encoder, chunker
        )
        prev = self._last_snapshot_ms or now_ms - 1
        alerts = SeriesSet()
        for key, value in self._alerts.items():
            if key in self._new_alert_series:
                alerts.add(key, prev, 0.0)
            alerts.add(key, now_ms, value, 1)
        alerts.encode_into(chunker, self._label_cache)
        self._new_alert_series.clear()
        self._last_snapshot_ms = now_ms
        jobs = self._jobs_from(chunker.finish(), snapshot=True)
        if not jobs:
            return True
        self.snapshots += 1
        if cfg.sending_queue.enabled:
            self._pending_snapshot.update(jobs)
        try:
            await self._enqueue(jobs)
        except BaseException:
            self._pending_snapshot.difference_update(jobs)
            raise
        return True

    # ---------------------------------------------------------------- sending
    async def send(self, batch: Batch) -> None:
        job = batch
        assert isinstance(job, WriteJob)
        assert self._session is not None, "exporter not started"
        url = self.config.endpoint
        try:
            async with self._session.post(
                url, data=job.body, headers=self._headers, ssl=self._ssl, allow_redirects=False
            ) as resp:
                status = resp.status
                text = (await resp.content.read(2048)).decode("utf-8", "replace").strip()
                retry_after = resp.headers.get("Retry-After")
        except aiohttp.ClientError as exc:
            raise RetryableError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.requests += 1
        if 200 <= status < 300:
            self._pending_snapshot.discard(job)
            return
        msg = f"HTTP {status} from {url}: {text or '(no message)'}"
        if status == 429 or status >= 500:
            raise RetryableError(msg, retry_after=parse_retry_after(retry_after))
        # 4xx (or an unexpected 1xx/3xx): will never succeed; drop, count, log once per message.
        job.accounted = True
        self._pending_snapshot.discard(job)
        self._m_failed[Signal.METRICS].inc(job.points)
        self._log_rejection(status, text, job)

    def _log_rejection(self, status: int, text: str, job: WriteJob) -> None:
        key = (status, _MSG_NOISE.sub("#", text))
        detail = f"{job.series} series, {job.samples} samples, {job.points} points"
        if key in self._logged:
            self.logger.debug(f"remote write rejected ({detail}) with HTTP {status}: {text}")
            return
        if len(self._logged) >= _LOG_KEYS_MAX:
            if not self._logged_overflow:
                self._logged_overflow = True
                self.logger.error(
                    "too many distinct remote write rejections; further ones are only counted "
                    "in otelcol_exporter_send_failed_metric_points"
                )
            return
        self._logged.add(key)
        self.logger.error(
            f"remote write rejected a request ({detail}) with HTTP {status}: {text or '(no message)'}; "
            "dropped, not retried. Further rejections with this message are only counted in "
            "otelcol_exporter_send_failed_metric_points"
        )

    def _give_up(self, batch: Any, err: Exception, attempts: int, raise_on_failure: bool) -> None:
        self._pending_snapshot.discard(batch)  # a later snapshot may go out now
        super()._give_up(batch, err, attempts, raise_on_failure)


FACTORY = Factory(
    type="prometheusremotewrite",
    kind=Kind.EXPORTER,
    config=PrometheusRemoteWriteConfig,
    create=PrometheusRemoteWriteExporter,
    signals=frozenset({Signal.METRICS, Signal.ANOMALIES}),
    description="Prometheus Remote-Write 1.0: the gateway's LLM metrics, OTLP metrics and alert counts.",
)
