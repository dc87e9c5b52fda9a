"""Persistent sending queue: a segmented write-ahead log per exporter.

Enabled by `sending_queue.storage` on any `QueuedExporter`. Where the in-memory
queue loses everything on a crash, this one writes each accepted batch to disk
*before* `consume()` returns, so data a client was answered 200/OK for is
delivered after a restart.

Layout of `<storage.directory>/<exporter id, sanitised>/`::

    LOCK                        flock()ed while open: two gateways never share a queue
    meta.json                   {"version": 1, "exporter": ..., "acked": N}: every seq < N is done
    00000000000000000000.wal    segments, named by the seq of their first record
    00000000000000004711.wal

A segment starts with an 8-byte magic followed by records::

    u32 body_len | u32 crc32(body) | body = u64 seq | u8 signal | u32 request_len | request | columns

(little endian). `request` is the OTLP Export request exactly as `batch.serialize()`
gives it (anomalies: their JSON lines); `columns` holds the batch's numpy columns
and string table, so a restored batch is the batch that was queued, processor-added
columns (e.g. the genai ones) included, and nothing is re-extracted (re-running
genai would count its LLM metrics twice). Exporters may still rely on the request
alone: an empty column block (never written today) restores via `from_request`.

Write path: `put()` hands the record to one writer task, which appends everything
pending with one `writev` in a worker thread and then, per `fsync` policy,
fsyncs once for the whole group (group commit) before it resolves the waiters
and hands the records to the consumers:

* `always`   - fsync after every record (strictest, slowest);
* `batch`    - one fsync per group of concurrent enqueues; same guarantee as `always`
               (nothing is acknowledged before its fsync), far cheaper under load;
* `interval` - fsync every `fsync_interval`: a power loss or kernel crash loses at
               most that much acknowledged data; a process crash loses nothing;
* `never`    - leave it to the OS: survives a process crash, not a power loss.

Consumers take records in order; several consumers acknowledge out of order, but
the persisted pointer (`acked`) only advances over the contiguous acknowledged
prefix. It is written atomically (temp file, fsync, rename, fsync of the
directory), at most every `META_COMMIT_INTERVAL` (and at close), and segments
wholly below the *persisted* pointer are deleted. On restart every record at or
past the pointer is delivered again, first and in order: records in flight when
the process died, and acknowledged ones whose acknowledgement was not yet
persisted, are sent twice. Delivery is at-least-once; backends must tolerate
duplicates (OTLP backends generally deduplicate nothing, so expect a few
duplicated spans/points after a crash, never a gap).

Recovery never crashes on bad data: a torn or corrupt tail record (crash
mid-write) is found by its length and CRC and truncated away with a warning; a
corrupt record in an older segment loses the rest of that segment (warning); an
unreadable `meta.json` falls back to redelivering everything on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import Field, field_validator, model_validator

from gateway.anomaly import AnomalyBatch
from gateway.batch import BATCH_TYPES, Batch, Signal, StringTable
from gateway.component import ComponentConfig, Duration

FsyncPolicy = Literal["always", "batch", "interval", "never"]

MAGIC = b"SNTLWAL1"
# body_len, crc32, then the body: seq, signal code, request length
FRAME = struct.Struct("<IIQBI")
_BODY_HEAD = struct.Struct("<QBI")
_U32 = struct.Struct("<I")
HEADER_SIZE = FRAME.size
_BODY_HEAD_SIZE = _BODY_HEAD.size
MAX_BODY = (1 << 32) - 1

SIGNAL_CODES: dict[Signal, int] = {Signal.TRACES: 1, Signal.METRICS: 2, Signal.LOGS: 3, Signal.ANOMALIES: 4}
CODE_SIGNALS: dict[int, Signal] = {v: k for k, v in SIGNAL_CODES.items()}

META_NAME = "meta.json"
LOCK_NAME = "LOCK"
SEGMENT_SUFFIX = ".wal"
_SEGMENT_RE = re.compile(r"^(\d{20})\.wal$")
META_COMMIT_INTERVAL = 0.1  # seconds between two writes of the ack pointer
IDLE_RECYCLE_BYTES = 1 << 20  # a fully acknowledged active segment this big is deleted
_IOV_MAX = 1020

log = logging.getLogger("sentinel.persistent_queue")


class StorageSettings(ComponentConfig):
    directory: str = Field(description="Parent directory; each exporter uses a subdirectory of its own.")
    fsync: FsyncPolicy = Field(
        default="batch",
        description="always: fsync every record; batch: one fsync per group of concurrent enqueues; "
        "interval: every fsync_interval; never: leave it to the OS.",
    )
    fsync_interval: Duration = Field(default=1.0, gt=0, description="With fsync: interval.")
    max_size_mib: float = Field(default=1024, gt=0, description="Maximum bytes on disk, in MiB.")
    segment_size_mib: float = Field(default=64, gt=0, description="Size at which a new segment starts.")

    @field_validator("directory")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("directory must not be empty")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> StorageSettings:
        if self.segment_size_mib > self.max_size_mib:
            raise ValueError("segment_size_mib must not exceed max_size_mib")
        return self


class StorageError(Exception):
    """The queue's storage failed (disk full, I/O error, closed)."""


class StorageLockedError(StorageError):
    """Another process (or exporter) holds the queue directory."""


class QueueFullError(Exception):
    """The queue is at its item or byte limit."""


def storage_dir_name(exporter_id: str) -> str:
    """`otlp/backend` -> `otlp-backend`; ids with other unsafe characters get a short hash suffix."""
    typ, _, name = exporter_id.partition("/")
    plain = f"{typ}-{name}" if name else typ
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", plain)
    if safe != plain:
        safe += "-" + hashlib.blake2b(exporter_id.encode(), digest_size=4).hexdigest()
    return safe


# ---------------------------------------------------------------- batch <-> record
def encode_columns(batch: Any) -> bytes:
    """The numpy columns and string table of a batch (empty for alerts or when not encodable)."""
    if not isinstance(batch, Batch):
        return b""
    specs: list[list[Any]] = []
    parts: list[bytes] = []
    for name, col in batch.columns.items():
        dtype = col.dtype
        if dtype.hasobject or col.ndim != 1:
            continue  # not fixed-width: left out (no such column exists today)
        specs.append([name, dtype.str, col.shape[0]])
        parts.append(col.tobytes())  # C order, whatever the strides
    try:
        head = orjson.dumps({"c": specs, "s": batch.strings.values, "sc": sorted(batch.string_columns)})
    except orjson.JSONEncodeError:  # e.g. a lone surrogate: restore from the request instead
        return b""
    return b"".join([_U32.pack(len(head)), head, *parts])


def decode_batch(signal: Signal, request: bytes, columns: bytes) -> Any:
    """Rebuild the queued batch from a record's request and column blocks."""
    if signal is Signal.ANOMALIES:
        return AnomalyBatch.from_bytes(request)
    cls = BATCH_TYPES[signal]
    request_cls: Any = cls.layout.request_cls
    req = request_cls.FromString(request)
    if not columns:
        return cls.from_request(req, wire=request)
    (head_len,) = _U32.unpack_from(columns, 0)
    head = orjson.loads(columns[4 : 4 + head_len])
    pos = 4 + head_len
    cols: dict[str, np.ndarray] = {}
    for name, dtype_str, n in head["c"]:
        dtype = np.dtype(dtype_str)
        cols[name] = np.frombuffer(columns, dtype=dtype, count=n, offset=pos).copy()
        pos += dtype.itemsize * n
    return cls(
        request=req,
        columns=cols,
        strings=StringTable(head["s"]),
        string_columns=set(head["sc"]),
        wire=request,
    )


def _crc(seq: int, code: int, request: bytes | memoryview, columns: bytes | memoryview) -> int:
    c = zlib.crc32(_BODY_HEAD.pack(seq, code, len(request)))
    c = zlib.crc32(request, c)
    return zlib.crc32(columns, c)


def _fsync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, bufs: Sequence[bytes | memoryview]) -> int:
    """writev everything in `bufs` (in IOV_MAX chunks, resuming after short writes)."""
    total = 0
    pending = [memoryview(b) for b in bufs if len(b)]
    while pending:
        chunk = pending[:_IOV_MAX]
        n = os.writev(fd, chunk)
        total += n
        # drop what was written, keep the remainder of a partially written buffer
        i = 0
        while i < len(chunk) and n >= len(chunk[i]):
            n -= len(chunk[i])
            i += 1
        pending = pending[i:]
        if n:
            pending[0] = pending[0][n:]
    return total


# ---------------------------------------------------------------- the log (synchronous)
@dataclass(slots=True)
class RecordRef:
    """Where a record lives on disk."""

    seq: int
    signal: Signal
    segment: int  # first seq of its segment (the file name)
    offset: int
    size: int  # framed bytes on disk


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    size: int
    next_seq: int  # seq the next record appended here gets
    fd: int = -1  # open for appending (the active segment only)
    unsynced: bool = False


class WriteAheadLog:
    """The on-disk log. Thread-safe (one lock); meant to be driven from a worker thread."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = "batch",
        segment_bytes: int = 64 << 20,
        exporter: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = max(segment_bytes, len(MAGIC) + HEADER_SIZE)
        self.exporter = exporter
        self.logger = logger or log
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._next_seq = 0
        self._durable_ack = 0
        self._is_open = False
        self.disk_bytes = 0
        self.groups = 0  # append() calls that wrote something (group commits)
        self.fsyncs = 0

    @property
    def _syncing(self) -> bool:
        return self.fsync in ("always", "batch")

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def acked(self) -> int:
        """The persisted ack pointer."""
        return self._durable_ack

    def segment_files(self) -> list[Path]:
        with self._lock:
            return [s.path for s in self._segments]

    # ------------------------------------------------------------ open / recovery
    def open(self) -> list[RecordRef]:
        """Lock the directory, recover, and return the records still to deliver (in order)."""
        with self._lock:
            if self._is_open:
                raise StorageError(f"{self.directory} is already open")
            self.directory.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
            try:
                return self._recover()
            except BaseException:
                self._release_lock()
                raise

    def _acquire_lock(self) -> None:
        import fcntl

        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 64, 0).decode().strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise StorageLockedError(
                    f"queue directory {self.directory} is in use by another gateway or exporter{who}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _read_meta(self) -> int | None:
        path = self.directory / META_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta = orjson.loads(raw)
            acked = int(meta["acked"])
            if acked < 0:
                raise ValueError("negative pointer")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.logger.warning(
                f"persistent queue: unreadable {path} ({exc}); everything on disk is delivered again"
            )
            return None
        return acked

    def _recover(self) -> list[RecordRef]:
        acked = self._read_meta()
        names = []
        for p in self.directory.iterdir():
            m = _SEGMENT_RE.match(p.name)
            if m and p.is_file():
                names.append((int(m.group(1)), p))
        names.sort()
        segments: list[_Segment] = []
        refs: list[RecordRef] = []
        for i, (first, path) in enumerate(names):
            last = i == len(names) - 1
            seg = self._scan(first, path, acked, last, refs)
            if seg is not None:
                segments.append(seg)
        self._segments = segments
        self.disk_bytes = sum(s.size for s in segments)
        if acked is None:
            acked = refs[0].seq if refs else (segments[0].first_seq if segments else 0)
        self._durable_ack = acked
        tail = segments[-1].next_seq if segments else 0
        self._next_seq = max(acked, tail)
        last_seg = segments[-1] if segments else None
        if (
            last_seg is not None
            and last_seg.next_seq == self._next_seq
            and last_seg.size < self.segment_bytes
        ):
            last_seg.fd = os.open(last_seg.path, os.O_WRONLY | os.O_APPEND)
            self._active = last_seg
        self._compact(acked, closing=False)
        self._is_open = True
        return [r for r in refs if r.seq >= acked]

    def _scan(
        self, first: int, path: Path, acked: int | None, last: bool, refs: list[RecordRef]
    ) -> _Segment | None:
        """Index one segment; truncate a bad tail of the last one, skip the rest of a bad older one."""
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                if last and MAGIC.startswith(magic):  # crashed while creating it
                    if magic:
                        self.logger.warning(f"persistent queue: {path.name} has a torn header; rewritten")
                    with open(path, "wb") as w:
                        w.write(MAGIC)
                    return _Segment(first, path, len(MAGIC), first)
                bad = path.with_name(path.name + ".corrupt")
                self.logger.warning(
                    f"persistent queue: {path.name} is not a queue segment; moved aside to {bad.name}"
                )
                path.rename(bad)
                return None
            offset = len(MAGIC)
            seq = first
            problem = ""
            while offset < size:
                head = f.read(HEADER_SIZE)
                if len(head) < HEADER_SIZE:
                    problem = "truncated record header"
                    break
                body_len, crc, rseq, code, req_len = FRAME.unpack(head)
                total = 8 + body_len
                if (
                    body_len < _BODY_HEAD_SIZE
                    or req_len > body_len - _BODY_HEAD_SIZE
                    or offset + total > size
                ):
                    problem = "truncated or invalid record length"
                    break
                if rseq != seq or code not in CODE_SIGNALS:
                    problem = "unexpected sequence number or signal"
                    break
                rest_len = body_len - _BODY_HEAD_SIZE
                if acked is not None and rseq < acked:
                    f.seek(rest_len, os.SEEK_CUR)  # already delivered: skip without reading
                else:
                    rest = f.read(rest_len)
                    c = zlib.crc32(head[8:])
                    if len(rest) < rest_len or zlib.crc32(rest, c) != crc:
                        problem = "checksum mismatch"
                        break
                refs.append(RecordRef(rseq, CODE_SIGNALS[code], first, offset, total))
                offset += total
                seq += 1
        if problem:
            dropped = size - offset
            if last:
                self.logger.warning(
                    f"persistent queue: {path.name}: {problem} at offset {offset}; "
                    f"truncating {dropped} byte(s) of an incomplete write (crash while writing?)"
                )
                os.truncate(path, offset)
            else:
                self.logger.warning(
                    f"persistent queue: {path.name}: {problem} at offset {offset}; "
                    f"the remaining {dropped} byte(s) of this segment are skipped"
                )
            size = offset if last else size
        return _Segment(first, path, size, seq)

    # ------------------------------------------------------------ append
    def append(self, records: Sequence[tuple[Signal, bytes, bytes]]) -> list[RecordRef]:
        """Write records (signal, request, columns) in order; durable per policy when it returns.

        On an I/O error nothing of this call is kept (segments are cut back) and it raises.
        """
        with self._lock:
            if not self._is_open:
                raise StorageError("persistent queue is closed")
            refs: list[RecordRef] = []
            undo: dict[int, tuple[_Segment, int, int]] = {}
            seq = self._next_seq
            iov: list[bytes] = []
            pending = 0
            seg = self._active
            try:
                for signal, request, columns in records:
                    body_len = _BODY_HEAD_SIZE + len(request) + len(columns)
                    if body_len > MAX_BODY:
                        raise StorageError(f"record of {body_len} bytes is too large")
                    total = 8 + body_len
                    if (
                        seg is None
                        or seg.next_seq != seq
                        or (
                            seg.size + pending + total > self.segment_bytes
                            and seg.size + pending > len(MAGIC)
                        )
                    ):
                        if seg is not None and iov:
                            self._flush(seg, iov, pending)
                            iov, pending = [], 0
                        seg = self._roll(seq)
                    if seg.first_seq not in undo:
                        undo[seg.first_seq] = (seg, seg.size, seg.next_seq)
                    code = SIGNAL_CODES[signal]
                    crc = _crc(seq, code, request, columns)
                    iov.append(FRAME.pack(body_len, crc, seq, code, len(request)))
                    iov.append(request)
                    if columns:
                        iov.append(columns)
                    refs.append(RecordRef(seq, signal, seg.first_seq, seg.size + pending, total))
                    pending += total
                    seq += 1
                    seg.next_seq = seq
                    if self.fsync == "always":
                        self._flush(seg, iov, pending)
                        iov, pending = [], 0
                        self._sync(seg)
                if seg is not None and iov:
                    self._flush(seg, iov, pending)
                if self.fsync == "batch":
                    for s, _, _ in undo.values():
                        self._sync(s)
            except BaseException:
                self._undo(undo)
                raise
            self._next_seq = seq
            if refs:
                self.groups += 1
            return refs

    def _flush(self, seg: _Segment, iov: list[bytes], nbytes: int) -> None:
        written = _write_all(seg.fd, iov)
        seg.size += written
        self.disk_bytes += written
        seg.unsynced = True
        if written != nbytes:  # pragma: no cover - writev on a regular file writes all or raises
            raise StorageError(f"short write to {seg.path}: {written} of {nbytes} bytes")

    def _sync(self, seg: _Segment) -> None:
        if seg.unsynced and seg.fd >= 0:
            _fsync(seg.fd)
            self.fsyncs += 1
            seg.unsynced = False

    def _undo(self, undo: dict[int, tuple[_Segment, int, int]]) -> None:
        for seg, size, next_seq in undo.values():
            with contextlib.suppress(OSError):  # also cuts bytes of a write that failed halfway
                os.truncate(seg.path, size)
            self.disk_bytes -= seg.size - size
            seg.size = size
            seg.next_seq = next_seq

    def _roll(self, seq: int) -> _Segment:
        """Start a new active segment whose first record is `seq`."""
        old = self._active
        if old is not None:
            if self.fsync != "never":
                self._sync(old)
            os.close(old.fd)
            old.fd = -1
            self._active = None
        path = self.directory / f"{seq:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            _write_all(fd, [MAGIC])
            if self._syncing:
                _fsync(fd)
                _fsync_dir(self.directory)  # the new name must survive a power loss too
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        seg = _Segment(seq, path, len(MAGIC), seq, fd)
        self._segments = [s for s in self._segments if s.first_seq != seq]
        self._segments.append(seg)
        self.disk_bytes = sum(s.size for s in self._segments)
        self._active = seg
        return seg

    def sync(self) -> None:
        """fsync the active segment (the `interval` policy's timer)."""
        with self._lock:
            if self._active is not None:
                self._sync(self._active)

    # ------------------------------------------------------------ read
    def read(self, ref: RecordRef) -> tuple[Signal, bytes, bytes]:
        """(signal, request, columns) of a record, checked against its CRC."""
        path = self.directory / f"{ref.segment:020d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_RDONLY)
        try:
            buf = os.pread(fd, ref.size, ref.offset)
        finally:
            os.close(fd)
        if len(buf) != ref.size:
            raise StorageError(f"record {ref.seq} in {path.name} is truncated")
        body_len, crc, seq, code, req_len = FRAME.unpack_from(buf, 0)
        view = memoryview(buf)
        if (
            8 + body_len != ref.size
            or seq != ref.seq
            or code not in CODE_SIGNALS
            or zlib.crc32(view[8:]) != crc
        ):
            raise StorageError(f"record {ref.seq} in {path.name} is corrupt")
        req_end = HEADER_SIZE + req_len
        return CODE_SIGNALS[code], bytes(view[HEADER_SIZE:req_end]), bytes(view[req_end:])

    # ------------------------------------------------------------ ack pointer / compaction
    def commit(self, acked: int) -> int:
        """Persist the ack pointer, then delete segments wholly below it; returns bytes freed."""
        with self._lock:
            if not self._is_open:
                return 0
            return self._commit(acked, closing=False)

    def _commit(self, acked: int, *, closing: bool) -> int:
        if acked != self._durable_ack or closing:
            self._write_meta(acked)
            self._durable_ack = acked
        return self._compact(acked, closing=closing)

    def _write_meta(self, acked: int) -> None:
        tmp = self.directory / (META_NAME + ".tmp")
        data = orjson.dumps({"version": 1, "exporter": self.exporter, "acked": acked})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, [data])
            if self.fsync != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / META_NAME)
        if self.fsync != "never":
            _fsync_dir(self.directory)

    def _compact(self, acked: int, *, closing: bool) -> int:
        freed = 0
        keep: list[_Segment] = []
        for seg in self._segments:
            done = seg.next_seq <= acked  # every record in it is acknowledged
            if seg is self._active and done and (closing or seg.size >= IDLE_RECYCLE_BYTES):
                os.close(seg.fd)
                seg.fd = -1
                self._active = None
            if done and seg is not self._active:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
                freed += seg.size
            else:
                keep.append(seg)
        self._segments = keep
        self.disk_bytes -= freed
        return freed

    def close(self, acked: int | None = None) -> None:
        """Persist the pointer, compact, sync and release the directory."""
        with self._lock:
            if not self._is_open:
                return
            try:
                if self._active is not None and self.fsync != "never":
                    self._sync(self._active)
                self._commit(self._durable_ack if acked is None else acked, closing=True)
            finally:
                if self._active is not None and self._active.fd >= 0:
                    os.close(self._active.fd)
                    self._active.fd = -1
                self._active = None
                self._is_open = False
                self._release_lock()


# ---------------------------------------------------------------- the queue (asyncio)
@dataclass(slots=True, eq=False)
class QueueItem:
    """One queued batch: where it is on disk and, while memory allows, the batch itself."""

    ref: RecordRef | None
    batch: Any | None
    cached: int  # bytes the cached batch counts against the memory budget
    size: int  # bytes on disk


@dataclass(slots=True, eq=False)
class _Append:
    item: QueueItem
    signal: Signal
    request: bytes
    columns: bytes
    done: asyncio.Future[None]


@dataclass
class QueueStats:
    backlog: int = 0  # records found at open
    backlog_bytes: int = 0


class PersistentQueue:
    """A FIFO of batches on a WriteAheadLog: `put` is durable, `get`/`load`/`ack` consume in order.

    All methods run on the event loop. Disk I/O runs in threads: the writer task
    (appends, pointer commits, interval fsyncs) on a thread of its own, so it
    never waits behind other work on the default executor; reads of batches
    spilled to disk on the default executor, in parallel.
    """

    def __init__(
        self,
        settings: StorageSettings,
        exporter_id: str,
        *,
        max_items: int,
        memory_bytes: int,
        logger: logging.Logger | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.directory = Path(settings.directory).expanduser() / storage_dir_name(exporter_id)
        self.max_items = max_items
        self.max_disk = int(settings.max_size_mib * 1024 * 1024)
        self.memory_bytes = memory_bytes
        self.logger = logger or log
        self.on_change = on_change or (lambda: None)
        self.wal = WriteAheadLog(
            self.directory,
            fsync=settings.fsync,
            segment_bytes=int(settings.segment_size_mib * 1024 * 1024),
            exporter=exporter_id,
            logger=self.logger,
        )
        self.stats = QueueStats()
        self._ready: asyncio.Queue[QueueItem] = asyncio.Queue()
        self._appends: list[_Append] = []
        self._unpublished = 0  # accepted by put(), not yet on disk
        self._reserved = 0  # their bytes
        self._unacked_bytes = 0  # on disk, not acknowledged
        self.cached_bytes = 0
        self._order: deque[int] = deque()  # seqs published and not acknowledged, ascending
        self._acked: set[int] = set()  # acknowledged out of order
        self._tail = 0  # seq after the last published record
        self._ack_dirty = False
        self._last_commit = 0.0
        self._next_sync = 0.0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._io: ThreadPoolExecutor | None = None
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._closed = False
        self._stopping = False

    # ------------------------------------------------------------ lifecycle
    @property
    def is_open(self) -> bool:
        return self._opened and not self._closed

    async def open(self) -> int:
        """Lock and recover the directory; the backlog is queued first. Returns its length."""
        async with self._open_lock:
            if self._opened:
                return self.stats.backlog
            if self._closed:
                raise StorageError("persistent queue is closed")
            try:
                refs = await self._in_io(self.wal.open)
            except BaseException:
                self._stop_io()
                raise
            self._tail = self.wal.next_seq
            for ref in refs:
                self._order.append(ref.seq)
                self._unacked_bytes += ref.size
                self._ready.put_nowait(QueueItem(ref, None, 0, ref.size))
            self.stats.backlog = len(refs)
            self.stats.backlog_bytes = sum(r.size for r in refs)
            self._next_sync = time.monotonic() + self.settings.fsync_interval
            self._writer = asyncio.create_task(self._run_writer(), name=f"wal-writer:{self.directory.name}")
            self._opened = True
        self.on_change()
        return len(refs)

    async def close(self) -> None:
        """Finish pending writes, persist the pointer, compact and unlock. Unacknowledged records stay."""
        if self._closed:
            return
        self._closed = True
        if not self._opened:
            return
        self._stopping = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        try:
            await self._in_io(self.wal.close, self.ack_pointer)
        finally:
            self._stop_io()
        self.on_change()

    def _stop_io(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=False)
            self._io = None

    async def _in_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the queue's own I/O thread (calls run one at a time, in order)."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix=f"wal-{self.directory.name}")
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ------------------------------------------------------------ producer side
    def qsize(self) -> int:
        """Batches waiting for a consumer (backlog included; in-flight ones not)."""
        return self._ready.qsize()

    def unacked(self) -> int:
        """Batches on disk not yet acknowledged (waiting + in flight)."""
        return len(self._order) - len(self._acked)

    @property
    def disk_bytes(self) -> int:
        return self.wal.disk_bytes

    async def put(self, batch: Any) -> None:
        """Append `batch`; returns once it is on disk (and fsynced, per policy).

        Raises QueueFullError at the item or byte limit and StorageError when the write fails.
        """
        if not self._opened:
            await self.open()
        if self._stopping:
            raise StorageError("persistent queue is closed")
        request = batch.serialize()
        columns = encode_columns(batch)
        size = HEADER_SIZE + len(request) + len(columns)
        if self._ready.qsize() + self._unpublished >= self.max_items:
            raise QueueFullError(f"{self.max_items} batches queued")
        held = self._unacked_bytes + self._reserved
        if held and max(held, self.wal.disk_bytes) + size > self.max_disk:
            raise QueueFullError(f"{self.max_disk / 2**20:g} MiB on disk")
        nbytes = batch.nbytes
        cache = self.cached_bytes + nbytes <= self.memory_bytes
        item = QueueItem(None, batch if cache else None, nbytes if cache else 0, size)
        self.cached_bytes += item.cached
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._appends.append(_Append(item, batch.signal, request, columns, fut))
        self._unpublished += 1
        self._reserved += size
        self._wake.set()
        await fut

    # ------------------------------------------------------------ consumer side
    async def get(self) -> QueueItem:
        item = await self._ready.get()
        self.on_change()
        return item

    async def load(self, item: QueueItem) -> Any:
        """The batch of an item: from memory, or read back (and decoded) in a worker thread."""
        if item.batch is not None:
            return item.batch
        assert item.ref is not None
        return await asyncio.to_thread(self._read_batch, item.ref)

    def _read_batch(self, ref: RecordRef) -> Any:
        signal, request, columns = self.wal.read(ref)
        return decode_batch(signal, request, columns)

    def ack(self, item: QueueItem) -> None:
        """The item was delivered or given up on: it may leave the log."""
        assert item.ref is not None
        self._acked.add(item.ref.seq)
        order = self._order
        moved = False
        while order and order[0] in self._acked:
            self._acked.discard(order.popleft())
            moved = True
        self._unacked_bytes -= item.size
        self.cached_bytes -= item.cached
        item.batch, item.cached = None, 0
        self._ready.task_done()
        if moved:
            self._ack_dirty = True
            self._wake.set()
        self.on_change()

    @property
    def ack_pointer(self) -> int:
        """Every seq below this is acknowledged."""
        return self._order[0] if self._order else self._tail

    async def join(self) -> None:
        """Wait until every published batch is acknowledged."""
        await self._ready.join()

    # ------------------------------------------------------------ writer task
    async def _run_writer(self) -> None:
        interval = self.settings.fsync == "interval"
        while True:
            try:
                now = time.monotonic()
                if self._appends:
                    await self._write_group()
                    continue
                if self._ack_dirty and (self._stopping or now - self._last_commit >= META_COMMIT_INTERVAL):
                    self._ack_dirty = False
                    self._last_commit = now
                    await self._in_io(self.wal.commit, self.ack_pointer)
                    self.on_change()
                    continue
                if interval and now >= self._next_sync:
                    self._next_sync = now + self.settings.fsync_interval
                    await self._in_io(self.wal.sync)
                    continue
                if self._stopping:
                    return
                waits = []
                if interval:
                    waits.append(self._next_sync - now)
                if self._ack_dirty:
                    waits.append(self._last_commit + META_COMMIT_INTERVAL - now)
                self._wake.clear()
                timeout = max(0.0, min(waits)) if waits else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            except Exception:
                self.logger.exception("persistent queue: writer failed; retrying")
                await asyncio.sleep(0.1)

    async def _write_group(self) -> None:
        group, self._appends = self._appends, []
        records = [(a.signal, a.request, a.columns) for a in group]
        try:
            refs = await self._in_io(self.wal.append, records)
        except Exception as exc:
            err = StorageError(f"cannot write to {self.directory}: {exc}")
            self.logger.error(f"persistent queue: {err}")
            for a in group:
                self._unpublished -= 1
                self._reserved -= a.item.size
                self.cached_bytes -= a.item.cached
                a.item.batch, a.item.cached = None, 0
                if not a.done.done():
                    a.done.set_exception(err)
            return
        for a, ref in zip(group, refs, strict=True):
            a.item.ref = ref
            self._unpublished -= 1
            self._reserved -= a.item.size
            self._unacked_bytes += a.item.size
            self._order.append(ref.seq)
            self._tail = ref.seq + 1
            self._ready.put_nowait(a.item)
            if not a.done.done():  # the producer may have gone (cancelled): the record stays
                a.done.set_result(None)
        self.on_change()
