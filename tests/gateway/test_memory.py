"""gateway.memory: which mappings may be dropped, that dropping them is harmless, and the schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway import memory
from gateway.memory import ANY_LIBRARY, COLD_LIBRARIES, MemoryReleaser, Released

LINUX = pytest.mark.skipif(not memory.supported(), reason="needs Linux /proc")


def _vma(head: str, rss: int, anon: int = 0, locked: int = 0) -> str:
    return (
        f"{head}\nSize:               1024 kB\nRss:                {rss} kB\nPss:                {rss} kB\n"
        f"Anonymous:          {anon} kB\nLocked:             {locked} kB\nVmFlags: rd ex mr mw me\n"
    )


LLVM = "/venv/lib/python3.11/site-packages/llvmlite/binding/libllvmlite.so"
SMAPS = "".join(
    [
        _vma(f"7f0000000000-7f0000100000 r-xp 00001000 08:01 11 {LLVM}", 900),  # code: dropped
        _vma(f"7f0000100000-7f0000200000 r--p 00101000 08:01 11 {LLVM}", 300),  # rodata: dropped
        _vma(f"7f0000200000-7f0000300000 r--p 00201000 08:01 11 {LLVM}", 200, anon=200),  # RELRO: COW'd
        _vma(f"7f0000300000-7f0000400000 rw-p 00301000 08:01 11 {LLVM}", 100, anon=100),  # data: writable
        _vma(f"7f0000400000-7f0000500000 r-xp 00000000 08:01 11 {LLVM}", 0),  # nothing resident
        _vma(f"7f0000500000-7f0000600000 r-xp 00000000 08:01 11 {LLVM}", 50, locked=50),  # mlocked
        _vma("7f0000600000-7f0000700000 r-xp 00000000 08:01 12 /usr/lib/libc.so.6", 700),  # other library
        _vma("7f0000700000-7f0000800000 r--p 00000000 08:01 13 /data/table.bin", 400),  # not a library
        _vma("7f0000800000-7f0000900000 rw-p 00000000 00:00 0 ", 800, anon=800),  # anonymous
        _vma("7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0                  [vdso]", 8),
    ]
)


def test_only_clean_read_only_library_pages_are_droppable() -> None:
    cold = memory.droppable(SMAPS, COLD_LIBRARIES)
    assert [(r.start, r.length, r.rss) for r in cold] == [
        (0x7F0000000000, 0x100000, 900 * 1024),
        (0x7F0000100000, 0x100000, 300 * 1024),
    ]
    assert {r.path for r in cold} == {LLVM}
    every = memory.droppable(SMAPS, ANY_LIBRARY)
    assert [r.path for r in every] == [LLVM, LLVM, "/usr/lib/libc.so.6"]
    assert memory.droppable("", ANY_LIBRARY) == []
    assert memory.droppable(SMAPS.rstrip("\n"), ("libc",))[0].rss == 700 * 1024  # no final newline


def test_off_linux_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert not memory.supported()
    assert memory.release(ANY_LIBRARY) == Released()
    assert memory.drop_pages() == 0 and memory.trim_heap() == 0


def test_start_releaser_honours_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    async def started() -> bool:
        task = memory.start_releaser(lambda: False)
        if task is None:
            return False
        task.cancel()
        return True

    monkeypatch.setenv(memory.ENV, "off")
    assert asyncio.run(started()) is False
    monkeypatch.setenv(memory.ENV, "30")
    assert asyncio.run(started()) is memory.supported()


def test_interval_from_env() -> None:
    env = memory.ENV
    assert memory.interval_from_env({}) == memory.DEFAULT_INTERVAL_S
    assert memory.interval_from_env({env: "off"}) is None
    assert memory.interval_from_env({env: "0"}) is None
    assert memory.interval_from_env({env: "15"}) == 15.0
    assert memory.interval_from_env({env: "soon"}) == memory.DEFAULT_INTERVAL_S


@LINUX
def test_release_drops_llvm_pages_and_numba_still_compiles() -> None:
    import numba

    @numba.njit(cache=False)
    def first(x: int) -> int:
        return x * 2 + 1

    assert first(20) == 41  # a compile: LLVM's code is resident now
    before = memory.rss_bytes()
    dropped = memory.drop_pages(COLD_LIBRARIES)
    after = memory.rss_bytes()
    assert dropped > 1 << 20
    assert after <= before - dropped * 3 // 4, (before, dropped, after)  # the process really shrank
    with open("/proc/self/smaps") as f:
        assert memory.droppable(f.read(), COLD_LIBRARIES) == []

    assert first(21) == 43  # compiled code does not need LLVM

    @numba.njit(cache=False)
    def second(x: float) -> float:  # a fresh compile faults LLVM back in from the file
        return x * 0.5 - first(1)

    assert second(9.0) == 1.5
    assert memory.drop_pages(COLD_LIBRARIES) > 0  # and it can be dropped again
    assert memory.trim_heap() >= 0
    r = memory.release(ANY_LIBRARY)
    assert r.rss_before > 0 and r.rss_after > 0 and second(1.0) == -2.5


def _fakes(rss: Callable[[], int]) -> tuple[list[tuple[str, ...]], MemoryReleaser, CollectorRegistry]:
    calls: list[tuple[str, ...]] = []
    registry = CollectorRegistry()

    def fake_release(libraries: tuple[str, ...]) -> Released:
        calls.append(libraries)
        return Released(file_bytes=3 << 20, heap_bytes=1 << 20, rss_after=100 << 20)

    releaser = MemoryReleaser(registry, growth=4 << 20, release_fn=fake_release, rss_fn=rss)
    return calls, releaser, registry


def test_later_passes_only_when_rss_grew() -> None:
    rss = [120 << 20]
    calls, r, registry = _fakes(lambda: rss[0])
    assert r.step(True) is not None and calls == [ANY_LIBRARY]
    assert r.step(False) is not None  # after start-up: LLVM only, whatever RSS did; sets the baseline
    assert calls == [ANY_LIBRARY, COLD_LIBRARIES]
    rss[0] = 103 << 20  # the baseline is that pass's result (100 MiB)
    assert r.step(False) is None  # grew less than `growth`
    rss[0] = 104 << 20
    assert r.step(False) is not None and calls == [ANY_LIBRARY, *[COLD_LIBRARIES] * 2]
    rss[0] = 100 << 20  # what the pass left
    assert r.step(False) is None
    assert (r.passes, r.file_bytes, r.heap_bytes) == (3, 9 << 20, 3 << 20)
    value = registry.get_sample_value
    assert value("llm_sentinel_memory_released_bytes_total", {"kind": "file"}) == 9 << 20
    assert value("llm_sentinel_memory_released_bytes_total", {"kind": "heap"}) == 3 << 20


def test_run_waits_for_readiness_then_follows_the_schedule() -> None:
    rss = [200 << 20]  # above the last pass's result + growth: every later pass is due
    calls, r, _ = _fakes(lambda: rss[0])
    r.start_up, r.interval = (0.0, 0.0), 0.001
    ready = [False]

    async def main() -> None:
        task = asyncio.create_task(r.run(lambda: ready[0], poll=0.001))
        await asyncio.sleep(0.02)
        assert calls == []  # not before readiness
        ready[0] = True
        for _ in range(500):
            await asyncio.sleep(0.001)
            if len(calls) >= 4:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # readiness + two start-up passes over every library, then LLVM only
    assert calls[:4] == [ANY_LIBRARY, ANY_LIBRARY, ANY_LIBRARY, COLD_LIBRARIES]


@LINUX
def test_gateway_releases_once_ready_and_reports_it(
    ports: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import running_gateway, wait_until
    from tests.receivers.otlp_helpers import gateway_config

    config = gateway_config(ports, tmp_path / "o.jsonl", signals=("traces",))
    monkeypatch.setenv(memory.ENV, "off")
    with running_gateway(config) as gw:
        assert gw.gateway is not None and gw.gateway._memory_task is None
    monkeypatch.delenv(memory.ENV)
    with running_gateway(config) as gw:
        # after readiness (the wire decoder loaded: seconds, longer if it has to compile)
        wait_until(lambda: gw.metric("llm_sentinel_memory_released_bytes_total", kind="file") > 0, 110)
        task = gw.gateway._memory_task if gw.gateway is not None else None
    assert task is not None and task.done()  # cancelled by the shutdown
