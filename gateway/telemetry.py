"""Self-telemetry: Collector-named metrics on a per-runtime registry, and logging setup.

Metric names follow the OpenTelemetry Collector's own (`otelcol_*`) so that
existing Collector dashboards and alerts work against LLM-Sentinel unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.batch import Signal

T = TypeVar("T")

# Collector item names per signal, as used in its metric names.
ITEM_NAMES: dict[Signal, str] = {
    Signal.TRACES: "spans",
    Signal.METRICS: "metric_points",
    Signal.LOGS: "log_records",
    Signal.ANOMALIES: "anomalies",
}


class SelfTelemetry:
    """All self-metrics of one gateway runtime (a registry per runtime keeps tests independent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Per-runtime singletons of components that several instances share (e.g. LLM metrics).
        self.shared: dict[str, Any] = {}
        r = self.registry
        self.receiver_accepted: dict[Signal, Counter] = {}
        self.receiver_refused: dict[Signal, Counter] = {}
        self.exporter_sent: dict[Signal, Counter] = {}
        self.exporter_send_failed: dict[Signal, Counter] = {}
        self.exporter_enqueue_failed: dict[Signal, Counter] = {}
        for sig, item in ITEM_NAMES.items():
            self.receiver_accepted[sig] = Counter(
                f"otelcol_receiver_accepted_{item}",
                f"Number of {item.replace('_', ' ')} successfully pushed into the pipeline.",
                ["receiver", "transport"],
                registry=r,
            )
            self.receiver_refused[sig] = Counter(
                f"otelcol_receiver_refused_{item}",
                f"Number of {item.replace('_', ' ')} that could not be pushed into the pipeline.",
                ["receiver", "transport"],
                registry=r,
            )
            self.exporter_sent[sig] = Counter(
                f"otelcol_exporter_sent_{item}",
                f"Number of {item.replace('_', ' ')} successfully sent to destination.",
                ["exporter"],
                registry=r,
            )
            self.exporter_send_failed[sig] = Counter(
                f"otelcol_exporter_send_failed_{item}",
                f"Number of {item.replace('_', ' ')} in failed attempts to send to destination.",
                ["exporter"],
                registry=r,
            )
            self.exporter_enqueue_failed[sig] = Counter(
                f"otelcol_exporter_enqueue_failed_{item}",
                f"Number of {item.replace('_', ' ')} failed to be added to the sending queue.",
                ["exporter"],
                registry=r,
            )
        self.queue_size = Gauge(
            "otelcol_exporter_queue_size",
            "Current size of the retry queue (in batches).",
            ["exporter"],
            registry=r,
        )
        self.queue_capacity = Gauge(
            "otelcol_exporter_queue_capacity",
            "Fixed capacity of the retry queue (in batches).",
            ["exporter"],
            registry=r,
        )
        self.processor_dropped = Counter(
            "otelcol_processor_dropped_items",
            "Number of items dropped by a processor.",
            ["processor", "pipeline"],
            registry=r,
        )
        self.batch_send_size = Counter(
            "otelcol_processor_batch_batch_send_size_items",
            "Items sent by the batch processor, summed over batches.",
            ["processor", "pipeline", "trigger"],
            registry=r,
        )
        self.memory_rss = Gauge(
            "otelcol_process_memory_rss", "Total physical memory (resident set size) in bytes.", registry=r
        )
        self.cpu_seconds = Gauge(
            "otelcol_process_cpu_seconds", "Total CPU user and system time in seconds.", registry=r
        )
        self.uptime = Gauge("otelcol_process_uptime", "Uptime of the process in seconds.", registry=r)
        self._proc = psutil.Process(os.getpid())
        self._started = time.monotonic()
        self.memory_rss.set_function(lambda: float(self._proc.memory_info().rss))
        self.cpu_seconds.set_function(lambda: float(sum(self._proc.cpu_times()[:2])))
        self.uptime.set_function(lambda: time.monotonic() - self._started)

    def singleton(self, key: str, create: Callable[[], T]) -> T:
        """The runtime-wide instance stored under `key`, created on first use (e.g. LLM metrics)."""
        obj = self.shared.get(key)
        if obj is None:
            obj = self.shared[key] = create()
        return obj


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s  %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = getattr(record, "fields", None)
        if extra:
            base += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        return base


JsonFormatter.converter = time.gmtime


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
