"""Compile every numba kernel into numba's on-disk cache, ahead of the first start.

A kernel compiles once per installation (seconds to tens of seconds each); after
that a process loads it from the cache in milliseconds. `sentinel warm-up` runs
this after an install (the container image does it at build time, `make test`
before the suite), so a gateway's cold start never waits on LLVM. Kernel
groups compile in parallel worker processes: the cache is shared on disk.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

# (module, warm-up function): every module that defines numba kernels used at run time.
KERNEL_GROUPS: tuple[tuple[str, str], ...] = (
    ("gateway.wire.json_traces", "warm_up"),
    ("processors.detect.ensemble", "warm_up"),
    ("processors.detect.call_kernels", "warm_up"),
    ("gateway.wire.traces", "warm_up"),
    ("processors.genai.wire_extract", "warm_up"),
    ("processors.redact.wire_scan", "warm_up"),
)


def warm_group(module: str, function: str) -> float:
    """Warm one group; returns its wall seconds."""
    t0 = time.perf_counter()
    warm: Callable[[], object] = getattr(importlib.import_module(module), function)
    warm()
    return time.perf_counter() - t0


def warm_all(
    jobs: int | None = None, progress: Callable[[str, float], None] | None = None
) -> dict[str, float]:
    """Warm every group, `jobs` at a time (default: the CPUs available); seconds per module."""
    jobs = jobs or len(os.sched_getaffinity(0)) or 1
    groups: Sequence[tuple[str, str]] = KERNEL_GROUPS
    out: dict[str, float] = {}
    if jobs == 1:
        for module, fn in groups:
            out[module] = warm_group(module, fn)
            if progress:
                progress(module, out[module])
        return out
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(warm_group, m, f): m for m, f in groups}
        for fut, module in futures.items():
            out[module] = fut.result()
            if progress:
                progress(module, out[module])
    return out
