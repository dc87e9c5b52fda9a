"""Raw OTLP/gRPC probes: status codes, gzip, size limit, RetryInfo, auth, partial success."""

from __future__ import annotations

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import RunningGateway, free_port, running_gateway, wait_until
from tests.receivers.otlp_helpers import (
    gateway_config,
    make_logs_request,
    make_metrics_request,
    make_trace_request,
    spans_in_file,
)

TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def call(port: int, method: str, body: bytes, **kw):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        return fn(body, timeout=10, **kw)


@pytest.fixture
def gw(ports, tmp_path):
    cfg = gateway_config(ports, tmp_path / "out.jsonl", grpc={"max_recv_msg_size_mib": 0.5})
    with running_gateway(cfg) as g:
        g.port = ports["grpc"]
        g.out = tmp_path / "out.jsonl"
        yield g


def test_export_all_signals(gw):
    req = make_trace_request(3)
    resp = ExportTraceServiceResponse.FromString(call(gw.port, TRACE_METHOD, req.SerializeToString()))
    assert not resp.HasField("partial_success")
    ExportMetricsServiceResponse.FromString(
        call(
            gw.port,
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            make_metrics_request(4).SerializeToString(),
        )
    )
    ExportLogsServiceResponse.FromString(
        call(
            gw.port,
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            make_logs_request(2).SerializeToString(),
        )
    )
    spans = wait_until(lambda: len(spans_in_file(gw.out)) == 3 and spans_in_file(gw.out))
    assert [s.span_id for s in spans] == [s.span_id for s in req.resource_spans[0].scope_spans[0].spans]
    assert gw.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="grpc") == 3
    assert gw.metric("otelcol_receiver_accepted_metric_points_total", receiver="otlp", transport="grpc") == 4
    assert gw.metric("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="grpc") == 2


def test_gzip_compressed_call(gw):
    call(gw.port, TRACE_METHOD, make_trace_request(2).SerializeToString(), compression=grpc.Compression.Gzip)
    wait_until(lambda: len(spans_in_file(gw.out)) == 2)


def test_undecodable_is_invalid_argument(gw):
    with pytest.raises(grpc.RpcError) as ei:
        call(gw.port, TRACE_METHOD, b"\xff\xff\xff\xff")
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_after_decompression_is_resource_exhausted(gw):
    req = make_trace_request(1)
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    a = sp.attributes.add()
    a.key, a.value.string_value = "big", "x" * (2 * 1024 * 1024)  # compresses to a few KiB
    with pytest.raises(grpc.RpcError) as ei:
        call(gw.port, TRACE_METHOD, req.SerializeToString(), compression=grpc.Compression.Gzip)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_refusal_is_unavailable_with_retry_info(gw):
    adm = gw.gateway.admission
    adm.refusing, adm.reason, adm.retry_after = True, "memory above soft limit", 2.5
    try:
        with pytest.raises(grpc.RpcError) as ei:
            call(gw.port, TRACE_METHOD, make_trace_request(1).SerializeToString())
    finally:
        adm.refusing = False
    err = ei.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    md = dict(err.trailing_metadata())
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 2 and info.retry_delay.nanos == 500_000_000
    assert error_details_pb2.RetryInfo.FromString(md["google.rpc.retryinfo-bin"]) == info


def test_partial_success(gw):
    req = make_trace_request(3, bad={0: "zero_span_id"})
    resp = ExportTraceServiceResponse.FromString(call(gw.port, TRACE_METHOD, req.SerializeToString()))
    assert resp.partial_success.rejected_spans == 1
    assert "span_id" in resp.partial_success.error_message
    wait_until(lambda: len(spans_in_file(gw.out)) == 2)


def test_bearer_auth(ports, tmp_path):
    cfg = gateway_config(ports, tmp_path / "o.jsonl", grpc={"auth": {"bearer_token": "t0ken"}})
    with running_gateway(cfg):
        body = make_trace_request(1).SerializeToString()
        with pytest.raises(grpc.RpcError) as ei:
            call(ports["grpc"], TRACE_METHOD, body)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as ei:
            call(ports["grpc"], TRACE_METHOD, body, metadata=(("authorization", "Bearer wrong"),))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        call(ports["grpc"], TRACE_METHOD, body, metadata=(("authorization", "Bearer t0ken"),))


def test_port_in_use_fails_start(ports, tmp_path):
    """Two gateways on one port must not silently share it (SO_REUSEPORT is opt-in)."""
    cfg = gateway_config(ports, tmp_path / "o.jsonl")
    with running_gateway(cfg):
        other = dict(ports, admin=free_port())
        rg = RunningGateway(yaml.safe_dump(gateway_config(other, tmp_path / "p.jsonl")))
        with pytest.raises(OSError, match="cannot listen"):
            rg.start()
        rg.loop.call_soon_threadsafe(rg.loop.stop)
