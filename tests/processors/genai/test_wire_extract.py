"""The wire fast path of genai extraction gives exactly what the reference gives, on recorded payloads,
generated traffic, random spans (also encoded in non-canonical field order) and mutated bytes; bytes it
cannot use make it step aside instead of crashing."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.batch import SpanBatch
from loadtests.llmgen import Anomaly, TrafficConfig, generate_chunks
from processors.genai.extract import extract, extract_reference
from processors.genai.wire_extract import extract_wire
from processors.genai.wire_scan import scan_wire
from tests.processors.genai.paths import assert_same, batch_of, both, reasons
from tests.processors.genai.spans import T0, request_of, requests, span

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "genai"
# The module, not the function of the same name that the package re-exports.
extract_module = importlib.import_module("processors.genai.extract")


# ---------------------------------------------------------------- recorded and generated traffic
@pytest.mark.parametrize(
    "path", sorted(FIXTURES.glob("*/*.traces.binpb")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_every_recorded_payload_extracts_identically(path: Path) -> None:
    wire = path.read_bytes()
    batch, fast = assert_same(wire)
    assert fast.llm.any() or "semconv" in str(path)
    assert not scan_wire(wire, len(batch)).odd.any(), "recorded spans should not need the reference"


def test_generated_traffic_extracts_identically() -> None:
    cfg = TrafficConfig(
        seed=11,
        duration_s=1800.0,
        rate_scale=2.0,
        error_rate=0.05,
        rate_limit_rate=0.05,
        anomalies=(
            Anomaly("error_burst", "chat-api", "gpt-4o-mini", 300, 300),
            Anomaly("truncation_spike", "chat-api", "gpt-4o", 300, 300),
        ),
    )
    chunks = 0
    for chunk in generate_chunks(cfg):
        _, fast = assert_same(chunk.wire)
        assert int(fast.llm.sum()) == chunk.llm_calls
        assert int(fast.error.sum()) == chunk.errors
        chunks += 1
        if chunks == 12:
            break
    assert chunks == 12


# ---------------------------------------------------------------- random spans
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(requests)
def test_random_spans_extract_identically(specs: list[list[dict[str, Any]]]) -> None:
    assert_same(request_of(specs))


def _exc(kind: str, message: Any = ("s", "")) -> tuple[str, int, list[Any]]:
    return ("exception", 1, [("exception.type", ("s", kind)), ("exception.message", message)])


SYSTEM = ("gen_ai.system", ("s", "openai"))
EDGES = {
    "http-new-key-wins-even-when-not-429": span(
        [SYSTEM, ("http.response.status_code", ("i", 200)), ("http.status_code", ("i", 429))], status=(2, "")
    ),
    "http-new-key-without-value": span(
        [SYSTEM, ("http.response.status_code", ("novalue",)), ("http.status_code", ("s", "429"))],
        status=(2, ""),
    ),
    "http-old-key-as-text": span([SYSTEM, ("http.status_code", ("s", " 429 "))], status=(2, "boom")),
    "stream-as-text": span(
        [SYSTEM, ("gen_ai.request.stream", ("s", "TRUE")), ("llm.is_streaming", ("b", False))]
    ),
    "stream-text-not-a-flag": span(
        [SYSTEM, ("gen_ai.is_streaming", ("s", "yes")), ("llm.is_streaming", ("s", "False"))]
    ),
    "model-from-params-not-a-string": span(
        [("llm.invocation_parameters", ("s", '{"model": 5}')), ("llm.model_name", ("s", "m"))]
    ),
    "model-from-params": span(
        [
            ("llm.invocation_parameters", ("s", '{"model": "p", "stream": true}')),
            ("llm.model_name", ("s", "m")),
        ]
    ),
    "last-exception-wins": span(
        [SYSTEM], events=[_exc("RateLimitError"), _exc("APIError", ("i", 3))], status=(2, "")
    ),
    "exception-type-empty": span([SYSTEM], events=[_exc("")], status=(2, "")),
    "exception-type-not-a-string": span(
        [SYSTEM], events=[("exception", 1, [("exception.type", ("i", 1))])], status=(2, "")
    ),
    "empty-error-type-falls-to-exception": span(
        [SYSTEM, ("error.type", ("s", ""))], events=[_exc("Too Many Requests")], status=(2, "")
    ),
    "error-type-without-error-status": span([SYSTEM, ("error.type", ("s", "Timeout"))]),
    "indexed-repeated-and-unordered": span(
        [
            SYSTEM,
            ("gen_ai.completion.2.finish_reason", ("s", "stop")),
            ("gen_ai.completion.01.finish_reason", ("s", "length")),
            ("gen_ai.completion.1.finish_reason", ("s", "")),
        ]
    ),
    "embeddings-total-only": span(
        [("gen_ai.operation.name", ("s", "Embeddings")), SYSTEM, ("llm.usage.total_tokens", ("s", "40"))]
    ),
    "chunk-without-time-then-chunk": span(
        [SYSTEM],
        events=[
            ("llm.content.completion.chunk", 0, []),
            ("x", 5, []),
            ("First Token Stream Event", 250_000_000, []),
        ],
    ),
    "first-chunk-wins": span(
        [SYSTEM],
        events=[
            ("llm.content.completion.chunk", 300_000_000, []),
            ("First Token Stream Event", 250_000_000, []),
        ],
    ),
    "ttft-attribute-beats-event": span(
        [SYSTEM, ("gen_ai.server.time_to_first_token", ("d", 0.5))],
        events=[("gen_ai.content.completion.chunk", 1, [])],
    ),
    "provider-present-without-value": span([("gen_ai.provider.name", ("kv", True)), SYSTEM]),
    "kind-not-a-call": span([("openinference.span.kind", ("s", "tool")), SYSTEM]),
    "request-type-empty": span([("llm.request.type", ("s", ""))]),
    "reasons-json-then-messages": span(
        [
            SYSTEM,
            ("gen_ai.response.finish_reasons", ("s", "[]")),
            ("gen_ai.output.messages", ("s", '[{"finish_reason": "length"}]')),
        ]
    ),
    "reasons-from-messages": span(
        [
            SYSTEM,
            ("gen_ai.response.finish_reasons", ("a", [])),
            ("gen_ai.output.messages", ("s", '[{"finish_reason": "length"}]')),
        ]
    ),
}


# In the same request as every edge: calls whose only count is a total (used for embeddings only).
COMPANIONS = [
    span([("gen_ai.operation.name", ("s", "embeddings")), ("gen_ai.usage.total_tokens", ("i", 8))]),
    span([("gen_ai.operation.name", ("s", "chat")), ("gen_ai.usage.total_tokens", ("i", 9))]),
]


@pytest.mark.parametrize("spec", EDGES.values(), ids=EDGES.keys())
def test_precedence_edges_extract_identically(spec: dict[str, Any]) -> None:
    assert_same(request_of([[spec, spec], COMPANIONS]))


# Non-canonical order: protobuf accepts a message's fields in any order (a repeated field keeps its own).
CHILDREN: dict[str, dict[int, str]] = {
    "request": {1: "resource"},
    "resource": {2: "scope"},
    "scope": {2: "span"},
    "span": {9: "kv", 11: "event", 15: "status"},
    "event": {3: "kv"},
    "kv": {2: "any"},
    "any": {5: "array"},
    "array": {1: "any"},
    "status": {},
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def reorder(data: bytes, kind: str, rnd: random.Random) -> bytes:
    """The same message with its fields interleaved at random (each field number keeps its order)."""
    groups: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field, wtype = key >> 3, key & 7
        if wtype == 0:
            _, pos = _varint(data, pos)
        elif wtype == 1:
            pos += 8
        elif wtype == 5:
            pos += 4
        else:
            length, body = _varint(data, pos)
            pos = body + length
            child = CHILDREN[kind].get(field)
            if child is not None:
                inner = reorder(data[body:pos], child, rnd)
                groups.setdefault(field, []).append(_encode_varint(key) + _encode_varint(len(inner)) + inner)
                continue
        groups.setdefault(field, []).append(data[start:pos])
    out = []
    queues = [list(g) for g in groups.values()]
    while queues:
        q = rnd.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return b"".join(out)


@SETTINGS
@given(requests, st.randoms(use_true_random=False))
def test_fields_in_any_order_extract_identically(
    specs: list[list[dict[str, Any]]], rnd: random.Random
) -> None:
    wire = reorder(request_of(specs), "request", rnd)
    assert ExportTraceServiceRequest.FromString(wire) == ExportTraceServiceRequest.FromString(
        request_of(specs)
    )
    assert_same(wire)


@SETTINGS
@given(
    requests,
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("fid")), max_size=4),
)
def test_mutated_bytes_never_crash_and_agree_when_protobuf_accepts_them(
    specs: list[list[dict[str, Any]]], edits: list[tuple[int, int, str]]
) -> None:
    data = bytearray(request_of(specs))
    for where, byte, op in edits:
        i = where % (len(data) + 1)
        if op == "f" and i < len(data):
            data[i] = byte
        elif op == "i":
            data.insert(i, byte)
        elif i < len(data):
            del data[i]
    wire = bytes(data)
    scan = scan_wire(wire, 3)  # whatever the bytes: a status, no crash, no out-of-bounds read
    assert scan.status in (0, -1, -2)
    try:
        batch = batch_of(wire)
    except Exception:  # protobuf refused the bytes (or the batch builder their values): nothing to compare
        return
    if len(batch) and extract_wire(batch_of(wire)) is not None:
        assert_same(wire)
    else:  # the fast path stepped aside: extract() still answers, by the reference
        ex = extract(batch)
        ref_batch = batch_of(wire)
        assert reasons(batch, ex) == reasons(ref_batch, extract_reference(ref_batch))


# ---------------------------------------------------------------- encodings only the reference reads right
def _span_request(span_bytes: bytes) -> bytes:
    scope = b"\x12" + _encode_varint(len(span_bytes)) + span_bytes
    resource = b"\x12" + _encode_varint(len(scope)) + scope
    return b"\x0a" + _encode_varint(len(resource)) + resource


def _ld(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def _kv(key: str, any_value: bytes) -> bytes:
    return _ld(9, _ld(1, key.encode()) + _ld(2, any_value))


BASE = Span(
    trace_id=bytes(range(1, 17)),
    span_id=bytes(range(1, 9)),
    start_time_unix_nano=T0,
    end_time_unix_nano=T0 + 10**9,
).SerializeToString() + _kv("gen_ai.system", _ld(1, b"openai"))


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(_kv("gen_ai.request.model", _ld(1, b"a") + b"\x18\x05"), id="oneof-set-twice"),
        pytest.param(
            _kv(
                "gen_ai.response.finish_reasons",
                _ld(5, _ld(1, _ld(1, b"stop"))) + _ld(5, _ld(1, _ld(1, b"length"))),
            ),
            id="arrays-merge",
        ),
        pytest.param(
            _ld(9, _ld(1, b"error.type") + _ld(2, _ld(1, b"A")) + _ld(2, _ld(1, b"Timeout"))),
            id="value-twice",
        ),
        pytest.param(_ld(15, b"\x18\x02") + _ld(15, _ld(2, b"rate limit")), id="status-merges"),
        pytest.param(_kv("gen_ai.usage.input_tokens", b"\x1a\x01x"), id="int-with-wrong-wire-type"),
        pytest.param(b"\x48\x01", id="attributes-with-wrong-wire-type"),
        pytest.param(_kv("llm.finish_reason", b"\x18\x07"), id="reason-printed-from-int"),
        pytest.param(_kv("error.type", b"\x10\x01") + b"\x7a\x02\x18\x02", id="error-type-printed-from-bool"),
        pytest.param(_kv("gen_ai.completion.\u0663.finish_reason", _ld(1, b"length")), id="unicode-index"),
        pytest.param(
            _kv("gen_ai.completion.99999999999999999999.finish_reason", _ld(1, b"length")), id="huge-index"
        ),
        pytest.param(
            _kv("gen_ai.response.finish_reasons", _ld(5, _ld(1, b"\x18\x01"))), id="non-string-element"
        ),
        pytest.param(
            b"\x39"
            + (T0 - 5).to_bytes(8, "little")
            + _ld(11, b"\x09" + (T0 + 7).to_bytes(8, "little") + _ld(2, b"First Token Stream Event")),
            id="second-start-time",
        ),
    ],
)
def test_odd_encodings_are_read_by_the_reference(extra: bytes) -> None:
    wire = _span_request(BASE + extra)
    _, fast = assert_same(wire)
    assert fast.llm[0]


def test_malformed_bytes_and_foreign_bytes_step_aside() -> None:
    good = _span_request(BASE)
    for cut in range(1, len(good)):
        assert scan_wire(good[:cut], 1).status == -1
    assert scan_wire(good, 2).status == -2  # fewer spans than the batch has rows
    assert scan_wire(good + good, 1).status == -2
    assert scan_wire(good, 1, np.array([T0], dtype=np.int64)).status == 0
    assert scan_wire(good, 1, np.array([T0 + 1], dtype=np.int64)).status == -3  # not the batch's spans
    batch = batch_of(good)
    batch.wire = _span_request(BASE.replace(T0.to_bytes(8, "little"), (T0 + 1).to_bytes(8, "little"), 1))
    assert extract_wire(batch) is None  # bytes of other spans: start times differ
    assert extract(batch).llm[0]  # and `extract` answers from the request


def test_extract_takes_the_fast_path_without_touching_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = next(iter(sorted(FIXTURES.glob("openai-v2/chat.traces.binpb")))).read_bytes()
    (_, ref), _ = both(wire)

    def refuse(self: SpanBatch) -> Any:
        raise AssertionError("the fast path parsed the request")

    batch = batch_of(wire)
    monkeypatch.setattr(SpanBatch, "iter_items", refuse)
    ex = extract(batch)
    assert np.array_equal(ex.llm, ref.llm)
    monkeypatch.setattr(extract_module, "WIRE_FAST_PATH", False)
    with pytest.raises(AssertionError, match="parsed the request"):
        extract(batch_of(wire))
    with pytest.raises(AssertionError, match="parsed the request"):
        extract(batch, reference=True)
