"""`rabbitmq` exporter: publishes alerts (the `anomalies` signal) to a RabbitMQ topic exchange.

Messages
  One message per alert on exchange `exchange` (default `sentinel.alerts`, a durable topic
  exchange declared at start unless `declare_exchange: false`) with routing key
  `<severity>.<type>.<service>`, e.g. `high.latency_spike.checkout`; dots in the service name
  become `_` so a binding such as `*.*.checkout` or `critical.#` always sees three words, and an
  empty service is `unknown`. Body: the public alert JSON (`AnomalyEvent.to_json()`);
  properties: content_type `application/json`, delivery_mode 2 (persistent; `persistent: false`
  for transient), message_id = the alert id (stable across replays: consumers deduplicate on
  it), timestamp = when the alert was emitted (else its event time), app_id `llm-sentinel`,
  type `llm_sentinel.alert`, headers `type` and `severity`.

Delivery guarantees
  The channel runs in publisher-confirm mode and every publish awaits the broker's confirm
  (publishes of a batch are pipelined). A nack, a publish timeout, or losing the
  channel/connection before the confirm raises RetryableError, so the queued sender retries the
  batch with backoff; meanwhile `connect_robust` reconnects (every `reconnect_interval`) and
  restores the channel and exchanges. A retry only republishes the alerts whose confirm had not
  arrived: delivery is at-least-once, with a duplicate only when the broker took a message whose
  confirm was then lost.

Unroutable alerts
  Messages are published with `mandatory: true`, so an alert no queue is bound for comes back
  (basic.return) instead of vanishing. Each return is counted in
  `llm_sentinel_alerts_returned_total{exporter, action}` and, when `alternate_exchange` is set,
  republished there (same routing key and properties; `action="redirected"`), else dropped
  (`action="dropped"`). With `declare_exchange`, the alternate exchange is declared as a durable
  fanout exchange. A returned alert is not a failed send: the broker accepted and confirmed it.
  Why not the broker-side `alternate-exchange` exchange argument instead: the broker then
  reroutes silently, so the gateway can no longer see or count unroutable alerts, and declaring
  an exchange that already exists with other arguments fails with PRECONDITION_FAILED, which
  breaks deployments whose exchange is managed elsewhere. Nothing stops an operator from setting
  that argument (or a policy) on the exchange: returns then simply never happen.

Start-up
  The first connection is attempted at start. Refused credentials or a conflicting exchange
  declaration abort start-up with the broker's message; an unreachable broker does not: alerts
  are queued and retried while the exporter keeps connecting in the background.

Caveat: the broker's basic.return names a message only by its message_id, so alerts with the
same id are never in flight together within a batch (they go out in successive waves); two
concurrent batches holding the same alert id could still have a return attributed to the wrong
one.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
    ExchangeType,
)
from aiormq import spec
from prometheus_client import Counter
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from gateway.anomaly import AnomalyEvent
from gateway.batch import Batch, Signal
from gateway.component import ComponentContext, Duration, Factory, Kind
from gateway.exporterhelper import (
    QueuedExporter,
    QueuedExporterConfig,
    RetryableError,
    SendProgress,
    alert_events,
)
from gateway.telemetry import SelfTelemetry

APP_ID = "llm-sentinel"
MESSAGE_TYPE = "llm_sentinel.alert"
# What a lost connection/channel, a timeout or a nack looks like from aio-pika/aiormq.
TRANSIENT = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError, EOFError)


def routing_key(event: AnomalyEvent) -> str:
    service = event.service.replace(".", "_") or "unknown"
    key = f"{event.severity.value}.{event.type.value}.{service}"
    return key.encode()[:255].decode("utf-8", "ignore")  # AMQP shortstr limit


def properties_for(event: AnomalyEvent, persistent: bool = True) -> spec.Basic.Properties:
    stamp_ns = event.detected_at_ns or event.time_ns
    return spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=int(DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT),
        message_id=event.id,
        timestamp=datetime.fromtimestamp(stamp_ns // 1_000_000_000, tz=UTC),
        headers={"type": event.type.value, "severity": event.severity.value},
        app_id=APP_ID,
        message_type=MESSAGE_TYPE,
    )


class RabbitMQConfig(QueuedExporterConfig):
    endpoint: str = Field(
        default="amqp://localhost:5672/",
        description="amqp:// or amqps:// URL (vhost as the path; query options such as heartbeat=).",
    )
    username: str | None = Field(default=None, description="Overrides the user in endpoint.")
    password: SecretStr | None = Field(default=None, description="Overrides the password in endpoint.")
    exchange: str = "sentinel.alerts"
    declare_exchange: bool = Field(
        default=True, description="Declare the exchange (durable topic); false: it must exist."
    )
    alternate_exchange: str | None = Field(
        default=None, description="Republish unroutable (returned) alerts to this exchange."
    )
    mandatory: bool = Field(default=True, description="Have the broker return unroutable alerts.")
    persistent: bool = True
    reconnect_interval: Duration = Field(default=5.0, gt=0)
    connection_name: str | None = Field(
        default=None, description="Shown by the broker (rabbitmqctl list_connections client_properties)."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        url = URL(v)
        if url.scheme not in ("amqp", "amqps") or not url.host:
            raise ValueError(f"invalid endpoint {v!r}: expected amqp://host:port/vhost or amqps://...")
        return v

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, v: str) -> str:
        if not v or len(v.encode()) > 255 or v.startswith("amq."):
            raise ValueError(f"invalid exchange {v!r}: non-empty, at most 255 bytes, not amq.*")
        return v

    @model_validator(mode="after")
    def _alternate(self) -> RabbitMQConfig:
        if self.alternate_exchange is not None:
            if not self.alternate_exchange or self.alternate_exchange == self.exchange:
                raise ValueError("alternate_exchange must be a non-empty name other than exchange")
            if not self.mandatory:
                raise ValueError("alternate_exchange needs mandatory: true (returns are what it redirects)")
        if self.password is not None and not self.username and URL(self.endpoint).user is None:
            raise ValueError("password needs username")
        return self

    def url(self) -> URL:
        url = URL(self.endpoint)
        if self.username:
            url = url.with_user(self.username)
        if self.password is not None:
            url = url.with_password(self.password.get_secret_value())
        return url


def _returned_counter(tel: SelfTelemetry) -> Counter:
    return tel.singleton(
        "alerts_returned",
        lambda: Counter(
            "llm_sentinel_alerts_returned",
            "Alerts the broker returned as unroutable, by what the exporter then did with them.",
            ["exporter", "action"],
            registry=tel.registry,
        ),
    )


class _Published:
    __slots__ = ("confirmed",)

    def __init__(self) -> None:
        self.confirmed: set[int] = set()


def waves(events: list[AnomalyEvent], todo: list[int]) -> list[list[int]]:
    """`todo` split so that no wave holds two alerts with the same id (returns match by id)."""
    out: list[list[int]] = []
    seen: dict[str, int] = {}
    for i in todo:
        n = seen.get(events[i].id, 0)
        seen[events[i].id] = n + 1
        if n == len(out):
            out.append([])
        out[n].append(i)
    return out


class RabbitMQExporter(QueuedExporter):
    config: RabbitMQConfig

    def __init__(self, ctx: ComponentContext, config: RabbitMQConfig) -> None:
        super().__init__(ctx, config)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._alternate: AbstractExchange | None = None
        self._ready = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._progress: SendProgress[_Published] = SendProgress(4 * config.sending_queue.num_consumers + 8)
        counter = _returned_counter(ctx.telemetry)
        self._m_redirected = counter.labels(exporter=str(ctx.id), action="redirected")
        self._m_dropped = counter.labels(exporter=str(ctx.id), action="dropped")

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._setup(), 2 * self.config.timeout)
        except (
            aiormq.exceptions.ProbableAuthenticationError,
            aiormq.exceptions.ChannelAccessRefused,
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelNotFoundEntity,
        ) as exc:
            await self._drop_connection()
            raise RuntimeError(f"exporter {self.id}: {self._where()}: {type(exc).__name__}: {exc}") from exc
        except TRANSIENT as exc:
            await self._drop_connection()
            self.logger.warning(
                f"cannot reach {self._where()} yet ({type(exc).__name__}: {exc}); "
                f"alerts are queued while connecting every {self.config.reconnect_interval:g}s"
            )
            self._connector = asyncio.create_task(self._connect_forever(), name=f"{self.id}-connect")
        await super().start()

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        await self._drop_connection()

    def _where(self) -> str:
        url = self.config.url()
        return f"{url.scheme}://{url.host}:{url.port}{url.path}"

    async def _setup(self) -> None:
        """Connect, open the confirm-mode channel, declare or look up the exchanges.

        The connect carries its own `timeout`, shorter than the caller's bound, so a broker that
        accepts TCP but never answers fails the attempt cleanly instead of leaving aio-pika's
        connection task running after a cancellation.
        """
        cfg = self.config
        self._connection = await aio_pika.connect_robust(
            cfg.url(),
            reconnect_interval=cfg.reconnect_interval,
            timeout=cfg.timeout,
            client_properties={"connection_name": cfg.connection_name or f"llm-sentinel {self.id}"},
        )
        channel = self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=False
        )
        if cfg.declare_exchange:
            self._exchange = await channel.declare_exchange(cfg.exchange, ExchangeType.TOPIC, durable=True)
            if cfg.alternate_exchange:
                self._alternate = await channel.declare_exchange(
                    cfg.alternate_exchange, ExchangeType.FANOUT, durable=True
                )
        else:
            self._exchange = await channel.get_exchange(cfg.exchange, ensure=True)
            if cfg.alternate_exchange:
                self._alternate = await channel.get_exchange(cfg.alternate_exchange, ensure=True)
        self._ready.set()
        self.logger.info(f"publishing alerts to exchange {cfg.exchange!r} on {self._where()}")

    async def _connect_forever(self) -> None:
        while not self._ready.is_set():
            await asyncio.sleep(self.config.reconnect_interval)
            try:
                await asyncio.wait_for(self._setup(), 2 * self.config.timeout)
            except Exception as exc:  # keep trying whatever it was; the log says why
                await self._drop_connection()
                self.logger.warning(f"connecting to {self._where()} failed: {type(exc).__name__}: {exc}")

    async def _drop_connection(self) -> None:
        self._ready.clear()
        conn, self._connection = self._connection, None
        self._channel = self._exchange = self._alternate = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # ---------------------------------------------------------------- sending
    async def send(self, batch: Batch) -> None:
        events = alert_events(batch)
        if not self._ready.is_set() or self._exchange is None:
            raise RetryableError(f"not connected to {self._where()} yet")
        state = self._progress.get(batch, _Published)
        todo = [i for i in range(len(events)) if i not in state.confirmed]
        for wave in waves(events, todo):
            results = await asyncio.gather(*(self._publish(events[i]) for i in wave), return_exceptions=True)
            failed: BaseException | None = None
            for i, result in zip(wave, results, strict=True):
                if isinstance(result, BaseException):
                    failed = failed or result
                else:
                    state.confirmed.add(i)
            if failed is not None:
                n = len(events) - len(state.confirmed)
                raise RetryableError(
                    f"{n} of {len(events)} alert(s) not confirmed by {self._where()}: "
                    f"{type(failed).__name__}: {failed}".rstrip(": ")
                )
        self._progress.done(batch)

    async def _publish(self, event: AnomalyEvent) -> None:
        cfg = self.config
        key = routing_key(event)
        body = event.to_bytes()
        props = properties_for(event, cfg.persistent)
        result = await self._basic_publish(cfg.exchange, key, body, props, cfg.mandatory)
        if not isinstance(result, aiormq.abc.DeliveredMessage):
            return  # Basic.Ack
        # Returned as unroutable (the broker confirms it all the same).
        if cfg.alternate_exchange is None:
            self._m_dropped.inc()
            self.logger.warning(f"alert {event.id} with routing key {key!r} is unroutable; dropped")
            return
        again = await self._basic_publish(cfg.alternate_exchange, key, body, props, True)
        if isinstance(again, aiormq.abc.DeliveredMessage):
            self._m_dropped.inc()
            self.logger.warning(
                f"alert {event.id} is unroutable on {cfg.exchange!r} and {cfg.alternate_exchange!r}; dropped"
            )
        else:
            self._m_redirected.inc()

    async def _basic_publish(
        self, exchange: str, key: str, body: bytes, props: spec.Basic.Properties, mandatory: bool
    ) -> Any:
        """Publish on the robust channel's current AMQP channel and await the broker's confirm.

        What aio-pika's `Exchange.publish` does, minus its Message wrapper and the wait for each
        write to drain (the confirm is what counts). Returns Basic.Ack on success, the returned
        message when unroutable; a nack raises DeliveryError, a lost channel/connection its error.
        """
        channel = self._channel
        if channel is None or channel.is_closed:
            raise ConnectionError("channel closed (reconnecting)")
        underlay: Any = await channel.get_underlay_channel()  # waits while the connection is restored
        return await underlay.basic_publish(
            body,
            exchange=exchange,
            routing_key=key,
            properties=props,
            mandatory=mandatory,
            timeout=self.config.timeout,
            wait=False,
        )


FACTORY = Factory(
    type="rabbitmq",
    kind=Kind.EXPORTER,
    config=RabbitMQConfig,
    create=RabbitMQExporter,
    signals=frozenset({Signal.ANOMALIES}),
    description="Publishes alerts to a RabbitMQ topic exchange with publisher confirms.",
)
