"""`sentinel replay --otlp`: recorded telemetry through the live detection path, as fast as possible.

The config's pipelines are built exactly as `run` builds them (same processors,
same `detect` connector), but nothing listens and nothing is exported: the
receivers are replaced by a reader of OTLP/JSON lines (what the `file` exporter
writes; `.gz` accepted) and every exporter by a sink; alerts reaching an
`anomalies` pipeline are written to `--out`, one JSON object per line. Event
time comes from the spans, so the same file always gives the same alerts.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import otlpjson
from gateway.anomaly import AnomalyBatch
from gateway.batch import Batch, Signal, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.config.model import GatewayConfig, build_config
from gateway.config.source import load_text
from gateway.pipeline import build_graph
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry

# Used when no --config is given: understand LLM spans, detect, write alerts.
REPLAY_CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  genai: {}
connectors:
  detect: {idle_advance: false}
exporters:
  debug: {}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai], exporters: [detect]}
    anomalies: {receivers: [detect], exporters: [debug]}
"""


@dataclass
class AlertWriter:
    """Sink of the anomalies pipeline during replay."""

    out: IO[bytes]
    written: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    async def consume(self, batch: Any) -> None:
        if isinstance(batch, AnomalyBatch):
            for ev in batch.events:
                self.out.write(ev.to_bytes() + b"\n")
                self.written += 1
                self.by_type[ev.type.value] = self.by_type.get(ev.type.value, 0) + 1


class NullSink:
    async def consume(self, batch: Batch) -> None:
        return None


def open_lines(path: Path) -> Iterator[bytes]:
    f: Any = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def replay_config(paths: list[str]) -> GatewayConfig:
    if paths:
        from gateway.config.model import load_config

        config = load_config(paths)
    else:
        raw, locs = load_text(REPLAY_CONFIG, "<replay default>")
        config = build_config(raw, locs, ["<replay default>"])
    if not config.components[Kind.CONNECTOR]:
        raise ValueError("the config has no `detect` connector: nothing would detect anomalies during replay")
    return config


class Progress:
    """A one-line progress bar on stderr, redrawn at most ~10 times a second."""

    def __init__(self, total_bytes: int, stream: IO[str] = sys.stderr, enabled: bool = True) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self._last = 0.0
        self.started = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {frac * 100:5.1f}%  {note}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


async def replay_otlp(
    in_path: Path, out_path: Path, config_paths: list[str], progress: bool = True
) -> dict[str, Any]:
    config = replay_config(config_paths)
    telemetry, admission = SelfTelemetry(), Admission()
    out = open(out_path, "wb")  # noqa: SIM115
    writer = AlertWriter(out)
    anomaly_exporters = {e for p in config.pipelines if p.signal is Signal.ANOMALIES for e in p.exporters}

    def sink_for(cid: ComponentId) -> Any:
        return writer if cid in anomaly_exporters else NullSink()

    graph = build_graph(config, telemetry, admission, sink_for=sink_for)
    heads = [p.head for p in graph.pipelines if p.signal is Signal.TRACES and not p.fed_by_connector]
    if not heads:
        raise ValueError("the config has no traces pipeline fed by a receiver")
    for proc in graph.all_processors():
        await proc.start()
    bar = Progress(in_path.stat().st_size, enabled=progress)
    t0 = time.monotonic()
    spans = requests = done = 0
    try:
        for line in open_lines(in_path):
            done += len(line) + 1
            if b'"resourceSpans"' not in line[:64]:
                continue
            req = otlpjson.decode(line, ExportTraceServiceRequest)
            batch = SpanBatch.from_request(req)
            spans += len(batch)
            requests += 1
            for i, head in enumerate(heads):
                await head.consume(batch if i == len(heads) - 1 else batch.copy())
            bar.update(done, f"{spans:,} spans, {writer.written:,} alerts")
        # end of input: flush in pipeline order (receiver-fed pipelines, connectors, then theirs)
        for fed in (False, True):
            if fed:
                for conn in graph.connectors.values():
                    await conn.shutdown()
            for pl in graph.pipelines:
                if pl.fed_by_connector == fed:
                    for proc in pl.processors:
                        await proc.shutdown()
    finally:
        bar.close()
        out.close()
    seconds = time.monotonic() - t0
    return {
        "requests": requests,
        "spans": spans,
        "alerts": writer.written,
        "by_type": dict(sorted(writer.by_type.items())),
        "seconds": round(seconds, 3),
        "spans_per_second": round(spans / seconds) if seconds > 0 else None,
    }


def summary_line(result: dict[str, Any]) -> str:
    return orjson.dumps(result).decode()
