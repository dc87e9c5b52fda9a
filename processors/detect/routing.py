"""Detection across workers: every series has one owning worker, and calls travel to it.

With `sentinel run --workers N` the kernel spreads client connections over N
processes, so the calls of one series arrive at all of them. Detection state
(value-stream baselines, rate buckets, model history, drift histograms, alert
deduplication) must see every call of a series in one place, so:

* **Ownership.** A series belongs to worker `fnv1a(service "\\0" request model) % N`
  (64-bit FNV-1a, stable across processes and runs, unlike Python's salted
  `hash`). (service, request model) is the coarsest key any detector uses: the
  value streams, bursts, traffic, model change and drift are kept per
  (service, provider, operation, request model), and alert deduplication per
  (service, request model, type); both refine it, so one owner sees all of each.
* **Hand-off.** The worker that received a batch splits its LLM calls
  (`CallRows`, only the columns detection reads) by owner, writes the others'
  shares to them over a unix socket, runs its own share through its detector,
  and waits for the owners' acknowledgements before the request completes.
  Owners process frames of one connection in order and acknowledge after their
  detector has taken the calls. Alerts come from the owner only.
* **Event time.** Each hand-off also carries the sender's newest event time,
  even when it has no calls for that owner, and the owner advances its
  detector to it (`Detector.advance(now_event_ns=…)`). Every worker therefore
  moves its watermark as far, and as often, as a single process would: a quiet
  series' rate buckets close at the same points, and a call routed from a peer
  is never behind a watermark that the single process would not have passed.
  Because a request returns only after its calls were taken by their owners,
  traffic sent one request at a time gives exactly the single-process alerts
  (tests/gateway/test_workers.py replays recorded traffic through 1 and 2
  workers and compares). Concurrent clients reorder requests as they would for
  one process; the hand-off delays calls by the owner's processing time
  (milliseconds), far inside `lateness`. Each hand-off runs the owner's
  detector once, a fixed cost amortised by a `batch` processor before `detect`
  (loadtests/bench_workers.py). A series is never split: load follows series.
* **Drain.** At shutdown a worker, once its own pipelines are flushed, tells
  every peer it is done, then waits (within the shutdown timeout) until every
  peer said so too, before its detector flushes: calls still in flight from a
  peer are not lost.
* **Failure.** If an owner is down (crashed, restarting), its calls are not
  handed over and are counted in `llm_sentinel_detect_forward_failed_calls_total`;
  the restarted owner starts with empty detection state, as any restart does.
  `max_series` and the alert store are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import Counter

from gateway.telemetry import SelfTelemetry
from gateway.wire.pb import fnv1a_py
from gateway.worker_config import WorkerSpec
from processors.detect.calls import CallRows

log = logging.getLogger("sentinel.detect.routing")

Accept = Callable[[CallRows | None, int], Awaitable[None]]

# frame: u32 length of the rest | u8 kind | u64 seq | i64 max event time | payload
_HEADER = struct.Struct("<IBQq")
HELLO, ROWS, ACK, DONE = 1, 2, 3, 4
ACK_TIMEOUT_S = 5.0
_WARN_EVERY_S = 10.0


def owner_of(service: str, request_model: str, workers: int) -> int:
    """The worker that runs detection for this (service, request model)."""
    return fnv1a_py(f"{service}\0{request_model}".encode()) % workers


def channel_name(connector_id: str) -> str:
    """A short file-name-safe channel per detect connector (ids may contain '/')."""
    return f"detect-{fnv1a_py(connector_id.encode()) & 0xFFFFFFFF:08x}"


# ---------------------------------------------------------------- codec
def encode_rows(rows: CallRows) -> bytes:
    """Every array of `rows` as raw little-endian bytes (8-byte aligned), lists as JSON."""
    layout: list[list[Any]] = []
    lists: dict[str, Any] = {}
    parts: list[bytes] = []
    offset = 0
    for f in dataclasses.fields(rows):
        value = getattr(rows, f.name)
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            layout.append([f.name, a.dtype.str, list(a.shape), offset])
            data = a.tobytes()
            parts.append(data + b"\0" * (-len(data) % 8))
            offset += len(parts[-1])
        else:
            lists[f.name] = value
    head = orjson.dumps({"arrays": layout, "lists": lists})
    head += b" " * (-(len(head) + 8) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(parts)


def decode_rows(data: bytes) -> CallRows:
    (n_head,) = struct.unpack_from("<Q", data)
    meta = orjson.loads(data[8 : 8 + n_head])
    body = bytearray(data[8 + n_head :])  # writable and aligned, like arrays the detector makes itself
    kwargs: dict[str, Any] = {}
    for name, dtype, shape, offset in meta["arrays"]:
        count = int(np.prod(shape)) if shape else 1
        kwargs[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
    for name, value in meta["lists"].items():
        kwargs[name] = [tuple(v) if isinstance(v, list) else v for v in value]
    return CallRows(**kwargs)


def _frame(kind: int, seq: int, max_t_ns: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(_HEADER.size - 4 + len(payload), kind, seq, max_t_ns) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    head = await reader.readexactly(_HEADER.size)
    length, kind, seq, max_t = _HEADER.unpack(head)
    payload = await reader.readexactly(length - (_HEADER.size - 4)) if length > _HEADER.size - 4 else b""
    return kind, seq, max_t, payload


# ---------------------------------------------------------------- metrics
class RoutingMetrics:
    def __init__(self, telemetry: SelfTelemetry) -> None:
        r = telemetry.registry
        labels = ["connector"]
        self.forwarded = Counter(
            "llm_sentinel_detect_forwarded_calls",
            "LLM calls handed to the worker that owns their series.",
            labels,
            registry=r,
        )
        self.received = Counter(
            "llm_sentinel_detect_received_calls",
            "LLM calls received from other workers for series this worker owns.",
            labels,
            registry=r,
        )
        self.failed = Counter(
            "llm_sentinel_detect_forward_failed_calls",
            "LLM calls not handed to their owning worker (down, restarting, or no answer in time).",
            labels,
            registry=r,
        )


# ---------------------------------------------------------------- links
class PeerLink:
    """The connection from this worker to one peer's socket: frames out, acknowledgements back."""

    def __init__(self, me: int, peer: int, path: Path) -> None:
        self.me, self.peer, self.path = me, peer, path
        self.ever_connected = False
        self.sent_max_ns = -1  # newest event time the peer has from us on this connection
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._seq = 0
        self._closing = False
        self.draining = False  # we said DONE: the peer going away now is the shutdown, not a failure

    async def run(self) -> None:
        """Connect, read acknowledgements, reconnect when the peer goes away; until cancelled."""
        delay = 0.02
        while not self._closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.02
            writer.write(_frame(HELLO, self.me, 0))
            self._writer, self.sent_max_ns, self.ever_connected = writer, -1, True
            try:
                while True:
                    kind, seq, _, _ = await _read_frame(reader)
                    fut = self._pending.pop(seq, None)
                    if kind == ACK and fut is not None and not fut.done():
                        fut.set_result(None)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                self._writer = None
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError(f"worker {self.peer} went away"))
                self._pending.clear()
                writer.close()
            if not self._closing and not self.draining:
                log.warning("lost the detection link to worker %d; reconnecting", self.peer)

    def send(self, kind: int, max_t_ns: int, payload: bytes = b"") -> asyncio.Future[None] | None:
        """Queue a frame; the future completes on the peer's acknowledgement. None when not connected."""
        if self._writer is None or self._closing:
            return None
        self._seq += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[self._seq] = fut
        self._writer.write(_frame(kind, self._seq, max_t_ns, payload))
        if kind == ROWS:
            self.sent_max_ns = max(self.sent_max_ns, max_t_ns)
        return fut

    def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()


class SeriesRouter:
    """One detect connector's share of a multi-worker gateway (see the module docstring)."""

    def __init__(
        self, worker: WorkerSpec, connector_id: str, accept: Accept, telemetry: SelfTelemetry
    ) -> None:
        self.worker = worker
        self.name = connector_id
        self.accept = accept
        channel = channel_name(connector_id)
        self.path = worker.peer_socket(channel, worker.index)
        self.links = {p: PeerLink(worker.index, p, worker.peer_socket(channel, p)) for p in worker.peers}
        m = telemetry.singleton("detect_routing_metrics", lambda: RoutingMetrics(telemetry))
        self.m_forwarded = m.forwarded.labels(connector_id)
        self.m_received = m.received.labels(connector_id)
        self.m_failed = m.failed.labels(connector_id)
        self._owners: dict[tuple[str, str], int] = {}
        self._inbound: dict[int, int] = dict.fromkeys(worker.peers, 0)
        self._done: set[int] = set()
        self._changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._last_warning = 0.0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by a crashed predecessor
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self._tasks = [
            asyncio.create_task(link.run(), name=f"{self.name}-link-{p}") for p, link in self.links.items()
        ]

    def ready(self) -> bool:
        """Listening, and connected to every peer at least once (a peer restarting later is no reason
        to take this worker out of service)."""
        return self._server is not None and all(link.ever_connected for link in self.links.values())

    async def drain(self, timeout: float) -> None:
        """Tell peers no more calls come from here; wait until each peer said the same or is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for link in self.links.values():
            link.draining = True
        acks = [f for link in self.links.values() if (f := link.send(DONE, 0)) is not None]
        if acks:
            await asyncio.wait(acks, timeout=max(0.001, deadline - loop.time()))
            for f in acks:  # a peer that went away meanwhile is not waited for below either
                if f.done() and not f.cancelled():
                    f.exception()
        while not all(p in self._done or not self._inbound[p] for p in self.worker.peers):
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                waiting = [p for p in self.worker.peers if p not in self._done and self._inbound[p]]
                log.warning(
                    "workers %s did not finish handing over calls before the shutdown timeout", waiting
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self) -> None:
        for link in self.links.values():
            link.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._handlers:  # the peers' connections end as they would with this process
            writer.close()
        await asyncio.gather(*self._handlers.values(), return_exceptions=True)
        self.path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- routing
    def owners(self, rows: CallRows) -> np.ndarray:
        """Owning worker of every row."""
        per_key = np.empty(len(rows.keys), dtype=np.int64)
        for i, (service, _provider, _operation, model) in enumerate(rows.keys):
            owner = self._owners.get((service, model))
            if owner is None:
                owner = self._owners[(service, model)] = owner_of(service, model, self.worker.count)
            per_key[i] = owner
        return per_key[rows.key]

    async def route(self, rows: CallRows | None) -> None:
        """Hand other workers their calls (and this batch's newest event time); detect our own."""
        if rows is None or not len(rows):
            return
        owners = self.owners(rows)
        max_t = int(rows.t_ns.max())
        waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        for peer, link in self.links.items():
            mine = owners == peer
            n = int(np.count_nonzero(mine))
            if not n and max_t <= link.sent_max_ns:
                continue  # nothing new for this peer
            fut = link.send(ROWS, max_t, encode_rows(rows.take(mine)) if n else b"")
            if fut is None:
                self._failed(peer, n, "not connected")
                continue
            waiting.append((peer, n, fut))
        local = owners == self.worker.index
        if local.all():
            await self.accept(rows, max_t)
        else:
            await self.accept(rows.take(local) if local.any() else None, max_t)
        if waiting:
            await asyncio.wait([f for _, _, f in waiting], timeout=ACK_TIMEOUT_S)
            for peer, n, fut in waiting:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.m_forwarded.inc(n)
                else:
                    if not fut.done():
                        fut.cancel()
                    self._failed(peer, n, "no acknowledgement")

    def _failed(self, peer: int, n: int, why: str) -> None:
        if not n:
            return
        self.m_failed.inc(n)
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "%d LLM call(s) could not be handed to worker %d (%s); its series miss them", n, peer, why
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: int | None = None
        task = asyncio.current_task()
        if task is not None:
            self._handlers[writer] = task
        try:
            while True:
                kind, seq, max_t, payload = await _read_frame(reader)
                if kind == HELLO:
                    peer = seq
                    self._inbound[peer] = self._inbound.get(peer, 0) + 1
                    self._done.discard(peer)  # a restarted peer hands over again
                    continue
                if kind == ROWS:
                    rows = decode_rows(payload) if payload else None
                    if rows is not None:
                        self.m_received.inc(len(rows))
                    try:
                        await self.accept(rows, max_t)
                    except Exception:
                        log.exception("detection failed on calls handed over by worker %s", peer)
                elif kind == DONE and peer is not None:
                    self._done.add(peer)
                    self._changed.set()
                writer.write(_frame(ACK, seq, 0))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._handlers.pop(writer, None)
            if peer is not None:
                self._inbound[peer] -= 1
                self._changed.set()
            writer.close()
