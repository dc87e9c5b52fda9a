"""otlp exporter against real gRPC and HTTP servers started inside the tests."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import orjson
import pytest
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pydantic import ValidationError

from exporters.otlp import FACTORY, OtlpExporter, parse_retry_after
from gateway.batch import BATCH_TYPES, OTLP_SIGNALS, Batch, LogBatch, MetricBatch, Signal, SpanBatch
from gateway.component import ComponentId, Kind, RefusedError
from gateway.otlpjson import decode
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.conftest import free_port
from tests.gateway.test_otlpjson import TRACE_ID, make_logs, make_metrics, make_traces

REQUEST_TYPES: dict[str, Any] = {
    "opentelemetry.proto.collector.trace.v1.TraceService": ExportTraceServiceRequest,
    "opentelemetry.proto.collector.metrics.v1.MetricsService": ExportMetricsServiceRequest,
    "opentelemetry.proto.collector.logs.v1.LogsService": ExportLogsServiceRequest,
}
FAST_RETRY = {"initial_interval": "10ms", "max_interval": "20ms", "randomization_factor": 0}


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def build(config: dict[str, Any], name: str = "") -> tuple[OtlpExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("otlp", name), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(exp, OtlpExporter)
    return exp, tel


def metric(tel: SelfTelemetry, name: str, exporter: str = "otlp") -> float:
    return float(tel.registry.get_sample_value(name, {"exporter": exporter}) or 0.0)


def batches() -> list[Batch]:
    return [
        SpanBatch.from_request(make_traces()),
        MetricBatch.from_request(make_metrics()),
        LogBatch.from_request(make_logs()),
    ]


# ---------------------------------------------------------------- servers
@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


Responder = Callable[[int, Received, Any], Awaitable[bytes]]


async def ok(_n: int, _req: Received, _ctx: Any) -> bytes:
    return b""


class GrpcSink:
    """A gRPC server answering every method with raw bytes, recording the raw requests."""

    def __init__(self, respond: Responder = ok, port: int | None = None) -> None:
        self.respond = respond
        self.port = port or free_port()
        self.received: list[Received] = []
        self.server: grpc.aio.Server | None = None

    async def __aenter__(self) -> GrpcSink:
        sink = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                method = details.method

                async def unary(request: bytes, context: Any) -> bytes:
                    rec = Received(method, request, dict(context.invocation_metadata()))
                    sink.received.append(rec)
                    return await sink.respond(len(sink.received), rec, context)

                return grpc.unary_unary_rpc_method_handler(unary)

        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([Handler()])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.stop(None)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


class HttpSink:
    """An aiohttp server recording POST bodies; `respond` builds the response."""

    def __init__(self, respond: Callable[[int, Received], Awaitable[web.Response]] | None = None) -> None:
        self.respond = respond
        self.port = free_port()
        self.received: list[Received] = []
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates Content-Encoding: gzip
        rec = Received(request.path, body, dict(request.headers))
        self.received.append(rec)
        if self.respond is not None:
            return await self.respond(len(self.received), rec)
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    async def __aenter__(self) -> HttpSink:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def retry_status(code: int, delay_s: float | None) -> bytes:
    st = status_pb2.Status(code=code, message="slow down")
    if delay_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(int(delay_s * 1000))
        st.details.add().Pack(info)
    return st.SerializeToString()


# ---------------------------------------------------------------- gRPC
def test_grpc_forwards_exact_bytes_for_every_signal() -> None:
    sent = batches()

    async def scenario() -> tuple[GrpcSink, SelfTelemetry]:
        async with GrpcSink() as sink:
            exp, tel = build({"endpoint": sink.endpoint, "headers": {"X-Tenant": "acme"}})
            await exp.start()
            for b in sent:
                await exp.consume(b)
            await exp.shutdown()
        return sink, tel

    sink, tel = run(scenario())
    assert len(sink.received) == 3
    by_service = {r.path.rsplit("/", 2)[1]: r for r in sink.received}
    assert {r.path.rsplit("/", 1)[1] for r in sink.received} == {"Export"}
    for b in sent:
        service = {
            Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
            Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
            Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
        }[b.signal]
        rec = by_service[service]
        assert rec.body == b.serialize()  # no re-encoding
        assert REQUEST_TYPES[service].FromString(rec.body) == b.request
        assert rec.headers["x-tenant"] == "acme"
        assert "LLM-Sentinel" in rec.headers["user-agent"]
    got = ExportTraceServiceRequest.FromString(
        by_service["opentelemetry.proto.collector.trace.v1.TraceService"].body
    )
    span = got.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE_ID and span.events[0].name == "gen_ai.content.prompt"
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 2
    assert metric(tel, "otelcol_exporter_sent_metric_points_total") == sent[1].item_count
    assert metric(tel, "otelcol_exporter_sent_log_records_total") == 2


def test_grpc_unavailable_with_retry_info_waits_the_hinted_delay() -> None:
    hint = 0.4

    async def respond(n: int, _req: Received, ctx: Any) -> bytes:
        if n <= 2:
            await ctx.abort(
                grpc.StatusCode.UNAVAILABLE,
                "slow down",
                trailing_metadata=(("grpc-status-details-bin", retry_status(14, hint)),),
            )
        return ExportTraceServiceResponse().SerializeToString()

    batch = SpanBatch.from_request(make_traces())

    async def scenario() -> tuple[GrpcSink, SelfTelemetry]:
        async with GrpcSink(respond) as sink:
            exp, tel = build({"endpoint": sink.endpoint, "retry_on_failure": FAST_RETRY})
            await exp.start()
            await exp.consume(batch)
            await exp.shutdown()
        return sink, tel

    sink, tel = run(scenario())
    assert len(sink.received) == 3
    gaps = [b.at - a.at for a, b in zip(sink.received, sink.received[1:], strict=False)]
    assert all(g >= hint - 0.02 for g in gaps), gaps  # the backoff alone would be ~10ms
    assert all(r.body == batch.serialize() for r in sink.received)
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 2
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 0


@pytest.mark.parametrize(
    ("code", "details", "attempts"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, 1),  # no RetryInfo: the server cannot recover
        (grpc.StatusCode.RESOURCE_EXHAUSTED, retry_status(8, 0.05), 2),
        (grpc.StatusCode.INVALID_ARGUMENT, None, 1),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, 2),
        (grpc.StatusCode.DATA_LOSS, None, 2),
        (grpc.StatusCode.INTERNAL, None, 1),
    ],
    ids=["exhausted", "exhausted-retryinfo", "invalid-argument", "deadline", "data-loss", "internal"],
)
def test_grpc_error_classification(code: grpc.StatusCode, details: bytes | None, attempts: int) -> None:
    async def respond(n: int, _req: Received, ctx: Any) -> bytes:
        if n == 1:
            md = (("grpc-status-details-bin", details),) if details else ()
            await ctx.abort(code, "nope", trailing_metadata=md)
        return b""

    async def scenario() -> tuple[GrpcSink, SelfTelemetry]:
        async with GrpcSink(respond) as sink:
            exp, tel = build({"endpoint": sink.endpoint, "retry_on_failure": FAST_RETRY})
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        return sink, tel

    sink, tel = run(scenario())
    assert len(sink.received) == attempts
    failed = metric(tel, "otelcol_exporter_send_failed_spans_total")
    assert (failed, metric(tel, "otelcol_exporter_sent_spans_total")) == ((2, 0) if attempts == 1 else (0, 2))


def test_grpc_partial_success_is_logged_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    async def respond(_n: int, _req: Received, _ctx: Any) -> bytes:
        resp = ExportTraceServiceResponse()
        resp.partial_success.rejected_spans = 1
        resp.partial_success.error_message = "span 1 has no name"
        return resp.SerializeToString()

    async def scenario() -> GrpcSink:
        async with GrpcSink(respond) as sink:
            exp, _ = build({"endpoint": sink.endpoint, "retry_on_failure": FAST_RETRY})
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        return sink

    caplog.set_level(logging.WARNING, logger="sentinel.exporter.otlp")
    sink = run(scenario())
    assert len(sink.received) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("rejected 1 spans" in m and "span 1 has no name" in m for m in warnings), warnings


def test_grpc_connection_refused_is_retried_until_the_server_appears() -> None:
    port = free_port()
    batch = SpanBatch.from_request(make_traces())

    async def scenario() -> GrpcSink:
        exp, _ = build(
            {"endpoint": f"http://127.0.0.1:{port}", "retry_on_failure": FAST_RETRY, "timeout": "1s"}
        )
        await exp.start()
        await exp.consume(batch)
        await asyncio.sleep(0.3)  # a few failed attempts
        async with GrpcSink(port=port) as sink:
            await exp.shutdown()
        return sink

    sink = run(scenario())
    assert [r.body for r in sink.received] == [batch.serialize()]


def test_queue_full_refuses_and_counts_enqueue_failed() -> None:
    async def scenario() -> tuple[GrpcSink, SelfTelemetry, RefusedError]:
        gate = asyncio.Event()

        async def respond(_n: int, _req: Received, _ctx: Any) -> bytes:
            await gate.wait()
            return b""

        async with GrpcSink(respond) as sink:
            exp, tel = build(
                {"endpoint": sink.endpoint, "sending_queue": {"queue_size": 1, "num_consumers": 1}}
            )
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces(1)))  # taken by the consumer
            while not sink.received:
                await asyncio.sleep(0.01)
            await exp.consume(SpanBatch.from_request(make_traces(1)))  # waits in the queue
            with pytest.raises(RefusedError) as info:
                await exp.consume(SpanBatch.from_request(make_traces(3)))
            gate.set()
            await exp.shutdown()
        return sink, tel, info.value

    sink, tel, err = run(scenario())
    assert "full" in str(err) and err.retry_after
    assert metric(tel, "otelcol_exporter_enqueue_failed_spans_total") == 3
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 2
    assert len(sink.received) == 2


# ---------------------------------------------------------------- HTTP
@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_posts_each_signal_to_its_path(protocol: str) -> None:
    sent = batches()

    async def scenario() -> HttpSink:
        async with HttpSink() as sink:
            exp, _ = build(
                {"endpoint": sink.url, "protocol": protocol, "headers": {"Authorization": "Bearer t"}}
            )
            await exp.start()
            for b in sent:
                await exp.consume(b)
            await exp.shutdown()
        return sink

    sink = run(scenario())
    by_path = {r.path: r for r in sink.received}
    assert set(by_path) == {"/v1/traces", "/v1/metrics", "/v1/logs"}
    for b in sent:
        rec = by_path[f"/v1/{b.signal.value}"]
        assert rec.headers["Content-Encoding"] == "gzip"
        assert rec.headers["Authorization"] == "Bearer t"
        cls = BATCH_TYPES[b.signal].layout.request_cls
        if protocol == "http/json":
            assert rec.headers["Content-Type"] == "application/json"
            assert decode(rec.body, cls) == b.request
        else:
            assert rec.headers["Content-Type"] == "application/x-protobuf"
            assert rec.body == b.serialize()
    if protocol == "http/json":
        raw = orjson.loads(by_path["/v1/traces"].body)
        assert raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == TRACE_ID.hex()


def test_http_signal_endpoint_override_and_no_compression() -> None:
    async def scenario() -> HttpSink:
        async with HttpSink() as sink:
            exp, _ = build(
                {
                    "endpoint": "http://127.0.0.1:1",  # unused: the override wins
                    "traces_endpoint": f"{sink.url}/custom/spans",
                    "protocol": "http/protobuf",
                    "compression": "none",
                }
            )
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        return sink

    sink = run(scenario())
    assert [r.path for r in sink.received] == ["/custom/spans"]
    assert "Content-Encoding" not in sink.received[0].headers


def test_http_503_retry_after_is_honoured() -> None:
    async def respond(n: int, _rec: Received) -> web.Response:
        if n == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=200, body=ExportTraceServiceResponse().SerializeToString())

    async def scenario() -> tuple[HttpSink, SelfTelemetry]:
        async with HttpSink(respond) as sink:
            exp, tel = build(
                {"endpoint": sink.url, "protocol": "http/protobuf", "retry_on_failure": FAST_RETRY}
            )
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        return sink, tel

    sink, tel = run(scenario())
    assert len(sink.received) == 2
    assert sink.received[1].at - sink.received[0].at >= 0.98
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 2


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_400_is_permanent_and_reports_the_status_message(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def respond(_n: int, _rec: Received) -> web.Response:
        st = status_pb2.Status(code=3, message="trace ids must be 16 bytes")
        if protocol == "http/json":
            return web.Response(
                status=400,
                body=orjson.dumps({"code": 3, "message": st.message}),
                content_type="application/json",
            )
        return web.Response(status=400, body=st.SerializeToString(), content_type="application/x-protobuf")

    async def scenario() -> tuple[HttpSink, SelfTelemetry]:
        async with HttpSink(respond) as sink:
            exp, tel = build({"endpoint": sink.url, "protocol": protocol, "retry_on_failure": FAST_RETRY})
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        return sink, tel

    caplog.set_level(logging.ERROR, logger="sentinel.exporter.otlp")
    sink, tel = run(scenario())
    assert len(sink.received) == 1  # never retried
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 2
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 0
    assert any(
        "HTTP 400" in r.getMessage() and "trace ids must be 16 bytes" in r.getMessage()
        for r in caplog.records
    )


def test_http_partial_success_in_json(caplog: pytest.LogCaptureFixture) -> None:
    async def respond(_n: int, _rec: Received) -> web.Response:
        body = orjson.dumps({"partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "empty body"}})
        return web.Response(status=200, body=body, content_type="application/json")

    async def scenario() -> None:
        async with HttpSink(respond) as sink:
            exp, _ = build({"endpoint": f"127.0.0.1:{sink.port}", "protocol": "http/json"})  # no scheme
            await exp.start()
            await exp.consume(LogBatch.from_request(make_logs()))
            await exp.shutdown()

    caplog.set_level(logging.WARNING, logger="sentinel.exporter.otlp")
    run(scenario())
    assert any("rejected 1 log records: empty body" in r.getMessage() for r in caplog.records)


def test_http_connection_error_is_retried_then_given_up() -> None:
    async def scenario() -> SelfTelemetry:
        exp, tel = build(
            {
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "protocol": "http/protobuf",
                "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": "200ms"},
            }
        )
        await exp.start()
        await exp.consume(SpanBatch.from_request(make_traces()))
        await exp.shutdown()
        return tel

    tel = run(scenario())
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 2


# ---------------------------------------------------------------- config and helpers
def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (parse_retry_after(later) or 0) <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({}, "endpoint"),
        ({"endpoint": "x:1", "protocol": "thrift"}, "protocol"),
        ({"endpoint": "x:1", "traces_endpoint": "http://x/v1/traces"}, "only apply"),
        ({"endpoint": "x:1", "tls": {"cert_file": "c.pem"}}, "together"),
        ({"endpoint": "x:1", "tls": {"insecure_skip_verify": True}}, "grpc"),
        ({"endpoint": "x:1", "compression": "zstd"}, "compression"),
        ({"endpoint": "x:1", "bogus": 1}, "bogus"),
    ],
)
def test_config_errors(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        FACTORY.config.model_validate(config)
    assert needle in str(info.value)


def test_http_urls() -> None:
    def urls(cfg: dict[str, Any]) -> dict[str, str]:
        exp, _ = build({"protocol": "http/protobuf", **cfg})
        return {s.value: exp._url(s) for s in OTLP_SIGNALS}

    assert urls({"endpoint": "collector:4318"})["traces"] == "http://collector:4318/v1/traces"
    assert (
        urls({"endpoint": "https://otlp.example.com/otlp/"})["logs"]
        == "https://otlp.example.com/otlp/v1/logs"
    )
    assert urls({"endpoint": "collector:4318", "tls": {"insecure": False}})["metrics"] == (
        "https://collector:4318/v1/metrics"
    )


# ---------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throwaway certificate for localhost / 127.0.0.1 (needs the openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.parametrize("tls", ["ca_file", "insecure_skip_verify"])
def test_http_over_tls(self_signed: tuple[str, str], tls: str) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    batch = SpanBatch.from_request(make_traces())

    async def scenario() -> HttpSink:
        sink = HttpSink()
        app = web.Application()
        app.router.add_post("/{tail:.*}", sink._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", sink.port, ssl_context=server_ctx).start()
        try:
            settings = {"ca_file": cert} if tls == "ca_file" else {"insecure_skip_verify": True}
            exp, _ = build(
                {"endpoint": f"https://localhost:{sink.port}", "protocol": "http/protobuf", "tls": settings}
            )
            await exp.start()
            await exp.consume(batch)
            await exp.shutdown()
        finally:
            await runner.cleanup()
        return sink

    sink = run(scenario())
    assert [r.body for r in sink.received] == [batch.serialize()]


def test_https_certificates_are_verified_by_default(self_signed: tuple[str, str]) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def scenario() -> tuple[HttpSink, SelfTelemetry]:
        sink = HttpSink()
        app = web.Application()
        app.router.add_post("/{tail:.*}", sink._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", sink.port, ssl_context=server_ctx).start()
        try:
            exp, tel = build(
                {
                    "endpoint": f"https://localhost:{sink.port}",
                    "protocol": "http/protobuf",
                    "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": "200ms"},
                }
            )
            await exp.start()
            await exp.consume(SpanBatch.from_request(make_traces()))
            await exp.shutdown()
        finally:
            await runner.cleanup()
        return sink, tel

    sink, tel = run(scenario())
    assert sink.received == []  # the handshake failed: an unknown issuer is not trusted
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 2


def test_grpc_over_tls(self_signed: tuple[str, str]) -> None:
    cert, key = self_signed
    batch = SpanBatch.from_request(make_traces())

    async def scenario() -> list[bytes]:
        received: list[bytes] = []

        async def unary(request: bytes, _ctx: Any) -> bytes:
            received.append(request)
            return b""

        class Handler(grpc.GenericRpcHandler):
            def service(self, _details: Any) -> Any:
                return grpc.unary_unary_rpc_method_handler(unary)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([Handler()])
        port = free_port()
        creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        try:
            exp, _ = build({"endpoint": f"localhost:{port}", "tls": {"ca_file": cert}})
            assert exp.config.use_tls()  # a ca_file implies TLS for a bare host:port
            await exp.start()
            await exp.consume(batch)
            await exp.shutdown()
        finally:
            await server.stop(None)
        return received

    assert run(scenario()) == [batch.serialize()]
