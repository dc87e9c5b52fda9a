"""OTLP/JSON codec: round trips, spec-style input, agreement with json_format, errors.

The `make_*` builders are shared with the exporter tests: they cover every
place ids live and every AnyValue kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from gateway.otlpjson import OtlpJsonError, decode, encode

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
LINK_TRACE_ID = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
LINK_SPAN_ID = bytes.fromhex("1112131415161718")


def all_kinds_attributes() -> list[KeyValue]:
    """One attribute of every AnyValue kind, nested ones included."""
    nested = AnyValue()
    nested.kvlist_value.values.add(key="inner", value=AnyValue(int_value=-7))
    nested.kvlist_value.values.add(
        key="deep", value=AnyValue(array_value=ArrayValue(values=[AnyValue(bool_value=False)]))
    )
    arr = AnyValue()
    arr.array_value.values.extend(
        [AnyValue(string_value="a"), AnyValue(int_value=1), AnyValue(double_value=2.5)]
    )
    return [
        KeyValue(key="str", value=AnyValue(string_value='héllo "quoted"\n')),
        KeyValue(key="bool", value=AnyValue(bool_value=True)),
        KeyValue(key="int", value=AnyValue(int_value=2**62 + 1)),  # beyond float precision
        KeyValue(key="zero", value=AnyValue(int_value=0)),  # oneof set to default must survive
        KeyValue(key="neg", value=AnyValue(int_value=-(2**63))),
        KeyValue(key="double", value=AnyValue(double_value=0.1)),
        KeyValue(key="inf", value=AnyValue(double_value=math.inf)),
        KeyValue(key="array", value=arr),
        KeyValue(key="kvlist", value=nested),
        KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00\xffbin")),
        KeyValue(key="empty", value=AnyValue()),
    ]


def make_traces(n_spans: int = 2, service: str = "checkout") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
    rs.resource.attributes.extend(all_kinds_attributes())
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "openai.instrumentation", "1.2.3"
    ss.scope.attributes.add(key="scope.attr", value=AnyValue(string_value="x"))
    for i in range(n_spans):
        sp = ss.spans.add(
            trace_id=TRACE_ID,
            span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=PARENT_ID if i % 2 == 0 else b"",
            trace_state="vendor=1",
            flags=0x101,
            name=f"chat gpt-4o #{i}",
            kind=3,
            start_time_unix_nano=1_700_000_000_000_000_000 + i,
            end_time_unix_nano=1_700_000_000_500_000_000 + i,
            dropped_attributes_count=1,
        )
        sp.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=120 + i))
        sp.attributes.extend(all_kinds_attributes())
        ev = sp.events.add(time_unix_nano=1_700_000_000_100_000_000, name="gen_ai.content.prompt")
        ev.attributes.add(key="gen_ai.prompt", value=AnyValue(string_value="hi"))
        link = sp.links.add(trace_id=LINK_TRACE_ID, span_id=LINK_SPAN_ID, trace_state="a=b", flags=1)
        link.attributes.add(key="link.kind", value=AnyValue(string_value="follows"))
        sp.status.code = 2
        sp.status.message = "rate limited"
    return req


def make_metrics() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    sm = rm.scope_metrics.add()
    sm.scope.name = "sentinel"

    g = sm.metrics.add(name="gen_ai.queue.depth", unit="1", description="depth")
    p = g.gauge.data_points.add(time_unix_nano=5, as_int=-3)
    p.attributes.extend(all_kinds_attributes())
    ex = p.exemplars.add(time_unix_nano=4, as_double=1.5, trace_id=TRACE_ID, span_id=SPAN_ID)
    ex.filtered_attributes.add(key="user", value=AnyValue(string_value="u1"))
    g.gauge.data_points.add(time_unix_nano=6, as_double=0.0)

    s = sm.metrics.add(name="gen_ai.client.token.usage", unit="{token}")
    s.sum.aggregation_temporality = 2
    s.sum.is_monotonic = True
    s.sum.data_points.add(start_time_unix_nano=1, time_unix_nano=9, as_int=2**53 + 1)
    s.sum.data_points[0].exemplars.add(as_int=7, trace_id=LINK_TRACE_ID, span_id=LINK_SPAN_ID)

    h = sm.metrics.add(name="gen_ai.client.operation.duration", unit="s")
    h.histogram.aggregation_temporality = 1
    hp = h.histogram.data_points.add(count=3, sum=0.0, min=0.0, max=2.0, time_unix_nano=9, flags=1)
    hp.bucket_counts.extend([1, 0, 2])
    hp.explicit_bounds.extend([0.5, 1.0])
    hp.exemplars.add(as_double=2.0, trace_id=TRACE_ID, span_id=SPAN_ID)

    e = sm.metrics.add(name="latency.exp")
    e.exponential_histogram.aggregation_temporality = 2
    ep = e.exponential_histogram.data_points.add(
        count=5, sum=10.0, scale=-2, zero_count=1, zero_threshold=1e-9
    )
    ep.positive.offset = -3
    ep.positive.bucket_counts.extend([1, 2])
    ep.negative.bucket_counts.extend([1])
    ep.exemplars.add(as_double=3.0, span_id=SPAN_ID)

    q = sm.metrics.add(name="latency.summary")
    qp = q.summary.data_points.add(count=2, sum=3.0, time_unix_nano=10)
    qp.quantile_values.add(quantile=0.5, value=1.0)
    qp.quantile_values.add(quantile=1.0, value=2.0)
    return req


def make_logs() -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    sl = rl.scope_logs.add()
    lr = sl.log_records.add(
        time_unix_nano=1_700_000_000_000_000_001,
        observed_time_unix_nano=1_700_000_000_000_000_002,
        severity_number=17,
        severity_text="ERROR",
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        flags=1,
        event_name="gen_ai.choice",
    )
    lr.body.kvlist_value.values.add(key="message", value=AnyValue(string_value="boom"))
    lr.attributes.extend(all_kinds_attributes())
    sl.log_records.add(body=AnyValue(string_value="plain"), severity_number=9)
    return req


REQUESTS: dict[str, Callable[[], Any]] = {"traces": make_traces, "metrics": make_metrics, "logs": make_logs}


def _reference(msg: Any) -> Any:
    """protobuf's own JSON mapping with ids swapped to hex: what OTLP/JSON must look like."""
    ref = json_format.MessageToDict(msg, use_integers_for_enums=True)

    def fix(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: fix(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        if key in ("traceId", "spanId", "parentSpanId"):
            import base64

            return base64.b64decode(node).hex()
        return node

    return fix(ref)


@pytest.mark.parametrize("signal", list(REQUESTS))
def test_round_trip(signal: str) -> None:
    req = REQUESTS[signal]()
    data = encode(req)
    assert b"\n" not in data
    back = decode(data, type(req))
    assert back == req
    assert back.SerializeToString(deterministic=True) == req.SerializeToString(deterministic=True)
    assert decode(data.decode(), type(req)) == req  # str input too


@pytest.mark.parametrize("signal", list(REQUESTS))
def test_encode_matches_proto3_json_except_hex_ids(signal: str) -> None:
    req = REQUESTS[signal]()
    assert orjson.loads(encode(req)) == _reference(req)


def test_ids_are_hex_everywhere() -> None:
    span = orjson.loads(encode(make_traces()))["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE_ID.hex()
    assert span["spanId"] == "0000000000000001"
    assert span["parentSpanId"] == PARENT_ID.hex()
    assert span["links"][0] == {
        "traceId": LINK_TRACE_ID.hex(),
        "spanId": LINK_SPAN_ID.hex(),
        "traceState": "a=b",
        "attributes": [{"key": "link.kind", "value": {"stringValue": "follows"}}],
        "flags": 1,
    }
    assert span["kind"] == 3 and span["status"]["code"] == 2  # enums as integers
    assert span["startTimeUnixNano"] == "1700000000000000000"  # 64-bit ints as strings

    log = orjson.loads(encode(make_logs()))["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert (log["traceId"], log["spanId"]) == (TRACE_ID.hex(), SPAN_ID.hex())
    assert log["severityNumber"] == 17

    metrics = orjson.loads(encode(make_metrics()))["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    ex = metrics[0]["gauge"]["dataPoints"][0]["exemplars"][0]
    assert (ex["traceId"], ex["spanId"]) == (TRACE_ID.hex(), SPAN_ID.hex())
    assert metrics[2]["histogram"]["dataPoints"][0]["exemplars"][0]["traceId"] == TRACE_ID.hex()
    assert metrics[3]["exponentialHistogram"]["dataPoints"][0]["exemplars"][0] == {
        "asDouble": 3.0,
        "spanId": SPAN_ID.hex(),
    }
    bytes_attr = next(
        a
        for a in orjson.loads(encode(make_logs()))["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0][
            "attributes"
        ]
        if a["key"] == "bytes"
    )
    assert bytes_attr["value"] == {"bytesValue": "AP9iaW4="}  # other bytes stay base64


SPEC_STYLE_TRACES = """
{
  "resourceSpans": [{
    "resource": {
      "attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}],
      "futureField": {"anything": [1, 2, 3]}
    },
    "scopeSpans": [{
      "scope": {"name": "my.library", "version": "1.0.0",
                "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "scope attr"}}]},
      "spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "parentSpanId": "EEE19B7EC3C1B173",
        "name": "I'm a server span",
        "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712661000000000,
        "kind": 2,
        "droppedAttributesCount": "3",
        "attributes": [
          {"key": "my.span.attr", "value": {"stringValue": "some value"}},
          {"key": "count", "value": {"intValue": "42"}},
          {"key": "count2", "value": {"intValue": 43}},
          {"key": "ratio", "value": {"doubleValue": 0.5}},
          {"key": "nan", "value": {"doubleValue": "NaN"}},
          {"key": "ok", "value": {"boolValue": true}}
        ],
        "links": [{"traceId": "0102030405060708090a0B0C0D0E0F10", "spanId": "1112131415161718"}],
        "status": {"code": 1, "unknownStatusField": true},
        "someNewSpanField": {"nested": null}
      }]
    }]
  }],
  "unknownTopLevel": 1
}
"""


def test_decode_spec_style_json() -> None:
    req = decode(SPEC_STYLE_TRACES, ExportTraceServiceRequest)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE_ID  # hex, case-insensitive
    assert span.span_id == SPAN_ID and span.parent_span_id == PARENT_ID
    assert span.start_time_unix_nano == 1544712660000000000  # int64 as string
    assert span.end_time_unix_nano == 1544712661000000000  # int64 as number
    assert span.kind == 2 and span.status.code == 1  # enums as integers
    assert span.dropped_attributes_count == 3
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["count"].int_value == 42 and attrs["count2"].int_value == 43
    assert math.isnan(attrs["nan"].double_value)
    assert attrs["ok"].bool_value is True
    assert span.links[0].trace_id == LINK_TRACE_ID and span.links[0].span_id == LINK_SPAN_ID
    assert req.resource_spans[0].resource.attributes[0].value.string_value == "my.service"


def test_decode_logs_and_metrics_hex_ids() -> None:
    logs = decode(
        '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8efff798038103d269b633813fc60c",'
        '"spanId":"eee19b7ec3c1b174","severityNumber":9,"body":{"stringValue":"hi"},"x":1}]}]}]}',
        ExportLogsServiceRequest,
    )
    lr = logs.resource_logs[0].scope_logs[0].log_records[0]
    assert (lr.trace_id, lr.span_id, lr.severity_number, lr.body.string_value) == (TRACE_ID, SPAN_ID, 9, "hi")
    metrics = decode(
        '{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","sum":{"aggregationTemporality":2,'
        '"isMonotonic":true,"dataPoints":[{"asInt":"5","exemplars":[{"asInt":1,'
        '"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}}]}]}]}',
        ExportMetricsServiceRequest,
    )
    point = metrics.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert point.as_int == 5
    assert (point.exemplars[0].trace_id, point.exemplars[0].span_id) == (TRACE_ID, SPAN_ID)


def test_wrong_length_ids_are_decoded_not_rejected() -> None:
    req = decode(
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abcd","spanId":"","name":"s"}]}]}]}',
        ExportTraceServiceRequest,
    )
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == b"\xab\xcd" and span.span_id == b""


@pytest.mark.parametrize(
    ("body", "cls", "needle"),
    [
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex!"}]}]}]}',
            ExportTraceServiceRequest,
            "resourceSpans[0].scopeSpans[0].spans[0].traceId",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{},{"parentSpanId":"abc"}]}]}]}',  # odd length
            ExportTraceServiceRequest,
            "spans[1].parentSpanId",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"links":[{"spanId":"zz"}]}]}]}]}',
            ExportTraceServiceRequest,
            "links[0].spanId",
        ),
        (
            # base64 is what stock proto3 JSON would send; it is not hex
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"7uGbfsPBsXQ="}]}]}]}',
            ExportTraceServiceRequest,
            "spanId",
        ),
        (
            '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":12}]}]}]}',
            ExportLogsServiceRequest,
            "logRecords[0].spanId",
        ),
        (
            '{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{"dataPoints":[{"exemplars":'
            '[{"traceId":"xyz"}]}]}}]}]}]}',
            ExportMetricsServiceRequest,
            "exemplars[0].traceId",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}',
            ExportTraceServiceRequest,
            "startTimeUnixNano",
        ),
        ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":5}]}]}]}', ExportTraceServiceRequest, "name"),
        ('{"resourceSpans":{"not":"a list"}}', ExportTraceServiceRequest, "resourceSpans"),
    ],
)
def test_errors_name_the_field(body: str, cls: Any, needle: str) -> None:
    with pytest.raises(OtlpJsonError) as info:
        decode(body, cls)
    assert needle in str(info.value)


@pytest.mark.parametrize("body", [b"", b"{", b'{"resourceSpans": [}', b"\xff\xfe", b"[1, 2]", b"42"])
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(OtlpJsonError):
        decode(body, ExportTraceServiceRequest)
    assert issubclass(OtlpJsonError, ValueError)


def test_responses_and_status() -> None:
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 3
    resp.partial_success.error_message = "3 spans had invalid ids"
    data = encode(resp)
    assert orjson.loads(data) == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "3 spans had invalid ids"}
    }
    assert decode(data, ExportTraceServiceResponse) == resp
    assert decode(b"{}", ExportTraceServiceResponse) == ExportTraceServiceResponse()

    st = status_pb2.Status(code=14, message="try later")
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(1500)
    st.details.add().Pack(info)
    data = encode(st)
    obj = orjson.loads(data)
    assert obj["message"] == "try later"
    assert obj["details"][0]["retryDelay"] == "1.500s"
    assert decode(data, status_pb2.Status) == st


@pytest.mark.parametrize("signal", list(REQUESTS))
def test_valid_input_never_needs_the_slow_path(signal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The json_format fallback exists for error messages only; valid data must not pay for it."""
    import gateway.otlpjson as mod

    def fail(*_: Any) -> Any:
        raise AssertionError("slow path used for valid input")

    monkeypatch.setattr(mod, "_slow_decode", fail)
    req = REQUESTS[signal]()
    assert decode(encode(req), type(req)) == req
    decode(SPEC_STYLE_TRACES, ExportTraceServiceRequest)
