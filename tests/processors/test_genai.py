"""genai processor on synthetic spans: precedence, missing values, cost, rules, metrics, series cap."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import generate_latest
from pydantic import ValidationError

from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from processors.genai import FACTORY
from processors.genai.families import precedence_markdown

T0 = 1_700_000_000_000_000_000


def _set(kv: Any, value: Any) -> None:
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, list):
        for x in value:
            kv.value.array_value.values.add().string_value = x
    else:
        kv.value.string_value = value


def request(*spans: dict[str, Any], service: str = "svc") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    for n, spec in enumerate(spans):
        spec = dict(spec)
        sp = ss.spans.add()
        sp.trace_id = bytes([7] * 15 + [n + 1])
        sp.span_id = bytes([9] * 7 + [n + 1])
        sp.name = spec.pop("_name", "llm")
        sp.start_time_unix_nano = T0
        sp.end_time_unix_nano = T0 + int(spec.pop("_latency", 1.0) * 1e9)
        sp.status.code = spec.pop("_status", 0)
        for ev_name, offset, ev_attrs in spec.pop("_events", []):
            ev = sp.events.add()
            ev.name, ev.time_unix_nano = ev_name, T0 + int(offset * 1e9)
            for k, v in ev_attrs.items():
                a = ev.attributes.add()
                a.key = k
                _set(a, v)
        for k, v in spec.items():
            a = sp.attributes.add()
            a.key = k
            _set(a, v)
    return req


class Sink:
    def __init__(self) -> None:
        self.batches: list[SpanBatch] = []

    async def consume(self, batch: Any) -> None:
        self.batches.append(batch)


def run(
    config: dict[str, Any] | None, *reqs: ExportTraceServiceRequest, telemetry: SelfTelemetry | None = None
):
    tel = telemetry or SelfTelemetry()
    ctx = ComponentContext(
        ComponentId("genai"), Kind.PROCESSOR, logging.getLogger("t"), tel, Admission(), "traces"
    )
    proc = FACTORY.create(ctx, FACTORY.config.model_validate(config or {}))
    sink = Sink()
    proc.set_next(sink)
    for r in reqs:
        asyncio.run(proc.consume(SpanBatch.from_request(r)))
    return sink.batches, tel


def row(batch: SpanBatch, i: int = 0) -> dict[str, Any]:
    c = batch.columns
    out: dict[str, Any] = {}
    for name in c:
        if name in batch.string_columns:
            out[name] = batch.strings.values[c[name][i]] if c[name][i] >= 0 else None
        else:
            out[name] = c[name][i].item()
    return out


SEMCONV = {
    "gen_ai.provider.name": "openai",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 200,
    "gen_ai.response.finish_reasons": ["stop"],
}


def test_newer_names_win_over_older_ones():
    span = {
        **SEMCONV,
        "gen_ai.system": "azure.ai.openai",  # older name, must lose
        "gen_ai.usage.prompt_tokens": 1,
        "llm.token_count.prompt": 2,
    }
    (b,), _ = run(None, request(span))
    r = row(b)
    assert r["provider"] == "openai"
    assert r["input_tokens"] == 1000
    assert r["output_tokens"] == 200


def test_legacy_openllmetry_names():
    span = {
        "llm.request.type": "completion",
        "gen_ai.system": "OpenAI",
        "gen_ai.request.model": "gpt-3.5-turbo-instruct",
        "gen_ai.usage.prompt_tokens": 10,
        "gen_ai.usage.completion_tokens": 5,
        "llm.usage.total_tokens": 15,
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.completion.1.finish_reason": "length",
        "llm.is_streaming": False,
    }
    (b,), _ = run(None, request(span))
    r = row(b)
    assert (r["provider"], r["operation"]) == ("openai", "text_completion")
    assert (r["input_tokens"], r["output_tokens"]) == (10, 5)
    assert r["finish_reason"] == "stop" and r["truncated"] is True
    assert r["stream"] == 0


def test_missing_stays_missing_and_non_llm_spans_untouched():
    streamed_no_usage = {k: v for k, v in SEMCONV.items() if "usage" not in k}
    http_span = {"_name": "POST /v1/chat/completions", "http.request.method": "POST"}
    (b,), _ = run(None, request(streamed_no_usage, http_span))
    r0, r1 = row(b, 0), row(b, 1)
    assert r0["llm"] is True and math.isnan(r0["input_tokens"]) and math.isnan(r0["cost_usd"])
    assert r0["stream"] == -1 and math.isnan(r0["ttft_s"])
    assert r1["llm"] is False and r1["provider"] is None and math.isnan(r1["latency_s"])
    # the span itself is forwarded unchanged
    assert b.item(1).name == "POST /v1/chat/completions"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.system": "openai"}, False),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "m"}, False),
        ({"openinference.span.kind": "CHAIN", "llm.model_name": "gpt-4o"}, False),
        ({"openinference.span.kind": "EMBEDDING", "embedding.model_name": "e"}, True),
        ({"traceloop.span.kind": "workflow"}, False),
        ({"gen_ai.system": "anthropic", "gen_ai.request.model": "claude"}, True),
    ],
)
def test_recognition(attrs, expected):
    (b,), _ = run(None, request(attrs))
    assert row(b)["llm"] is expected


def test_ttft_from_attribute_and_from_chunk_event():
    a = {**SEMCONV, "gen_ai.response.time_to_first_chunk": 0.25}
    b_ = {
        **SEMCONV,
        "_events": [("llm.content.completion.chunk", 0.4, {}), ("llm.content.completion.chunk", 0.5, {})],
    }
    (b,), _ = run(None, request(a, b_))
    assert row(b, 0)["ttft_s"] == pytest.approx(0.25) and row(b, 0)["stream"] == 1
    assert row(b, 1)["ttft_s"] == pytest.approx(0.4)


def test_errors_and_rate_limits():
    rate_limited = {**SEMCONV, "_status": 2, "error.type": "RateLimitError"}
    by_exception = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o",
        "_status": 2,
        "_events": [
            (
                "exception",
                0.1,
                {
                    "exception.type": "openai.APIStatusError",
                    "exception.message": "Error code: 429 - Too Many Requests",
                },
            )
        ],
    }
    server_error = {**SEMCONV, "_status": 2, "error.type": "InternalServerError"}
    (b,), _ = run(None, request(rate_limited, by_exception, server_error))
    assert (row(b, 0)["error"], row(b, 0)["rate_limited"], row(b, 0)["error_type"]) == (
        True,
        True,
        "RateLimitError",
    )
    assert (row(b, 1)["rate_limited"], row(b, 1)["error_type"]) == (True, "openai.APIStatusError")
    assert (row(b, 2)["error"], row(b, 2)["rate_limited"]) == (True, False)


def test_cost_from_price_table_override_and_span():
    (b,), _ = run(None, request(SEMCONV))
    # gpt-4o-mini list price: $0.15 / M input, $0.60 / M output
    assert row(b)["cost_usd"] == pytest.approx(1000 * 0.15e-6 + 200 * 0.60e-6)
    cfg = {"prices": {"openai/gpt-4o-mini": {"input_per_million": 1, "output_per_million": 2}}}
    (b,), _ = run(cfg, request(SEMCONV))
    assert row(b)["cost_usd"] == pytest.approx(1000e-6 + 400e-6)
    unknown = {**SEMCONV, "gen_ai.request.model": "my-finetune", "gen_ai.response.model": "my-finetune"}
    carried = {**unknown, "gen_ai.usage.cost": 0.0123}
    (b,), _ = run(None, request(unknown, carried))
    assert math.isnan(row(b, 0)["cost_usd"])  # unknown model: unknown cost, never 0
    assert row(b, 1)["cost_usd"] == pytest.approx(0.0123)


def test_sanity_rules_blank_values_and_count():
    slow = {**SEMCONV, "_latency": 900.0}
    huge = {**SEMCONV, "gen_ai.usage.input_tokens": 50_000_000}
    negative = {**SEMCONV, "gen_ai.usage.output_tokens": -5}
    pricey = {
        **SEMCONV,
        "gen_ai.request.model": "x",
        "gen_ai.response.model": "x",
        "gen_ai.usage.cost": 250.0,
    }
    (b,), tel = run(None, request(slow, huge, negative, pricey))
    assert math.isnan(row(b, 0)["latency_s"])
    assert math.isnan(row(b, 1)["input_tokens"]) and row(b, 1)["output_tokens"] == 200
    assert math.isnan(row(b, 2)["output_tokens"])
    assert math.isnan(row(b, 3)["cost_usd"])
    reg = tel.registry
    assert reg.get_sample_value("llm_sentinel_invalid_values_total", {"rule": "latency_range"}) == 1
    assert reg.get_sample_value("llm_sentinel_invalid_values_total", {"rule": "token_limit"}) == 2
    assert reg.get_sample_value("llm_sentinel_invalid_values_total", {"rule": "cost_limit"}) == 1
    # excluded from the latency histogram: only 3 of 4 calls observed
    labels = {
        "service_name": "svc",
        "gen_ai_provider_name": "openai",
        "gen_ai_operation_name": "chat",
        "gen_ai_request_model": "gpt-4o-mini",
        "gen_ai_response_model": "gpt-4o-mini-2024-07-18",
        "error_type": "",
    }
    assert reg.get_sample_value("gen_ai_client_operation_duration_seconds_count", labels) == 2
    assert reg.get_sample_value("llm_sentinel_requests_total", {**labels, "outcome": "ok"}) == 3


def test_validation_config_is_typed():
    with pytest.raises(ValidationError):
        FACTORY.config.model_validate({"validation": {"max_latency": "soon"}})
    with pytest.raises(ValidationError):
        FACTORY.config.model_validate({"prices": {"m": {"input_per_million": -1, "output_per_million": 1}}})
    cfg = FACTORY.config.model_validate({"validation": {"max_latency": "2m"}})
    assert cfg.validation.max_latency == 120


def test_metrics_exposition_names_buckets_and_counts():
    spans = [
        {**SEMCONV, "_latency": 0.3},
        {**SEMCONV, "_latency": 3.0, "gen_ai.response.finish_reasons": ["length"]},
        {**SEMCONV, "_status": 2, "error.type": "RateLimitError", "gen_ai.response.model": ""},
    ]
    _, tel = run(None, request(*spans, service="chat-api"))
    text = generate_latest(tel.registry).decode()
    get = tel.registry.get_sample_value
    base = {
        "error_type": "",
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "gpt-4o-mini",
        "gen_ai_response_model": "gpt-4o-mini-2024-07-18",
        "service_name": "chat-api",
    }
    hist = "gen_ai_client_operation_duration_seconds"
    assert get(f"{hist}_bucket", {**base, "le": "0.16"}) == 0
    assert get(f"{hist}_bucket", {**base, "le": "0.32"}) == 1
    assert get(f"{hist}_bucket", {**base, "le": "5.12"}) == 2
    assert get(f"{hist}_count", base) == 2
    assert get(f"{hist}_sum", base) == pytest.approx(3.3)
    assert get("gen_ai_client_token_usage_sum", {**base, "gen_ai_token_type": "input"}) == 2000
    assert (
        get("gen_ai_client_token_usage_bucket", {**base, "gen_ai_token_type": "output", "le": "256.0"}) == 2
    )
    assert get("llm_sentinel_finish_reasons_total", {**base, "finish_reason": "length"}) == 1
    assert get("llm_sentinel_finish_reasons_total", {**base, "finish_reason": "stop"}) == 1
    err = {**base, "error_type": "RateLimitError", "gen_ai_response_model": ""}
    assert get("llm_sentinel_requests_total", {**err, "outcome": "rate_limited"}) == 1
    assert get("llm_sentinel_requests_total", {**base, "outcome": "ok"}) == 2
    assert get("llm_sentinel_cost_usd_total", base) == pytest.approx(2 * (1000 * 0.15e-6 + 200 * 0.60e-6))
    assert "# TYPE gen_ai_client_operation_time_to_first_chunk_seconds histogram" in text


def test_series_cap_folds_into_overflow():
    spans = [
        {**SEMCONV, "gen_ai.request.model": f"m-{i}", "gen_ai.response.model": f"m-{i}"} for i in range(10)
    ]
    _, tel = run({"metrics": {"max_series": 3}}, request(*spans))
    reg = tel.registry
    overflow = {
        k: "__overflow__"
        for k in (
            "service_name",
            "gen_ai_provider_name",
            "gen_ai_operation_name",
            "gen_ai_request_model",
            "gen_ai_response_model",
            "error_type",
        )
    }
    # three real series, the other seven calls fold into the overflow series
    assert reg.get_sample_value("llm_sentinel_requests_total", {**overflow, "outcome": "ok"}) == 7
    assert reg.get_sample_value("llm_sentinel_metric_series_overflow_total") == 7


def test_two_processors_share_one_aggregator():
    tel = SelfTelemetry()
    run(None, request(SEMCONV), telemetry=tel)
    run(None, request(SEMCONV), telemetry=tel)
    total = sum(
        s.value for fam in tel.registry.collect() if fam.name == "llm_sentinel_requests" for s in fam.samples
    )
    assert total == 2


def test_columns_are_numba_friendly():
    (b,), _ = run(None, request(SEMCONV, SEMCONV))
    for name in ("input_tokens", "output_tokens", "latency_s", "ttft_s", "cost_usd"):
        assert b.columns[name].dtype == np.float64
    for name in ("provider", "request_model", "response_model", "operation"):
        assert b.columns[name].dtype == np.int32


def test_precedence_table_renders():
    md = precedence_markdown()
    assert "`gen_ai.provider.name`" in md and "`llm.token_count.prompt`" in md


def test_readme_precedence_table_is_current():
    """The README's table is generated from the code; regenerate it when families.py changes."""
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- precedence:begin -->\n", 1)[1].split("\n<!-- precedence:end -->", 1)[0]
    assert block == precedence_markdown()
