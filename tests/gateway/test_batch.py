"""Lazy batches: a batch holding only wire bytes behaves like one holding the parsed request."""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from exporters.debug import summary_fields
from gateway.batch import SpanBatch
from gateway.wire.traces import decode_spans, warm_up


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


def _span(k: int, name: str) -> Span:
    return Span(
        trace_id=k.to_bytes(16, "big"),
        span_id=(k + 1).to_bytes(8, "big"),
        name=name,
        start_time_unix_nano=k,
        end_time_unix_nano=k + 5,
    )


def _request(
    service: str, names: list[str], offset: int = 0, empty_resources: int = 0
) -> ExportTraceServiceRequest:
    res = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    req = ExportTraceServiceRequest()
    req.resource_spans.extend(ResourceSpans() for _ in range(empty_resources))  # no spans, still counted
    req.resource_spans.append(
        ResourceSpans(
            resource=res,
            scope_spans=[ScopeSpans(), ScopeSpans(spans=[_span(offset + i, n) for i, n in enumerate(names)])],
        )
    )
    return req


def _lazy(req: ExportTraceServiceRequest) -> SpanBatch:
    batch = decode_spans(req.SerializeToString())
    assert batch is not None and not batch.request_parsed
    return batch


def assert_same(a: SpanBatch, b: SpanBatch) -> None:
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        assert a.columns[name].dtype == b.columns[name].dtype, name
        assert np.array_equal(a.columns[name], b.columns[name]), name
    assert a.strings.values == b.strings.values
    assert a.string_columns == b.string_columns
    assert a.request == b.request


def test_request_is_parsed_on_first_access_only() -> None:
    req = _request("svc", ["a", "b"], empty_resources=2)
    batch = _lazy(req)
    assert batch.resource_count == 3
    assert len(batch) == 2 and batch.nbytes == req.ByteSize()
    assert summary_fields(batch) == {"resource_spans": 3, "spans": 2}
    assert not batch.request_parsed  # none of the above needed the objects
    assert batch.request == req
    assert batch.request_parsed
    assert batch.item(1).name == "b"


def test_a_batch_needs_request_or_wire() -> None:
    with pytest.raises(ValueError):
        SpanBatch(None, {})


def test_copy_shares_the_wire_and_does_not_parse() -> None:
    batch = _lazy(_request("svc", ["a"]))
    dup = batch.copy()
    assert not batch.request_parsed and not dup.request_parsed
    assert dup.wire is batch.wire and dup.resource_count == 1
    dup.columns["start_ns"][0] = 99
    assert batch.columns["start_ns"][0] == 0
    dup.request.resource_spans[0].scope_spans[1].spans[0].name = "changed"
    dup.mark_modified()
    assert batch.request.resource_spans[0].scope_spans[1].spans[0].name == "a"


def test_concat_of_wire_batches_joins_bytes_without_parsing() -> None:
    reqs = [
        _request("s1", ["a", "b"], empty_resources=1),
        _request("s2", ["b", "c"], 10),
        _request("s1", ["d"], 20),
    ]
    lazy = SpanBatch.concat([_lazy(r) for r in reqs])
    assert not lazy.request_parsed
    assert lazy.wire == b"".join(r.SerializeToString() for r in reqs)
    assert lazy.resource_count == 4
    ref = SpanBatch.concat([SpanBatch.from_request(r) for r in reqs])  # the object path
    assert_same(lazy, ref)
    assert lazy.string_column("service") == ["s1", "s1", "s2", "s2", "s1"]
    assert lazy.columns["res_idx"].tolist() == [1, 1, 2, 2, 3]


def test_concat_mixing_wire_and_parsed_batches_builds_the_request() -> None:
    a, b = _request("s1", ["a"]), _request("s2", ["b"], 5)
    parsed = SpanBatch.from_request(b)  # no wire: e.g. from JSON
    mixed = SpanBatch.concat([_lazy(a), parsed])
    expected = ExportTraceServiceRequest(resource_spans=[*a.resource_spans, *b.resource_spans])
    assert mixed.request == expected
    assert mixed.columns["res_idx"].tolist() == [0, 1]
    assert mixed.string_column("name") == ["a", "b"]


def test_take_and_split_of_a_wire_batch_match_the_object_path() -> None:
    req = _request("svc", ["a", "b", "c", "d"], empty_resources=1)
    lazy, ref = _lazy(req), SpanBatch.from_request(req)
    rows = np.array([False, True, False, True])
    assert_same(lazy.take(rows), ref.take(rows))
    parts_l, parts_r = lazy.split(3), ref.split(3)
    assert len(parts_l) == len(parts_r) == 2
    for pl, pr in zip(parts_l, parts_r, strict=True):
        assert_same(pl, pr)


def test_mark_modified_keeps_the_data_of_an_unparsed_batch() -> None:
    req = _request("svc", ["a"])
    batch = _lazy(req)
    batch.mark_modified()
    assert batch.wire is None
    assert ExportTraceServiceRequest.FromString(batch.serialize()) == req
