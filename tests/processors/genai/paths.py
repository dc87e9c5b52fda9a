"""Run both extraction paths on the same bytes and compare everything they return."""

from __future__ import annotations

from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import SpanBatch
from processors.genai.extract import FLOAT_COLUMNS, STRING_COLUMNS, Extracted, extract_reference
from processors.genai.wire_extract import extract_wire

FLAG_COLUMNS = ("llm", "stream", "error", "rate_limited", "truncated")


def batch_of(wire: bytes) -> SpanBatch:
    return SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire), wire=wire)


def reasons(batch: SpanBatch, ex: Extracted) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(len(batch))]
    for row, code in zip(ex.finish_rows.tolist(), ex.finish_codes.tolist(), strict=True):
        out[row].append(batch.strings.values[code])
    return out


def both(wire: bytes) -> tuple[tuple[SpanBatch, Extracted], tuple[SpanBatch, Extracted]]:
    """(reference batch, its Extracted), (fast batch, its Extracted): two batches, two string tables."""
    ref_batch, fast_batch = batch_of(wire), batch_of(wire)
    fast = extract_wire(fast_batch)
    assert fast is not None, "the fast path gave up on bytes protobuf parsed"
    return (ref_batch, extract_reference(ref_batch)), (fast_batch, fast)


def assert_same(wire: bytes) -> tuple[SpanBatch, Extracted]:
    """Both paths agree on every column (NaN-aware), every string (codes and text) and every reason."""
    (rb, ref), (fb, fast) = both(wire)
    diffs: dict[str, Any] = {}
    for name in FLOAT_COLUMNS:
        if not np.array_equal(ref.floats[name], fast.floats[name], equal_nan=True):
            diffs[name] = (ref.floats[name], fast.floats[name])
    for name in STRING_COLUMNS:
        texts = (rb.strings.decode(ref.strings[name]), fb.strings.decode(fast.strings[name]))
        if texts[0] != texts[1] or not np.array_equal(ref.strings[name], fast.strings[name]):
            diffs[name] = texts
    for name in FLAG_COLUMNS:
        a, b = getattr(ref, name), getattr(fast, name)
        if a.dtype != b.dtype or not np.array_equal(a, b):
            diffs[name] = (a, b)
    if reasons(rb, ref) != reasons(fb, fast):
        diffs["finish_reasons"] = (reasons(rb, ref), reasons(fb, fast))
    if rb.strings.values != fb.strings.values:
        diffs["string table"] = (rb.strings.values, fb.strings.values)
    assert not diffs, diffs
    return fb, fast
