"""`memory_limiter` processor: refuse data before the process runs out of memory.

Like the Collector's memory limiter, a periodic check compares memory in use
with a soft limit (`limit - spike`) and a hard limit. Above the soft limit the
gateway refuses new data with a retryable error (clients back off and resend);
above the hard limit it also forces a garbage collection. Below the soft limit
it accepts again.

Memory in use is the process RSS plus the bytes that exporter queues and batch
buffers report to `Admission` (as the gateway's design asks: queued data counts
against the budget even though its decoded form is part of the RSS already,
which makes the limiter err on the side of refusing early).

The verdict lives on the shared `Admission`, so receivers refuse before even
decoding a request.

Refusing only helps while there is data to shed. Python rarely hands freed heap back
to the OS, so after a burst the RSS of an idle gateway (its working set: libraries,
compiled kernels, allocator arenas) can stay above a soft limit set too low, and a
limiter looking at RSS alone would refuse forever. When the limiter has refused for
longer than the Retry-After it gave, with nothing queued, buffered or in flight, it
forces a GC, and if that does not help it takes the idle usage as the new floor: it
accepts again and from then on refuses once data pushes usage halfway from that floor
to the hard limit (warning that `limit_mib` is below the working set).

`request_limit_mib` bounds the bytes of requests being decoded and processed at once
(see `gateway.pressure`). Processors are built once per pipeline, but there is one
`Admission` per gateway: all instances sharing it register with a single
checker, which applies the strictest limits among them, instead of each one
flipping the shared flag on its own schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from gateway.batch import Batch
from gateway.component import ComponentConfig, ComponentContext, Duration, Factory, Kind, Processor
from gateway.pressure import Admission

MIB = 1024 * 1024
_FLOOR_WARNING_EVERY_S = 60.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------- measurement (tests replace these)
def _read_rss() -> int:
    """Resident set size in bytes; /proc/self/statm is one small read, psutil is the portable fallback."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        import psutil  # not at import time: ~30 ms of every start, and Linux never needs it here

        return int(psutil.Process().memory_info().rss)


def _read_total_memory() -> int:
    """Memory available to this process: the cgroup limit when one is set (containers), else the host's."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


measure_rss = _read_rss
"""Current RSS in bytes. Module-level so tests can simulate memory pressure."""

total_memory = _read_total_memory
"""Memory the percentage limits refer to, in bytes. Module-level for tests."""


def _load_malloc_trim() -> Any:
    """glibc's malloc_trim from the symbols already loaded into the process (None elsewhere).

    Not `ctypes.util.find_library("c")`: that runs ldconfig, ~50 ms of every start."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def free_memory() -> None:
    """Collect cycles, then hand freed heap pages back to the OS (glibc), so RSS can actually fall."""
    gc.collect()
    if _malloc_trim is not None:
        with contextlib.suppress(Exception):
            _malloc_trim(0)


# ---------------------------------------------------------------- config
class MemoryLimiterConfig(ComponentConfig):
    check_interval: Duration = Field(default=1.0, gt=0, description="Time between memory measurements.")
    limit_mib: int = Field(
        default=0, ge=0, description="Hard limit in MiB; takes precedence over percentages."
    )
    spike_limit_mib: int = Field(
        default=0, ge=0, description="Expected growth between checks; soft limit = limit - spike. 0 = 20%."
    )
    limit_percentage: int = Field(default=0, ge=0, le=100, description="Hard limit as % of total memory.")
    spike_limit_percentage: int = Field(default=0, ge=0, le=100, description="Spike as % of total memory.")
    request_limit_mib: float = Field(
        default=0,
        ge=0,
        description="Bytes of requests decoded and processed at once, across receivers; beyond it "
        "requests are refused at once (429 / UNAVAILABLE) before decoding. 0 = no limit.",
    )
    min_gc_interval_when_soft_limited: Duration = Field(
        default=10.0,
        ge=0,
        description="Minimum time between forced GCs when entering the soft-limited state.",
    )
    min_gc_interval_when_hard_limited: Duration = Field(
        default=5.0, ge=0, description="Minimum time between forced GCs above the hard limit."
    )

    @model_validator(mode="after")
    def _check_limits(self) -> MemoryLimiterConfig:
        if self.limit_mib == 0 and self.limit_percentage == 0:
            raise ValueError("'limit_mib' or 'limit_percentage' must be greater than zero")
        if self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            raise ValueError(
                f"'spike_limit_mib' ({self.spike_limit_mib}) must be smaller than "
                f"'limit_mib' ({self.limit_mib})"
            )
        if self.limit_percentage and self.spike_limit_percentage >= self.limit_percentage:
            raise ValueError(
                f"'spike_limit_percentage' ({self.spike_limit_percentage}) must be smaller than "
                f"'limit_percentage' ({self.limit_percentage})"
            )
        if self.min_gc_interval_when_soft_limited < self.min_gc_interval_when_hard_limited:
            raise ValueError(
                "'min_gc_interval_when_soft_limited' must be at least 'min_gc_interval_when_hard_limited'"
            )
        return self


@dataclass(frozen=True)
class Limits:
    hard: int  # bytes
    spike: int  # bytes

    @property
    def soft(self) -> int:
        return self.hard - self.spike

    @classmethod
    def from_config(cls, cfg: MemoryLimiterConfig) -> Limits:
        if cfg.limit_mib:
            hard, spike = cfg.limit_mib * MIB, cfg.spike_limit_mib * MIB
        else:
            total = total_memory()
            hard, spike = total * cfg.limit_percentage // 100, total * cfg.spike_limit_percentage // 100
        return cls(hard, spike or hard // 5)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


# ---------------------------------------------------------------- shared checker
class MemoryChecker:
    """Owns `admission.refusing` for one Admission; fed by every limiter registered on it."""

    def __init__(self, admission: Admission, logger: logging.Logger) -> None:
        self.admission = admission
        self.logger = logger
        self.members: dict[int, tuple[Limits, MemoryLimiterConfig]] = {}
        self.refusing = False
        self.last_gc = float("-inf")
        self.refusing_since = 0.0
        self.floor = 0  # idle usage above the soft limit that refusing could not shed (bytes); 0 = none
        self.last_floor_warning = float("-inf")
        self._task: asyncio.Task[None] | None = None

    # effective settings: the strictest of all members
    @property
    def limits(self) -> Limits:
        return min((lim for lim, _ in self.members.values()), key=lambda lim: (lim.soft, lim.hard))

    def _setting(self, name: str) -> float:
        return min(float(getattr(cfg, name)) for _, cfg in self.members.values())

    @property
    def retry_after(self) -> float:
        """Long enough for queues to drain a little, short enough that clients come back soon."""
        return min(5.0, max(1.0, 2 * self._setting("check_interval")))

    def add(self, member: object, limits: Limits, cfg: MemoryLimiterConfig) -> None:
        self.members[id(member)] = (limits, cfg)
        self._apply_request_limit()
        self.check()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="memory-limiter-check")

    async def remove(self, member: object) -> bool:
        """Unregister; returns True when this was the last member and the checker stopped."""
        self.members.pop(id(member), None)
        self._apply_request_limit()
        if self.members:
            return False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.refusing:
            self.refusing = False
            self.admission.refusing = False
            self.admission.reason = ""
        return True

    def _apply_request_limit(self) -> None:
        """The strictest non-zero request budget of the members (0 when none sets one)."""
        budgets = [cfg.request_limit_mib for _, cfg in self.members.values() if cfg.request_limit_mib]
        self.admission.request_limit = int(min(budgets) * MIB) if budgets else 0

    def soft_limit(self, lim: Limits) -> int:
        """The soft limit, raised to halfway from the idle floor to the hard limit once one is known
        (by half the spike when the floor is above the hard limit already)."""
        if not self.floor:
            return lim.soft
        headroom = lim.hard - self.floor if self.floor < lim.hard else lim.spike
        return max(lim.soft, self.floor + headroom // 2)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._setting("check_interval"))
            try:
                self.check()
            except Exception:  # a failed measurement must not stop future checks
                self.logger.exception("memory check failed")

    def usage(self) -> tuple[int, int]:
        return measure_rss(), self.admission.total_held()

    def _maybe_gc(self, min_interval: float) -> tuple[int, int] | None:
        now = time.monotonic()
        if now - self.last_gc < min_interval:
            return None
        free_memory()
        self.last_gc = time.monotonic()
        return self.usage()

    def check(self) -> None:
        """One measurement: force GC if needed, update the shared verdict, log only on change."""
        if not self.members:
            return
        lim = self.limits
        rss, held = self.usage()
        if rss + held >= lim.hard:
            after = self._maybe_gc(self._setting("min_gc_interval_when_hard_limited"))
            if after is not None:
                self.logger.warning(
                    f"memory usage {_mib(rss + held)} is above the hard limit {_mib(lim.hard)}; forced a GC, "
                    f"now {_mib(sum(after))}"
                )
                rss, held = after
        if self.floor and self.admission.idle() and rss + held < lim.soft:
            self.floor = 0  # memory really went back: the configured soft limit applies again
        soft = self.soft_limit(lim)
        refuse = rss + held >= soft
        if refuse and not self.refusing:
            # entering the limited state: a GC may be enough to stay out of it
            after = self._maybe_gc(self._setting("min_gc_interval_when_soft_limited"))
            if after is not None:
                rss, held = after
                refuse = rss + held >= soft
        if refuse and self.refusing:
            refuse, rss, held = self._still_refuse(lim, rss, held)
            soft = self.soft_limit(lim)
        if refuse:
            self.admission.reason = (
                f"memory limiter: usage {_mib(rss + held)} (rss {_mib(rss)} + queued {_mib(held)}) "
                f"is above the soft limit {_mib(soft)} "
                f"(limit {_mib(lim.hard)} - spike {_mib(lim.spike)}); retry later"
            )
            self.admission.retry_after = self.retry_after
        if refuse and not self.refusing:
            self.refusing_since = time.monotonic()
            self.logger.warning(f"refusing data: {self.admission.reason}")
        elif self.refusing and not refuse:
            self.logger.info(
                f"memory usage {_mib(rss + held)} is back below the soft limit {_mib(soft)}; accepting data"
            )
        self.refusing = refuse
        self.admission.refusing = refuse

    def _still_refuse(self, lim: Limits, rss: int, held: int) -> tuple[bool, int, int]:
        """Keep refusing only while that can still free memory.

        Once clients had the time we asked them to wait and nothing is queued, buffered or in
        flight, what remains above the limit is the process's own working set: a GC gets one
        chance, then the idle usage becomes the floor the soft limit is raised from.
        """
        if time.monotonic() - self.refusing_since < self.retry_after or not self.admission.idle():
            return True, rss, held
        free_memory()
        self.last_gc = time.monotonic()
        rss, held = self.usage()
        if rss + held < lim.soft:
            return False, rss, held
        self.floor = rss + held
        now = time.monotonic()
        if now - self.last_floor_warning >= _FLOOR_WARNING_EVERY_S:
            self.last_floor_warning = now
            self.logger.warning(
                f"memory usage {_mib(self.floor)} stays above the soft limit {_mib(lim.soft)} with nothing "
                f"queued or in flight: that is the gateway's working set, not data; accepting again and "
                f"refusing above {_mib(self.soft_limit(lim))} from now on. Raise limit_mib to at least "
                f"{_mib(self.floor + lim.spike)} to keep the configured headroom"
            )
        return rss + held >= self.soft_limit(lim), rss, held


_CHECKERS: dict[int, MemoryChecker] = {}  # id(admission) → checker; entries hold the admission alive


def checker_for(admission: Admission, logger: logging.Logger) -> MemoryChecker:
    checker = _CHECKERS.get(id(admission))
    if checker is None or checker.admission is not admission:
        checker = _CHECKERS[id(admission)] = MemoryChecker(admission, logger)
    return checker


# ---------------------------------------------------------------- processor
class MemoryLimiterProcessor(Processor):
    config: MemoryLimiterConfig

    def __init__(self, ctx: ComponentContext, config: MemoryLimiterConfig) -> None:
        super().__init__(ctx, config)
        self.limits = Limits.from_config(config)
        self.checker: MemoryChecker | None = None

    async def start(self) -> None:
        self.checker = checker_for(self.ctx.admission, self.logger)
        if not self.checker.members:
            self.logger.info(
                f"memory limiter: limit {_mib(self.limits.hard)}, soft limit {_mib(self.limits.soft)}, "
                f"check every {self.config.check_interval}s"
            )
        self.checker.add(self, self.limits, self.config)

    async def shutdown(self) -> None:
        checker, self.checker = self.checker, None
        if checker is not None and await checker.remove(self):
            _CHECKERS.pop(id(checker.admission), None)

    async def consume(self, batch: Batch) -> None:
        # Always a RefusedError (retryable): memory pressure must never look like bad data.
        self.ctx.admission.check()
        await self.next_consumer.consume(batch)


def _create(ctx: ComponentContext, config: Any) -> MemoryLimiterProcessor:
    return MemoryLimiterProcessor(ctx, config)


FACTORY = Factory(
    type="memory_limiter",
    kind=Kind.PROCESSOR,
    config=MemoryLimiterConfig,
    create=_create,
    description="Refuses data (retryably) while the gateway's memory use is above its limits.",
)
