"""The memory limiter never refuses forever: once nothing is left to shed, the idle usage becomes
a floor; and it hands the strictest request budget to admission."""

from __future__ import annotations

import logging

import pytest

import processors.memory_limiter as ml
from gateway.pressure import Admission
from tests.processors.test_memory_limiter import FakeMemory, limiter, run

MIB = ml.MIB


def limited(adm: Admission) -> ml.MemoryLimiterProcessor:
    proc, _ = limiter(adm, check_interval="1h", limit_mib=100, spike_limit_mib=20)  # soft 80 MiB
    return proc


def test_refusing_stops_once_nothing_is_left_to_shed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=85)

    async def main() -> None:
        adm = Admission()
        proc = limited(adm)
        await proc.start()
        checker = proc.checker
        assert checker is not None and adm.refusing
        adm.set_held("exporter:otlp", 1 * MIB)  # data still queued: refusing can shrink it
        checker.refusing_since -= 60
        checker.check()
        assert adm.refusing
        adm.set_held("exporter:otlp", 0)
        checker.refusing_since = checker.refusing_since + 60  # idle, but clients were told to wait longer
        checker.check()
        assert adm.refusing
        gcs = mem.gcs
        checker.refusing_since -= 60  # idle, and the Retry-After has passed
        checker.check()
        assert not adm.refusing and mem.gcs == gcs + 1  # one more GC first
        assert checker.floor == 85 * MIB and checker.soft_limit(checker.limits) == 92 * MIB + MIB // 2
        for _ in range(3):
            checker.check()  # idle at the floor: stays accepting
        assert not adm.refusing
        mem.set(93)  # data pushes usage halfway from the floor to the hard limit
        adm.set_held("batch:traces", 1)
        checker.check()
        assert adm.refusing and "soft limit 92 MiB" in adm.reason
        mem.set(88)
        checker.check()
        assert not adm.refusing
        await proc.shutdown()

    with caplog.at_level(logging.WARNING, logger="sentinel.processor.memory_limiter"):
        run(main())
    floor_warnings = [r.getMessage() for r in caplog.records if "working set" in r.getMessage()]
    assert len(floor_warnings) == 1 and "Raise limit_mib to at least 105 MiB" in floor_warnings[0]


def test_the_floor_is_forgotten_when_memory_really_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=85)

    async def main() -> None:
        adm = Admission()
        proc = limited(adm)
        await proc.start()
        checker = proc.checker
        assert checker is not None
        checker.refusing_since -= 60
        checker.check()
        assert checker.floor and not adm.refusing
        mem.set(70)
        checker.check()
        assert checker.floor == 0 and checker.soft_limit(checker.limits) == 80 * MIB
        mem.set(85)
        adm.set_held("batch:traces", 1)
        checker.check()
        assert adm.refusing  # the configured soft limit applies again
        await proc.shutdown()

    run(main())


def test_a_floor_above_the_hard_limit_still_lets_data_through(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeMemory(monkeypatch, rss_mib=120)

    async def main() -> None:
        adm = Admission()
        proc = limited(adm)
        await proc.start()
        checker = proc.checker
        assert checker is not None and adm.refusing
        checker.refusing_since -= 60
        checker.check()
        assert not adm.refusing
        assert checker.soft_limit(checker.limits) == 130 * MIB  # the floor + half the spike
        await proc.shutdown()

    run(main())


def test_a_gc_that_frees_enough_recovers_without_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=85)

    async def main() -> None:
        adm = Admission()
        proc = limited(adm)
        await proc.start()
        checker = proc.checker
        assert checker is not None and adm.refusing
        monkeypatch.setattr(ml, "free_memory", lambda: mem.set(60))
        checker.refusing_since -= 60
        checker.check()
        assert not adm.refusing and checker.floor == 0
        await proc.shutdown()

    run(main())


def test_the_strictest_request_budget_goes_to_admission() -> None:
    async def main() -> None:
        adm = Admission()
        a, _ = limiter(adm, "traces", check_interval="1h", limit_mib=100_000, request_limit_mib=8)
        b, _ = limiter(adm, "logs", "b", check_interval="1h", limit_mib=100_000, request_limit_mib=2)
        c, _ = limiter(adm, "metrics", "c", check_interval="1h", limit_mib=100_000)  # no budget
        for p in (a, b, c):
            await p.start()
        assert adm.request_limit == 2 * MIB
        await b.shutdown()
        assert adm.request_limit == 8 * MIB
        await a.shutdown()
        assert adm.request_limit == 0
        await c.shutdown()

    run(main())
