"""debug exporter: what each verbosity logs, sampling, and the sent counters."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from exporters.debug import FACTORY, DebugConfig, DebugExporter, Sampler
from gateway.batch import Batch, LogBatch, MetricBatch, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.gateway.test_otlpjson import (
    LINK_SPAN_ID,
    LINK_TRACE_ID,
    SPAN_ID,
    TRACE_ID,
    make_logs,
    make_metrics,
    make_traces,
)

LOGGER = "sentinel.exporter.debug"


def build(config: dict[str, Any]) -> tuple[DebugExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("debug"), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(exp, DebugExporter)
    return exp, tel


def export(exp: DebugExporter, batches: list[Batch]) -> None:
    async def scenario() -> None:
        await exp.start()
        for b in batches:
            await exp.consume(b)
        await exp.shutdown()

    asyncio.run(scenario())


def all_batches() -> list[Batch]:
    return [
        SpanBatch.from_request(make_traces()),
        MetricBatch.from_request(make_metrics()),
        LogBatch.from_request(make_logs()),
    ]


def messages(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_basic_logs_one_summary_per_batch_and_counts_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    exp, tel = build({"sampling_initial": 10})
    assert exp.config.verbosity == "basic"
    export(exp, all_batches())
    recs = messages(caplog)
    assert [r.getMessage() for r in recs] == ["Traces", "Metrics", "Logs"]
    assert [r.fields for r in recs] == [  # type: ignore[attr-defined]
        {"resource_spans": 1, "spans": 2},
        {"resource_metrics": 1, "metrics": 5, "data_points": 6},
        {"resource_logs": 1, "log_records": 2},
    ]

    def sent(item: str) -> float:
        return (
            tel.registry.get_sample_value(f"otelcol_exporter_sent_{item}_total", {"exporter": "debug"}) or 0
        )

    assert (sent("spans"), sent("metric_points"), sent("log_records")) == (2, 6, 2)


def test_normal_logs_one_line_per_item(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    exp, _ = build({"verbosity": "normal", "sampling_initial": 10})
    export(exp, all_batches())
    recs = messages(caplog)
    assert [r.getMessage().split("\n")[0].split(" ")[0] for r in recs] == [
        "Traces",
        "ResourceSpans",
        "Metrics",
        "ResourceMetrics",
        "Logs",
        "ResourceLogs",
    ]
    spans, metrics, logs = (recs[i].getMessage().splitlines() for i in (1, 3, 5))
    span_lines = [ln for ln in spans if ln.startswith("    ")]
    assert len(span_lines) == 2
    assert span_lines[0].startswith(f"    chat gpt-4o #0 {TRACE_ID.hex()} 0000000000000001 ")
    assert "gen_ai.usage.input_tokens=120" in span_lines[0]
    assert "\\n" in span_lines[0]  # a newline inside an attribute stays escaped on its line
    point_lines = [ln for ln in metrics if ln.startswith("    ")]
    assert len(point_lines) == 6  # one per data point
    assert any(ln.startswith("    gen_ai.client.token.usage{} 9007199254740993") for ln in point_lines)
    assert any("le+Inf=2" in ln for ln in point_lines)
    log_lines = [ln for ln in logs if ln.startswith("    ")]
    assert len(log_lines) == 2 and log_lines[0].startswith("    ERROR {message=boom}")


def test_detailed_dumps_every_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    exp, _ = build({"verbosity": "detailed", "sampling_initial": 10})
    export(exp, all_batches())
    recs = messages(caplog)
    traces, metrics, logs = (recs[i].getMessage() for i in (1, 3, 5))
    for needle in (
        f"trace_id: {TRACE_ID.hex()}",
        "parent_span_id: eee19b7ec3c1b173",
        "kind: SPAN_KIND_CLIENT (3)",
        "start_time_unix_nano: 2023-11-14T22:13:20.000000Z (1700000000000000000)",
        "name: gen_ai.content.prompt",
        f"trace_id: {LINK_TRACE_ID.hex()}",
        f"span_id: {LINK_SPAN_ID.hex()}",
        "-> kvlist: Map({inner=-7, deep=[false]})",
        "-> bytes: Bytes(AP9iaW4=)",
        "code: STATUS_CODE_ERROR (2)",
        "schema_url: https://opentelemetry.io/schemas/1.21.0",
    ):
        assert needle in traces, needle
    assert f"span_id: {SPAN_ID.hex()}" in metrics  # exemplar ids in hex
    assert "aggregation_temporality: AGGREGATION_TEMPORALITY_CUMULATIVE (2)" in metrics
    assert "bucket_counts: [1, 0, 2]" in metrics
    assert "is_monotonic: true" in metrics
    assert "severity_number: SEVERITY_NUMBER_ERROR (17)" in logs and "event_name: gen_ai.choice" in logs


def test_sampler_is_per_key_and_per_second() -> None:
    now = [100.0]
    s = Sampler(2, 3, clock=lambda: now[0])
    assert [s.allow("traces") for _ in range(9)] == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    assert s.allow("logs")  # separate counter per signal
    now[0] = 101.2  # a new second starts over
    assert [s.allow("traces") for _ in range(3)] == [True, True, False]


def test_sampling_drops_log_entries_not_data(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    exp, tel = build({"sampling_initial": 2, "sampling_thereafter": 3})
    export(exp, [SpanBatch.from_request(make_traces()) for _ in range(10)])
    # within one second: entries 1, 2, 5 and 8 pass (unless the test straddles a second boundary)
    assert 4 <= len(messages(caplog)) <= 6
    assert tel.registry.get_sample_value("otelcol_exporter_sent_spans_total", {"exporter": "debug"}) == 20


def test_config() -> None:
    with pytest.raises(ValueError, match="verbosity"):
        FACTORY.config.model_validate({"verbosity": "loud"})
    with pytest.raises(ValueError, match="sampling_thereafter"):
        FACTORY.config.model_validate({"sampling_thereafter": 0})
    cfg = DebugConfig.model_validate({})
    assert (cfg.verbosity, cfg.sampling_initial, cfg.sampling_thereafter) == ("basic", 2, 1)
