"""`batch` processor: fewer, larger batches for exporters, as the Collector's batch processor.

`consume()` only appends to a buffer and returns, so receivers answer clients
without waiting for exporters; one background task per instance sends the
buffer when it holds `send_batch_size` items or when `timeout` has passed since
the oldest buffered data arrived (or since the last send, when items were left
over). Batches above `send_batch_max_size` are split. Once a batch has left the
buffer the client has already been answered, so a failure downstream can only
be logged and counted; exporters' sending queues are what retry.

The buffer is bounded (`max_buffered_items`, default 4 * `send_batch_size`).
While it is full, receivers refuse new requests of its signal before decoding them
(an admission throttle: 429 / UNAVAILABLE + RetryInfo), and a request already past
admission waits for the sender at most `MAX_WAIT_FOR_SPACE_S` before it is refused
the same way: a client must get an answer well before its own timeout, or it sends
again data the gateway may still accept, and the spans arrive twice. Buffered bytes
are reported to admission so the memory limiter sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pydantic import Field, model_validator

from gateway.batch import Batch
from gateway.component import (
    ComponentConfig,
    ComponentContext,
    ConsumeError,
    Duration,
    Factory,
    Kind,
    Processor,
    ThrottledError,
)

_LOG_EVERY_S = 10.0  # at most one "send failed" log line per this many seconds
MAX_WAIT_FOR_SPACE_S = 2.0
"""How long consume() waits for room in a full buffer before refusing: OTLP SDKs time out
after 10 s by default, Collectors after 5 s, and the request may have waited for the CPU
before it got here."""


class BatchConfig(ComponentConfig):
    send_batch_size: int = Field(
        default=8192, ge=1, description="Items (spans, metric data points, log records) that trigger a send."
    )
    timeout: Duration = Field(
        default=0.2,
        ge=0,
        description="Send after this long regardless of size; 0 sends every batch at once "
        "(send_batch_size is then ignored, only send_batch_max_size applies).",
    )
    send_batch_max_size: int = Field(
        default=0, ge=0, description="Upper bound of a sent batch; larger ones are split. 0 = no limit."
    )
    max_buffered_items: int | None = Field(
        default=None,
        ge=1,
        description="consume() waits while the buffer holds this many items (default 4 * send_batch_size).",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> BatchConfig:
        if self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            raise ValueError(
                f"send_batch_max_size ({self.send_batch_max_size}) must be 0 (no limit) or greater than "
                f"or equal to send_batch_size ({self.send_batch_size})"
            )
        if self.max_buffered_items is not None and self.max_buffered_items < self.send_batch_size:
            raise ValueError(
                f"max_buffered_items ({self.max_buffered_items}) must be greater than or equal to "
                f"send_batch_size ({self.send_batch_size}), or the size trigger could never fire"
            )
        return self

    @property
    def buffer_limit(self) -> int:
        return self.max_buffered_items or 4 * self.send_batch_size


class BatchProcessor(Processor):
    config: BatchConfig

    def __init__(self, ctx: ComponentContext, config: BatchConfig) -> None:
        super().__init__(ctx, config)
        self._buf: list[Batch] = []
        self._items = 0
        self._bytes = 0
        self._deadline = 0.0  # monotonic time at which the buffer is sent regardless of size
        self._wake = asyncio.Event()  # tells the sender to look at the buffer again
        self._space = asyncio.Condition()  # consumers waiting for the buffer to shrink
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._held_key = f"batch:{ctx.pipeline}:{ctx.id}"
        labels = {"processor": str(ctx.id), "pipeline": ctx.pipeline}
        self._m_sent = {t: ctx.telemetry.batch_send_size.labels(**labels, trigger=t) for t in _TRIGGERS}
        self._m_dropped = ctx.telemetry.processor_dropped.labels(**labels)
        self._failures_unlogged = 0
        self._last_failure_log = float("-inf")
        # set while the next consumer refuses (full exporter queue): the retry hint it gave
        self._refused_hint: float | None = None
        self._inflight_bytes = 0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._ensure_sender()

    async def shutdown(self) -> None:
        """Send everything still buffered (trigger "shutdown"), then stop the sender."""
        self._closing = True
        self._wake.set()
        async with self._space:
            self._space.notify_all()  # waiting consumers now forward directly
        if self._task is not None:
            await self._task
            self._task = None
        elif self._buf:  # never started: flush inline
            await self._send_all("shutdown")
        self.ctx.admission.unthrottle(self._held_key)
        self._report_pending_failures()

    def _ensure_sender(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name=f"batch-{self._held_key}")

    # ---------------------------------------------------------------- data path
    async def consume(self, batch: Batch) -> None:
        if not len(batch):
            return
        if self._closing:
            # Receivers are stopped before processors, so this is rare; keep the data moving.
            await self.next_consumer.consume(batch)
            return
        self._ensure_sender()
        if self._items >= self.config.buffer_limit and self._refused_hint is not None:
            # Downstream refuses and our buffer is full: push back to the client (429 + Retry-After)
            # rather than hold its request open or drop data it was told we accepted.
            raise ThrottledError(
                f"batch buffer of {self.id} is full while its exporters refuse data",
                retry_after=max(self._refused_hint, 1.0),
            )
        if self._items >= self.config.buffer_limit:
            await self._wait_for_space()
            if self._closing:
                await self.next_consumer.consume(batch)
                return
        if not self._buf:
            self._deadline = time.monotonic() + self.config.timeout
            self._wake.set()  # the sender must start timing the new data
        self._buf.append(batch)
        self._items += batch.item_count
        self._bytes += batch.nbytes
        self._report_held()
        if self._items >= self.config.buffer_limit:
            self.ctx.admission.throttle(
                self._held_key,
                batch.signal,
                f"batch buffer of {self.id} in pipeline {self.ctx.pipeline} is full; retry later",
                retry_after=max(self._refused_hint or 1.0, 1.0),
            )
        if self._items >= self.config.send_batch_size or self.config.timeout == 0:
            self._wake.set()

    async def _wait_for_space(self) -> None:
        """Wait (bounded) until the sender made room; ThrottledError when it did not in time."""
        limit = self.config.buffer_limit
        async with self._space:
            try:
                await asyncio.wait_for(
                    self._space.wait_for(lambda: self._closing or self._items < limit), MAX_WAIT_FOR_SPACE_S
                )
            except TimeoutError:
                raise ThrottledError(
                    f"batch buffer of {self.id} stayed full for {MAX_WAIT_FOR_SPACE_S:g}s: the pipeline "
                    "behind it is slower than the data arriving; retry later",
                    retry_after=1.0,
                ) from None

    # ---------------------------------------------------------------- sender
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if await self._step():
                    return
            except Exception:
                # A bug in merging/splitting must not leave consumers waiting for space forever.
                lost = self._items
                self._buf, self._items, self._bytes = [], 0, 0
                self._m_dropped.inc(lost)
                self.logger.exception(f"batch sender failed; dropped {lost} buffered item(s)")
                await self._released()

    async def _step(self) -> bool:
        """Send what is due, or wait for news; True once shut down."""
        cfg = self.config
        if self._closing:
            await self._send_all("shutdown")
            return True
        if self._buf and (cfg.timeout == 0 or self._items >= cfg.send_batch_size):
            await self._send_full()
        elif self._buf and time.monotonic() >= self._deadline:
            await self._send_all("timeout")
        else:
            wait = max(0.0, self._deadline - time.monotonic()) if self._buf else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        return False

    def _take_buffer(self) -> Batch:
        """Empty the buffer into one batch (cheap when it holds a single batch)."""
        merged = type(self._buf[0]).concat(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf, self._items, self._bytes = [], 0, 0
        return merged

    async def _send_full(self) -> None:
        """Send while at least send_batch_size items remain, at most send_batch_max_size per batch.

        With timeout 0 there is no timer to pick up a remainder, so everything goes.
        """
        cfg = self.config
        merged = self._take_buffer()
        chunks = merged.split(cfg.send_batch_max_size)
        remaining = merged.item_count
        out: list[Batch] = []
        while chunks and (cfg.timeout == 0 or remaining >= cfg.send_batch_size):
            chunk = chunks.pop(0)
            out.append(chunk)
            remaining -= chunk.item_count
        if chunks:  # the remainder waits for more data or the timer, ahead of newer data
            self._buf = chunks
            self._items = sum(c.item_count for c in chunks)
            self._bytes = sum(c.nbytes for c in chunks)
            self._deadline = time.monotonic() + cfg.timeout
        await self._released()
        for chunk in out:
            await self._send(chunk, "size")

    async def _send_all(self, trigger: str) -> None:
        if not self._buf:
            return
        merged = self._take_buffer()
        await self._released()
        for chunk in merged.split(self.config.send_batch_max_size):
            await self._send(chunk, trigger)

    async def _released(self) -> None:
        """The buffer shrank: update admission and let waiting consumers in."""
        self._report_held()
        if self._items < self.config.buffer_limit:
            self.ctx.admission.unthrottle(self._held_key)
        async with self._space:
            self._space.notify_all()

    async def _send(self, batch: Batch, trigger: str) -> None:
        """Hand on one batch. A retryable refusal (full exporter queue) is waited out, holding the
        batch, so accepted data is not dropped; meanwhile a full buffer refuses new clients."""
        self._inflight_bytes = batch.nbytes
        self._report_held()
        try:
            while True:
                try:
                    await self.next_consumer.consume(batch)
                except ConsumeError as exc:
                    if not exc.retryable or self._closing:
                        raise
                    self._refused_hint = exc.retry_after or 0.5
                    self._log_failure(batch, exc, dropped=False)
                    await asyncio.sleep(min(max(self._refused_hint, 0.05), 5.0))
                    continue
                self._refused_hint = None
                self._m_sent[trigger].inc(batch.item_count)
                return
        except Exception as exc:  # permanent, or shutting down: the client was answered already
            self._m_dropped.inc(batch.item_count)
            self._log_failure(batch, exc)
        finally:
            self._inflight_bytes = 0
            self._report_held()

    # ---------------------------------------------------------------- bookkeeping
    def _report_held(self) -> None:
        self.ctx.admission.set_held(self._held_key, self._bytes + self._inflight_bytes)

    def _log_failure(self, batch: Batch, exc: Exception, dropped: bool = True) -> None:
        """One line per _LOG_EVERY_S, so a refusing exporter does not flood the log."""
        now = time.monotonic()
        if now - self._last_failure_log < _LOG_EVERY_S:
            self._failures_unlogged += 1
            return
        self._last_failure_log = now
        also = f" ({self._failures_unlogged} more failed sends since the last report)"
        what = "dropped" if dropped else "holding (will retry)"
        self.logger.warning(
            f"{what} {batch.item_count} {batch.signal.value} item(s) after batching: "
            f"{type(exc).__name__}: {exc}" + (also if self._failures_unlogged else "")
        )
        self._failures_unlogged = 0

    def _report_pending_failures(self) -> None:
        if self._failures_unlogged:
            self.logger.warning(f"{self._failures_unlogged} more batch send(s) failed since the last report")
            self._failures_unlogged = 0


_TRIGGERS = ("size", "timeout", "shutdown")


def _create(ctx: ComponentContext, config: Any) -> BatchProcessor:
    return BatchProcessor(ctx, config)


FACTORY = Factory(
    type="batch",
    kind=Kind.PROCESSOR,
    config=BatchConfig,
    create=_create,
    description="Groups data into batches by size and time before export.",
)
