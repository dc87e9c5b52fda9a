"""Sending queue and retry shared by every exporter.

An exporter only implements `send(batch)`; this base class gives it a bounded
queue (by batches and bytes), N consumer tasks, exponential backoff with jitter
that honours server hints (RetryInfo / Retry-After), and the Collector's
exporter self-metrics. When the queue is full the batch is refused upstream
(so the client retries) and counted as `enqueue_failed`; permanent errors are
dropped and counted as `send_failed`.

With `sending_queue.storage` the queue is a write-ahead log on disk
(`gateway.persistent_queue`): `consume()` returns only once the batch is
written (and fsynced, per policy), a batch leaves the log when it was sent or
given up on, and whatever is left at shutdown or after a crash is delivered
first on the next start (at-least-once: a batch in flight at a crash is sent
again). `queue_size` still bounds the batches waiting, `storage.max_size_mib`
the bytes on disk, and `sending_queue.max_size_mib` becomes the memory budget
of batches kept decoded beside the log (the rest is read back from disk).
Subclasses see no difference: `send(batch)` gets the same batch type, with the
columns it had when it was queued.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prometheus_client import Gauge
from pydantic import Field, model_validator

from gateway.anomaly import AnomalyBatch, AnomalyEvent
from gateway.batch import Batch
from gateway.component import (
    ComponentConfig,
    ComponentContext,
    ConsumeError,
    Duration,
    Exporter,
    PermanentError,
    RefusedError,
    ThrottledError,
)
from gateway.persistent_queue import (
    PersistentQueue,
    QueueFullError,
    QueueItem,
    StorageError,
    StorageSettings,
)


class RetryableError(ConsumeError):
    """A send failed in a way that may succeed later (5xx, 429, UNAVAILABLE, connection errors)."""


class QueueSettings(ComponentConfig):
    enabled: bool = True
    num_consumers: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=1000, ge=1, description="Maximum batches held.")
    max_size_mib: float = Field(
        default=256,
        gt=0,
        description="Maximum bytes held, in MiB (with storage: bytes kept in memory beside the log).",
    )
    storage: StorageSettings | None = Field(
        default=None, description="Persist the queue on disk (a write-ahead log per exporter)."
    )

    @model_validator(mode="after")
    def _storage_needs_queue(self) -> QueueSettings:
        if self.storage is not None and not self.enabled:
            raise ValueError("storage requires the sending queue (enabled: true)")
        return self


class RetrySettings(ComponentConfig):
    enabled: bool = True
    initial_interval: Duration = Field(default=5.0, gt=0)
    randomization_factor: float = Field(default=0.5, ge=0, le=1)
    multiplier: float = Field(default=1.5, ge=1)
    max_interval: Duration = Field(default=30.0, gt=0)
    max_elapsed_time: Duration = Field(
        default=300.0, ge=0, description="Give up on a batch after this long; 0 retries forever."
    )


class QueuedExporterConfig(ComponentConfig):
    sending_queue: QueueSettings = QueueSettings()
    retry_on_failure: RetrySettings = RetrySettings()
    timeout: Duration = Field(default=10.0, gt=0, description="Timeout of one send attempt.")


class Backoff:
    """Exponential backoff with jitter, as the Collector's retry sender does it."""

    def __init__(self, settings: RetrySettings) -> None:
        self.s = settings
        self.interval = settings.initial_interval

    def next_delay(self, hint: float | None) -> float:
        base = self.interval
        self.interval = min(self.interval * self.s.multiplier, self.s.max_interval)
        jitter = base * self.s.randomization_factor
        delay = random.uniform(base - jitter, base + jitter)
        if hint is not None and hint > 0:
            delay = max(delay, hint)  # never retry sooner than the server asked
        return delay


class QueuedExporter(Exporter):
    """Base class: subclasses implement `send` (and optionally `start`/`close`)."""

    config: QueuedExporterConfig

    def __init__(self, ctx: ComponentContext, config: Any) -> None:
        super().__init__(ctx, config)
        q = config.sending_queue
        self._queue: asyncio.Queue[Batch] = asyncio.Queue()
        self._queued_bytes = 0
        self._max_bytes = int(q.max_size_mib * 1024 * 1024)
        self._workers: list[asyncio.Task[None]] = []
        self._inflight = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        tel, name = ctx.telemetry, str(ctx.id)
        self._m_queue_size = tel.queue_size.labels(exporter=name)
        tel.queue_capacity.labels(exporter=name).set(q.queue_size if q.enabled else 0)
        self._m_queue_size.set(0)
        self._m_sent = {s: c.labels(exporter=name) for s, c in tel.exporter_sent.items()}
        self._m_failed = {s: c.labels(exporter=name) for s, c in tel.exporter_send_failed.items()}
        self._m_enqueue_failed = {s: c.labels(exporter=name) for s, c in tel.exporter_enqueue_failed.items()}
        self._storage: PersistentQueue | None = None
        if q.enabled and q.storage is not None:
            self._m_storage_bytes = _storage_gauge(tel).labels(exporter=name)
            self._storage = PersistentQueue(
                q.storage,
                name,
                max_items=q.queue_size,
                memory_bytes=self._max_bytes,
                logger=self.logger,
                on_change=self._storage_changed,
            )

    # ---------------------------------------------------------------- to implement
    async def send(self, batch: Batch) -> None:
        """Deliver one batch; raise RetryableError or PermanentError on failure."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections after the queue drained."""

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        worker = self._worker
        if self._storage is not None:
            await self._open_storage()
            worker = self._storage_worker
        if self.config.sending_queue.enabled:
            self._workers = [
                asyncio.create_task(worker(), name=f"{self.id}-sender-{i}")
                for i in range(self.config.sending_queue.num_consumers)
            ]

    async def shutdown(self) -> None:
        """Stop taking data, drain the queue (the runtime bounds how long), then close."""
        self._closing = True
        try:
            if self._workers:
                await (self._storage.join() if self._storage is not None else self._queue.join())
        finally:
            for w in self._workers:
                w.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
            if self._storage is not None:
                await self._close_storage()
            else:
                dropped = self._queue.qsize()
                if dropped:
                    self.logger.error(f"dropping {dropped} queued batch(es) at shutdown")
            await self.close()

    # ---------------------------------------------------------------- data path
    async def consume(self, batch: Batch) -> None:
        if not self.config.sending_queue.enabled:
            await self._send_with_retry(batch, raise_on_failure=True)
            return
        q = self.config.sending_queue
        if self._closing:
            self._m_enqueue_failed[batch.signal].inc(batch.item_count)
            raise RefusedError("exporter is shutting down", retry_after=1.0)
        if self._storage is not None:
            await self._persist(batch)
            return
        size = batch.nbytes
        if self._queue.qsize() >= q.queue_size or (
            self._queued_bytes and self._queued_bytes + size > self._max_bytes
        ):
            self._m_enqueue_failed[batch.signal].inc(batch.item_count)
            raise ThrottledError(f"sending queue of exporter {self.id} is full", retry_after=1.0)
        self._queued_bytes += size
        self.ctx.admission.set_held(f"exporter:{self.id}", self._queued_bytes)
        self._queue.put_nowait(batch)
        self._m_queue_size.set(self._queue.qsize())

    def queue_len(self) -> int:
        """Batches waiting for a consumer (with storage: the backlog from disk included)."""
        return self._storage.qsize() if self._storage is not None else self._queue.qsize()

    async def _worker(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self._send_with_retry(batch, raise_on_failure=False)
            except Exception:  # never let a worker die
                self.logger.exception("unexpected error while sending")
            finally:
                self._queued_bytes -= batch.nbytes
                self.ctx.admission.set_held(f"exporter:{self.id}", self._queued_bytes)
                self._m_queue_size.set(self._queue.qsize())
                self._queue.task_done()

    # ---------------------------------------------------------------- persistent queue
    async def _open_storage(self) -> None:
        st = self._storage
        assert st is not None
        if st.is_open:
            return
        try:
            backlog = await st.open()
        except (StorageError, OSError) as exc:
            raise RuntimeError(f"exporter {self.id}: cannot open its persistent queue: {exc}") from exc
        if backlog:
            self.logger.info(
                f"persistent queue {st.directory}: {backlog} batch(es) "
                f"({st.stats.backlog_bytes / 2**20:.1f} MiB) from a previous run are delivered first"
            )

    async def _close_storage(self) -> None:
        st = self._storage
        assert st is not None
        left = st.unacked()
        try:
            await st.close()
        except (StorageError, OSError) as exc:
            self.logger.error(f"closing the persistent queue {st.directory} failed: {exc}")
        if left:
            self.logger.warning(
                f"{left} batch(es) stay in the persistent queue {st.directory}; "
                "they are delivered after the next start"
            )

    async def _persist(self, batch: Batch) -> None:
        st = self._storage
        assert st is not None
        if not st.is_open:
            await self._open_storage()
        try:
            await st.put(batch)
        except QueueFullError as exc:
            self._m_enqueue_failed[batch.signal].inc(batch.item_count)
            raise ThrottledError(
                f"sending queue of exporter {self.id} is full ({exc})", retry_after=1.0
            ) from None
        except StorageError as exc:
            self._m_enqueue_failed[batch.signal].inc(batch.item_count)
            raise RefusedError(f"exporter {self.id}: {exc}", retry_after=1.0) from None

    def _storage_changed(self) -> None:
        st = self._storage
        assert st is not None
        self._m_queue_size.set(st.qsize())
        self._m_storage_bytes.set(st.disk_bytes)
        self.ctx.admission.set_held(f"exporter:{self.id}", st.cached_bytes)

    async def _storage_worker(self) -> None:
        st = self._storage
        assert st is not None
        while True:
            item: QueueItem = await st.get()
            try:
                batch = await st.load(item)
            except Exception as exc:  # unreadable record: nothing to send, never block the log
                self.logger.error(f"skipping a batch of the persistent queue that cannot be read: {exc}")
            else:
                try:
                    await self._send_with_retry(batch, raise_on_failure=False)
                except Exception:  # never let a worker die
                    self.logger.exception("unexpected error while sending")
            # not reached when cancelled (shutdown): the batch stays in the log for the next start
            st.ack(item)

    async def _send_with_retry(self, batch: Batch, *, raise_on_failure: bool) -> None:
        retry = self.config.retry_on_failure
        backoff = Backoff(retry)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.wait_for(self.send(batch), self.config.timeout)
                self._m_sent[batch.signal].inc(batch.item_count)
                return
            except PermanentError as exc:
                self._m_failed[batch.signal].inc(batch.item_count)
                self.logger.error(
                    f"dropping {batch.item_count} {batch.signal.value} item(s): permanent error: {exc}"
                )
                if raise_on_failure:
                    raise
                return
            except (RetryableError, TimeoutError, OSError, ConsumeError) as exc:
                err: Exception = exc
                hint = getattr(exc, "retry_after", None)
            except Exception as exc:  # unknown failure: treat as transient, keep the data
                err, hint = exc, None
                self.logger.exception("send failed unexpectedly")
            if not retry.enabled:
                return self._give_up(batch, err, attempt, raise_on_failure)
            delay = backoff.next_delay(hint)
            elapsed = time.monotonic() - started
            if retry.max_elapsed_time and elapsed + delay > retry.max_elapsed_time:
                return self._give_up(batch, err, attempt, raise_on_failure)
            self.logger.warning(
                f"send failed, retrying in {delay:.2f}s (attempt {attempt}): {err or type(err).__name__}"
            )
            await asyncio.sleep(delay)

    def _give_up(self, batch: Batch, err: Exception, attempts: int, raise_on_failure: bool) -> None:
        self._m_failed[batch.signal].inc(batch.item_count)
        self.logger.error(
            f"dropping {batch.item_count} {batch.signal.value} item(s) after {attempts} attempt(s): {err}"
        )
        if raise_on_failure:
            raise RefusedError(f"export failed: {err}", retry_after=getattr(err, "retry_after", None))


STORAGE_BYTES_METRIC = "llm_sentinel_exporter_queue_storage_bytes"


def _storage_gauge(tel: Any) -> Gauge:
    """One gauge per runtime registry, shared by the exporters with a persistent queue."""
    gauge = tel.shared.get(STORAGE_BYTES_METRIC)
    if gauge is None:
        gauge = Gauge(
            STORAGE_BYTES_METRIC,
            "Bytes the persistent sending queue of an exporter holds on disk.",
            ["exporter"],
            registry=tel.registry,
        )
        tel.shared[STORAGE_BYTES_METRIC] = gauge
    assert isinstance(gauge, Gauge)
    return gauge


# ---------------------------------------------------------------- helpers for exporters that resume
S = TypeVar("S")


class SendProgress(Generic[S]):
    """Per-batch delivery state kept across the retries of one batch.

    The queued sender retries a batch by calling `send` again with the same object, so the
    state is keyed by the batch's identity. Each entry holds the batch itself: while it is
    remembered its id cannot be reused by another object. Entries are dropped when a batch
    finishes (success or permanent failure); batches the sender gave up on fall out of the
    bounded LRU.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(4, capacity)
        self._entries: OrderedDict[int, tuple[object, S]] = OrderedDict()

    def find(self, batch: object) -> S | None:
        entry = self._entries.get(id(batch))
        return entry[1] if entry is not None and entry[0] is batch else None

    def get(self, batch: object, new: Callable[[], S]) -> S:
        key = id(batch)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is batch:
            self._entries.move_to_end(key)
            return entry[1]
        state = new()
        self._entries[key] = (batch, state)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return state

    def done(self, batch: object) -> None:
        entry = self._entries.get(id(batch))
        if entry is not None and entry[0] is batch:
            del self._entries[id(batch)]

    def __len__(self) -> int:
        return len(self._entries)


def alert_events(batch: object) -> list[AnomalyEvent]:
    if not isinstance(batch, AnomalyBatch):
        raise PermanentError(f"expected alerts (the anomalies signal), got {type(batch).__name__}")
    return batch.events
