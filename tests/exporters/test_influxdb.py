"""influxdb exporter: line protocol units, then VictoriaMetrics 1.79 (v2 API) and InfluxDB 1.6 (v1)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from exporters.influxdb import (
    FACTORY,
    InfluxDBConfig,
    InfluxDBExporter,
    Lines,
    RejectedError,
    chunk_lines,
    classify,
    encode_alerts,
    encode_calls,
    escape_key,
    escape_measurement,
    quote_string,
    server_message,
    tag_prefix,
)
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import Signal, SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.exporterhelper import RetryableError
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from processors.genai import FACTORY as GENAI
from processors.genai import GenAIProcessor
from tests.conftest import free_port
from tests.processors.test_genai import SEMCONV, _set
from tests.servers.fixtures import Servers, wait_for_value

FAST_RETRY = {"initial_interval": "20ms", "max_interval": "200ms", "randomization_factor": 0}
# Recent enough for VictoriaMetrics' default retention (one month), on a whole millisecond.
T0 = (int(time.time()) - 3600) * 1_000_000_000


# ---------------------------------------------------------------- data
def spans(*specs: dict[str, Any], service: str, t0: int = T0) -> SpanBatch:
    """A span batch after the genai processor; each spec: attributes plus _latency/_status/_name."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    for n, spec in enumerate(specs):
        spec = dict(spec)
        sp = ss.spans.add()
        sp.trace_id = bytes([0xAB] * 14 + [n >> 8, n & 0xFF])
        sp.span_id = bytes([9] * 6 + [n >> 8, (n & 0xFF) or 1])
        sp.name = spec.pop("_name", "chat")
        sp.start_time_unix_nano = t0 + n * 1_000_000_000
        sp.end_time_unix_nano = sp.start_time_unix_nano + int(spec.pop("_latency", 1.0) * 1e9)
        sp.status.code = spec.pop("_status", 0)
        for k, v in spec.items():
            a = sp.attributes.add()
            a.key = k
            _set(a, v)
    tel = SelfTelemetry()
    ctx = ComponentContext(
        ComponentId("genai"), Kind.PROCESSOR, logging.getLogger("t"), tel, Admission(), "t"
    )
    proc = GENAI.create(ctx, GENAI.config.model_validate({}))
    assert isinstance(proc, GenAIProcessor)
    batch = SpanBatch.from_request(req)
    proc.annotate(batch)
    return batch


OK_CALL = {**SEMCONV, "_latency": 1.25, "gen_ai.response.time_to_first_chunk": 0.25}
ERROR_CALL = {**SEMCONV, "_latency": 0.5, "_status": 2, "error.type": "InternalServerError"}
LIMITED_CALL = {**SEMCONV, "_latency": 0.125, "_status": 2, "error.type": "RateLimitError"}
NO_USAGE = {  # unknown tokens and cost: the fields are left out, never 0
    k: v for k, v in SEMCONV.items() if not k.startswith("gen_ai.usage")
} | {"gen_ai.request.model": "my-finetune", "gen_ai.response.model": "my-finetune", "_latency": 2.0}
NOT_LLM = {"http.method": "GET", "_name": "GET /"}
COST = round(1000 * 0.15e-6 + 200 * 0.60e-6, 12)  # gpt-4o-mini list price, as the exporter rounds it


def alerts(service: str) -> list[AnomalyEvent]:
    common: dict[str, Any] = {
        "service": service,
        "provider": "openai",
        "operation": "chat",
        "model": "gpt-4o-mini",
        "detector": "ensemble",
    }
    return [
        AnomalyEvent(
            time_ns=T0 + 5_000_000_000,
            metric="latency_s",
            type=AnomalyType.LATENCY_SPIKE,
            severity=Severity.HIGH,
            value=12.5,
            baseline=2.25,
            score=0.875,
            count=3,
            trace_ids=["ab" * 16, "cd" * 16],
            **common,
        ),
        AnomalyEvent(
            time_ns=T0 + 6_000_000_000,
            metric="error_rate",
            type=AnomalyType.ERROR_BURST,
            severity=Severity.CRITICAL,
            value=0.5,
            baseline=float("nan"),  # unknown baseline: no field
            score=0.96875,
            **common,
        ),
    ]


# ---------------------------------------------------------------- harness
def run(coro: Awaitable[Any], timeout: float = 45) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def build(config: dict[str, Any]) -> tuple[InfluxDBExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("influxdb"), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(exp, InfluxDBExporter)
    return exp, tel


def metric(tel: SelfTelemetry, name: str, **labels: str) -> float:
    return float(tel.registry.get_sample_value(name, {"exporter": "influxdb", **labels}) or 0.0)


async def deliver(exp: InfluxDBExporter, *batches: Any) -> None:
    await exp.start()
    for b in batches:
        await exp.consume(b)
    await exp.shutdown()  # drains the queue


def vm_export(url: str, match: str) -> dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[int, float]]]:
    data = urllib.parse.urlencode({"match[]": match, "start": "0"}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/export", data=data, timeout=10) as resp:
        out = {}
        for line in resp.read().splitlines():
            doc = json.loads(line)
            labels = dict(doc["metric"])
            name = labels.pop("__name__")
            out[(name, frozenset(labels.items()))] = list(zip(doc["timestamps"], doc["values"], strict=True))
        return out


def influx_rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """Rows of a one-series InfluxQL result, times as integer nanoseconds."""
    params = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=10) as resp:
        res = json.loads(resp.read())["results"][0]
    assert "error" not in res, res
    if "series" not in res:
        return []
    (series,) = res["series"]
    return [dict(zip(series["columns"], row, strict=True)) for row in series["values"]]


def create_db(url: str, db: str) -> None:
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
    with urllib.request.urlopen(f"{url}/query", data=body, timeout=10) as resp:
        assert resp.status == 200


def influx_write(url: str, db: str, line: str) -> None:
    req = urllib.request.Request(f"{url}/write?db={db}", data=line.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


# ---------------------------------------------------------------- line protocol
def test_escaping_follows_the_line_protocol_spec() -> None:
    assert escape_measurement("my measurement,x=1") == "my\\ measurement\\,x=1"  # `=` is fine there
    assert escape_key("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_key('q"u\\ote') == 'q"u\\ote'  # quotes and inner backslashes are literal in tags
    assert (
        escape_key("trailing\\\\") == "trailing"
    )  # cannot end in a backslash: it would escape the delimiter
    assert escape_key("two\nlines\ttab") == "two\\ lines\\ tab"
    assert quote_string('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert quote_string("a,b=c d") == '"a,b=c d"'  # nothing else is escaped in a string field
    assert tag_prefix("m", [("a", "1"), ("b", None), ("c", ""), ("d", "\\"), ("e", "x y")]) == "m,a=1,e=x\\ y"


def test_calls_encode_exactly_one_point_per_llm_call() -> None:
    b = spans(OK_CALL, NOT_LLM, ERROR_CALL, LIMITED_CALL, NO_USAGE, service="svc a")
    lines = Lines("ns")
    assert encode_calls(b, lines) == 4
    tid = "abababababababababababababab00"
    rest = "provider=openai,response_model=gpt-4o-mini-2024-07-18,service=svc\\ a"
    assert lines.lines == [
        f"llm_calls,model=gpt-4o-mini,operation=chat,outcome=ok,{rest} latency_ms=1250.0,ttft_ms=250.0,"
        f'input_tokens=1000i,output_tokens=200i,cost_usd={COST!r},finish_reason="stop",trace_id="{tid}00" '
        f"{T0 + 1_250_000_000}",
        f"llm_calls,error_type=InternalServerError,model=gpt-4o-mini,operation=chat,outcome=error,{rest} "
        f'latency_ms=500.0,input_tokens=1000i,output_tokens=200i,cost_usd={COST!r},finish_reason="stop",'
        f'trace_id="{tid}02" {T0 + 2_500_000_000}',
        f"llm_calls,error_type=RateLimitError,model=gpt-4o-mini,operation=chat,outcome=rate_limited,{rest} "
        f'latency_ms=125.0,input_tokens=1000i,output_tokens=200i,cost_usd={COST!r},finish_reason="stop",'
        f'trace_id="{tid}03" {T0 + 3_125_000_000}',
        "llm_calls,model=my-finetune,operation=chat,outcome=ok,provider=openai,response_model=my-finetune,"
        f'service=svc\\ a latency_ms=2000.0,finish_reason="stop",trace_id="{tid}04" {T0 + 6_000_000_000}',
    ]
    # precision and same-series collisions: the later point moves one unit forward
    twice = spans(OK_CALL, service="s")
    lines = Lines("s")
    encode_calls(twice, lines, string_fields=False)
    encode_calls(twice, lines, string_fields=False)
    assert [line.rsplit(" ", 1)[1] for line in lines.lines] == [str(T0 // 10**9 + 1), str(T0 // 10**9 + 2)]
    assert "trace_id" not in lines.lines[0] and "finish_reason" not in lines.lines[0]
    # a batch the genai processor never saw writes nothing
    raw = SpanBatch.from_request(ExportTraceServiceRequest())
    assert encode_calls(raw, Lines("ns")) == 0


def test_alerts_encode() -> None:
    lines = Lines("ms")
    encode_alerts(alerts("svc"), lines)
    tags = "detector=ensemble,metric={m},model=gpt-4o-mini,operation=chat,provider=openai,service=svc"
    assert lines.lines[0] == (
        f"llm_anomalies,{tags.format(m='latency_s')},severity=high,type=latency_spike "
        f'value=12.5,baseline=2.25,score=0.875,count=3i,id="{alerts("svc")[0].id}",'
        f'trace_ids="{"ab" * 16},{"cd" * 16}" {T0 // 10**6 + 5000}'
    )
    assert "baseline" not in lines.lines[1] and "trace_ids" not in lines.lines[1]


def test_chunks_by_lines_and_bytes() -> None:
    lines = [f"m f={i}i" for i in range(10)]  # 7-8 bytes each, +1 for the newline
    assert [c.count(b"\n") + 1 for c in chunk_lines(lines, 4, 10_000)] == [4, 4, 2]
    chunks = chunk_lines(lines, 100, 20)
    assert all(len(c) <= 20 for c in chunks) and b"\n".join(chunks) == "\n".join(lines).encode()
    assert chunk_lines(["x" * 50, "y"], 100, 20) == [b"x" * 50, b"y"]  # an oversized line goes alone
    assert chunk_lines(["é" * 6, "a"], 100, 14) == ["é".encode() * 6, b"a"]  # bytes, not characters


def test_status_classification_and_server_messages() -> None:
    limited = classify(429, "slow down", "7", "http://h/write")
    assert isinstance(limited, RetryableError) and limited.retry_after == 7.0
    assert str(limited) == "HTTP 429 from http://h/write: slow down"
    for status in (500, 502, 503, 504):
        assert isinstance(classify(status, "", None, "u"), RetryableError)
    for status in (400, 401, 403, 404, 413, 422):
        err = classify(status, "nope", "5", "u")
        assert isinstance(err, RejectedError) and not isinstance(err, RetryableError) and err.status == status
    assert server_message(b'{"error":"database not found: \\"x\\""}', {}) == 'database not found: "x"'
    assert server_message(b'{"code":"invalid","message":"bad line"}', {}) == "bad line"  # InfluxDB 2.x
    assert server_message(b"", {"X-Influxdb-Error": "from header"}) == "from header"
    assert server_message(b"plain text\n", {}) == "plain text"


# ---------------------------------------------------------------- VictoriaMetrics, v2 API
def test_victoriametrics_v2_exact_values_and_tags(servers: Servers) -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    calls = spans(OK_CALL, NOT_LLM, ERROR_CALL, LIMITED_CALL, NO_USAGE, service=service)
    exp, tel = build(
        {
            "url": servers.victoriametrics,
            "bucket": "llm",
            "org": "sentinel",
            "token": "unused",
            "string_fields": False,
            "max_lines": 2,
            "retry_on_failure": FAST_RETRY,
        }
    )
    run(deliver(exp, calls, AnomalyBatch(alerts(service))))
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 5  # spans, as the Collector counts
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 2
    assert metric(tel, "llm_sentinel_influxdb_points_total", outcome="written") == 6

    base = {"service": service, "operation": "chat", "provider": "openai"}
    ok = frozenset(
        {**base, "model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18", "outcome": "ok"}.items()
    )
    err = frozenset(ok - {("outcome", "ok")} | {("outcome", "error"), ("error_type", "InternalServerError")})
    lim = frozenset(
        ok - {("outcome", "ok")} | {("outcome", "rate_limited"), ("error_type", "RateLimitError")}
    )
    fine = frozenset(
        {**base, "model": "my-finetune", "response_model": "my-finetune", "outcome": "ok"}.items()
    )
    ms = T0 // 1_000_000
    expected = {
        ("llm_calls_latency_ms", ok): [(ms + 1250, 1250)],
        ("llm_calls_ttft_ms", ok): [(ms + 1250, 250)],
        ("llm_calls_input_tokens", ok): [(ms + 1250, 1000)],
        ("llm_calls_output_tokens", ok): [(ms + 1250, 200)],
        ("llm_calls_cost_usd", ok): [(ms + 1250, COST)],
        ("llm_calls_latency_ms", err): [(ms + 2500, 500)],
        ("llm_calls_input_tokens", err): [(ms + 2500, 1000)],
        ("llm_calls_output_tokens", err): [(ms + 2500, 200)],
        ("llm_calls_cost_usd", err): [(ms + 2500, COST)],
        ("llm_calls_latency_ms", lim): [(ms + 3125, 125)],
        ("llm_calls_input_tokens", lim): [(ms + 3125, 1000)],
        ("llm_calls_output_tokens", lim): [(ms + 3125, 200)],
        ("llm_calls_cost_usd", lim): [(ms + 3125, COST)],
        ("llm_calls_latency_ms", fine): [(ms + 6000, 2000)],  # and no tokens/cost/ttft series: unknown
    }
    a_tags = {**base, "model": "gpt-4o-mini", "detector": "ensemble"}
    spike = frozenset({**a_tags, "metric": "latency_s", "type": "latency_spike", "severity": "high"}.items())
    burst = frozenset(
        {**a_tags, "metric": "error_rate", "type": "error_burst", "severity": "critical"}.items()
    )
    expected |= {
        ("llm_anomalies_value", spike): [(ms + 5000, 12.5)],
        ("llm_anomalies_baseline", spike): [(ms + 5000, 2.25)],
        ("llm_anomalies_score", spike): [(ms + 5000, 0.875)],
        ("llm_anomalies_count", spike): [(ms + 5000, 3)],
        ("llm_anomalies_value", burst): [(ms + 6000, 0.5)],
        ("llm_anomalies_score", burst): [(ms + 6000, 0.96875)],
        ("llm_anomalies_count", burst): [(ms + 6000, 1)],
    }
    got = wait_for_value(
        lambda: vm_export(servers.victoriametrics, f'{{service="{service}"}}'),
        lambda d: len(d) >= len(expected),
    )
    assert got == expected


def test_victoriametrics_503_is_retried_until_it_accepts(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    vm = server_factory("victoriametrics", extra_args=["-storage.minFreeDiskSpaceBytes=1000000000000000"])
    service = f"ro-{uuid.uuid4().hex[:8]}"
    exp, tel = build(
        {"url": vm.url, "bucket": "b", "org": "o", "string_fields": False, "retry_on_failure": FAST_RETRY}
    )

    async def main() -> float:
        await exp.start()
        await exp.consume(spans(OK_CALL, service=service))
        await asyncio.sleep(1.0)  # a few 503s
        assert metric(tel, "otelcol_exporter_sent_spans_total") == 0
        await asyncio.to_thread(vm.restart, [])  # read-write again (connection refused meanwhile)
        t0 = time.monotonic()
        await exp.shutdown()
        return time.monotonic() - t0

    with caplog.at_level(logging.WARNING):
        run(main())
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert any(f"HTTP 503 from {vm.url}/api/v2/write: " in m and "read-only" in m for m in retries), retries
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 1
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 0
    got = wait_for_value(
        lambda: vm_export(vm.url, f'{{__name__="llm_calls_latency_ms",service="{service}"}}')
    )
    assert [v for series in got.values() for v in series] == [(T0 // 1_000_000 + 1250, 1250)]


# ---------------------------------------------------------------- InfluxDB 1.6, v1 API
def test_influxdb_v1_exact_values_escaping_and_string_fields(servers: Servers) -> None:
    db = f"t_{uuid.uuid4().hex[:8]}"
    create_db(servers.influxdb, db)
    service = 'weird svc,x=1 "q"\\'
    odd = {**OK_CALL, "gen_ai.request.model": "m\\n,=x", "gen_ai.response.finish_reasons": ['len "x" \\']}
    calls = spans(OK_CALL, odd, NO_USAGE, ERROR_CALL, service=service)
    exp, tel = build(
        {
            "url": servers.influxdb,
            "api": "v1",
            "database": db,
            "retention_policy": "autogen",
            "username": "u",
            "password": "p",
            "retry_on_failure": FAST_RETRY,
        }
    )
    run(deliver(exp, calls, AnomalyBatch(alerts("svc"))))
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 4
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 2

    rows = influx_rows(servers.influxdb, db, "SELECT * FROM llm_calls ORDER BY time")
    svc = 'weird svc,x=1 "q"'  # the trailing backslash cannot be carried by line protocol
    tid = "abababababababababababababab00"
    same = {"operation": "chat", "provider": "openai", "service": svc}
    mini = {
        **same,
        "model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "cost_usd": COST,
        "input_tokens": 1000,
        "output_tokens": 200,
        "finish_reason": "stop",
    }
    assert rows == [
        {
            **mini,
            "time": T0 + 1_250_000_000,
            "latency_ms": 1250.0,
            "ttft_ms": 250.0,
            "outcome": "ok",
            "error_type": None,
            "trace_id": f"{tid}00",
        },
        {
            **mini,
            "time": T0 + 2_250_000_000,
            "latency_ms": 1250.0,
            "ttft_ms": 250.0,
            "outcome": "ok",
            "error_type": None,
            "trace_id": f"{tid}01",
            "model": "m\\n,=x",
            "finish_reason": 'len "x" \\',
        },
        {
            **mini,
            "time": T0 + 3_500_000_000,
            "latency_ms": 500.0,
            "ttft_ms": None,
            "outcome": "error",
            "error_type": "InternalServerError",
            "trace_id": f"{tid}03",
        },
        {
            **same,
            "time": T0 + 4_000_000_000,
            "latency_ms": 2000.0,
            "ttft_ms": None,
            "outcome": "ok",
            "error_type": None,
            "trace_id": f"{tid}02",
            "model": "my-finetune",
            "response_model": "my-finetune",
            "cost_usd": None,
            "input_tokens": None,
            "output_tokens": None,
            "finish_reason": "stop",
        },
    ]
    # field types as declared: tokens are integers, times and cost floats, ids strings
    types = {
        r["fieldKey"]: r["fieldType"]
        for r in influx_rows(servers.influxdb, db, "SHOW FIELD KEYS FROM llm_calls")
    }
    assert types == {
        "latency_ms": "float",
        "ttft_ms": "float",
        "cost_usd": "float",
        "input_tokens": "integer",
        "output_tokens": "integer",
        "finish_reason": "string",
        "trace_id": "string",
    }

    a_rows = influx_rows(servers.influxdb, db, "SELECT * FROM llm_anomalies ORDER BY time")
    first, second = alerts("svc")
    tags = {
        "service": "svc",
        "provider": "openai",
        "operation": "chat",
        "model": "gpt-4o-mini",
        "detector": "ensemble",
    }
    assert a_rows == [
        {
            **tags,
            "time": first.time_ns,
            "metric": "latency_s",
            "type": "latency_spike",
            "severity": "high",
            "value": 12.5,
            "baseline": 2.25,
            "score": 0.875,
            "count": 3,
            "id": first.id,
            "trace_ids": f"{'ab' * 16},{'cd' * 16}",
        },
        {
            **tags,
            "time": second.time_ns,
            "metric": "error_rate",
            "type": "error_burst",
            "severity": "critical",
            "value": 0.5,
            "baseline": None,
            "score": 0.96875,
            "count": 1,
            "id": second.id,
            "trace_ids": None,
        },
    ]


def test_influxdb_v1_precision_and_same_series_collisions(servers: Servers) -> None:
    db = f"t_{uuid.uuid4().hex[:8]}"
    create_db(servers.influxdb, db)
    b = spans(OK_CALL, service="p")
    exp, _ = build({"url": servers.influxdb, "api": "v1", "database": db, "precision": "ms", "gzip": False})
    run(deliver(exp, SpanBatch.concat([b, b, b])))  # three calls of one series ending in the same ms
    rows = influx_rows(servers.influxdb, db, "SELECT latency_ms FROM llm_calls")
    ms = (T0 + 1_250_000_000) // 1_000_000
    assert [r["time"] for r in rows] == [ms * 10**6, (ms + 1) * 10**6, (ms + 2) * 10**6]


def test_influxdb_v1_missing_database_is_permanent_counted_and_logged_once(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"missing_{uuid.uuid4().hex[:8]}"
    exp, tel = build({"url": servers.influxdb, "api": "v1", "database": db, "retry_on_failure": FAST_RETRY})
    batches = [spans(OK_CALL, ERROR_CALL, service="m") for _ in range(3)]
    with caplog.at_level(logging.WARNING):
        run(deliver(exp, *batches))
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 6
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 0
    assert metric(tel, "llm_sentinel_influxdb_points_total", outcome="rejected") == 6
    drops = [r.getMessage() for r in caplog.records if "permanent error" in r.getMessage()]
    assert drops == [
        f"dropping 2 traces item(s): permanent error: HTTP 404 from {servers.influxdb}/write: "
        f'database not found: "{db}"'
    ]
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_influxdb_v1_field_type_conflict_is_a_permanent_400(servers: Servers) -> None:
    db = f"t_{uuid.uuid4().hex[:8]}"
    create_db(servers.influxdb, db)
    influx_write(servers.influxdb, db, f"llm_calls,service=c input_tokens=1.5 {T0}")  # float, not integer
    exp, tel = build({"url": servers.influxdb, "api": "v1", "database": db, "retry_on_failure": FAST_RETRY})
    exp.logger.setLevel(logging.INFO)
    run(deliver(exp, spans(OK_CALL, service="c")))
    assert metric(tel, "otelcol_exporter_send_failed_spans_total") == 1
    assert metric(tel, "llm_sentinel_influxdb_points_total", outcome="rejected") == 1
    assert len(influx_rows(servers.influxdb, db, "SELECT * FROM llm_calls")) == 1  # only the seed


# ---------------------------------------------------------------- retries resume (fake endpoint)
def test_retry_resumes_at_the_first_unacknowledged_write() -> None:
    bodies: list[bytes] = []

    async def main() -> SelfTelemetry:
        async def write(request: web.Request) -> web.Response:
            bodies.append(await request.read())
            if len(bodies) in (2, 3):
                return web.json_response({"error": "timeout"}, status=500, headers={"Retry-After": "0"})
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/write", write)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            exp, tel = build(
                {
                    "url": f"http://127.0.0.1:{port}",
                    "api": "v1",
                    "database": "d",
                    "gzip": False,
                    "max_lines": 2,
                    "retry_on_failure": FAST_RETRY,
                }
            )
            await deliver(exp, spans(*[OK_CALL] * 5, service="r"))
            assert len(exp._progress) == 0
            return tel
        finally:
            await runner.cleanup()

    tel = run(main())
    counts = [b.count(b"\n") + 1 for b in bodies]
    assert counts == [2, 2, 2, 2, 1]  # write 1 once, write 2 three times, then write 3
    assert bodies[1] == bodies[2] == bodies[3] and bodies[0] != bodies[1]
    assert metric(tel, "llm_sentinel_influxdb_points_total", outcome="written") == 5
    assert metric(tel, "otelcol_exporter_sent_spans_total") == 5


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"bucket": "b"}, "url"),
        ({"url": "localhost:8086", "bucket": "b", "org": "o"}, "invalid url"),
        ({"url": "http://h:8086"}, "bucket and org required with api v2"),
        ({"url": "http://h:8086", "bucket": "b"}, "org required with api v2"),
        (
            {"url": "http://h:8086", "bucket": "b", "org": "o", "database": "d"},
            "database only apply with api v1",
        ),
        ({"url": "http://h:8086", "api": "v1"}, "database is required with api v1"),
        (
            {"url": "http://h:8086", "api": "v1", "database": "d", "token": "t"},
            "token only apply with api v2",
        ),
        ({"url": "http://h:8086", "api": "v1", "database": "d", "password": "p"}, "password needs username"),
        ({"url": "http://h:8086", "bucket": "b", "org": "o", "precision": "m"}, "precision"),
        ({"url": "http://h:8086", "bucket": "b", "org": "o", "max_lines": 0}, "max_lines"),
        (
            {"url": "http://h:8086", "bucket": "b", "org": "o", "calls_measurement": "_x"},
            "invalid measurement",
        ),
        ({"url": "http://h:8086", "bucket": "b", "org": "o", "buckett": "x"}, "buckett"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        FACTORY.config.model_validate(config)
    assert needle in str(info.value)


def test_factory_signals_and_secrets() -> None:
    assert FACTORY.signals == frozenset({Signal.TRACES, Signal.ANOMALIES})
    cfg = InfluxDBConfig.model_validate(
        {"url": "http://h:8086/", "bucket": "b", "org": "o", "token": "tok3n"}
    )
    assert cfg.url == "http://h:8086" and "tok3n" not in repr(cfg)
