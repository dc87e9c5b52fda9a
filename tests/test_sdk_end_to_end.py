"""The real OpenTelemetry Python SDK exports to a running gateway over gRPC and HTTP.

The file exporter's output proves every span, metric point and log record
arrived intact: ids, attributes, events, links and resource.
"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

from tests.conftest import running_gateway, wait_until
from tests.receivers.otlp_helpers import decode_line, gateway_config, spans_in_file


def exporters(transport: str, ports: dict[str, int]):
    if transport == "grpc":
        ep = f"http://127.0.0.1:{ports['grpc']}"
        return (
            GrpcSpanExporter(endpoint=ep, insecure=True),
            GrpcMetricExporter(endpoint=ep, insecure=True),
            GrpcLogExporter(endpoint=ep, insecure=True),
        )
    base = f"http://127.0.0.1:{ports['http']}"
    return (
        HttpSpanExporter(endpoint=base + "/v1/traces"),
        HttpMetricExporter(endpoint=base + "/v1/metrics"),
        HttpLogExporter(endpoint=base + "/v1/logs"),
    )


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exports_everything_intact(transport, ports, tmp_path):
    out = tmp_path / "out.jsonl"
    resource = Resource.create({"service.name": f"sdk-{transport}", "deployment.environment": "test"})
    with running_gateway(
        gateway_config(ports, out, processors=["batch"], processor_defs={"batch": {"timeout": "50ms"}})
    ):
        span_exp, metric_exp, log_exp = exporters(transport, ports)
        tp = TracerProvider(resource=resource)
        tp.add_span_processor(SimpleSpanProcessor(span_exp))
        tracer = tp.get_tracer("e2e")
        sent = []
        with tracer.start_as_current_span(
            "parent", kind=SpanKind.SERVER, attributes={"http.route": "/chat"}
        ) as p:
            for i in range(20):
                link = Link(p.get_span_context(), {"link.i": i})
                with tracer.start_as_current_span(
                    f"child-{i}", links=[link], attributes={"i": i, "f": 0.5, "ok": True, "tags": ["a", "b"]}
                ) as c:
                    c.add_event("evt", {"n": i})
                    sent.append(c)
            sent.append(p)
        tp.shutdown()

        mp = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(metric_exp, export_interval_millis=60_000)],
        )
        counter = mp.get_meter("e2e").create_counter("llm.calls")
        hist = mp.get_meter("e2e").create_histogram("llm.latency", unit="s")
        for i in range(5):
            counter.add(1, {"model": "m"})
            hist.record(0.1 * i, {"model": "m"})
        mp.shutdown()

        lp = LoggerProvider(resource=resource)
        lp.add_log_record_processor(SimpleLogRecordProcessor(log_exp))
        logger = logging.getLogger(f"e2e.{transport}")
        logger.propagate = False
        logger.addHandler(LoggingHandler(logger_provider=lp))
        logger.setLevel(logging.INFO)
        for i in range(7):
            logger.info("record %d", i)
        lp.shutdown()

        got = wait_until(lambda: len(spans_in_file(out)) == len(sent) and spans_in_file(out), timeout=15)

        def kinds() -> dict[str, list]:
            lines = {"resourceMetrics": [], "resourceLogs": []}
            for line in out.read_bytes().splitlines():
                for k in lines:
                    if f'"{k}"'.encode() in line[:40]:
                        lines[k].append(line)
            return lines

        wait_until(
            lambda: (
                kinds()["resourceMetrics"]
                and sum(
                    len(lr.log_records)
                    for line in kinds()["resourceLogs"]
                    for rl in decode_line(line, "logs").resource_logs
                    for lr in rl.scope_logs
                )
                == 7
            ),
            timeout=15,
        )

    by_id = {s.span_id: s for s in got}
    assert len(by_id) == len(sent)
    for s in sent:
        ctx = s.get_span_context()
        g = by_id[ctx.span_id.to_bytes(8, "big")]
        assert g.trace_id == ctx.trace_id.to_bytes(16, "big")
        assert g.name == s.name
        assert g.start_time_unix_nano == s.start_time and g.end_time_unix_nano == s.end_time
        assert {a.key for a in g.attributes} == set(s.attributes)
        assert [e.name for e in g.events] == [e.name for e in s.events]
        assert len(g.links) == len(s.links)
    child = by_id[sent[3].get_span_context().span_id.to_bytes(8, "big")]
    attrs = {a.key: a.value for a in child.attributes}
    assert attrs["i"].int_value == 3 and attrs["f"].double_value == 0.5 and attrs["ok"].bool_value
    assert [v.string_value for v in attrs["tags"].array_value.values] == ["a", "b"]
    assert child.events[0].attributes[0].value.int_value == 3
    assert child.links[0].attributes[0].key == "link.i"

    metrics_lines = kinds()["resourceMetrics"]
    names = set()
    for line in metrics_lines:
        req = decode_line(line, "metrics")
        for rm in req.resource_metrics:
            svc = {a.key: a.value.string_value for a in rm.resource.attributes}["service.name"]
            assert svc == f"sdk-{transport}"
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    names.add(m.name)
                    if m.name == "llm.calls":
                        assert m.sum.data_points[0].as_int == 5
                    if m.name == "llm.latency":
                        assert m.histogram.data_points[0].count == 5
    assert names == {"llm.calls", "llm.latency"}
