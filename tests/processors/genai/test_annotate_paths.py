"""The genai processor gives the same columns and the same /metrics whichever path runs: the wire path
(scan, resolve and accounting kernels) against the reference (protobuf objects, numpy accounting), on
recorded, generated and random spans, under every kind of configuration."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from loadtests.llmgen import Anomaly, TrafficConfig, generate_chunks
from processors.genai import FACTORY, GenAIProcessor
from processors.genai.metrics import LlmMetrics
from processors.genai.wire_extract import resolve_wire
from tests.processors.genai.paths import batch_of
from tests.processors.genai.spans import request_of, requests, span

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "genai"
wire_extract = importlib.import_module("processors.genai.wire_extract")


def processor(config: dict[str, Any] | None = None) -> GenAIProcessor:
    ctx = ComponentContext(
        ComponentId("genai"), Kind.PROCESSOR, logging.getLogger("t"), SelfTelemetry(), Admission(), "traces"
    )
    proc = FACTORY.create(ctx, FACTORY.config.model_validate(config or {}))
    assert isinstance(proc, GenAIProcessor)
    return proc


def exposition(proc: GenAIProcessor) -> str:
    registry = CollectorRegistry()
    assert proc.metrics is not None
    registry.register(proc.metrics)
    return generate_latest(registry).decode()


def payloads() -> list[bytes]:
    out = [p.read_bytes() for p in sorted(FIXTURES.glob("*/*.traces.binpb"))]
    cfg = TrafficConfig(
        seed=5,
        duration_s=1200.0,
        rate_scale=2.0,
        error_rate=0.05,
        anomalies=(Anomaly("truncation_spike", "chat-api", "gpt-4o", 200, 300),),
    )
    out += [chunk.wire for _, chunk in zip(range(6), generate_chunks(cfg), strict=False)]
    two_reasons = span(
        [
            ("gen_ai.system", ("s", "openai")),
            ("gen_ai.response.finish_reasons", ("a", [("s", "stop"), ("s", "length")])),
        ]
    )
    indexed = span(
        [
            ("gen_ai.system", ("s", "x")),
            ("gen_ai.completion.1.finish_reason", ("s", "length")),
            ("gen_ai.completion.0.finish_reason", ("s", "stop")),
        ]
    )
    odd = span([("gen_ai.system", ("s", "x")), ("llm.finish_reason", ("i", 3))])  # left to the reference
    out.append(request_of([[two_reasons, indexed], [odd]]))
    return out


def test_columns_and_metrics_are_the_same_both_ways() -> None:
    fast_proc, ref_proc = processor(), processor()
    for wire in payloads():
        fast = SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire), wire=wire)
        ref = SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire))  # no bytes: reference path
        fast_proc.annotate(fast)
        ref_proc.annotate(ref)
        assert fast.strings.values == ref.strings.values
        assert set(fast.columns) == set(ref.columns)
        for name, col in ref.columns.items():
            assert np.array_equal(fast.columns[name], col, equal_nan=col.dtype.kind == "f"), name
    text = exposition(fast_proc)
    assert text == exposition(ref_proc)
    assert 'finish_reason="length"' in text and "llm_sentinel_requests_total" in text


def test_every_finish_reason_of_a_call_is_counted() -> None:
    proc = processor()
    wire = payloads()[-1]
    proc.annotate(SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire), wire=wire))
    assert proc.metrics is not None
    counts: dict[tuple[str, str], int] = {}
    for (series, reason), n in proc.metrics.finish.items():
        counts[(proc.metrics.keys[series][1], reason)] = n
    assert counts == {
        ("openai", "stop"): 1,
        ("openai", "length"): 1,
        ("x", "stop"): 1,
        ("x", "length"): 1,
        ("x", "3"): 1,
    }


@pytest.mark.timeout(120)
def test_start_loads_the_kernel_before_the_gateway_is_ready() -> None:
    proc = processor()
    asyncio.run(proc.start())
    assert wire_extract._warm_seconds is not None


# ---------------------------------------------------------------- random spans, every configuration
CONFIGS: list[dict[str, Any]] = [
    {},
    {"validation": {"max_latency": 1.0, "max_tokens": 10, "max_cost_usd": 1e-5}},
    {"validation": {"enabled": False}},
    {"metrics": {"max_series": 2}},
    {"metrics": {"enabled": False}},
    {
        "builtin_prices": False,
        "prices": {"openai/gpt-4o-mini": {"input_per_million": 1, "output_per_million": 2}},
    },
    {
        "prices": {
            "gpt-4o-mini": {"input_per_million": 3, "output_per_million": 4, "reasoning_per_million": 5}
        }
    },
]


def assert_same_annotation(config: dict[str, Any], wires: list[bytes]) -> None:
    """The fast and the reference processor leave the same columns, strings and metrics state."""
    fast_proc, ref_proc = processor(config), processor(config)
    for wire in wires:
        fast = SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire), wire=wire)
        ref = SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire))
        fast_proc.annotate(fast)
        ref_proc.annotate(ref)
        assert fast.strings.values == ref.strings.values
        assert list(fast.columns) == list(ref.columns)
        assert fast.string_columns == ref.string_columns
        for name, col in ref.columns.items():
            assert fast.columns[name].dtype == col.dtype, name
            assert np.array_equal(fast.columns[name], col, equal_nan=col.dtype.kind == "f"), name
    if ref_proc.metrics is None:
        assert fast_proc.metrics is None
        return
    fm, rm = fast_proc.metrics, ref_proc.metrics
    assert fm is not None
    assert (fm.keys, fm.finish, fm.invalid, fm.overflowed) == (rm.keys, rm.finish, rm.invalid, rm.overflowed)
    for a, b in zip(state(fm), state(rm), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # sums bit for bit
    assert exposition(fast_proc) == exposition(ref_proc)


def state(m: LlmMetrics) -> list[np.ndarray]:
    hists = (m.duration, m.ttfc, m.tokens_in, m.tokens_out)
    return [h.counts for h in hists] + [h.sums for h in hists] + [m.outcomes, m.cost]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(c) or "default")
def test_payloads_annotate_the_same_under_every_config(config: dict[str, Any]) -> None:
    wires = payloads()
    assert all(resolve_wire(batch_of(w)) is not None for w in wires)  # the wire path runs on all of them
    assert_same_annotation(config, wires)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=3), st.sampled_from(CONFIGS))
def test_random_spans_annotate_the_same(specs: list[Any], config: dict[str, Any]) -> None:
    assert_same_annotation(config, [request_of(s) for s in specs])
