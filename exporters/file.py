"""`file` exporter: OTLP/JSON lines on disk, with size-based rotation.

Each line is one Export request exactly as the batch holds it, encoded with
`gateway.otlpjson` (hex ids, integer enums), so any OTLP/JSON reader - or
`otlpjson.decode(line, ...)` - reads it back. An exporter used by several
pipelines writes all their signals to the same file; a line's top-level key
(`resourceSpans`, `resourceMetrics` or `resourceLogs`) says which signal it is.

Rotation works like the Collector's (lumberjack): when the next line would
push the file past `max_megabytes`, it is renamed to
`<name>-<YYYY-MM-DDTHH-MM-SS.mmm><ext>` (UTC unless `localtime`) and a new
file is started; backups beyond `max_backups` or older than `max_days` are
deleted. A line is never split across files.

File I/O runs in a worker thread behind one lock, so whole lines are written
even with several consumers; the default single consumer also keeps order.
Data is flushed every `flush_interval` and flushed + fsynced on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from pydantic import Field, field_validator

from gateway.anomaly import AnomalyBatch
from gateway.batch import Batch, Signal
from gateway.component import ComponentConfig, ComponentContext, Duration, Factory, Kind
from gateway.exporterhelper import QueuedExporter, QueuedExporterConfig, QueueSettings
from gateway.otlpjson import encode


class Rotation(ComponentConfig):
    max_megabytes: float = Field(default=100, gt=0, description="Rotate before the file grows past this.")
    max_days: int = Field(default=0, ge=0, description="Delete backups older than this; 0 keeps them.")
    max_backups: int = Field(default=100, ge=0, description="Backups kept; 0 keeps all.")
    localtime: bool = Field(default=False, description="Backup timestamps in local time instead of UTC.")


class FileQueueSettings(QueueSettings):
    num_consumers: int = Field(default=1, ge=1, le=256, description="1 keeps lines in arrival order.")


class FileConfig(QueuedExporterConfig):
    path: str
    append: bool = Field(
        default=False,
        description="Keep an existing file's content. When false, an existing file is rotated away "
        "(with rotation) or truncated (without).",
    )
    rotation: Rotation | None = None
    flush_interval: Duration = Field(default=1.0, ge=0, description="0 flushes after every line.")
    sending_queue: FileQueueSettings = FileQueueSettings()

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("path must not be empty")
        return v


_TS_FORMAT = "%Y-%m-%dT%H-%M-%S.%f"


class RotatingWriter:
    """Appends lines to one file and rotates it by size. Not thread-safe: callers hold a lock."""

    def __init__(self, path: Path, rotation: Rotation | None, append: bool) -> None:
        self.path = path
        self.rotation = rotation
        self.append = append
        self.size = 0
        self._f: IO[bytes] | None = None
        stem, ext = path.stem, path.suffix
        self._backup_re = re.compile(
            rf"^{re.escape(stem)}-(\d{{4}}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{{3}})(?:-\d+)?{re.escape(ext)}$"
        )

    @property
    def max_bytes(self) -> int:
        return int(self.rotation.max_megabytes * 1024 * 1024) if self.rotation else 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.stat().st_size if self.path.exists() else 0
        if existing and not self.append:
            if self.rotation:
                self.path.rename(self._backup_path())
            else:
                self.path.write_bytes(b"")
        self._reopen()
        self.prune()

    def _reopen(self) -> IO[bytes]:
        self._f = open(self.path, "ab", buffering=1 << 20)  # noqa: SIM115 - held open across calls
        self.size = self._f.tell()
        return self._f

    def write(self, line: bytes) -> None:
        if self.rotation and self.size and self.size + len(line) > self.max_bytes:
            self.rotate()
        f = self._f if self._f is not None else self._reopen()  # reopen after a failed rotation
        f.write(line)
        self.size += len(line)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def rotate(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):  # removed behind our back: just start anew
            self.path.rename(self._backup_path())
        self._reopen()
        self.prune()

    def _now(self) -> datetime:
        local = self.rotation is not None and self.rotation.localtime
        return datetime.now().astimezone() if local else datetime.now(UTC)

    def _backup_path(self) -> Path:
        stamp = self._now().strftime(_TS_FORMAT)[:-3]  # milliseconds, like lumberjack
        candidate = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        n = 1
        while candidate.exists():  # two rotations within one millisecond
            candidate = self.path.with_name(f"{self.path.stem}-{stamp}-{n}{self.path.suffix}")
            n += 1
        return candidate

    def backups(self) -> list[Path]:
        """Existing backups, newest first."""
        found: list[tuple[str, float, Path]] = []
        for p in self.path.parent.iterdir():
            m = self._backup_re.match(p.name)
            if m:
                with contextlib.suppress(OSError):
                    found.append((m.group(1), p.stat().st_mtime, p))
        found.sort(reverse=True)
        return [p for _, _, p in found]

    def prune(self) -> None:
        if not self.rotation:
            return
        backups = self.backups()
        doomed = backups[self.rotation.max_backups :] if self.rotation.max_backups else []
        if self.rotation.max_days:
            cutoff = self._now() - timedelta(days=self.rotation.max_days)
            for p in backups:
                m = self._backup_re.match(p.name)
                assert m is not None
                stamp = datetime.strptime(m.group(1) + "000", _TS_FORMAT).replace(tzinfo=cutoff.tzinfo)
                if stamp < cutoff and p not in doomed:
                    doomed.append(p)
        for p in doomed:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


# Resolved paths written by a running file exporter: two writers on one file would
# interleave partial lines and rotate each other's files.
_PATHS_IN_USE: set[str] = set()


class FileExporter(QueuedExporter):
    config: FileConfig

    def __init__(self, ctx: ComponentContext, config: FileConfig) -> None:
        super().__init__(ctx, config)
        self.path = Path(config.path).expanduser()
        self.writer = RotatingWriter(self.path, config.rotation, config.append)
        self._lock = threading.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._claimed = ""
        self._dirty = False

    async def start(self) -> None:
        key = os.path.realpath(self.path)
        if key in _PATHS_IN_USE:
            raise RuntimeError(f"exporter {self.id}: {self.path} is already written by another file exporter")
        try:
            await asyncio.to_thread(self.writer.open)
        except OSError as exc:
            raise RuntimeError(f"exporter {self.id}: cannot open {self.path}: {exc}") from exc
        _PATHS_IN_USE.add(key)
        self._claimed = key
        await super().start()
        if self.config.flush_interval > 0:
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"{self.id}-flush")

    async def send(self, batch: Batch) -> None:
        await asyncio.to_thread(self._write, batch)

    def _write(self, batch: Batch | AnomalyBatch) -> None:
        # encoded outside the lock: consumers encode in parallel
        line = batch.serialize() if isinstance(batch, AnomalyBatch) else encode(batch.request) + b"\n"
        with self._lock:
            self.writer.write(line)
            if self.config.flush_interval == 0:
                self.writer.flush()
            else:
                self._dirty = True

    def _flush(self) -> None:
        with self._lock:
            if self._dirty:
                self.writer.flush()
                self._dirty = False

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval)
            try:
                await asyncio.to_thread(self._flush)
            except OSError as exc:
                self.logger.error(f"flushing {self.path} failed: {exc}")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await asyncio.to_thread(self._close)
        finally:
            _PATHS_IN_USE.discard(self._claimed)

    def _close(self) -> None:
        with self._lock:
            self.writer.close()


FACTORY = Factory(
    type="file",
    kind=Kind.EXPORTER,
    config=FileConfig,
    create=FileExporter,
    signals=frozenset(Signal),
    description="Writes OTLP/JSON lines (one Export request per line; alerts: one per line), with rotation.",
)
