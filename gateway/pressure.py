"""Admission control shared by receivers, the memory limiter, batch buffers and exporter queues.

Receivers call `Admission.admit()` around each request, before decoding it, so a gateway
under pressure refuses cheaply (429/503 + Retry-After, gRPC UNAVAILABLE + RetryInfo)
instead of decoding data it would refuse later anyway. Three things refuse:

- the memory limiter's verdict (`refusing`, retryable 503),
- a full buffer that owns a `throttle` (the batch processor while its buffer is at its limit:
  429 for that signal only),
- the request budget (`request_limit` bytes of requests being decoded and processed at
  once, 429). Requests overlap inside the gateway while bodies are still uploading or while
  they wait for room in a full batch buffer, each holding its body and decoded batch; the
  budget bounds that memory. (Requests that only wait for the CPU wait in socket buffers,
  before admission: their cost is latency, which the clients' concurrency bounds.)

Requests in flight and held bytes also tell the memory limiter whether refusing can still
shrink memory (`idle()`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.batch import Signal
from gateway.component import RefusedError, ThrottledError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Throttle:
    signal: Signal | None  # None: every signal
    reason: str
    retry_after: float


@dataclass
class Reservation:
    """Bytes one admitted request counts against the request budget; may grow once decompressed."""

    admission: Admission
    nbytes: int

    def resize(self, nbytes: int) -> None:
        self.admission.inflight_bytes += nbytes - self.nbytes
        self.nbytes = nbytes


@dataclass
class Admission:
    refusing: bool = False
    reason: str = ""
    retry_after: float = 1.0
    # bytes currently held in exporter queues and batch buffers, by owner
    held_bytes: dict[str, int] = field(default_factory=dict)
    throttles: dict[str, Throttle] = field(default_factory=dict)
    request_limit: int = 0  # bytes of requests in flight; 0 = no limit
    inflight_bytes: int = 0
    inflight_requests: int = 0

    def check(self, signal: Signal | None = None) -> None:
        if self.refusing:
            raise RefusedError(self.reason or "gateway is under pressure", retry_after=self.retry_after)
        for t in self.throttles.values():
            if signal is None or t.signal is None or t.signal is signal:
                raise ThrottledError(t.reason, retry_after=t.retry_after)

    @contextmanager
    def admit(self, nbytes: int, signal: Signal | None = None) -> Iterator[Reservation]:
        """Hold a place in the request budget while a request is decoded and processed.

        One request is always admitted when none is in flight, so a request larger than
        the budget is slow, never refused forever.
        """
        self.check(signal)
        if (
            self.request_limit
            and self.inflight_requests
            and self.inflight_bytes + nbytes > self.request_limit
        ):
            raise ThrottledError(
                f"{self.inflight_requests} request(s) of {self.inflight_bytes / MIB:.1f} MiB are being "
                f"processed (request budget {self.request_limit / MIB:.1f} MiB); retry later",
                retry_after=1.0,
            )
        ticket = Reservation(self, nbytes)
        self.inflight_bytes += nbytes
        self.inflight_requests += 1
        try:
            yield ticket
        finally:
            self.inflight_bytes -= ticket.nbytes
            self.inflight_requests -= 1

    def throttle(self, owner: str, signal: Signal | None, reason: str, retry_after: float) -> None:
        self.throttles[owner] = Throttle(signal, reason, retry_after)

    def unthrottle(self, owner: str) -> None:
        self.throttles.pop(owner, None)

    def total_held(self) -> int:
        return sum(self.held_bytes.values())

    def set_held(self, owner: str, nbytes: int) -> None:
        self.held_bytes[owner] = nbytes

    def idle(self) -> bool:
        """Nothing queued, buffered or being processed: refusing cannot free any more memory."""
        return self.inflight_requests == 0 and self.total_held() == 0
