"""rabbitmq exporter against the real broker on 127.0.0.1:5672 (guest/guest).

Every test uses its own exchange and queue names and deletes them afterwards; connections are
cut with `rabbitmqctl close_connection`, picked by the exporter's unique connection name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)
from pydantic import ValidationError

from exporters.rabbitmq import FACTORY, RabbitMQConfig, RabbitMQExporter, routing_key, waves
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import Signal
from gateway.component import ComponentId, Kind
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.conftest import free_port

URL = "amqp://guest:guest@127.0.0.1:5672/"
FAST_RETRY = {"initial_interval": "50ms", "max_interval": "300ms", "randomization_factor": 0}
T0 = 1_700_000_000_000_000_000


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


# In CI (make test starts the broker) a missing broker is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not _broker_up() and not os.environ.get("CI"), reason="no RabbitMQ broker on 127.0.0.1:5672"
)


def alert(i: int, **kw: Any) -> AnomalyEvent:
    base: dict[str, Any] = {
        "time_ns": T0 + i * 1_000_000,
        "service": "checkout",
        "provider": "openai",
        "operation": "chat",
        "model": "gpt-4o",
        "metric": "latency_s",
        "type": AnomalyType.LATENCY_SPIKE,
        "severity": Severity.HIGH,
        "value": 12.5,
        "baseline": 2.0,
        "score": 0.9,
        "detector": "ensemble",
        "detected_at_ns": T0 + 7_000_000_000 + i,
    }
    base.update(kw)
    return AnomalyEvent(**base)


def run(coro: Awaitable[Any], timeout: float = 50) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def build(config: dict[str, Any]) -> tuple[RabbitMQExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("rabbitmq"), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate({"endpoint": URL, **config}))
    assert isinstance(exp, RabbitMQExporter)
    return exp, tel


async def push(exp: Any, batch: AnomalyBatch) -> None:
    """`consume` is typed for OTLP batches; alerts travel through it duck-typed."""
    await exp.consume(batch)


def metric(tel: SelfTelemetry, name: str, **labels: str) -> float:
    return float(tel.registry.get_sample_value(name, {"exporter": "rabbitmq", **labels}) or 0.0)


class Broker:
    """A test-side connection that creates uniquely named entities and deletes them at the end."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex[:10]
        self.exchanges: list[str] = []
        self.queues: list[AbstractQueue] = []
        self.channel: AbstractChannel
        self.conn: AbstractConnection

    def name(self, what: str) -> str:
        return f"test.{what}.{self.uid}"

    def exchange(self, what: str) -> str:
        name = self.name(what)
        self.exchanges.append(name)
        return name

    async def queue(
        self, exchange: str, key: str = "#", arguments: dict[str, Any] | None = None
    ) -> AbstractQueue:
        q = await self.channel.declare_queue(f"{self.name('q')}.{len(self.queues)}", arguments=arguments)
        self.queues.append(q)
        await q.bind(exchange, key)
        return q

    async def drain(
        self, q: AbstractQueue, expect: int = 0, timeout: float = 10.0
    ) -> list[AbstractIncomingMessage]:
        """Everything on `q`, waiting up to `timeout` for at least `expect` messages."""
        got: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            m = await q.get(fail=False, no_ack=True)
            if m is not None:
                got.append(m)
                continue
            if len(got) >= expect or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def broker() -> AsyncIterator[Broker]:
    b = Broker()
    conn = await aio_pika.connect(URL)
    try:
        b.conn = conn
        b.channel = await conn.channel()
        yield b
    finally:
        ch = await conn.channel()
        for q in b.queues:
            with contextlib.suppress(Exception):
                await ch.queue_delete(q.name)
        for name in b.exchanges:
            with contextlib.suppress(Exception):
                await ch.exchange_delete(name)
        await conn.close()


def cut_connection(connection_name: str) -> None:
    """Have the broker force-close the connection whose client-provided name is `connection_name`."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in out.splitlines() if connection_name in line]
    assert pids, f"no connection named {connection_name!r}:\n{out}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: cut"], timeout=30, check=True)


# ---------------------------------------------------------------- messages
def test_alerts_arrive_with_routing_key_body_and_properties() -> None:
    events = [
        alert(1, service="api.v2.checkout"),
        alert(2, service="", severity=Severity.CRITICAL, type=AnomalyType.ERROR_BURST),
        alert(3),
    ]

    async def main() -> tuple[list[AbstractIncomingMessage], SelfTelemetry]:
        async with broker() as b:
            exchange = b.exchange("alerts")
            exp, tel = build({"exchange": exchange})
            await exp.start()  # declares the exchange
            q = await b.queue(exchange, "#")
            only_critical = await b.queue(exchange, "critical.#")
            await push(exp, AnomalyBatch(events))
            await exp.shutdown()
            got = await b.drain(q, expect=3)
            assert [m.message_id for m in await b.drain(only_critical, expect=1)] == [events[1].id]
            # durable topic exchange: redeclaring it so works, as anything else is refused
            await b.channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=True)
            ch = await b.conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                await ch.declare_exchange(exchange, ExchangeType.TOPIC, durable=False)
            return got, tel

    got, tel = run(main())
    assert [m.routing_key for m in got] == [
        "high.latency_spike.api_v2_checkout",
        "critical.error_burst.unknown",
        "high.latency_spike.checkout",
    ]
    for m, e in zip(got, events, strict=True):
        assert orjson.loads(m.body) == e.to_json()
        assert m.content_type == "application/json"
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.message_id == e.id
        assert m.timestamp == datetime.fromtimestamp(e.detected_at_ns // 10**9, tz=UTC)
        assert m.headers == {"type": e.type.value, "severity": e.severity.value}
        assert (m.app_id, m.type) == ("llm-sentinel", "llm_sentinel.alert")
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 3
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 0


def test_unroutable_alerts_are_counted_and_redirected_to_the_alternate_exchange() -> None:
    routed, unroutable = alert(1), alert(2, severity=Severity.LOW)

    async def main() -> tuple[SelfTelemetry, SelfTelemetry]:
        async with broker() as b:
            exchange, alternate = b.exchange("alerts"), b.exchange("ae")
            exp, tel = build({"exchange": exchange, "alternate_exchange": alternate})
            await exp.start()
            high = await b.queue(exchange, "high.#")
            parked = await b.queue(alternate, "")
            await push(exp, AnomalyBatch([routed, unroutable]))
            await exp.shutdown()
            assert [m.message_id for m in await b.drain(high, expect=1)] == [routed.id]
            (m,) = await b.drain(parked, expect=1)
            assert (m.message_id, m.routing_key) == (unroutable.id, "low.latency_spike.checkout")
            assert orjson.loads(m.body) == unroutable.to_json() and m.delivery_mode == 2

            # without an alternate exchange, the return is counted and the alert dropped
            exp2, tel2 = build({"exchange": exchange})
            await exp2.start()
            await push(exp2, AnomalyBatch([unroutable]))
            await exp2.shutdown()
            assert await b.drain(parked, timeout=0.3) == []
            return tel, tel2

    tel, tel2 = run(main())
    returned = "llm_sentinel_alerts_returned_total"
    assert metric(tel, returned, action="redirected") == 1 and metric(tel, returned, action="dropped") == 0
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 2  # the broker confirmed both
    assert metric(tel2, returned, action="dropped") == 1 and metric(tel2, returned, action="redirected") == 0


def test_nack_is_retried_and_confirmed_alerts_are_not_republished(caplog: pytest.LogCaptureFixture) -> None:
    events = [alert(i) for i in range(4)]

    async def main() -> tuple[list[str], SelfTelemetry]:
        async with broker() as b:
            exchange = b.exchange("alerts")
            exp, tel = build({"exchange": exchange, "retry_on_failure": FAST_RETRY})
            await exp.start()
            # a queue that holds one message and makes the broker nack publishes beyond that
            q = await b.queue(exchange, "#", {"x-max-length": 1, "x-overflow": "reject-publish"})
            await push(exp, AnomalyBatch(events))
            seen: list[str] = []
            while len(seen) < len(events):  # a slow consumer: one message at a time
                seen += [str(m.message_id) for m in await b.drain(q, expect=1, timeout=5)]
                await asyncio.sleep(0.1)
            await exp.shutdown()
            seen += [str(m.message_id) for m in await b.drain(q, timeout=0.3)]
            return seen, tel

    with caplog.at_level(logging.WARNING):
        seen, tel = run(main())
    assert sorted(seen) == sorted(e.id for e in events)  # each exactly once: nacked ones never landed
    assert any("not confirmed" in m and "retrying" in m for m in exporter_logs(caplog))
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == 4


def exporter_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("sentinel.exporter.rabbitmq")]


def test_connection_cut_mid_stream_loses_no_alert(caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not available")
    per_batch = 5

    async def main() -> tuple[set[str], list[str], SelfTelemetry]:
        async with broker() as b:
            exchange = b.exchange("alerts")
            name = f"test-cut-{b.uid}"
            exp, tel = build(
                {
                    "exchange": exchange,
                    "connection_name": name,
                    "reconnect_interval": "200ms",
                    "timeout": "3s",
                    "retry_on_failure": FAST_RETRY,
                }
            )
            await exp.start()
            q = await b.queue(exchange, "#")
            ids: set[str] = set()
            k = 0

            async def produce(n: int) -> None:
                nonlocal k
                for _ in range(n):
                    batch = AnomalyBatch([alert(k * per_batch + i) for i in range(per_batch)])
                    ids.update(e.id for e in batch.events)
                    await push(exp, batch)
                    k += 1
                    await asyncio.sleep(0.01)

            await produce(20)
            cut = asyncio.create_task(asyncio.to_thread(cut_connection, name))
            while not cut.done():  # keep the stream going while the broker drops the connection
                await produce(1)
            await cut
            await produce(40)  # and after it, while the exporter reconnects
            await exp.shutdown()
            got = await b.drain(q, expect=len(ids), timeout=15)
            return ids, [str(m.message_id) for m in got], tel

    with caplog.at_level(logging.WARNING):
        ids, got, tel = run(main())
    assert set(got) == ids  # nothing lost
    duplicates = len(got) - len(ids)
    assert duplicates >= 0  # republished only when a confirm was lost with the connection
    print(f"\n{len(ids)} alerts, {len(got)} messages received, {duplicates} duplicate(s)")
    assert metric(tel, "otelcol_exporter_sent_anomalies_total") == len(ids)
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 0
    # the cut really hit the exporter mid-stream: some sends failed and were retried
    assert any("retrying" in m for m in exporter_logs(caplog)), exporter_logs(caplog)


# ---------------------------------------------------------------- start-up
def test_declare_false_needs_an_existing_exchange() -> None:
    async def main() -> None:
        async with broker() as b:
            missing = b.name("missing")
            exp, _ = build({"exchange": missing, "declare_exchange": False})
            with pytest.raises(RuntimeError, match="NOT_FOUND"):
                await exp.start()
            existing = b.exchange("existing")
            await b.channel.declare_exchange(existing, ExchangeType.TOPIC, durable=True)
            exp, _ = build({"exchange": existing, "declare_exchange": False})
            await exp.start()
            q = await b.queue(existing)
            await push(exp, AnomalyBatch([alert(1)]))
            await exp.shutdown()
            assert len(await b.drain(q, expect=1)) == 1

    run(main())


def test_refused_credentials_abort_start() -> None:
    exp, _ = build({"endpoint": "amqp://guest:wrong-password@127.0.0.1:5672/", "exchange": "x.never"})
    with pytest.raises(RuntimeError, match=r"exporter rabbitmq: amqp://127\.0\.0\.1:5672/: .*ACCESS_REFUSED"):
        run(exp.start())


def test_unreachable_broker_does_not_abort_start_and_alerts_wait(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def main() -> SelfTelemetry:
        retry = {**FAST_RETRY, "max_elapsed_time": "500ms"}
        exp, tel = build(
            {"endpoint": f"amqp://guest:guest@127.0.0.1:{port}/", "timeout": "1s", "retry_on_failure": retry}
        )
        await exp.start()  # no exception: keeps connecting in the background
        await push(exp, AnomalyBatch([alert(1)]))
        await exp.shutdown()
        return tel

    with caplog.at_level(logging.WARNING):
        tel = run(main())
    logs = exporter_logs(caplog)
    assert any("cannot reach amqp://127.0.0.1" in m for m in logs)
    assert any("not connected" in m for m in logs)
    assert metric(tel, "otelcol_exporter_send_failed_anomalies_total") == 1


# ---------------------------------------------------------------- units and config
def test_routing_key_and_waves() -> None:
    assert routing_key(alert(1, service="a.b.c")) == "high.latency_spike.a_b_c"
    assert routing_key(alert(1, service="")) == "high.latency_spike.unknown"
    assert len(routing_key(alert(1, service="é" * 300)).encode()) <= 255
    a, b = alert(1), alert(2)
    events = [a, b, a, a]
    assert waves(events, [0, 1, 2, 3]) == [[0, 1], [2], [3]]
    assert waves(events, [1, 3]) == [[1, 3]]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"endpoint": "http://x"}, "invalid endpoint"),
        ({"exchange": ""}, "invalid exchange"),
        ({"exchange": "amq.topic"}, "invalid exchange"),
        ({"alternate_exchange": "sentinel.alerts"}, "alternate_exchange must be"),
        ({"alternate_exchange": "ae", "mandatory": False}, "needs mandatory"),
        ({"password": "p"}, "password needs username"),
        ({"reconnect_interval": "soon"}, "reconnect_interval"),
        ({"exchnage": "x"}, "exchnage"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        FACTORY.config.model_validate(config)
    assert needle in str(info.value)


def test_factory_credentials_and_defaults() -> None:
    assert FACTORY.signals == frozenset({Signal.ANOMALIES})
    cfg = RabbitMQConfig.model_validate(
        {"endpoint": "amqps://broker:5671/prod", "username": "svc", "password": "pw"}
    )
    assert str(cfg.url()) == "amqps://svc:pw@broker:5671/prod" and "pw" not in repr(cfg.password)
    assert (cfg.exchange, cfg.declare_exchange, cfg.mandatory, cfg.persistent) == (
        "sentinel.alerts",
        True,
        True,
        True,
    )
