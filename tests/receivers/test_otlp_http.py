"""Raw OTLP/HTTP probes: every status code and encoding rule of the spec, against a running gateway."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from gateway.component import RefusedError, ThrottledError
from tests.conftest import running_gateway, wait_until
from tests.receivers.otlp_helpers import (
    gateway_config,
    make_logs_request,
    make_metrics_request,
    make_trace_request,
    read_lines,
    spans_in_file,
)

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


@pytest.fixture
def gw(ports, tmp_path):
    cfg = gateway_config(ports, tmp_path / "out.jsonl", http={"max_request_body_size_mib": 1})
    with running_gateway(cfg) as g:
        g.url = f"http://127.0.0.1:{ports['http']}"
        g.out = tmp_path / "out.jsonl"
        yield g


def status_of(resp: requests.Response) -> status_pb2.Status:
    st = status_pb2.Status()
    if resp.headers["Content-Type"].startswith("application/json"):
        body = orjson.loads(resp.content)
        st.code, st.message = body.get("code", 0), body.get("message", "")
    else:
        st.ParseFromString(resp.content)
    return st


def test_protobuf_traces_arrive_intact(gw):
    req = make_trace_request(5)
    r = requests.post(gw.url + "/v1/traces", data=req.SerializeToString(), headers=PB, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-protobuf"
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert not resp.HasField("partial_success")
    spans = wait_until(lambda: len(spans_in_file(gw.out)) == 5 and spans_in_file(gw.out))
    sent = [sp for sp in req.resource_spans[0].scope_spans[0].spans]
    assert [s.SerializeToString() for s in spans] == [s.SerializeToString() for s in sent]
    assert gw.metric("otelcol_receiver_accepted_spans_total", receiver="otlp", transport="http") == 5


def test_json_with_hex_ids_and_lenient_numbers(gw):
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "s"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "a",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "attributes": [{"key": "n", "value": {"intValue": "42"}}],
                                "someFutureField": {"x": 1},
                                "status": {"code": 2, "message": "boom"},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    r = requests.post(gw.url + "/v1/traces", data=orjson.dumps(body), headers=JS, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert orjson.loads(r.content) == {} or "partialSuccess" not in orjson.loads(r.content)
    (span,) = wait_until(lambda: spans_in_file(gw.out))
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.span_id.hex() == "eee19b7ec3c1b174"
    assert span.parent_span_id.hex() == "eee19b7ec3c1b173"
    assert span.kind == 2 and span.status.code == 2
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000000
    assert span.attributes[0].value.int_value == 42
    # the file exporter writes hex ids too
    line = read_lines(gw.out)[0]
    assert (
        line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == "5b8efff798038103d269b633813fc60c"
    )


def test_gzip_and_deflate_bodies(gw):
    req = make_trace_request(2)
    raw = req.SerializeToString()
    r1 = requests.post(
        gw.url + "/v1/traces", data=gzip.compress(raw), headers={**PB, "Content-Encoding": "gzip"}, timeout=10
    )
    r2 = requests.post(
        gw.url + "/v1/traces",
        data=zlib.compress(raw),
        headers={**PB, "Content-Encoding": "deflate"},
        timeout=10,
    )
    assert (r1.status_code, r2.status_code) == (200, 200)
    wait_until(lambda: len(spans_in_file(gw.out)) == 4)


def test_gzip_bomb_is_cut_off(gw):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB inflated, ~64 KiB sent
    assert len(bomb) < 1024 * 1024
    r = requests.post(
        gw.url + "/v1/traces", data=bomb, headers={**PB, "Content-Encoding": "gzip"}, timeout=30
    )
    assert r.status_code == 413
    assert "decompressed" in status_of(r).message
    ok = requests.post(
        gw.url + "/v1/traces", data=make_trace_request(1).SerializeToString(), headers=PB, timeout=10
    )
    assert ok.status_code == 200


def test_oversize_body_is_413(gw):
    big = b"\x0a" * (2 * 1024 * 1024)
    r = requests.post(gw.url + "/v1/traces", data=big, headers=PB, timeout=10)
    assert r.status_code == 413


def test_corrupt_gzip_is_400(gw):
    r = requests.post(
        gw.url + "/v1/traces", data=b"not gzip at all", headers={**PB, "Content-Encoding": "gzip"}, timeout=10
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Content-Type": "text/plain"}, 415),
        ({}, 415),
        ({**PB, "Content-Encoding": "br"}, 415),
    ],
)
def test_unsupported_media_and_encoding(gw, headers, code):
    r = requests.post(gw.url + "/v1/traces", data=b"x", headers=headers, timeout=10)
    assert r.status_code == code


def test_empty_request_is_success(gw):
    r = requests.post(gw.url + "/v1/traces", data=b"", headers=PB, timeout=10)
    assert r.status_code == 200
    r = requests.post(gw.url + "/v1/traces", data=b"{}", headers=JS, timeout=10)
    assert r.status_code == 200


def test_undecodable_bodies_get_400_with_status(gw):
    r = requests.post(gw.url + "/v1/traces", data=b"\xff\xff\xff\xff", headers=PB, timeout=10)
    assert r.status_code == 400
    st = status_of(r)
    assert st.code == 3 and "protobuf" in st.message
    r = requests.post(gw.url + "/v1/traces", data=b'{"resourceSpans": [', headers=JS, timeout=10)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert status_of(r).code == 3
    r = requests.post(
        gw.url + "/v1/traces",
        data=b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}',
        headers=JS,
        timeout=10,
    )
    assert r.status_code == 400


def test_unknown_path_and_method(gw):
    r = requests.post(gw.url + "/v1/nothing", data=b"", headers=PB, timeout=10)
    assert r.status_code == 404
    r = requests.get(gw.url + "/v1/traces", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_partial_success_keeps_valid_spans(gw):
    req = make_trace_request(4, bad={1: "short_trace_id", 2: "end_before_start"})
    r = requests.post(gw.url + "/v1/traces", data=req.SerializeToString(), headers=PB, timeout=10)
    assert r.status_code == 200
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 2
    assert "trace_id" in resp.partial_success.error_message
    assert "end_time" in resp.partial_success.error_message
    spans = wait_until(lambda: len(spans_in_file(gw.out)) == 2 and spans_in_file(gw.out))
    assert [s.name for s in spans] == ["span-0", "span-3"]
    assert gw.metric("otelcol_receiver_refused_spans_total", receiver="otlp", transport="http") == 2
    # JSON gets the same in camelCase
    r = requests.post(
        gw.url + "/v1/traces",
        data=orjson.dumps(
            {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "01" * 8, "spanId": "02" * 8}]}]}]}
        ),
        headers=JS,
        timeout=10,
    )
    assert orjson.loads(r.content)["partialSuccess"]["rejectedSpans"] in (1, "1")


def test_metrics_and_logs_endpoints(gw):
    r = requests.post(
        gw.url + "/v1/metrics", data=make_metrics_request(3).SerializeToString(), headers=PB, timeout=10
    )
    assert r.status_code == 200
    r = requests.post(
        gw.url + "/v1/logs", data=make_logs_request(2).SerializeToString(), headers=PB, timeout=10
    )
    assert r.status_code == 200
    lines = wait_until(lambda: len(read_lines(gw.out)) == 2 and read_lines(gw.out))
    assert {next(iter(line)) for line in lines} == {"resourceMetrics", "resourceLogs"}
    assert gw.metric("otelcol_receiver_accepted_metric_points_total", receiver="otlp", transport="http") == 3
    assert gw.metric("otelcol_receiver_accepted_log_records_total", receiver="otlp", transport="http") == 2


def test_refusal_under_memory_pressure_is_503_with_retry_after(gw):
    adm = gw.gateway.admission
    adm.refusing, adm.reason, adm.retry_after = True, "memory above soft limit", 3.0
    try:
        r = requests.post(
            gw.url + "/v1/traces", data=make_trace_request(1).SerializeToString(), headers=PB, timeout=10
        )
    finally:
        adm.refusing = False
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "3"
    r = requests.post(
        gw.url + "/v1/traces", data=make_trace_request(1).SerializeToString(), headers=PB, timeout=10
    )
    assert r.status_code == 200


def test_full_queue_is_429_with_retry_after(gw):
    exporter = next(iter(gw.gateway.graph.exporters.values()))
    original = exporter.consume

    async def full(batch):
        raise ThrottledError("sending queue is full", retry_after=2.0)

    exporter.consume = full
    try:
        r = requests.post(
            gw.url + "/v1/traces", data=make_trace_request(2).SerializeToString(), headers=PB, timeout=10
        )
    finally:
        exporter.consume = original
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert gw.metric("otelcol_receiver_refused_spans_total", receiver="otlp", transport="http") == 2
    assert issubclass(ThrottledError, RefusedError)


def test_bearer_auth(ports, tmp_path):
    cfg = gateway_config(ports, tmp_path / "o.jsonl", http={"auth": {"bearer_token": "s3cret"}})
    with running_gateway(cfg):
        url = f"http://127.0.0.1:{ports['http']}/v1/traces"
        body = make_trace_request(1).SerializeToString()
        assert requests.post(url, data=body, headers=PB, timeout=10).status_code == 401
        bad = {**PB, "Authorization": "Bearer nope"}
        assert requests.post(url, data=body, headers=bad, timeout=10).status_code == 401
        good = {**PB, "Authorization": "Bearer s3cret"}
        assert requests.post(url, data=body, headers=good, timeout=10).status_code == 200


def test_cors(ports, tmp_path):
    cfg = gateway_config(
        ports,
        tmp_path / "o.jsonl",
        http={
            "cors": {
                "allowed_origins": ["https://*.example.com"],
                "allowed_headers": ["X-Custom"],
                "max_age": 60,
            }
        },
    )
    with running_gateway(cfg):
        url = f"http://127.0.0.1:{ports['http']}/v1/traces"
        pre = requests.options(
            url,
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert pre.status_code == 204
        assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "x-custom" in pre.headers["Access-Control-Allow-Headers"]
        assert pre.headers["Access-Control-Max-Age"] == "60"
        denied = requests.options(url, headers={"Origin": "https://evil.test"}, timeout=10)
        assert denied.status_code == 403
        r = requests.post(
            url,
            data=make_trace_request(1).SerializeToString(),
            headers={**PB, "Origin": "https://app.example.com"},
            timeout=10,
        )
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
