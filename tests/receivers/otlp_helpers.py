"""Config and payload builders shared by the OTLP receiver tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import otlpjson


def gateway_config(
    ports: dict[str, int],
    out: Path,
    *,
    grpc: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    processors: list[str] | None = None,
    processor_defs: dict[str, Any] | None = None,
    signals: tuple[str, ...] = ("traces", "metrics", "logs"),
) -> dict[str, Any]:
    """A gateway with one OTLP receiver whose every signal goes to a file exporter."""
    procs = processors or []
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}", **(grpc or {})},
                    "http": {"endpoint": f"127.0.0.1:{ports['http']}", **(http or {})},
                }
            }
        },
        "processors": processor_defs or {},
        "exporters": {
            "file/out": {
                "path": str(out),
                "flush_interval": "10ms",
                "sending_queue": {"num_consumers": 1},
            }
        },
        "service": {
            "pipelines": {
                s: {"receivers": ["otlp"], "processors": procs, "exporters": ["file/out"]} for s in signals
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{ports['admin']}"}},
            "shutdown_timeout": "10s",
        },
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    import orjson

    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def decode_line(line: bytes, kind: str) -> Any:
    cls = {
        "traces": ExportTraceServiceRequest,
        "metrics": ExportMetricsServiceRequest,
        "logs": ExportLogsServiceRequest,
    }[kind]
    return otlpjson.decode(line, cls)


def spans_in_file(path: Path) -> list[Any]:
    """Every span written by the file exporter, in file order."""
    spans = []
    if not path.exists():
        return spans
    for line in path.read_bytes().splitlines():
        if b'"resourceSpans"' not in line:
            continue
        req = decode_line(line, "traces")
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    return spans


def make_trace_request(
    n: int = 3, *, service: str = "svc", bad: dict[int, str] | None = None
) -> ExportTraceServiceRequest:
    """`n` valid spans; `bad` maps span index → defect (short_trace_id, zero_span_id, end_before_start)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    ss.scope.name = "test-scope"
    for i in range(n):
        sp = ss.spans.add()
        sp.trace_id = bytes([0xAB] * 15 + [i + 1])
        sp.span_id = bytes([0xCD] * 7 + [i + 1])
        sp.name = f"span-{i}"
        sp.kind = 3
        sp.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        sp.end_time_unix_nano = sp.start_time_unix_nano + 1_000_000
        a = sp.attributes.add()
        a.key, a.value.int_value = "i", i
        ev = sp.events.add()
        ev.name, ev.time_unix_nano = "ev", sp.start_time_unix_nano + 5
        defect = (bad or {}).get(i)
        if defect == "short_trace_id":
            sp.trace_id = b"\x01" * 8
        elif defect == "zero_span_id":
            sp.span_id = bytes(8)
        elif defect == "end_before_start":
            sp.end_time_unix_nano = sp.start_time_unix_nano - 1
    return req


def make_metrics_request(points: int = 2) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    sm = rm.scope_metrics.add()
    m = sm.metrics.add()
    m.name = "requests"
    m.sum.is_monotonic = True
    m.sum.aggregation_temporality = 2
    for i in range(points):
        dp = m.sum.data_points.add()
        dp.as_int = i
        dp.time_unix_nano = 1_700_000_000_000_000_000 + i
    return req


def make_logs_request(records: int = 2) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    sl = rl.scope_logs.add()
    for i in range(records):
        lr = sl.log_records.add()
        lr.body.string_value = f"record {i}"
        lr.time_unix_nano = 1_700_000_000_000_000_000 + i
        lr.severity_number = 9
    return req
