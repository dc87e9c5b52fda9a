"""The fast protobuf trace decoder in a running receiver, side by side with `wire_decoder: reference`.

Clients must not be able to tell the two apart: same data in the pipeline, same status codes and
messages for bodies the protobuf library rejects.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway.wire import traces as wire_traces
from receivers.otlp import export
from tests.conftest import free_port, running_gateway, wait_until
from tests.receivers.otlp_helpers import make_trace_request, spans_in_file

PB = {"Content-Type": "application/x-protobuf"}
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
DECODERS = ("fast", "reference")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("wire") / "out.jsonl"
    ports = {d: {"grpc": free_port(), "http": free_port()} for d in DECODERS}
    receivers = {
        ("otlp" if d == "fast" else "otlp/reference"): {
            "protocols": {
                "grpc": {"endpoint": f"127.0.0.1:{p['grpc']}"},
                "http": {"endpoint": f"127.0.0.1:{p['http']}"},
            },
            **({} if d == "fast" else {"wire_decoder": "reference"}),
        }
        for d, p in ports.items()
    }
    cfg = {
        "receivers": receivers,
        "exporters": {"file/out": {"path": str(out), "flush_interval": "10ms"}},
        "service": {
            "pipelines": {"traces": {"receivers": list(receivers), "exporters": ["file/out"]}},
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{free_port()}"}},
        },
    }
    with running_gateway(cfg) as g:
        g.ports, g.out = ports, out
        assert wait_until(lambda: g.gateway.readiness()[0])  # the decoder is warm before /readyz
        yield g


def _status(resp: requests.Response) -> tuple[int, int, str]:
    st = status_pb2.Status.FromString(resp.content)
    return resp.status_code, st.code, st.message


def _grpc(port: int, body: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            fn(body, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _bad_utf8_deep() -> bytes:
    """A kvlist attribute value whose string is not UTF-8, deep inside a valid request."""
    req = make_trace_request(2)
    attr = req.resource_spans[0].scope_spans[0].spans[1].attributes.add(key="k")
    attr.value.kvlist_value.values.add(key="inner").value.string_value = "MARK"
    return req.SerializeToString().replace(b"MARK", b"MA\xffK")


MALFORMED = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated": make_trace_request(3).SerializeToString()[:-5],
    "invalid_utf8_deep": _bad_utf8_deep(),
    "six_byte_length": b"\x0a\x81\x80\x80\x80\x80\x00" + b"\x00",
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_get_the_same_error_from_both_decoders(gw: Any, body: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any parse error: the point is that the library rejects it
        ExportTraceServiceRequest.FromString(body)
    http = {
        d: _status(requests.post(f"http://127.0.0.1:{gw.ports[d]['http']}/v1/traces", data=body, headers=PB))
        for d in DECODERS
    }
    assert http["fast"] == http["reference"]
    assert http["fast"][:2] == (400, 3) and "invalid protobuf ExportTraceServiceRequest" in http["fast"][2]
    rpc = {d: _grpc(gw.ports[d]["grpc"], body) for d in DECODERS}
    assert rpc["fast"] == rpc["reference"]
    assert rpc["fast"][0] == grpc.StatusCode.INVALID_ARGUMENT


def test_partial_success_is_the_same_from_both_decoders(gw: Any) -> None:
    body = make_trace_request(4, bad={1: "short_trace_id", 3: "end_before_start"}).SerializeToString()
    got = {}
    for d in DECODERS:
        r = requests.post(f"http://127.0.0.1:{gw.ports[d]['http']}/v1/traces", data=body, headers=PB)
        assert r.status_code == 200
        got[d] = r.content
    assert got["fast"] == got["reference"] and got["fast"]  # rejected_spans + message


def test_sdk_spans_arrive_intact_through_the_fast_decoder(gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    original = wire_traces.decode_spans

    def counting(data: bytes) -> Any:
        batch = original(data)
        decoded.append(-1 if batch is None else len(batch))
        return batch

    monkeypatch.setattr(export.wire_traces, "decode_spans", counting)
    tp = TracerProvider(resource=Resource.create({"service.name": "wire-sdk"}))
    url = f"http://127.0.0.1:{gw.ports['fast']['http']}/v1/traces"
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url)))
    tracer = tp.get_tracer("wire")
    sent = []
    for i in range(5):
        with tracer.start_as_current_span(f"op-{i}", attributes={"i": i, "tags": ["a", "é"]}) as span:
            span.add_event("evt", {"n": i})
            sent.append(span.get_span_context().span_id)
    tp.shutdown()

    def sdk_spans() -> list[Any]:
        return [s for s in spans_in_file(gw.out) if s.name.startswith("op-")]

    spans = wait_until(lambda: len(sdk_spans()) == 5 and sdk_spans())
    assert [int.from_bytes(s.span_id, "big") for s in spans] == sent
    assert [s.name for s in spans] == [f"op-{i}" for i in range(5)]
    assert [s.attributes[1].value.array_value.values[1].string_value for s in spans] == ["é"] * 5
    assert gw.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http") >= 5
    assert decoded == [1] * 5  # every request took the fast path (SimpleSpanProcessor: one span each)


def _out_of_range_request(tag: str) -> ExportTraceServiceRequest:
    """Well-formed protobuf (proto3 enums are open int32, times fixed64) the columns cannot hold:
    span 1 an unknown kind, 2 an unknown status code, 3 a start time past int64, 4 an end time."""
    req = make_trace_request(5, service=tag)
    spans = req.resource_spans[0].scope_spans[0].spans
    for sp in spans:
        sp.name = f"{tag}-{sp.name}"
    spans[1].kind = 1000
    spans[2].status.code = -5000
    spans[3].start_time_unix_nano = 2**64 - 1
    spans[4].end_time_unix_nano = 2**63
    return req


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_values_past_the_columns_range_are_never_an_internal_error(gw: Any, transport: str) -> None:
    """Unknown enum values are accepted and forwarded exactly; spans with times past int64 are
    rejected through partial_success, naming the field and value; both decoders answer alike."""
    answers = {}
    for d in DECODERS:
        tag = f"range-{transport}-{d}"
        body = _out_of_range_request(tag).SerializeToString()
        port = gw.ports[d][transport]
        if transport == "http":
            r = requests.post(f"http://127.0.0.1:{port}/v1/traces", data=body, headers=PB)
            assert r.status_code == 200, r.content
            content = r.content
        else:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                fn = ch.unary_unary(TRACE_METHOD, request_serializer=None, response_deserializer=None)
                content = fn(body, timeout=10)
        resp = ExportTraceServiceResponse.FromString(content)
        assert resp.partial_success.rejected_spans == 2
        msg = resp.partial_success.error_message
        assert "2 span(s) with a time past the supported range" in msg
        assert "start_time_unix_nano=18446744073709551615" in msg
        answers[d] = content

        def arrived(tag: str = tag) -> list[Any]:
            return [s for s in spans_in_file(gw.out) if s.name.startswith(tag)]

        spans = wait_until(lambda arrived=arrived: len(arrived()) == 3 and arrived())
        assert [s.name.removeprefix(tag + "-") for s in spans] == ["span-0", "span-1", "span-2"]
        assert [s.kind for s in spans] == [3, 1000, 3]  # forwarded exactly, not the column's value
        assert [s.status.code for s in spans] == [0, 0, -5000]
    assert answers["fast"] == answers["reference"]
