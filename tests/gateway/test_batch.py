"""Lazy batches: a batch holding only wire bytes behaves like one holding the parsed request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from exporters.debug import summary_fields
from gateway.batch import LogBatch, SpanBatch
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


def test_concat_keeps_the_pieces_until_the_wire_is_read() -> None:
    reqs = [_request("s1", ["a"]), _request("s2", ["b", "c"], 10), _request("s1", ["d"], 20)]
    wires = [r.SerializeToString() for r in reqs]
    first = SpanBatch.concat([_lazy(r) for r in reqs[:2]])
    both = SpanBatch.concat([first, _lazy(reqs[2])])  # nested: the pieces are flattened
    assert both.wire_chunks() == tuple(wires)
    assert both.nbytes == sum(map(len, wires))  # without joining
    dup = both.copy()
    assert dup.wire_chunks() == tuple(wires)
    assert both.wire == b"".join(wires)
    assert both.wire_chunks() == (both.wire,)
    assert dup.request == ExportTraceServiceRequest.FromString(b"".join(wires))
    assert both.resource_count == dup.resource_count == 3


def _concat_reference(batches: list[SpanBatch]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Columns and strings of a concatenation, batch by batch (how `concat` used to do it)."""
    strings: dict[str, int] = {}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in batches[0].columns}
    offset = 0
    for b in batches:
        remap = np.array([strings.setdefault(v, len(strings)) for v in b.strings.values] or [0], np.int32)
        for n, col in b.columns.items():
            if n == "res_idx":
                col = col + offset
            elif n in b.string_columns:
                col = np.where(col >= 0, remap[np.maximum(col, 0)], -1).astype(np.int32)
            parts[n].append(col)
        offset += b.resource_count
    return {n: np.concatenate(p) for n, p in parts.items()}, list(strings)


_names = st.lists(st.sampled_from(["a", "b", "c", "chat", "é"]), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["s1", "s2", "s3"]), _names, st.integers(0, 2), st.booleans()),
        min_size=2,
        max_size=6,
    )
)
def test_concat_matches_the_batch_by_batch_reference(parts: list[tuple[str, list[str], int, bool]]) -> None:
    """String tables merged in batch order, codes remapped, resource indices shifted; wire and
    parsed inputs alike (a parsed one makes concat build the request)."""
    batches = []
    for k, (service, names, empty, lazy) in enumerate(parts):
        req = _request(service, names, 100 * k, empty_resources=empty)
        batches.append(_lazy(req) if lazy else SpanBatch.from_request(req))
    got = SpanBatch.concat(batches)
    cols, strings = _concat_reference(batches)
    assert got.strings.values == strings
    assert set(got.columns) == set(cols)
    for name, col in cols.items():
        assert got.columns[name].dtype == col.dtype, name
        assert np.array_equal(got.columns[name], col), name
    assert got.request_parsed == (not all(lazy for *_, lazy in parts))
    merged = ExportTraceServiceRequest()
    for b in batches:
        merged.resource_spans.extend(b.request.resource_spans)
    assert got.request == merged


@pytest.mark.parametrize(
    ("span", "message"),
    [
        (
            {"start_time_unix_nano": 2**63, "end_time_unix_nano": 2**63 + 5},
            "start_time_unix_nano=9223372036854775808",
        ),
        ({"end_time_unix_nano": 2**64 - 1}, "end_time_unix_nano=18446744073709551615"),
    ],
)
def test_times_past_int64_are_rejected_with_the_field_and_value(span: dict[str, Any], message: str) -> None:
    good = _span(1, "ok")
    bad = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="late", **span)
    req = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[good, bad, good])])]
    )
    for batch in (_lazy(req), SpanBatch.from_request(req)):
        mask, reasons = batch.invalid_reasons()
        assert mask.tolist() == [False, True, False]
        assert len(reasons) == 1 and reasons[0].startswith("1 span(s) with a time past the supported range")
        assert message in reasons[0]


def test_a_valid_batch_has_no_reasons() -> None:
    mask, reasons = _lazy(_request("svc", ["a", "b"], 1)).invalid_reasons()
    assert reasons == [] and not mask.any()


def test_log_values_past_the_columns_range_do_not_fail() -> None:
    """Same conversions as spans: times keep their bits, the open severity enum saturates."""
    req = ExportLogsServiceRequest()
    lr = req.resource_logs.add().scope_logs.add().log_records.add()
    lr.time_unix_nano, lr.observed_time_unix_nano, lr.severity_number = 2**64 - 1, 2**63, 1000
    batch = LogBatch.from_request(req)
    assert batch.columns["time_ns"].tolist() == [-1]
    assert batch.columns["observed_ns"].tolist() == [-(2**63)]
    assert batch.columns["severity"].tolist() == [127]
