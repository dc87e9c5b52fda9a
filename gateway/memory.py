"""Give back memory the warm gateway does not need (Linux with glibc; a no-op elsewhere).

Loading or compiling the numba kernels runs LLVM, which faults in 50-70 MiB of
libllvmlite's machine code; start-up (config validation, imports, gRPC set-up) faults in
more code of other libraries. These pages are clean and file-backed, and the hot path
never runs most of them again, yet they stay resident. The warm-up threads also leave
freed memory in glibc's heaps.

A *pass* drops the resident pages of library mappings that are safe to drop (file-backed,
not writable, no anonymous pages, so no copy-on-write data: `madvise(MADV_DONTNEED)` only
forgets them, and whatever runs that code again, e.g. a later compile, faults them back in
from the page cache) and then calls `malloc_trim(0)`.

`MemoryReleaser` runs passes off the event loop: over every library at readiness and a
few times in the first minute (the last kernels load on first use; the hot code comes back
at once and is what stays), then, every `interval`, over LLVM only and only when the
resident size grew, since a late compile faults LLVM back in.
`SENTINEL_MEMORY_RELEASE=off` disables it; a number sets the interval in seconds (default 60).

glibc's arena count (MALLOC_ARENA_MAX) is left at its default: with `malloc_trim` returning
the warm-up threads' free arena memory, capping it at 2 saved under 1 MiB at 10k spans/s,
not worth making gRPC's and libuv's native threads contend for one heap.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sentinel.memory")

COLD_LIBRARIES: tuple[str, ...] = ("libllvmlite",)  # code only loading/compiling kernels runs
ANY_LIBRARY: tuple[str, ...] = ("",)  # every shared object
ENV = "SENTINEL_MEMORY_RELEASE"
DEFAULT_INTERVAL_S = 60.0
START_UP_CHECKS_S: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 30.0)  # sleeps: 2, 6, 14, 30, 60 s in
GROWTH_BYTES = 4 << 20  # a later pass is due once RSS grew this much
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_RANGE = re.compile(r"[0-9a-f]+-[0-9a-f]+")
_FIELDS = re.compile(r"(?:[A-Z]\w*:.*(?:\n|$))+")
_FIELD = re.compile(r"^(Rss|Anonymous|Locked):\s+(\d+) kB", re.M)


@dataclass(frozen=True)
class Region:
    """A library mapping whose resident pages can be dropped without losing data."""

    start: int
    length: int
    rss: int  # resident bytes
    path: str


@dataclass(frozen=True)
class Released:
    file_bytes: int = 0  # resident library pages dropped
    heap_bytes: int = 0  # RSS `malloc_trim` gave back
    rss_before: int = 0
    rss_after: int = 0
    seconds: float = 0.0


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/smaps")


def droppable(smaps: str, libraries: Iterable[str] = COLD_LIBRARIES) -> list[Region]:
    """The mappings in `smaps` (/proc/PID/smaps text) of shared objects whose file name starts
    with one of `libraries` ("" matches any) and that are safe to drop: file-backed, not
    writable, no anonymous (copy-on-write) pages, not locked, something resident."""
    names = tuple(libraries)
    out: list[Region] = []
    pos = 0
    while (i := smaps.find(".so", pos)) >= 0:  # header lines of shared objects only: fast
        start = smaps.rfind("\n", 0, i) + 1
        end = smaps.find("\n", i)
        end = len(smaps) if end < 0 else end
        pos = end
        head = smaps[start:end].split(None, 5)
        if len(head) < 6 or not _RANGE.fullmatch(head[0]) or not head[5].startswith("/"):
            continue
        base = head[5].rsplit("/", 1)[1]
        if ".so" not in base or not base.startswith(names):
            continue
        block = _FIELDS.match(smaps, min(end + 1, len(smaps)))
        fields = dict(_FIELD.findall(block.group(0))) if block else {}
        if block:
            pos = block.end()
        if "w" in head[1] or fields.get("Anonymous") != "0" or fields.get("Locked", "0") != "0":
            continue
        rss = int(fields.get("Rss", "0")) * 1024
        if rss > 0:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            out.append(Region(lo, hi - lo, rss, head[5]))
    return out


def rss_bytes() -> int:
    """Resident set size of this process (cheap: /proc/self/statm); 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.madvise.restype = ctypes.c_int
    return _libc


def drop_pages(libraries: Iterable[str] = COLD_LIBRARIES) -> int:
    """Drop the resident clean pages of `libraries`; the bytes that were resident."""
    if not supported():
        return 0
    with open("/proc/self/smaps") as f:
        regions = droppable(f.read(), libraries)
    libc, dropped = _c(), 0
    for r in regions:
        if libc.madvise(r.start, r.length, mmap.MADV_DONTNEED) == 0:
            dropped += r.rss
        else:  # e.g. unmapped since smaps was read
            log.debug(f"madvise({r.path}) failed: errno {ctypes.get_errno()}")
    return dropped


def trim_heap() -> int:
    """`malloc_trim(0)`: glibc returns free heap memory (every arena) to the kernel; RSS saved."""
    if not supported():
        return 0
    trim = getattr(_c(), "malloc_trim", None)
    if trim is None:  # not glibc (e.g. musl)
        return 0
    before = rss_bytes()
    trim(0)
    return max(0, before - rss_bytes())


def release(libraries: Iterable[str] = COLD_LIBRARIES) -> Released:
    """One pass: library pages, then the heap."""
    if not supported():
        return Released()
    t0, before = time.perf_counter(), rss_bytes()
    dropped = drop_pages(libraries)
    heap = trim_heap()
    return Released(dropped, heap, before, rss_bytes(), time.perf_counter() - t0)


def interval_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between later passes from `SENTINEL_MEMORY_RELEASE`; None: disabled."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if raw in ("", "on", "true", "yes"):
        return DEFAULT_INTERVAL_S
    if raw in ("off", "false", "no", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        log.warning(f"ignoring {ENV}={raw!r}: expected off or a number of seconds")
        return DEFAULT_INTERVAL_S
    return value if value > 0 else None


class MemoryReleaser:
    """Passes over every library during start-up, then over LLVM when RSS grew; see the module doc."""

    def __init__(
        self,
        registry: Any = None,
        interval: float = DEFAULT_INTERVAL_S,
        start_up: tuple[float, ...] = START_UP_CHECKS_S,
        growth: int = GROWTH_BYTES,
        release_fn: Callable[[tuple[str, ...]], Released] = release,
        rss_fn: Callable[[], int] = rss_bytes,
    ) -> None:
        self.interval, self.start_up, self.growth = interval, start_up, growth
        self._release, self._rss = release_fn, rss_fn
        self.passes = 0
        self.file_bytes = self.heap_bytes = 0
        self._baseline: int | None = None  # RSS a later pass compares with
        self._counter: Any = None
        if registry is not None:
            from prometheus_client import Counter

            self._counter = Counter(
                "llm_sentinel_memory_released_bytes",
                "Resident memory given back to the kernel: clean library code pages no longer "
                "in use, e.g. LLVM's after the kernels loaded (file), and free heap (heap).",
                ["kind"],
                registry=registry,
            )

    def step(self, every_library: bool) -> Released | None:
        """A pass over every library, or over LLVM when due (RSS grew); what it released."""
        if not every_library and self._baseline is not None and self._rss() < self._baseline + self.growth:
            return None
        r = self._release(ANY_LIBRARY if every_library else COLD_LIBRARIES)
        self.passes += 1
        self.file_bytes += r.file_bytes
        self.heap_bytes += r.heap_bytes
        # After a pass over every library the hot code faults straight back in, so the next
        # (LLVM-only) pass is due anyway and its result is the baseline: no drop-refault churn.
        self._baseline = None if every_library else r.rss_after
        if self._counter is not None:
            self._counter.labels("file").inc(r.file_bytes)
            self._counter.labels("heap").inc(r.heap_bytes)
        log.log(
            logging.INFO if self.passes == 1 else logging.DEBUG,
            "memory released",
            extra={
                "fields": {
                    "file_mib": round(r.file_bytes / 2**20, 1),
                    "heap_mib": round(r.heap_bytes / 2**20, 1),
                    "rss_mib": round(r.rss_after / 2**20, 1),
                    "ms": round(r.seconds * 1e3, 1),
                }
            },
        )
        return r

    async def run(self, ready: Callable[[], bool], poll: float = 0.1) -> None:
        """Wait for readiness, then pass on the schedule, off the event loop; until cancelled."""
        while not ready():
            await asyncio.sleep(poll)
        await self._in_thread(True)
        for delay in self.start_up:
            await asyncio.sleep(delay)
            await self._in_thread(True)
        while True:
            await asyncio.sleep(self.interval)
            await self._in_thread(False)

    async def _in_thread(self, every_library: bool) -> None:
        # reading smaps takes tens of ms: not on the event loop
        done = asyncio.get_running_loop().run_in_executor(None, self.step, every_library)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await done  # a pass under way finishes (and logs) before its owner reports stopped
            raise


def start_releaser(ready: Callable[[], bool], registry: Any = None) -> asyncio.Task[None] | None:
    """Run a `MemoryReleaser` as a task on the running loop; None where disabled or unsupported."""
    interval = interval_from_env()
    if interval is None or not supported():
        return None
    return asyncio.create_task(MemoryReleaser(registry, interval).run(ready), name="memory-release")


async def stop_releaser(task: asyncio.Task[None] | None) -> None:
    """Cancel `start_releaser`'s task, after the pass under way if any (tens of ms)."""
    if task is not None:
        task.cancel()
        await asyncio.wait([task])
