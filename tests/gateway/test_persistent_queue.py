"""The persistent sending queue: write-ahead log format, recovery, acknowledgement, compaction, locking."""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
import sys
import textwrap
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import gateway.persistent_queue as pq
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import LogBatch, MetricBatch, Signal, SpanBatch
from gateway.exporterhelper import QueueSettings
from gateway.persistent_queue import (
    MAGIC,
    PersistentQueue,
    QueueFullError,
    StorageError,
    StorageLockedError,
    StorageSettings,
    WriteAheadLog,
    decode_batch,
    encode_columns,
    storage_dir_name,
)
from tests.conftest import REPO_ROOT
from tests.gateway.test_otlpjson import make_logs, make_metrics, make_traces


def run(coro: Awaitable[Any], timeout: float = 20) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def records(n: int, start: int = 0, size: int = 40) -> list[tuple[Signal, bytes, bytes]]:
    sigs = [Signal.TRACES, Signal.METRICS, Signal.LOGS, Signal.ANOMALIES]
    return [
        (sigs[i % 4], f"request-{i:04d}-".encode().ljust(size, b"x"), b"cols" if i % 2 else b"")
        for i in range(start, start + n)
    ]


def wal_at(path: Path, **kw: Any) -> WriteAheadLog:
    return WriteAheadLog(path, **kw)


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.wal"))


def span_batch(i: int, n: int = 2) -> SpanBatch:
    return SpanBatch.from_request(make_traces(n, service=f"svc-{i}"))


def alert(i: int) -> AnomalyEvent:
    return AnomalyEvent(
        time_ns=1_700_000_000_123_456_789 + i,
        service="checkout",
        provider="openai",
        operation="chat",
        model="gpt-4o",
        metric="latency_s",
        type=AnomalyType.LATENCY_SPIKE,
        severity=Severity.HIGH,
        value=float("nan") if i % 2 else 3.25,
        baseline=1.5,
        score=0.912345678,
        detector="ensemble",
        detected_at_ns=1_700_000_001_000_000_000 if i % 2 else 0,
        count=2 + i,
        trace_ids=["5b8efff798038103d269b633813fc60c"],
        details={"window": "5m", "z": [1, 2]},
    )


# ---------------------------------------------------------------- the log
def test_append_read_and_reopen_in_order(tmp_path: Path) -> None:
    wal = wal_at(tmp_path)
    assert wal.open() == []
    recs = records(5)
    refs = wal.append(recs[:2]) + wal.append(recs[2:])
    assert [r.seq for r in refs] == [0, 1, 2, 3, 4]
    assert [r.signal for r in refs] == [s for s, _, _ in recs]
    assert wal.groups == 2 and wal.fsyncs == 2  # fsync=batch: one per append call
    assert [wal.read(r) for r in refs] == recs
    assert wal.disk_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    wal.close()

    again = wal_at(tmp_path)
    back = again.open()
    assert [r.seq for r in back] == [0, 1, 2, 3, 4]
    assert [again.read(r) for r in back] == recs
    assert [r.seq for r in again.append(records(1, 5))] == [5]
    again.close()


def test_ack_pointer_survives_restart_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    wal = wal_at(tmp_path, segment_bytes=150)  # 2 records per segment
    wal.open()
    refs = wal.append(records(10))
    assert len(segments(tmp_path)) == 5
    assert len({r.segment for r in refs}) == 5
    before = wal.disk_bytes
    freed = wal.commit(4)  # records 0-3 done: the first two segments go
    assert freed > 0 and wal.disk_bytes == before - freed
    assert segments(tmp_path)[0].name == f"{4:020d}.wal"
    wal.close()

    wal = wal_at(tmp_path, segment_bytes=150)
    back = wal.open()
    assert [r.seq for r in back] == [4, 5, 6, 7, 8, 9]
    assert wal.acked == 4
    wal.commit(10)
    assert len(segments(tmp_path)) == 1  # the active one stays while open
    wal.close()
    assert segments(tmp_path) == []  # fully acknowledged at close: nothing left on disk

    wal = wal_at(tmp_path, segment_bytes=150)
    assert wal.open() == []
    assert [r.seq for r in wal.append(records(1))] == [10]  # numbering continues
    wal.close()


@pytest.mark.parametrize("damage", ["cut", "flip", "zeros", "garbage"])
def test_torn_or_corrupt_tail_is_truncated_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    wal = wal_at(tmp_path)
    wal.open()
    refs = wal.append(records(3))
    wal.close()
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    last = refs[-1]
    if damage == "cut":  # crash in the middle of the last record
        data = data[: last.offset + last.size - 7]
    elif damage == "flip":  # a bit flipped in its payload
        data[last.offset + last.size - 3] ^= 0x40
    elif damage == "zeros":  # preallocated, never written
        data += bytes(64)
    else:
        data += b"\x05\x00\x00\x00garbage!"
    seg.write_bytes(bytes(data))

    caplog.set_level(logging.WARNING)
    wal = wal_at(tmp_path)
    back = wal.open()
    kept = 2 if damage in ("cut", "flip") else 3
    assert [r.seq for r in back] == list(range(kept))
    assert any("truncating" in r.getMessage() for r in caplog.records)
    assert seg.stat().st_size == (last.offset if kept == 2 else last.offset + last.size)
    new = wal.append(records(1, 10))
    assert new[0].seq == kept  # the lost record's number is reused: it never existed
    assert wal.read(new[0]) == records(1, 10)[0]
    wal.close()

    caplog.clear()
    wal = wal_at(tmp_path)
    assert [r.seq for r in wal.open()] == list(range(kept + 1))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    wal.close()


def test_corrupt_record_in_an_older_segment_skips_the_rest_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wal = wal_at(tmp_path, segment_bytes=300)
    wal.open()
    refs = wal.append(records(9))
    wal.close()
    first = [r for r in refs if r.segment == refs[0].segment]
    assert len(first) >= 2
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[first[1].offset + 30] ^= 0xFF  # the second record of the first segment
    seg.write_bytes(bytes(data))

    caplog.set_level(logging.WARNING)
    wal = wal_at(tmp_path, segment_bytes=300)
    back = [r.seq for r in wal.open()]
    lost = {r.seq for r in first[1:]}
    assert back == [r.seq for r in refs if r.seq not in lost]
    assert any("skipped" in r.getMessage() for r in caplog.records)
    assert seg.stat().st_size == len(data)  # an older segment is never cut
    wal.close()


def test_unreadable_meta_redelivers_everything(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal = wal_at(tmp_path)
    wal.open()
    wal.append(records(4))
    wal.commit(3)
    wal.close()
    (tmp_path / "meta.json").write_bytes(b"\x00\x00{not json")
    caplog.set_level(logging.WARNING)
    wal = wal_at(tmp_path)
    assert [r.seq for r in wal.open()] == [0, 1, 2, 3]  # duplicates, never a loss
    assert any("meta.json" in r.getMessage() for r in caplog.records)
    wal.close()


def test_a_segment_that_is_not_ours_is_moved_aside(tmp_path: Path) -> None:
    wal = wal_at(tmp_path)
    wal.open()
    wal.append(records(2))
    wal.close()
    (tmp_path / f"{99:020d}.wal").write_bytes(b"NOT A WAL AT ALL")
    wal = wal_at(tmp_path)
    assert [r.seq for r in wal.open()] == [0, 1]
    assert (tmp_path / f"{99:020d}.wal.corrupt").exists()
    wal.close()


def test_write_error_keeps_nothing_of_the_failed_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = wal_at(tmp_path)
    wal.open()
    wal.append(records(2))
    size = wal.disk_bytes
    real = pq._write_all

    def disk_full(fd: int, bufs: Any) -> int:
        real(fd, [bytes(b)[:5] for b in bufs][:1])  # a few bytes land, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "_write_all", disk_full)
    with pytest.raises(OSError):
        wal.append(records(3, 2))
    monkeypatch.setattr(pq, "_write_all", real)
    assert wal.disk_bytes == size == segments(tmp_path)[0].stat().st_size
    assert [r.seq for r in wal.append(records(1, 2))] == [2]
    wal.close()
    wal = wal_at(tmp_path)
    assert [r.seq for r in wal.open()] == [0, 1, 2]
    wal.close()


def test_directory_lock(tmp_path: Path) -> None:
    first = wal_at(tmp_path)
    first.open()
    with pytest.raises(StorageLockedError, match=r"in use .*pid \d+"):
        wal_at(tmp_path).open()
    # another process is refused too
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from gateway.persistent_queue import StorageLockedError, WriteAheadLog
        try:
            WriteAheadLog(Path({str(tmp_path)!r})).open()
        except StorageLockedError:
            sys.exit(3)
        sys.exit(0)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=30)
    assert res.returncode == 3, res.stderr
    first.close()
    second = wal_at(tmp_path)
    second.open()  # released at close
    second.close()


# ---------------------------------------------------------------- batches as records
def test_restored_span_batch_keeps_request_bytes_and_processor_columns() -> None:
    batch = span_batch(1, n=4)
    # what the genai processor does: extra numeric and string columns, strings interned late
    batch.add_column("latency_s", np.array([0.5, np.nan, 2.0, 0.1]))
    codes = np.array([batch.strings.intern(m) for m in ("gpt-4o", "claude", "gpt-4o", "")], dtype=np.int32)
    codes[3] = -1
    batch.add_column("request_model", codes, is_string=True)
    batch.add_column("llm", np.array([True, False, True, True]))
    part = batch.take(np.array([1, 2, 3]))  # shares (and outgrows) the string table

    for b in (batch, part):
        back = decode_batch(Signal.TRACES, b.serialize(), encode_columns(b))
        assert isinstance(back, SpanBatch)
        assert back.serialize() == b.serialize() and back.request == b.request
        assert set(back.columns) == set(b.columns)
        for name, col in b.columns.items():
            np.testing.assert_array_equal(back.columns[name], col)
            assert back.columns[name].dtype == col.dtype
        assert back.string_columns == b.string_columns
        assert back.string_column("request_model") == b.string_column("request_model")
        assert back.string_column("name") == b.string_column("name")
        assert back.item_count == b.item_count and back.nbytes == b.nbytes


def test_restored_metric_log_and_alert_batches() -> None:
    m = MetricBatch.from_request(make_metrics())
    lg = LogBatch.from_request(make_logs())
    for b in (m, lg):
        back = decode_batch(b.signal, b.serialize(), encode_columns(b))
        assert type(back) is type(b) and back.request == b.request and back.item_count == b.item_count
        # without columns (the request alone) it is rebuilt by from_request
        bare = decode_batch(b.signal, b.serialize(), b"")
        assert bare.request == b.request and bare.item_count == b.item_count
    alerts = AnomalyBatch([alert(0), alert(1)])
    assert encode_columns(alerts) == b""
    back = decode_batch(Signal.ANOMALIES, alerts.serialize(), b"")
    assert isinstance(back, AnomalyBatch)
    assert back.serialize() == alerts.serialize()
    assert [e.id for e in back.events] == [e.id for e in alerts.events]
    assert back.events[0].time_ns == 1_700_000_000_123_457_000  # microsecond precision, as written


def test_alert_json_round_trip() -> None:
    ev = alert(3)
    again = AnomalyEvent.from_json(ev.to_json())
    assert again.to_json() == ev.to_json()
    assert again.dedup_key == ev.dedup_key and again.first_seen_ns == again.time_ns
    assert AnomalyBatch.from_bytes(b"").events == []


# ---------------------------------------------------------------- the asyncio queue
def settings(tmp_path: Path, **kw: Any) -> StorageSettings:
    return StorageSettings(directory=str(tmp_path), **kw)


def queue(tmp_path: Path, *, max_items: int = 1000, memory: int = 1 << 30, **kw: Any) -> PersistentQueue:
    return PersistentQueue(settings(tmp_path, **kw), "otlp/test", max_items=max_items, memory_bytes=memory)


def test_group_commit_and_order(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], int, int]:
        q = queue(tmp_path)
        await q.open()
        batches = [span_batch(i, 1) for i in range(64)]
        await asyncio.gather(*(q.put(b) for b in batches))
        got = []
        for _ in batches:
            item = await q.get()
            got.append((await q.load(item)).string_column("service")[0])
            q.ack(item)
        groups, fsyncs = q.wal.groups, q.wal.fsyncs
        await q.close()
        return got, groups, fsyncs

    got, groups, fsyncs = run(scenario())
    assert got == [f"svc-{i}" for i in range(64)]
    assert groups < 64 / 4 and fsyncs == groups  # concurrent enqueues share writes and fsyncs
    assert segments(tmp_path / "otlp-test") == []


def test_out_of_order_acks_advance_only_the_contiguous_prefix(tmp_path: Path) -> None:
    async def first_run() -> int:
        q = queue(tmp_path)
        await q.open()
        for i in range(5):
            await q.put(span_batch(i, 1))
        items = [await q.get() for _ in range(5)]
        for k in (1, 2, 4):
            q.ack(items[k])
        assert q.ack_pointer == 0
        q.ack(items[0])
        assert q.ack_pointer == 3  # 3 is still in flight; 4 is acknowledged but past it
        await q.close()
        return q.unacked()

    assert run(first_run()) == 1

    async def second_run() -> list[str]:
        q = queue(tmp_path)
        assert await q.open() == 2
        assert q.qsize() == 2
        out = []
        for _ in range(2):
            item = await q.get()
            out.append((await q.load(item)).string_column("service")[0])
            q.ack(item)
        await q.close()
        return out

    assert run(second_run()) == ["svc-3", "svc-4"]  # 4 again: at-least-once


def test_memory_budget_spills_batches_to_disk(tmp_path: Path) -> None:
    async def scenario() -> None:
        q = queue(tmp_path, memory=span_batch(0, 1).nbytes + 10)  # room for one batch
        await q.open()
        sent = [span_batch(i, 1) for i in range(3)]
        for b in sent:
            await q.put(b)
        assert q.cached_bytes == sent[0].nbytes
        items = [await q.get() for _ in range(3)]
        assert [it.batch is not None for it in items] == [True, False, False]
        for it, b in zip(items, sent, strict=True):
            assert (await q.load(it)).serialize() == b.serialize()
            q.ack(it)
        assert q.cached_bytes == 0
        await q.close()

    run(scenario())


def test_queue_full_by_items_and_by_bytes(tmp_path: Path) -> None:
    async def scenario() -> None:
        q = queue(tmp_path / "a", max_items=2)
        await q.put(span_batch(0))  # opens lazily
        await q.put(span_batch(1))
        with pytest.raises(QueueFullError, match="batches"):
            await q.put(span_batch(2))
        item = await q.get()  # taken by a consumer: room again
        await q.put(span_batch(2))
        q.ack(item)
        await q.close()

        first = span_batch(0)
        size = pq.HEADER_SIZE + len(first.serialize()) + len(encode_columns(first))
        q = queue(tmp_path / "b", max_size_mib=(size * 2.5) / 2**20, segment_size_mib=(size * 2.5) / 2**20)
        await q.put(span_batch(0))
        await q.put(span_batch(1))
        with pytest.raises(QueueFullError, match="MiB"):
            await q.put(span_batch(2))
        await q.close()

    run(scenario())


def test_write_error_refuses_the_put_and_the_queue_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        q = queue(tmp_path)
        await q.open()
        real = pq._write_all

        def failing(fd: int, bufs: Any) -> int:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(pq, "_write_all", failing)
        with pytest.raises(StorageError, match="I/O error"):
            await q.put(span_batch(0))
        monkeypatch.setattr(pq, "_write_all", real)
        await q.put(span_batch(1))
        item = await q.get()
        assert (await q.load(item)).string_column("service")[0] == "svc-1"
        q.ack(item)
        assert q.qsize() == 0 and q.cached_bytes == 0 and q.unacked() == 0
        await q.close()

    run(scenario())


@pytest.mark.parametrize("policy", ["always", "batch", "interval", "never"])
def test_every_fsync_policy_survives_a_reopen(tmp_path: Path, policy: str) -> None:
    async def scenario() -> tuple[int, int]:
        q = queue(tmp_path, fsync=policy, fsync_interval="20ms")
        await q.open()
        await asyncio.gather(*(q.put(span_batch(i, 1)) for i in range(6)))
        await asyncio.sleep(0.1)  # interval: the timer fsyncs
        fsyncs = q.wal.fsyncs
        await q.close()
        q2 = queue(tmp_path, fsync=policy)
        n = await q2.open()
        got = [(await q2.load(await q2.get())).string_column("service")[0] for _ in range(n)]
        assert got == [f"svc-{i}" for i in range(6)]
        await q2.close()
        return n, fsyncs

    n, fsyncs = run(scenario())
    assert n == 6
    expected = {"always": 6, "never": 0}
    if policy in expected:
        assert fsyncs == expected[policy]
    else:
        assert 1 <= fsyncs < 6


# ---------------------------------------------------------------- config
def test_storage_config() -> None:
    q = QueueSettings.model_validate(
        {"storage": {"directory": "/var/lib/sentinel", "fsync_interval": "250ms"}}
    )
    assert q.storage is not None
    assert (q.storage.fsync, q.storage.fsync_interval, q.storage.max_size_mib) == ("batch", 0.25, 1024)
    assert QueueSettings().storage is None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"storage": {"directory": "d", "fsync": "sometimes"}}, "fsync"),
        ({"storage": {"directory": "d", "segment_size_mib": 100, "max_size_mib": 10}}, "segment_size_mib"),
        ({"storage": {"directory": " "}}, "directory"),
        ({"storage": {"directory": "d", "bogus": 1}}, "bogus"),
        ({"enabled": False, "storage": {"directory": "d"}}, "requires the sending queue"),
    ]
    for cfg, needle in bad:
        with pytest.raises(ValidationError, match=needle):
            QueueSettings.model_validate(cfg)


def test_storage_dir_names() -> None:
    assert storage_dir_name("otlp") == "otlp"
    assert storage_dir_name("otlp/backend-1") == "otlp-backend-1"
    odd = storage_dir_name("file/a b/c")
    assert odd.startswith("file-a_b_c-") and "/" not in odd
    assert storage_dir_name("file/a b/c") != storage_dir_name("file/a_b_c")
    assert MAGIC == b"SNTLWAL1"
