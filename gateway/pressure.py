"""Admission control shared by receivers, the memory limiter and exporter queues.

Receivers ask `Admission.check()` before decoding a request, so a gateway under
memory pressure refuses cheaply (503 / UNAVAILABLE with a retry hint) instead of
decoding data it would drop anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.component import RefusedError


@dataclass
class Admission:
    refusing: bool = False
    reason: str = ""
    retry_after: float = 1.0
    # bytes currently held in exporter queues and batch buffers, by owner
    held_bytes: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        if self.refusing:
            raise RefusedError(self.reason or "gateway is under pressure", retry_after=self.retry_after)

    def total_held(self) -> int:
        return sum(self.held_bytes.values())

    def set_held(self, owner: str, nbytes: int) -> None:
        self.held_bytes[owner] = nbytes
