"""The OTLP/JSON → protobuf-wire transcoder against the reference decoder (gateway.otlpjson).

Property: for any bytes, `transcode_traces` returns None, or exactly the bytes of
``otlpjson.decode(data).SerializeToString()``; and None whenever the reference raises. On JSON the
reference's own encoder writes (and on spec-style variants of it) it must not give up, except for
doubles at the edges of the double range, which it leaves to the reference on purpose.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from gateway import otlpjson
from gateway.batch import Signal, SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from gateway.wire import traces as wire_traces
from gateway.wire.json_traces import MAX_DEPTH, transcode_traces, warm_up
from loadtests.llmgen.model import TrafficConfig
from loadtests.llmgen.otlp import generate_chunks
from receivers.otlp.export import ExportHandler, InvalidRequestError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "genai"
Req = ExportTraceServiceRequest
PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


def reference(data: bytes) -> bytes | None:
    """The wire bytes of what the reference decodes, None when it raises."""
    try:
        return otlpjson.decode(data, Req).SerializeToString()
    except otlpjson.OtlpJsonError:
        return None


def check(data: bytes) -> bytes | None:
    """The property every input must satisfy; returns the transcoder's answer."""
    got = transcode_traces(data)
    ref = reference(data)
    if ref is None:
        assert got is None, data[:200]
    elif got is not None:
        assert got == ref, data[:200]
    return got


def accepted(data: bytes) -> bytes:
    got = check(data)
    assert got is not None, data[:300]
    return got


# ---------------------------------------------------------------- random requests
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(max_size=12)
IDS = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.binary(max_size=5))
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.1, 0.2, 0.5, 1e-7, 123.456, 2.0**53, 2.0**53 + 2, 1e22, 1e23, 5e-324]),
    st.decimals(min_value=-1e6, max_value=1e6, places=4, allow_nan=False).map(float),
)


def _scalar_values() -> st.SearchStrategy[AnyValue]:
    return st.one_of(
        st.builds(lambda v: AnyValue(string_value=v), TEXT),
        st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
        st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: AnyValue(double_value=v), DOUBLES),
        st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=10)),
        st.builds(lambda v: AnyValue(string_value_strindex=v), I32),
        st.just(AnyValue()),
    )


ANY_VALUES = st.recursive(
    _scalar_values(),
    lambda inner: st.one_of(
        st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3)),
        st.builds(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
            st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), TEXT, inner), max_size=3),
        ),
    ),
    max_leaves=8,
)


@st.composite
def key_values(draw: Any) -> KeyValue:
    kv = KeyValue(key=draw(TEXT))
    if draw(st.booleans()):
        kv.value.CopyFrom(draw(ANY_VALUES))
    if draw(st.integers(0, 9)) == 0:
        kv.key_strindex = draw(I32)
    return kv


ATTRS = st.lists(key_values(), max_size=4)


@st.composite
def spans(draw: Any) -> Span:
    sp = Span(
        trace_id=draw(IDS),
        span_id=draw(IDS),
        trace_state=draw(TEXT),
        parent_span_id=draw(IDS),
        flags=draw(U32),
        name=draw(TEXT),
        kind=draw(st.one_of(st.integers(0, 5), I32)),
        start_time_unix_nano=draw(U64),
        end_time_unix_nano=draw(U64),
        attributes=draw(ATTRS),
        dropped_attributes_count=draw(U32),
        dropped_events_count=draw(U32),
        dropped_links_count=draw(U32),
    )
    for _ in range(draw(st.integers(0, 2))):
        sp.events.add(
            time_unix_nano=draw(U64),
            name=draw(TEXT),
            attributes=draw(ATTRS),
            dropped_attributes_count=draw(U32),
        )
    for _ in range(draw(st.integers(0, 2))):
        sp.links.add(
            trace_id=draw(IDS),
            span_id=draw(IDS),
            trace_state=draw(TEXT),
            attributes=draw(ATTRS),
            dropped_attributes_count=draw(U32),
            flags=draw(U32),
        )
    if draw(st.booleans()):
        sp.status.CopyFrom(Status(message=draw(TEXT), code=draw(st.one_of(st.integers(0, 2), I32))))
    return sp


@st.composite
def requests(draw: Any) -> Req:
    req = Req()
    for _ in range(draw(st.integers(0, 2))):
        rs = ResourceSpans(schema_url=draw(TEXT))
        if draw(st.booleans()):
            res = Resource(attributes=draw(ATTRS), dropped_attributes_count=draw(U32))
            if draw(st.integers(0, 4)) == 0:
                res.entity_refs.append(
                    EntityRef(
                        schema_url=draw(TEXT),
                        type=draw(TEXT),
                        id_keys=draw(st.lists(TEXT, max_size=2)),
                        description_keys=draw(st.lists(TEXT, max_size=2)),
                    )
                )
            rs.resource.CopyFrom(res)
        for _ in range(draw(st.integers(0, 2))):
            ss = ScopeSpans(schema_url=draw(TEXT), spans=draw(st.lists(spans(), max_size=3)))
            if draw(st.booleans()):
                ss.scope.CopyFrom(
                    InstrumentationScope(
                        name=draw(TEXT),
                        version=draw(TEXT),
                        attributes=draw(ATTRS),
                        dropped_attributes_count=draw(U32),
                    )
                )
            rs.scope_spans.append(ss)
        req.resource_spans.append(rs)
    return req


def doubles_in(req: Req) -> list[float]:
    out: list[float] = []

    def value(v: AnyValue) -> None:
        kind = v.WhichOneof("value")
        if kind == "double_value":
            out.append(v.double_value)
        elif kind == "array_value":
            for x in v.array_value.values:
                value(x)
        elif kind == "kvlist_value":
            for kv in v.kvlist_value.values:
                value(kv.value)

    def attrs(kvs: Any) -> None:
        for kv in kvs:
            value(kv.value)

    for rs in req.resource_spans:
        attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            attrs(ss.scope.attributes)
            for sp in ss.spans:
                attrs(sp.attributes)
                for ev in sp.events:
                    attrs(ev.attributes)
                for ln in sp.links:
                    attrs(ln.attributes)
    return out


def in_double_range(req: Req) -> bool:
    """No double the transcoder deliberately leaves to the reference (range edges, subnormals)."""
    return all(not math.isfinite(x) or x == 0.0 or 1e-300 <= abs(x) < 1e307 for x in doubles_in(req))


@PROPS
@given(requests())
def test_random_requests_round_trip(req: Req) -> None:
    data = otlpjson.encode(req)
    got = check(data)
    if in_double_range(req):
        assert got is not None
    if got is not None and not any(math.isnan(x) for x in doubles_in(req)):  # JSON has one NaN
        assert got == req.SerializeToString()  # byte-identical to the protobuf library's output


# ---------------------------------------------------------------- spec-style JSON variants
_SNAKE = {
    fd.json_name: fd.name
    for desc in (
        Req.DESCRIPTOR,
        ResourceSpans.DESCRIPTOR,
        ScopeSpans.DESCRIPTOR,
        Span.DESCRIPTOR,
        Span.Event.DESCRIPTOR,
        Span.Link.DESCRIPTOR,
        Status.DESCRIPTOR,
        Resource.DESCRIPTOR,
        InstrumentationScope.DESCRIPTOR,
        KeyValue.DESCRIPTOR,
        AnyValue.DESCRIPTOR,
        EntityRef.DESCRIPTOR,
    )
    for fd in desc.fields
}
_ABSENT = ["traceState", "schemaUrl", "droppedAttributesCount", "status", "resource", "attributes"]
_KINDS = {v.number: v.name for v in Span.SpanKind.DESCRIPTOR.values}
_CODES = {v.number: v.name for v in Status.StatusCode.DESCRIPTOR.values}
_UNKNOWN_VALUES: list[Any] = [
    {"a": [1, -2.5e-3, True, None, {"b": "\u00e9\U0001f600"}]},
    [],
    {},
    'x"y\\z\n',
    -0.0,
    12345678901234567890,
    -9223372036854775808,
    1.5e300,
    [[[[["deep"]]]]],
]


def variant(obj: Any, rng: random.Random) -> Any:
    """The same request in another legal spelling: shuffled keys, snake_case names, ints as numbers,
    enum names, explicit nulls for absent fields, unknown fields with nested values."""
    if isinstance(obj, list):
        return [variant(v, rng) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, val in obj.items():
        val = variant(val, rng)
        if isinstance(val, str) and key.endswith(("UnixNano", "intValue")) and rng.random() < 0.5:
            val = int(val)  # 64-bit ints as JSON numbers
        elif key == "kind" and val in _KINDS and rng.random() < 0.5:
            val = _KINDS[val]
        elif key == "code" and val in _CODES and rng.random() < 0.5:
            val = _CODES[val]
        elif isinstance(val, int) and not isinstance(val, bool) and rng.random() < 0.2:
            val = str(val)  # any int as a string
        if rng.random() < 0.3:
            key = _SNAKE.get(key, key)
        out[key] = val
    for key in _ABSENT:
        if key not in obj and _SNAKE.get(key, key) not in obj and rng.random() < 0.2:
            out[key] = None
    if rng.random() < 0.2:
        out[f"unknownField{rng.randrange(100)}"] = rng.choice(_UNKNOWN_VALUES)
    items = list(out.items())
    rng.shuffle(items)
    return dict(items)


def spellings(obj: Any, rng: random.Random) -> list[bytes]:
    """Compact (orjson), pretty with ASCII escapes (\\uXXXX incl. surrogate pairs), escaped slashes."""
    pretty = json.dumps(obj, indent=rng.choice([None, 1, "\t"]), ensure_ascii=True).encode()
    return [
        orjson.dumps(obj),
        pretty.replace(b"\n", b"\r\n") if rng.random() < 0.5 else pretty,
        orjson.dumps(obj).replace(b"/", b"\\/"),  # '/' only occurs inside strings
    ]


@PROPS
@given(requests(), st.randoms(use_true_random=False))
def test_spec_style_variants(req: Req, rng: random.Random) -> None:
    want = req.SerializeToString()
    obj = variant(orjson.loads(otlpjson.encode(req)), rng)
    for data in spellings(obj, rng):
        got = check(data)
        if in_double_range(req):
            assert got is not None
            assert got == want or any(math.isnan(x) for x in doubles_in(req))


# ---------------------------------------------------------------- real payloads
def fixture_requests() -> list[Req]:
    files = sorted(FIXTURES.glob("*/*.traces*.binpb"))
    assert files, "no recorded trace fixtures"
    return [Req.FromString(f.read_bytes()) for f in files]


def test_recorded_payloads() -> None:
    for req in fixture_requests():
        data = otlpjson.encode(req)
        assert accepted(data) == req.SerializeToString()
        rng = random.Random(len(data))
        for spelled in spellings(variant(orjson.loads(data), rng), rng):
            assert accepted(spelled) == req.SerializeToString()


def reversed_keys(obj: Any) -> Any:
    """Every object's keys in reverse order: each message is written out of field order."""
    if isinstance(obj, list):
        return [reversed_keys(v) for v in obj]
    if isinstance(obj, dict):
        return {k: reversed_keys(v) for k, v in reversed(list(obj.items()))}
    return obj


def test_out_of_order_fields_at_every_level() -> None:
    chunk = next(iter(generate_chunks(TrafficConfig(seed=2, duration_s=600, spans_per_request=256))))
    data = orjson.dumps(reversed_keys(orjson.loads(otlpjson.encode(chunk.request))))
    assert accepted(data) == chunk.request.SerializeToString()


def test_many_tiny_messages() -> None:
    """More nested messages than the first guess at slot space allows: the retry takes them."""
    accepted((SPAN % ",".join(['{"status":{}}'] * 3000)).encode())
    events = ",".join(['{"attributes":[{}]}'] * 2000)
    accepted((SPAN % ('{"events":[' + events + '],"name":"n","traceId":"00"}')).encode())


def test_llmgen_traffic() -> None:
    cfg = TrafficConfig(seed=5, duration_s=1800, spans_per_request=128)
    for k, chunk in enumerate(generate_chunks(cfg)):
        if k == 6:
            break
        assert accepted(otlpjson.encode(chunk.request)) == chunk.request.SerializeToString()


# ---------------------------------------------------------------- hand-written cases
SPAN = '{"resourceSpans":[{"scopeSpans":[{"spans":[%s]}]}]}'
ATTR = SPAN % '{"attributes":[{"key":"k","value":%s}]}'


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        ' \t\r\n{ "resourceSpans" : [ ] } \n',
        '{"resourceSpans":null}',
        '{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"5B8EFFF798038103D269B633813FC60C"}]}]}]}',
        SPAN % '{"traceId":"0102","spanId":"","name":"","kind":0,"flags":"7"}',
        SPAN % '{"kind":"SPAN_KIND_CONSUMER","status":{"code":"STATUS_CODE_ERROR","message":"m"}}',
        SPAN % '{"kind":-1,"status":{}}',
        SPAN % '{"kind":"3","startTimeUnixNano":"18446744073709551615","endTimeUnixNano":0}',
        SPAN % '{"name":"\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r\\u0000","flags":4294967295}',
        SPAN % '{"name":"raw \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac \x7f"}',
        SPAN % '{"trace\\u0049d":"0a0b","unknown":{"a":[1,2,{"b":null}]},"x":-0.0,"y":1E+2}',
        SPAN % '{"events":[{},{"timeUnixNano":1}],"links":[{"traceId":"00","flags":1}]}',
        ATTR % '{"intValue":"-9223372036854775808"}',
        ATTR % '{"intValue":9223372036854775807}',
        ATTR % '{"intValue":"-0"}',
        ATTR % '{"doubleValue":"NaN"}',
        ATTR % '{"doubleValue":"-Infinity"}',
        ATTR % '{"doubleValue":"-0"}',
        ATTR % '{"doubleValue":-0}',
        ATTR % '{"doubleValue":-0.0}',
        ATTR % '{"doubleValue":"0.1"}',
        ATTR % '{"doubleValue":"1\\u002e5"}',
        ATTR % '{"doubleValue":9007199254740993}',
        ATTR % '{"doubleValue":12345678901234567890123}',
        ATTR % '{"doubleValue":0.30000000000000004}',
        ATTR % '{"doubleValue":2.2250738585072014e-300}',
        ATTR % '{"doubleValue":1.5e22}',
        ATTR % '{"doubleValue":"1.7976931348623157e306"}',
        ATTR % '{"bytesValue":"AQI="}',
        ATTR % '{"bytesValue":"AQI"}',
        ATTR % '{"bytesValue":"-_-_"}',
        ATTR % '{"bytesValue":"QR=="}',
        ATTR % '{"bytesValue":"AQ\\/+"}',
        ATTR % '{"bytesValue":""}',
        ATTR % '{"stringValue":""}',
        ATTR % '{"boolValue":false}',
        ATTR % "{}",
        ATTR % "null",
        ATTR % '{"stringValue":null,"intValue":"5"}',
        ATTR % '{"arrayValue":{"values":[{"arrayValue":{}},{"kvlistValue":{"values":[{"key":"a"}]}}]}}',
        SPAN % '{"attributes":[{"key":"k","value":{"stringValue":"v"},"keyStrindex":3}]}',
        '{"resourceSpans":[{"resource":{"entityRefs":[{"idKeys":["a",""],"type":"t"}]}}]}',
    ],
)
def test_accepted(text: str) -> None:
    accepted(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "null",
        '"x"',
        "\xef\xbb\xbf{}",  # BOM
        "{}x",
        '{"resourceSpans":[]',
        '{"resourceSpans":[null]}',
        '{"resourceSpans":{}}',
        '{"resourceSpans":[1]}',
        '{"resourceSpans":[],}',
        "{,}",
        '{"a" 1}',
        '{"a":01}',
        '{"a":1.}',
        '{"a":.5}',
        '{"a":+1}',
        '{"a":1e}',
        '{"a":-}',
        '{"a":NaN}',
        '{"a":1e400}',
        '{"a":tru}',
        '{"a":"\\x"}',
        '{"a":"\\u12"}',
        '{"a":"\\ud800"}',
        '{"a":"\\udc00\\ud800"}',
        '{"a":"\x01"}',
        '{"a":"\xc0\x80"}',
        '{"a":"\xed\xa0\x80"}',
        '{"a":"\xf4\x90\x80\x80"}',
        '{"a":"\xe2\x82"}',
        '{"a":"\xff"}',
        "{\x0c}",
        SPAN % '{"traceId":"abc"}',
        SPAN % '{"traceId":"zz"}',
        SPAN % '{"traceId":5}',
        SPAN % '{"name":5}',
        SPAN % '{"kind":2147483648}',
        SPAN % '{"flags":-1}',
        SPAN % '{"flags":4294967296}',
        SPAN % '{"startTimeUnixNano":"18446744073709551616"}',
        SPAN % '{"startTimeUnixNano":"-1"}',
        SPAN % '{"startTimeUnixNano":"1x"}',
        SPAN % '{"startTimeUnixNano":1.5}',
        SPAN % '{"startTimeUnixNano":{}}',
        SPAN % '{"attributes":{}}',
        SPAN % '{"events":[1]}',
        ATTR % '{"intValue":"9223372036854775808"}',
        ATTR % '{"intValue":1.5}',
        ATTR % '{"intValue":true}',
        ATTR % '{"stringValue":1}',
        ATTR % '{"bytesValue":"A"}',
        ATTR % '{"doubleValue":"x"}',
        ATTR % '{"arrayValue":{"values":[null]}}',
        '{"resourceSpans":[{"resource":{"entityRefs":[{"idKeys":[1]}]}}]}',
        '{"resourceSpans":[{"resource":{"entityRefs":[{"idKeys":[null]}]}}]}',
    ],
)
def test_rejected(text: str) -> None:
    data = text.encode("utf-8", "surrogateescape") if text.isascii() else text.encode("latin-1")
    assert reference(data) is None, "the reference accepts this: move it to test_accepted"
    assert transcode_traces(data) is None


@pytest.mark.parametrize(
    "text",
    [
        SPAN % '{"name":"a","name":"b"}',  # duplicate keys: orjson keeps the last
        SPAN % '{"traceId":"00","trace_id":"01"}',
        ATTR % '{"stringValue":"a","intValue":"1"}',  # two oneof members: the constructor keeps the last
        SPAN % '{"kind":2.0}',  # an integral float for an int
        SPAN % '{"kind":"SPAN_KIND_NOPE"}',  # json_format drops unknown enum names
        SPAN % '{"kind":true}',  # ... and takes true for 1
        SPAN % '{"startTimeUnixNano":" 1"}',  # Python's int() is lenient
        SPAN % '{"startTimeUnixNano":"1_000"}',
        ATTR % '{"boolValue":1}',
        ATTR % '{"doubleValue":" 1.5"}',
        ATTR % '{"doubleValue":"0.3000000000000000\\u0034"}',  # escaped text of a hard double
        ATTR % '{"doubleValue":true}',  # json_format (the reference's second try) is lenient:
        SPAN % '{"status":[]}',
        ATTR % '{"bytesValue":"AQ=I"}',
        ATTR % '{"bytesValue":"AQI*"}',
        ATTR % '{"bytesValue":"AQ==="}',
        ATTR % '{"doubleValue":1e308}',
        ATTR % '{"doubleValue":5e-324}',
        ATTR % '{"bytesValue":"AQID===="}',
    ],
)
def test_left_to_the_reference(text: str) -> None:
    """Inputs the reference accepts in ways not worth modelling: the transcoder declines them."""
    data = text.encode()
    assert reference(data) is not None
    assert transcode_traces(data) is None


# ---------------------------------------------------------------- adversarial input
def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH - 10, MAX_DEPTH + 1, 1000, 1100])
def test_deep_nesting(depth: int) -> None:
    check((SPAN % ('{"unknown":' + nested(depth) + "}")).encode())
    value = '{"stringValue":"x"}'
    for _ in range(depth // 3):
        value = '{"arrayValue":{"values":[' + value + "]}}"
    check((ATTR % value).encode())


def test_huge_numbers_and_strings() -> None:
    check((SPAN % '{"unknown":%s}' % ("9" * 5000)).encode())
    check((SPAN % '{"unknown":0.%se-99999999999999}' % ("0" * 5000)).encode())
    check((ATTR % '{"doubleValue":%s}' % ("1" * 400)).encode())
    check((ATTR % '{"intValue":"%s"}' % ("1" * 400)).encode())
    check((SPAN % '{"name":"%s"}' % ("\\u00e9" * 10000)).encode())
    accepted((SPAN % '{"traceId":"%s"}' % ("ab" * 50000)).encode())


@PROPS
@given(requests(), st.randoms(use_true_random=False))
def test_mutations_never_crash(req: Req, rng: random.Random) -> None:
    """Truncations, byte flips, insertions and deletions: None or the reference's answer."""
    data = bytearray(otlpjson.encode(req))
    for _ in range(4):
        mutated = bytearray(data)
        op = rng.randrange(4)
        at = rng.randrange(len(mutated) + 1)
        if op == 0:
            mutated = mutated[:at]
        elif op == 1 and at < len(mutated):
            mutated[at] = rng.randrange(256)
        elif op == 2:
            mutated[at:at] = bytes([rng.choice(b'{}[],:"\\ 0-.eE\x00\x80\xff')])
        elif at < len(mutated):
            del mutated[at]
        check(bytes(mutated))


_KEYS = sorted({*_SNAKE, *_SNAKE.values(), "resourceSpans", "scopeSpans", "spans", "values", "x"})
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        ["", "00", "0a0B", "zz", "AQI=", "-1", "18446744073709551616", "NaN", "SPAN_KIND_SERVER"]
    ),
    st.text(max_size=6),
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)


@PROPS
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=3))
def test_random_json_with_otlp_names(obj: dict[str, Any]) -> None:
    """Arbitrary JSON shapes under OTLP field names: wrong types, nulls, nesting in odd places."""
    check(orjson.dumps(obj))
    check(orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [obj]}]}]}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    check(data)
    check(b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":' + data + b"}]}]}]}")


# ---------------------------------------------------------------- the receiver hook
def handler(wire_decoder: str) -> ExportHandler:
    ctx = ComponentContext(
        ComponentId("otlp"), Kind.RECEIVER, logging.getLogger("t"), SelfTelemetry(), Admission()
    )
    return ExportHandler(ctx, {}, wire_decoder)  # type: ignore[arg-type]


def test_receiver_takes_json_traces_through_the_transcoder() -> None:
    """JSON traces become the transcoded wire bytes and then the same batch as the reference's."""
    wire_traces.warm_up()
    req = fixture_requests()[0]
    body = otlpjson.encode(req)
    fast = handler("fast").decode(Signal.TRACES, body, json=True)
    ref = handler("reference").decode(Signal.TRACES, body, json=True)
    assert isinstance(fast, SpanBatch) and isinstance(ref, SpanBatch)
    assert fast.wire == transcode_traces(body) == req.SerializeToString()
    assert ref.wire is None  # the reference path keeps the parsed request only
    assert len(fast) == len(ref) > 0
    assert fast.request == ref.request
    with pytest.raises(InvalidRequestError) as fast_err:
        handler("fast").decode(Signal.TRACES, body[:-1], json=True)
    with pytest.raises(InvalidRequestError) as ref_err:
        handler("reference").decode(Signal.TRACES, body[:-1], json=True)
    assert str(fast_err.value) == str(ref_err.value)  # declined input gets the reference's message
