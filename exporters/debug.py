"""`debug` exporter: writes what flows through a pipeline to the gateway log.

Same knobs as the Collector's debug exporter: `verbosity` basic (one summary
line per batch), normal (plus one line per span / data point / log record) or
detailed (plus a full dump of every item), and zap-style sampling of log
entries: per signal, the first `sampling_initial` batches each second are
logged, then every `sampling_thereafter`-th. Nothing is queued or retried (the
log is local), so this is a plain Exporter that only keeps the sent counters.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.descriptor import FieldDescriptor
from pydantic import Field

from gateway.anomaly import AnomalyBatch
from gateway.batch import Batch, Signal
from gateway.component import ComponentConfig, ComponentContext, Exporter, Factory, Kind


class DebugConfig(ComponentConfig):
    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sampling_initial: int = Field(default=2, ge=0, description="Batches logged per second per signal.")
    sampling_thereafter: int = Field(default=1, ge=1, description="After that, log every Mth batch.")


class Sampler:
    """zap's sampler: per key and one-second tick, the first N entries pass, then every Mth."""

    def __init__(self, initial: int, thereafter: int, clock: Any = time.monotonic) -> None:
        self.initial, self.thereafter, self.clock = initial, thereafter, clock
        self._state: dict[str, tuple[int, int]] = {}

    def allow(self, key: str) -> bool:
        tick = int(self.clock())
        last_tick, n = self._state.get(key, (tick, 0))
        n = n + 1 if last_tick == tick else 1
        self._state[key] = (tick, n)
        return n <= self.initial or (n - self.initial) % self.thereafter == 0


_TITLES = {Signal.TRACES: "Traces", Signal.METRICS: "Metrics", Signal.LOGS: "Logs"}
_ID_FIELDS = {"trace_id", "span_id", "parent_span_id"}


# ---------------------------------------------------------------- value rendering
_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def escape(text: str) -> str:
    """Control characters escaped, so one item stays on one line."""
    return text.translate(_CONTROL)


def plain(v: Any) -> str:
    """An AnyValue as a bare value, for one-line output."""
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "array_value":
        return "[" + ", ".join(plain(x) for x in v.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + ", ".join(f"{kv.key}={plain(kv.value)}" for kv in v.kvlist_value.values) + "}"
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "string_value":
        return escape(v.string_value)
    return str(getattr(v, kind))


_TYPE_NAMES = {
    "string_value": "Str",
    "bool_value": "Bool",
    "int_value": "Int",
    "double_value": "Double",
    "array_value": "Slice",
    "kvlist_value": "Map",
    "bytes_value": "Bytes",
}


def typed(v: Any) -> str:
    """An AnyValue with its type, for the detailed dump: Str(x), Int(3), Map({...})."""
    kind = v.WhichOneof("value")
    return f"{_TYPE_NAMES[kind]}({plain(v)})" if kind else "Empty()"


def attrs_inline(kvs: Any) -> str:
    return " ".join(f"{kv.key}={plain(kv.value)}" for kv in kvs)


def _timestamp(ns: int) -> str:
    if not ns:
        return "0"
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dump(msg: Any, out: list[str], depth: int = 1) -> None:
    """Every set field of `msg`, one per line, ids in hex, enums by name, times as ISO-8601."""
    pad = "    " * depth
    for fd, value in msg.ListFields():
        name = fd.name
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            type_name = fd.message_type.full_name
            if type_name == "opentelemetry.proto.common.v1.KeyValue":
                out.append(f"{pad}{name}:")
                out.extend(f"{pad}    -> {kv.key}: {typed(kv.value)}" for kv in value)
            elif type_name == "opentelemetry.proto.common.v1.AnyValue":
                out.append(f"{pad}{name}: {typed(value)}")
            elif fd.is_repeated:
                for i, sub in enumerate(value):
                    out.append(f"{pad}{name} #{i}")
                    dump(sub, out, depth + 1)
            else:
                out.append(f"{pad}{name}:")
                dump(value, out, depth + 1)
            continue
        if fd.type == FieldDescriptor.TYPE_BYTES:
            text = value.hex() if name in _ID_FIELDS else base64.b64encode(value).decode()
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            ev = fd.enum_type.values_by_number.get(value)
            text = f"{ev.name if ev else 'UNKNOWN'} ({value})"
        elif name.endswith("time_unix_nano"):
            text = f"{_timestamp(value)} ({value})"
        elif fd.is_repeated:
            text = "[" + ", ".join(str(x) for x in value) + "]"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = escape(value)
        else:
            text = str(value)
        out.append(f"{pad}{name}: {text}")


# ---------------------------------------------------------------- one-line items
def _point_value(kind: str, p: Any) -> str:
    if kind in ("gauge", "sum"):
        which = p.WhichOneof("value")
        return str(getattr(p, which)) if which else ""
    parts = [f"count={p.count}", f"sum={p.sum}"]
    if kind == "histogram":
        if p.HasField("min"):
            parts.append(f"min={p.min}")
        if p.HasField("max"):
            parts.append(f"max={p.max}")
        bounds = [*p.explicit_bounds, "+Inf"]
        parts.extend(f"le{b}={c}" for b, c in zip(bounds, p.bucket_counts, strict=False))
    elif kind == "exponential_histogram":
        parts.append(f"scale={p.scale}")
    elif kind == "summary":
        parts.extend(f"q{q.quantile}={q.value}" for q in p.quantile_values)
    return " ".join(parts)


def _item_lines(signal: Signal, item: Any) -> list[str]:
    if signal is Signal.TRACES:
        dur_ms = (item.end_time_unix_nano - item.start_time_unix_nano) / 1e6
        return [
            f"{item.name} {item.trace_id.hex()} {item.span_id.hex()} kind={item.kind} "
            f"status={item.status.code} duration={dur_ms:.3f}ms {attrs_inline(item.attributes)}".rstrip()
        ]
    if signal is Signal.LOGS:
        sev = item.severity_text or str(item.severity_number)
        return [f"{sev} {plain(item.body)} {attrs_inline(item.attributes)}".rstrip()]
    kind = item.WhichOneof("data")
    if kind is None:
        return [f"{item.name} (no data)"]
    return [
        f"{item.name}{{{','.join(f'{kv.key}={plain(kv.value)}' for kv in p.attributes)}}} "
        f"{_point_value(kind, p)}"
        for p in getattr(item, kind).data_points
    ]


# ---------------------------------------------------------------- rendering a batch
_ITEM_TITLE = {Signal.TRACES: "Span", Signal.METRICS: "Metric", Signal.LOGS: "LogRecord"}


def summary_fields(batch: Batch) -> dict[str, int]:
    """The counts of the summary line, named like the Collector's ("resource spans", "spans", ...)."""
    n_res = batch.resource_count  # without parsing a batch that holds only wire bytes
    if batch.signal is Signal.METRICS:
        return {"resource_metrics": n_res, "metrics": len(batch), "data_points": batch.item_count}
    if batch.signal is Signal.TRACES:
        return {"resource_spans": n_res, "spans": len(batch)}
    return {"resource_logs": n_res, "log_records": len(batch)}


def render(batch: Batch, verbosity: str) -> str:
    """The text logged after the summary line for `normal` and `detailed`."""
    lay, sig = batch.layout, batch.signal
    res_title = "Resource" + lay.resource_field.split("_")[1].capitalize()
    scope_title = "Scope" + lay.scope_field.split("_")[1].capitalize()
    out: list[str] = []
    for r, res in enumerate(batch.resources()):
        if verbosity == "normal":
            out.append(f"{res_title} #{r} {attrs_inline(res.resource.attributes)}".rstrip())
        else:
            out.append(f"{res_title} #{r}")
            out.append(f"    schema_url: {res.schema_url}")
            dump(res.resource, out)
        for s, scope in enumerate(getattr(res, lay.scope_field)):
            sc = scope.scope
            head = f"{scope_title} #{s} {sc.name}{'@' + sc.version if sc.version else ''}".rstrip()
            out.append(head)
            if verbosity == "detailed":
                out.append(f"    schema_url: {scope.schema_url}")
                dump(sc, out)
            for i, item in enumerate(getattr(scope, lay.item_field)):
                if verbosity == "normal":
                    out.extend("    " + line for line in _item_lines(sig, item))
                else:
                    out.append(f"{_ITEM_TITLE[sig]} #{i}")
                    dump(item, out)
    return "\n".join(out)


class DebugExporter(Exporter):
    config: DebugConfig

    def __init__(self, ctx: ComponentContext, config: DebugConfig) -> None:
        super().__init__(ctx, config)
        self._sampler = Sampler(config.sampling_initial, config.sampling_thereafter)
        name = str(ctx.id)
        self._m_sent = {s: c.labels(exporter=name) for s, c in ctx.telemetry.exporter_sent.items()}

    async def consume(self, batch: Batch) -> None:
        sig = batch.signal
        if isinstance(batch, AnomalyBatch):
            self._alerts(batch)
            self._m_sent[sig].inc(batch.item_count)
            return
        if self._sampler.allow(sig.value):
            try:
                self.logger.info(_TITLES[sig], extra={"fields": summary_fields(batch)})
                if self.config.verbosity != "basic":
                    self.logger.info(render(batch, self.config.verbosity))
            except Exception:  # a rendering bug must never lose data for other exporters
                self.logger.exception("could not render batch")
        self._m_sent[sig].inc(batch.item_count)

    def _alerts(self, batch: AnomalyBatch) -> None:
        """Alerts are never sampled away: one line each, the full JSON at `detailed`."""
        for ev in batch.events:
            fields = {
                "type": ev.type.value,
                "severity": ev.severity.value,
                "service": ev.service,
                "model": ev.model,
                "value": ev.value,
                "baseline": ev.baseline,
                "score": round(ev.score, 3),
                "count": ev.count,
            }
            if self.config.verbosity == "detailed":
                fields = ev.to_json()
            self.logger.warning("Anomaly", extra={"fields": fields})


FACTORY = Factory(
    type="debug",
    kind=Kind.EXPORTER,
    config=DebugConfig,
    create=DebugExporter,
    signals=frozenset(Signal),
    description="Logs pipeline data (summary, one line per item, or a full dump).",
)
