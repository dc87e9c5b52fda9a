"""The numba trace decoder against the reference (protobuf parse + SpanBatch.from_request).

Property: for any bytes, either the fast decoder returns None (and the caller uses the
reference), or its batch equals the reference batch column by column, dtype by dtype, with the
same string table; and it returns None whenever the reference rejects the bytes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
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

from gateway.batch import SpanBatch
from gateway.wire import traces
from gateway.wire.checks import span_problems
from gateway.wire.traces import MAX_DEPTH, SCHEMA, decode_spans, warm_up
from loadtests.llmgen.model import TrafficConfig
from loadtests.llmgen.otlp import generate_chunks
from tests.gateway.wire import wiretree as wt

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "genai"
REQ_DESC = ExportTraceServiceRequest.DESCRIPTOR
PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


def reference(data: bytes) -> SpanBatch | Exception:
    """What the receiver built before the fast path, or the exception it raised."""
    try:
        req = ExportTraceServiceRequest.FromString(data)
        return SpanBatch.from_request(req, wire=data)
    except DecodeError as exc:
        return exc


def assert_same(fast: SpanBatch, ref: SpanBatch) -> None:
    assert list(fast.columns) == list(ref.columns)
    for name, col in ref.columns.items():
        got = fast.columns[name]
        assert got.dtype == col.dtype, name
        assert got.shape == col.shape, name
        assert np.array_equal(got, col), name
    assert fast.strings.values == ref.strings.values
    assert fast.string_columns == ref.string_columns
    assert fast.resource_count == ref.resource_count
    assert len(fast) == len(ref)


def check(data: bytes, *, must_decode: bool) -> SpanBatch | None:
    """The fast/reference property on `data`; returns the fast batch."""
    fast = decode_spans(data)
    ref = reference(data)
    if isinstance(ref, Exception):
        assert fast is None, f"fast path accepted bytes the reference rejects: {ref}"
        return None
    if must_decode:
        assert fast is not None
    if fast is not None:
        assert not fast.request_parsed
        assert_same(fast, ref)
        (fast_bad, fast_msgs), (ref_bad, ref_msgs) = fast.invalid_reasons(), ref.invalid_reasons()
        assert fast_msgs == ref_msgs and np.array_equal(fast_bad, ref_bad)  # same partial_success
        assert fast.wire == data
        # the lazily parsed request is the reference's (compared as bytes: NaN != NaN)
        assert fast.request.SerializeToString(deterministic=True) == ref.request.SerializeToString(
            deterministic=True
        )
    return fast


# ---------------------------------------------------------------- request strategies
text = st.text(max_size=8)
names = st.one_of(st.sampled_from(["chat gpt-4o", "GET /v1", "", "é 中", "db.query"]), text)
ids16 = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20), st.just(bytes(16)))
ids8 = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))
parent_ids = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8), st.binary(max_size=10))
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)
times = st.one_of(
    st.integers(0, 2**63 - 1),
    st.just(0),
    st.integers(1_700_000_000 * 10**9, 1_800_000_000 * 10**9),
    st.integers(2**63, 2**64 - 1),  # valid fixed64, past the int64 columns: rejected by receivers
)
# proto3 enums are open int32: values outside int8 saturate in the columns
enums = st.one_of(st.integers(-3, 10), st.integers(-128, 127), st.integers(-(2**31), 2**31 - 1))

_has_strindex = "string_value_strindex" in AnyValue.DESCRIPTOR.fields_by_name
_leaf_values = [
    st.just(AnyValue()),
    text.map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    i64.map(lambda i: AnyValue(int_value=i)),
    st.floats().map(lambda f: AnyValue(double_value=f)),
    st.binary(max_size=6).map(lambda b: AnyValue(bytes_value=b)),
]
if _has_strindex:
    _leaf_values.append(st.integers(-5, 5).map(lambda i: AnyValue(string_value_strindex=i)))


def _kv(key: str, value: AnyValue | None) -> KeyValue:
    return KeyValue(key=key) if value is None else KeyValue(key=key, value=value)


any_values = st.recursive(
    st.one_of(*_leaf_values),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(text, st.none() | inner), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[_kv(k, v) for k, v in kvs]))
        ),
    ),
    max_leaves=4,
)
attrs = st.lists(
    st.builds(_kv, st.one_of(text, st.sampled_from(["service.name", "k"])), st.none() | any_values),
    max_size=3,
)
service_values = st.one_of(
    st.none(),  # no value at all: string_value reads ""
    names.map(lambda s: AnyValue(string_value=s)),
    any_values,  # often not a string: the service becomes ""
)


@st.composite
def resources(draw: Any) -> Resource:
    kvs = draw(attrs)
    for _ in range(draw(st.integers(0, 2))):  # service.name absent, once or twice (first wins)
        kvs.insert(draw(st.integers(0, len(kvs))), _kv("service.name", draw(service_values)))
    res = Resource(attributes=kvs, dropped_attributes_count=draw(st.integers(0, 3)))
    if "entity_refs" in Resource.DESCRIPTOR.fields_by_name and draw(st.booleans()):
        res.entity_refs.append(
            EntityRef(schema_url=draw(text), type=draw(text), id_keys=draw(st.lists(text, max_size=2)))
        )
    return res


@st.composite
def spans(draw: Any) -> Span:
    sp = Span(
        trace_id=draw(ids16),
        span_id=draw(ids8),
        parent_span_id=draw(parent_ids),
        trace_state=draw(text),
        name=draw(names),
        kind=draw(enums),
        start_time_unix_nano=draw(times),
        end_time_unix_nano=draw(times),
        attributes=draw(attrs),
        dropped_attributes_count=draw(u32),
        flags=draw(u32),
    )
    if draw(st.booleans()):
        sp.status.CopyFrom(Status(code=draw(enums), message=draw(text)))
    for _ in range(draw(st.integers(0, 2))):
        ev = sp.events.add(time_unix_nano=draw(times), name=draw(names))
        ev.attributes.extend(draw(attrs))
    for _ in range(draw(st.integers(0, 1))):
        ln = sp.links.add(trace_id=draw(ids16), span_id=draw(ids8), trace_state=draw(text), flags=draw(u32))
        ln.attributes.extend(draw(attrs))
    return sp


@st.composite
def scope_spans(draw: Any) -> ScopeSpans:
    ss = ScopeSpans(spans=draw(st.lists(spans(), max_size=3)), schema_url=draw(text))
    if draw(st.booleans()):
        ss.scope.CopyFrom(InstrumentationScope(name=draw(text), version=draw(text), attributes=draw(attrs)))
    return ss


@st.composite
def resource_spans(draw: Any) -> ResourceSpans:
    rs = ResourceSpans(scope_spans=draw(st.lists(scope_spans(), max_size=2)), schema_url=draw(text))
    if draw(st.booleans()):
        rs.resource.CopyFrom(draw(resources()))
    return rs


seeds = st.integers(0, 2**32)  # drives the byte-level rewrites (random.Random: cheap, reproducible)
requests = st.lists(resource_spans(), max_size=3).map(lambda rs: ExportTraceServiceRequest(resource_spans=rs))


# ---------------------------------------------------------------- equivalence
@PROPS
@given(requests)
def test_random_requests_decode_like_the_reference(req: ExportTraceServiceRequest) -> None:
    check(req.SerializeToString(), must_decode=True)


@PROPS
@given(requests, seeds)
def test_byte_level_rewrites_decode_like_the_reference(req: ExportTraceServiceRequest, seed: int) -> None:
    """Shuffled fields, unknown fields, repeated scalars, split messages, over-long varints."""
    rnd = random.Random(seed)
    tree = wt.parse(req.SerializeToString(), REQ_DESC)
    wt.rewrite(tree, REQ_DESC, rnd)
    check(wt.encode(tree, rnd, overlong=0.2), must_decode=True)


def test_recorded_instrumentation_payloads() -> None:
    paths = sorted(FIXTURES.glob("*/*.traces.binpb"))
    assert len(paths) >= 40
    for path in paths:
        fast = check(path.read_bytes(), must_decode=True)
        assert fast is not None and len(fast) > 0


@pytest.mark.parametrize("spans_per_request", [512, 7])
def test_llmgen_traffic(spans_per_request: int) -> None:
    cfg = TrafficConfig(seed=3, duration_s=900.0, spans_per_request=spans_per_request, error_rate=0.05)
    for k, chunk in enumerate(generate_chunks(cfg)):
        fast = check(chunk.wire, must_decode=True)
        assert fast is not None and len(fast) == chunk.spans
        if k == 20:
            break


def test_service_name_merges_like_protobuf() -> None:
    """KeyValue.value sent twice merges (a later non-string case wins); Resource sent twice appends."""
    kv = wt.Field(
        1,
        wt.LEN,
        [
            wt.Field(1, wt.LEN, b"service.name", kind="string"),
            wt.Field(2, wt.LEN, [wt.Field(1, wt.LEN, b"svc", kind="string")], AnyValue.DESCRIPTOR, "message"),
            wt.Field(2, wt.LEN, [wt.Field(3, wt.VARINT, 7, kind="scalar")], AnyValue.DESCRIPTOR, "message"),
        ],
        KeyValue.DESCRIPTOR,
        "message",
    )
    other = wt.encode(
        [wt.Field(1, wt.LEN, [wt.Field(1, wt.LEN, b"k", kind="string")], KeyValue.DESCRIPTOR, "message")]
    )
    span = Span(trace_id=bytes(range(16)), span_id=bytes(range(8)), name="x").SerializeToString()
    rs = (
        wt.encode([wt.Field(1, wt.LEN, other)])  # resource #1: no service.name
        + wt.encode([wt.Field(2, wt.LEN, wt.encode([wt.Field(2, wt.LEN, span)]))])
        + wt.encode([wt.Field(1, wt.LEN, wt.encode([kv]))])  # resource #2: merged into #1
    )
    data = wt.encode([wt.Field(1, wt.LEN, rs)])
    fast = check(data, must_decode=True)
    assert fast is not None and fast.string_column("service") == [""]


# ---------------------------------------------------------------- rejections
@PROPS
@given(requests, seeds)
def test_invalid_utf8_in_any_string_field_is_refused(req: ExportTraceServiceRequest, seed: int) -> None:
    rnd = random.Random(seed)
    tree = wt.parse(req.SerializeToString(), REQ_DESC)
    strings = [f for f in wt.walk(tree) if f.kind == "string"]
    assume(strings)
    target = rnd.choice(strings)
    bad = rnd.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"])
    cut = rnd.randint(0, len(target.value))
    target.value = target.value[:cut] + bad + target.value[cut:]
    data = wt.encode(tree)
    assert isinstance(reference(data), DecodeError)
    assert decode_spans(data) is None


@PROPS
@given(requests, st.data())
def test_truncated_and_corrupted_bytes_never_pass_where_the_reference_fails(
    req: ExportTraceServiceRequest, data: st.DataObject
) -> None:
    wire = req.SerializeToString()
    assume(wire)
    cut = data.draw(st.integers(0, len(wire) - 1))
    check(wire[:cut], must_decode=False)
    flipped = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 3))):
        flipped[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    check(bytes(flipped), must_decode=False)


def test_random_bytes_never_crash() -> None:
    rnd = random.Random(7)
    for _ in range(3000):
        check(rnd.randbytes(rnd.randint(0, 40)), must_decode=False)


def _span_request(**span: Any) -> bytes:
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(**span)])])]
    )
    return req.SerializeToString()


@pytest.mark.parametrize(
    ("span", "column", "value"),
    [
        ({"kind": 128}, "kind", 127),
        ({"kind": -129}, "kind", -128),
        ({"kind": 2**31 - 1}, "kind", 127),
        ({"kind": -(2**31)}, "kind", -128),
        ({"status": Status(code=300)}, "status_code", 127),
        ({"status": Status(code=-300)}, "status_code", -128),
        ({"start_time_unix_nano": 2**63}, "start_ns", -(2**63)),
        ({"end_time_unix_nano": 2**64 - 1}, "end_ns", -1),
    ],
)
def test_values_past_the_columns_range_decode_like_the_reference(
    span: dict[str, Any], column: str, value: int
) -> None:
    """Well-formed protobuf whose values the columns cannot hold: both decoders convert them the
    same way (enums saturate, times keep their bits) instead of failing; the request is exact."""
    data = _span_request(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), **span)
    fast = check(data, must_decode=True)
    assert fast is not None and fast.columns[column].tolist() == [value]


def test_enum_varints_are_truncated_to_int32_like_upb() -> None:
    name = wt.Field(5, wt.LEN, b"n", kind="string")
    kind = wt.Field(6, wt.VARINT, 2**32 + 3, kind="scalar")
    data = wt.encode(
        [
            wt.Field(
                1,
                wt.LEN,
                wt.encode([wt.Field(2, wt.LEN, wt.encode([wt.Field(2, wt.LEN, wt.encode([name, kind]))]))]),
            )
        ]
    )
    fast = check(data, must_decode=True)
    assert fast is not None and fast.columns["kind"].tolist() == [3]


def _wrap_span(span_fields: bytes) -> bytes:
    ss = wt.encode([wt.Field(2, wt.LEN, span_fields)])
    rs = wt.encode([wt.Field(2, wt.LEN, ss)])
    return wt.encode([wt.Field(1, wt.LEN, rs)])


@pytest.mark.parametrize(
    "span_fields",
    [
        bytes([0xA3, 0x06, 0xA4, 0x06]),  # an empty unknown group (field 100): valid, not replicated
        bytes([0x28, 0x01]),  # name (a string) sent as a varint: upb keeps it as an unknown field
        bytes([0x32, 0x00]),  # kind sent length-delimited
    ],
)
def test_valid_subtleties_it_does_not_replicate_fall_back(span_fields: bytes) -> None:
    data = _wrap_span(span_fields)
    assert isinstance(reference(data), SpanBatch)
    assert decode_spans(data) is None


@pytest.mark.parametrize(
    "span_fields",
    [
        bytes([0x2A, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00]) + b"a",  # 6-byte length prefix
        bytes([0xB0, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01]),  # 6-byte tag
        bytes([0x00, 0x01]),  # field number 0
        bytes([0xA4, 0x06]),  # stray end-group
        bytes([0x31]) + bytes(7),  # fixed64 cut short
        bytes([0x30] + [0xFF] * 10 + [0x01]),  # 11-byte varint
    ],
)
def test_malformed_encodings_are_refused(span_fields: bytes) -> None:
    data = _wrap_span(span_fields)
    assert isinstance(reference(data), DecodeError)
    assert decode_spans(data) is None


def _nested(depth: int) -> bytes:
    value = AnyValue(string_value="x").SerializeToString()
    for _ in range(depth):
        value = wt.encode([wt.Field(5, wt.LEN, wt.encode([wt.Field(1, wt.LEN, value)]))])
    kv = wt.encode([wt.Field(1, wt.LEN, b"k"), wt.Field(2, wt.LEN, value)])
    return _wrap_span(wt.encode([wt.Field(9, wt.LEN, kv)]))


def test_nesting_within_the_stack_decodes_and_deeper_falls_back() -> None:
    shallow = (MAX_DEPTH - 8) // 2
    check(_nested(shallow), must_decode=True)
    deep = _nested(MAX_DEPTH // 2 + 1)  # past our stack, within upb's limit of 100
    assert isinstance(reference(deep), SpanBatch)
    assert decode_spans(deep) is None
    check(_nested(60), must_decode=False)  # past upb's limit too


# ---------------------------------------------------------------- schema
def test_schema_covers_every_field_of_the_installed_protos() -> None:
    """Every field of every message is known with the right kind, so every string gets validated."""
    assert SCHEMA.problem == ""
    from google.protobuf.descriptor import FieldDescriptor as FD

    pool = REQ_DESC.file.pool
    strings = 0
    for mid, full_name in enumerate(SCHEMA.names):
        if not full_name:
            continue
        desc = pool.FindMessageTypeByName(full_name)
        for fd in desc.fields:
            kind = int(SCHEMA.kinds[mid, fd.number])
            if fd.type == FD.TYPE_STRING:
                assert kind == traces.F_STRING, f"{full_name}.{fd.name}"
                strings += 1
            elif fd.type == FD.TYPE_MESSAGE:
                assert kind == traces.F_MESSAGE
                assert SCHEMA.names[SCHEMA.child[mid, fd.number]] == fd.message_type.full_name
            else:
                assert kind not in (traces.F_UNKNOWN, traces.F_STRING, traces.F_MESSAGE), fd.name
        known = {int(n) for n in np.flatnonzero(SCHEMA.kinds[mid])}
        assert known == {fd.number for fd in desc.fields}, full_name
    assert strings >= 12  # names, keys, values, trace states, schema URLs, status message...


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), *[st.sampled_from([0, 1, 2**63, 2**64 - 1])] * 3, times, times), max_size=12
    )
)
def test_problem_counts_match_the_masks(rows: list[tuple[bool, int, int, int, int, int]]) -> None:
    """The one-pass kernel that clears clean batches counts exactly what the masks reject."""
    n = len(rows)
    cols: list[np.ndarray] = [
        np.array([r[k] for r in rows], dtype=t)
        for k, t in enumerate((np.bool_, np.uint64, np.uint64, np.uint64, np.uint64, np.uint64))
    ]
    ids_ok, hi, lo, sid, start_u, end_u = (c.reshape(n) for c in cols)
    start, end = start_u.view(np.int64), end_u.view(np.int64)
    bad_ids = ~ids_ok | ((hi | lo) == 0) | (sid == 0)
    out = (start < 0) | (end < 0)
    order = (end < start) & ~out
    assert span_problems(ids_ok, hi, lo, sid, start, end) == (bad_ids.sum(), out.sum(), order.sum())
