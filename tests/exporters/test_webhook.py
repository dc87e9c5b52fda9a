"""webhook exporter against a real aiohttp server started inside each test."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from exporters.webhook import (
    FACTORY,
    SIGNATURE_HEADER,
    WebhookExporter,
    summary,
    verify_signature,
)
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import Signal
from gateway.component import ComponentId, Kind
from gateway.config.model import build_config
from gateway.config.source import ConfigError, load_text
from gateway.exporterhelper import SendProgress
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.conftest import free_port

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "20ms", "randomization_factor": 0}
T0 = 1_700_000_000_000_000_000


def alert(i: int = 0, **kw: Any) -> AnomalyEvent:
    base: dict[str, Any] = {
        "time_ns": T0 + i * 1_000_000_000,
        "service": "checkout",
        "provider": "openai",
        "operation": "chat",
        "model": "gpt-4o",
        "metric": "latency_s",
        "type": AnomalyType.LATENCY_SPIKE,
        "severity": Severity.HIGH,
        "value": 12.5 + i,
        "baseline": 2.0,
        "score": 0.91,
        "detector": "ensemble",
        "count": 1,
        "trace_ids": [f"{i:032x}"],
    }
    base.update(kw)
    return AnomalyEvent(**base)


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def build(config: dict[str, Any]) -> tuple[WebhookExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("webhook"), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(exp, WebhookExporter)
    return exp, tel


async def push(exp: Any, batch: AnomalyBatch) -> None:
    """`consume` is typed for OTLP batches; alerts travel through it duck-typed."""
    await exp.consume(batch)


def metric(tel: SelfTelemetry, name: str) -> float:
    return float(tel.registry.get_sample_value(name, {"exporter": "webhook"}) or 0.0)


@dataclass
class Hit:
    body: bytes
    headers: dict[str, str]
    at: float


Handler = Callable[[int, Hit], Awaitable[web.StreamResponse]]


async def ok(_n: int, _hit: Hit) -> web.StreamResponse:
    return web.Response(status=204)


@dataclass
class Sink:
    """An HTTP endpoint recording every request; `respond(n, hit)` decides the answer."""

    respond: Handler = ok
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Sink:
        async def handle(request: web.Request) -> web.StreamResponse:
            hit = Hit(await request.read(), dict(request.headers), time.monotonic())
            self.hits.append(hit)
            return await self.respond(len(self.hits), hit)

        app = web.Application()
        app.router.add_post("/hook", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def deliver(exp: WebhookExporter, *batches: AnomalyBatch) -> None:
    await exp.start()
    for b in batches:
        await push(exp, b)
    await exp.shutdown()  # drains the sending queue


# ---------------------------------------------------------------- payloads and signature
def test_one_alert_per_request_signed_with_custom_headers() -> None:
    secret = "s3cret-key"
    events = [alert(i) for i in range(3)]

    async def main() -> tuple[Sink, SelfTelemetry]:
        async with Sink() as sink:
            exp, tel = build(
                {
                    "endpoint": sink.url,
                    "secret": secret,
                    "headers": {"Authorization": "Bearer abc", "X-Env": "t"},
                }
            )
            await deliver(exp, AnomalyBatch(events))
        return sink, tel

    sink, tel = run(main())
    assert [orjson.loads(h.body) for h in sink.hits] == [e.to_json() for e in events]
    for hit in sink.hits:
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["Authorization"] == "Bearer abc" and hit.headers["X-Env"] == "t"
        sig = hit.headers[SIGNATURE_HEADER]
        assert verify_signature(secret.encode(), sig, hit.body)
        # the documented scheme, recomputed independently: t=<unix>,v1=hex(hmac(secret, f"{t}.{body}"))
        t, v1 = (kv.split("=", 1)[1] for kv in sig.split(","))
        assert abs(int(t) - time.time()) < 60
        expected = hmac.new(secret.encode(), t.encode() + b"." + hit.body, hashlib.sha256).hexdigest()
        assert v1 == expected
        assert not verify_signature(b"other-key", sig, hit.body)
        assert not verify_signature(secret.encode(), sig, hit.body + b" ")
        assert not verify_signature(secret.encode(), sig, hit.body, now=int(t) + 3600)  # stale
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 3
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 0


def test_batch_mode_posts_json_arrays() -> None:
    events = [alert(i) for i in range(5)]

    async def main() -> Sink:
        async with Sink() as sink:
            exp, _ = build({"endpoint": sink.url, "batch": True, "max_alerts_per_request": 2})
            await deliver(exp, AnomalyBatch(events))
        return sink

    sink = run(main())
    bodies = [orjson.loads(h.body) for h in sink.hits]
    assert [len(b) for b in bodies] == [2, 2, 1]
    assert [x for b in bodies for x in b] == [e.to_json() for e in events]
    assert all(SIGNATURE_HEADER not in h.headers for h in sink.hits)  # no secret, no signature


def test_slack_format_text_and_blocks() -> None:
    e = alert(0, service="pay<ments>", count=3, severity=Severity.CRITICAL)
    nan_baseline = alert(1, baseline=float("nan"), type=AnomalyType.ERROR_BURST, metric="error_rate")

    async def main() -> Sink:
        async with Sink() as sink:
            exp, _ = build({"endpoint": sink.url, "format": "slack", "slack_blocks": True})
            await deliver(exp, AnomalyBatch([e, nan_baseline]))
            exp2, _ = build({"endpoint": sink.url, "format": "slack", "batch": True})
            await deliver(exp2, AnomalyBatch([e, nan_baseline]))
        return sink

    sink = run(main())
    first, second, both = (orjson.loads(h.body) for h in sink.hits)
    assert first["text"] == (
        ":rotating_light: [CRITICAL] latency_spike in pay&lt;ments&gt; (openai/gpt-4o chat): "
        "latency_s 12.5 vs baseline 2 (score 0.91, x3) at 2023-11-14T22:13:20.000000Z"
    )
    assert "\n" not in first["text"]
    assert second["text"].endswith(
        "error_rate 13.5 vs baseline n/a (score 0.91) at 2023-11-14T22:13:21.000000Z"
    )
    assert [b["type"] for b in first["blocks"]] == ["section", "context"]
    assert first["blocks"][0]["text"] == {"type": "mrkdwn", "text": first["text"]}
    ctx_text = first["blocks"][1]["elements"][0]["text"]
    assert e.id in ctx_text and e.trace_ids[0] in ctx_text
    # batch: one message, one line per alert, no blocks unless asked
    assert both == {"text": first["text"] + "\n" + second["text"]}
    assert summary(e).startswith("[CRITICAL] latency_spike in pay<ments>")


# ---------------------------------------------------------------- retries and failures
def test_503_is_retried_then_delivered_without_resending_what_got_through() -> None:
    events = [alert(i) for i in range(3)]

    async def flaky(n: int, _hit: Hit) -> web.StreamResponse:
        # the 2nd request (alert 1) fails twice, then everything succeeds
        if n in (2, 3):
            return web.Response(status=503, text="overloaded", headers={"Retry-After": "0"})
        return web.Response(status=200)

    async def main() -> tuple[Sink, SelfTelemetry, WebhookExporter]:
        async with Sink(flaky) as sink:
            exp, tel = build({"endpoint": sink.url, "retry_on_failure": FAST_RETRY})
            await deliver(exp, AnomalyBatch(events))
        return sink, tel, exp

    sink, tel, exp = run(main())
    ids = [orjson.loads(h.body)["id"] for h in sink.hits]
    assert ids == [events[0].id, events[1].id, events[1].id, events[1].id, events[2].id]
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 3
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 0
    assert len(exp._progress) == 0  # nothing left behind


def test_429_honours_retry_after() -> None:
    async def limited(n: int, _hit: Hit) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=202)

    async def main() -> Sink:
        async with Sink(limited) as sink:
            exp, _ = build({"endpoint": sink.url, "retry_on_failure": FAST_RETRY})
            await deliver(exp, AnomalyBatch([alert()]))
        return sink

    sink = run(main())
    assert len(sink.hits) == 2
    assert sink.hits[1].at - sink.hits[0].at >= 0.95  # not the 10 ms backoff: the server's hint


def test_permanent_400_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    events = [alert(i) for i in range(3)]

    async def reject_second(n: int, _hit: Hit) -> web.StreamResponse:
        if n == 2:
            return web.Response(status=400, text="unknown field 'baseline'")
        return web.Response(status=200)

    async def main() -> tuple[Sink, SelfTelemetry]:
        async with Sink(reject_second) as sink:
            exp, tel = build({"endpoint": sink.url, "retry_on_failure": FAST_RETRY})
            await deliver(exp, AnomalyBatch(events))
        return sink, tel

    sink, tel = run(main())
    assert len(sink.hits) == 3  # never retried; the alert after the rejected one still went out
    assert [orjson.loads(h.body)["id"] for h in sink.hits] == [e.id for e in events]
    # the batch is the unit of the exporter counters (as in the Collector)
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 3
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 0
    assert "1 of 3 alert(s) rejected: HTTP 400" in caplog.text
    assert "unknown field 'baseline'" in caplog.text


def test_timeout_is_retried_and_can_give_up() -> None:
    async def slow_first(n: int, _hit: Hit) -> web.StreamResponse:
        if n == 1:
            await asyncio.sleep(3)
        return web.Response(status=200)

    async def main() -> tuple[Sink, SelfTelemetry, float]:
        async with Sink(slow_first) as sink:
            exp, tel = build({"endpoint": sink.url, "timeout": "300ms", "retry_on_failure": FAST_RETRY})
            t0 = time.monotonic()
            await deliver(exp, AnomalyBatch([alert()]))
            took = time.monotonic() - t0
        return sink, tel, took

    sink, tel, took = run(main())
    assert len(sink.hits) == 2 and took < 2.5
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 1

    async def always_slow(_n: int, _hit: Hit) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(status=200)

    async def give_up() -> tuple[Sink, SelfTelemetry]:
        async with Sink(always_slow) as sink:
            retry = {**FAST_RETRY, "max_elapsed_time": "700ms"}
            exp, tel = build({"endpoint": sink.url, "timeout": "200ms", "retry_on_failure": retry})
            await deliver(exp, AnomalyBatch([alert()]))
        return sink, tel

    sink, tel = run(give_up())
    assert len(sink.hits) >= 2
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 1
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 0


def test_connection_refused_is_retried_until_the_endpoint_is_up() -> None:
    port = free_port()

    async def main() -> tuple[Sink, SelfTelemetry]:
        exp, tel = build({"endpoint": f"http://127.0.0.1:{port}/hook", "retry_on_failure": FAST_RETRY})
        await exp.start()
        await push(exp, AnomalyBatch([alert()]))
        await asyncio.sleep(0.3)  # a few refused attempts
        async with Sink(port=port) as sink:
            await exp.shutdown()
        return sink, tel

    sink, tel = run(main())
    assert len(sink.hits) == 1
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 1


# ---------------------------------------------------------------- config and helpers
@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({}, "endpoint"),
        ({"endpoint": "ftp://x/y"}, "invalid endpoint"),
        ({"endpoint": "http://x", "format": "teams"}, "format"),
        ({"endpoint": "http://x", "secret": ""}, "secret must not be empty"),
        ({"endpoint": "http://x", "headers": {"Bad Header": "v"}}, "invalid header name"),
        ({"endpoint": "http://x", "headers": {SIGNATURE_HEADER: "v"}}, "configure secret instead"),
        ({"endpoint": "http://x", "headers": {"X": "a\nb"}}, "line breaks"),
        ({"endpoint": "http://x", "max_alerts_per_request": 0}, "max_alerts_per_request"),
        ({"endpoint": "http://x", "batchh": True}, "batchh"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        FACTORY.config.model_validate(config)
    assert needle in str(info.value)


def test_factory_and_secret_is_not_printed() -> None:
    assert FACTORY.signals == frozenset({Signal.ANOMALIES})
    cfg = FACTORY.config.model_validate({"endpoint": "https://hooks.example/x", "secret": "topsecret"})
    assert "topsecret" not in repr(cfg) and "topsecret" not in str(cfg.model_dump())


def test_send_progress_is_identity_keyed_and_bounded() -> None:
    p: SendProgress[list[int]] = SendProgress(4)
    a, b = AnomalyBatch([alert(0)]), AnomalyBatch([alert(0)])
    sa = p.get(a, list)
    sa.append(1)
    assert p.get(a, list) is sa and p.get(b, list) == []  # equal content, different batch
    p.done(a)
    assert p.get(a, list) == []
    for _ in range(10):
        p.get(AnomalyBatch([]), list)
    assert len(p) == 4


GATEWAY = """\
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  genai: {}
connectors:
  detect: {}
exporters:
  influxdb: {url: "http://127.0.0.1:8086", api: v1, database: llm}
  rabbitmq: {endpoint: "amqp://127.0.0.1:5672/", alternate_exchange: sentinel.unroutable}
  webhook/slack: {endpoint: "https://hooks.example/T0/B0", format: slack, secret: "${env:HOOK_SECRET}"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai], exporters: [influxdb, detect]}
    anomalies: {receivers: [detect], exporters: [influxdb, rabbitmq, webhook/slack]}
"""


def test_gateway_config_wires_the_point_and_alert_exporters() -> None:
    raw, locs = load_text(GATEWAY, "gw.yaml", env={"HOOK_SECRET": "s"})
    cfg = build_config(raw, locs)
    assert {str(p.name) for p in cfg.pipelines} >= {"traces", "anomalies"}
    bad = GATEWAY.replace("api: v1, database: llm", "api: v1").replace("format: slack", "format: teams")
    raw, locs = load_text(bad, "gw.yaml", env={"HOOK_SECRET": "s"})
    with pytest.raises(ConfigError) as info:
        build_config(raw, locs)
    issues = [str(i) for i in info.value.issues]
    assert any(i.startswith("gw.yaml:8: exporters.influxdb") and "database is required" in i for i in issues)
    assert any(i.startswith("gw.yaml:10: exporters.webhook/slack.format") for i in issues), issues
