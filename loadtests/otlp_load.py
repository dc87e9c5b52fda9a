"""OTLP load generator: sustained GenAI trace traffic into a gateway (or the naive baseline).

    .venv/bin/python -m loadtests.otlp_load [--target gateway|naive] [--pipeline full|passthrough]
        [--transport http|grpc] [--spans-per-request 512] [--concurrency 4]
        [--duration 15] [--warmup 2] [--gzip] [--requests 64] [--json]
        [--workers 1[,2,...]] [--grpc-channels N] [--rate SPANS_PER_S]

Pre-serialises `--requests` ExportTraceServiceRequests of realistic GenAI traffic
(loadtests.llmgen: HTTP root span, DB span, LLM span with gen_ai.* attributes) and
sends them round-robin with a fixed number of concurrent in-flight requests, over
OTLP/HTTP (aiohttp, protobuf, optionally gzip, pre-compressed) or OTLP/gRPC
(grpc.aio raw unary calls on one channel, optional gzip), for a fixed duration
after a warm-up. Loopback only.

`--workers 1,2` runs the gateway once per worker count (`sentinel run --workers N`),
same payloads, one after the other, and prints the ratios to the first. With
several workers the kernel spreads *connections* over them (SO_REUSEPORT), so
the load needs several: HTTP uses up to `--concurrency` keep-alive connections,
gRPC `--grpc-channels` channels (default: 1 with one worker, else
`--concurrency`), each its own TCP connection. Few connections hash unevenly
over the workers, which shows in the numbers: use a concurrency of 8 or more.

The target is started here as a subprocess on free ports and stopped at the end:
  gateway / full         `sentinel run` with the default pipeline: memory_limiter,
                         redact, genai, batch → debug + detect connector (anomalies → debug)
  gateway / passthrough  otlp → batch → debug (no LLM processing; compare with the
                         Collector's pass-through testbed numbers)
  naive                  loadtests/naive_receiver.py (object decode + Python column loop)

The exporter is `debug` at basic verbosity sampled to one log line per 1000
batches after the first each second, so exporting costs next to nothing and the
numbers are receive + process. A `file` exporter would add the cost of writing
OTLP/JSON, which is not what this measures.

Measured over the window after warm-up: spans/s accepted (2xx / OK, minus
partial-success rejections), target CPU seconds (psutil, process + children)
→ spans per CPU-second, p50/p99 request latency, the load generator's own CPU
(on a 2-core machine it competes with the target), and the target's memory
summed over its processes: `peak_rss_mib` is the high-water mark (VmHWM, start-up
included), while `rss_mib_max`/`rss_mib_median` (and `pss_mib_median`,
`uss_mib_median`, from /proc/PID/smaps_rollup) are sampled twice a second during
the window: the steady state. At the end the spans the target says it accepted are read back
(gateway: otelcol_receiver_accepted_spans on the admin /metrics; naive: /stats).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from loadtests.llmgen import TrafficConfig, generate
from loadtests.rawhttp import RawHttpSender
from loadtests.timeshift import shift_times

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOOPBACK = "127.0.0.1"
MAX_MSG = 64 * 1024 * 1024


# ----------------------------------------------------------------- payloads
@dataclass
class Payloads:
    wires: list[bytes]  # serialised requests of one cycle
    spans: list[int]  # spans per request
    raw_bytes: int  # uncompressed size of one cycle
    cycle_ns: int  # event time one cycle covers; cycle k is shifted by k × this
    gzipped: bool = False  # HTTP bodies are gzip-compressed (gRPC compresses in the channel)

    def body(self, i: int, cycle: int) -> bytes:
        """Request `i` of cycle `cycle`: timestamps moved on so event time keeps going forward."""
        wire = self.wires[i] if cycle == 0 else shift_times(self.wires[i], cycle * self.cycle_ns)
        return gzip.compress(wire, 1) if self.gzipped else wire


def build_payloads(
    n_requests: int,
    spans_per_request: int,
    *,
    gzipped: bool,
    seed: int = 1,
    rate_scale: float = 100_000.0,
) -> Payloads:
    """The first `n_requests` full requests of generated traffic, serialised once.

    `rate_scale` multiplies llmgen's per-series call rates so that event time in the requests
    advances about as fast as it would for a gateway taking this load (the default: ~0.4 s of
    event time per 64 × 512 spans), rather than minutes per request.
    """
    traffic = TrafficConfig(
        seed=seed,
        duration_s=30 * 86400.0,
        spans_per_request=spans_per_request,
        rate_scale=rate_scale,
        slice_s=max(0.05, 300.0 / rate_scale),
    )
    wires, spans, raw = [], [], 0
    lo, hi = 2**63, 0
    for req in itertools.islice(generate(traffic), n_requests):
        wire = req.SerializeToString()
        raw += len(wire)
        spans.append(sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans))
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    lo = min(lo, sp.start_time_unix_nano)
                    hi = max(hi, sp.end_time_unix_nano)
        wires.append(wire)
    if not wires:
        raise RuntimeError("llmgen produced no requests")
    return Payloads(wires, spans, raw, cycle_ns=hi - lo + 1_000_000, gzipped=gzipped)


# ----------------------------------------------------------------- targets
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def gateway_config(pipeline: str, http: int, grpc_port: int, admin: int) -> dict[str, Any]:
    debug = {"verbosity": "basic", "sampling_initial": 1, "sampling_thereafter": 1000}
    receivers = {
        "otlp": {
            "protocols": {
                "grpc": {"endpoint": f"{LOOPBACK}:{grpc_port}"},
                "http": {"endpoint": f"{LOOPBACK}:{http}"},
            }
        }
    }
    telemetry = {"logs": {"level": "warn"}, "admin": {"endpoint": f"{LOOPBACK}:{admin}"}}
    if pipeline == "passthrough":
        return {
            "receivers": receivers,
            "processors": {"batch": {"send_batch_size": 8192, "timeout": "200ms"}},
            "exporters": {"debug": debug},
            "service": {
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["debug"]}
                },
                "telemetry": telemetry,
            },
        }
    return {
        "receivers": receivers,
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": 512, "spike_limit_mib": 128},
            "redact": {},
            "genai": {},
            "batch": {"send_batch_size": 8192, "timeout": "200ms"},
        },
        "connectors": {"detect": {}},
        "exporters": {"debug": debug},
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "redact", "genai", "batch"],
                    "exporters": ["debug", "detect"],
                },
                "anomalies": {"receivers": ["detect"], "exporters": ["debug"]},
            },
            "telemetry": telemetry,
        },
    }


class Target:
    """A target process on free loopback ports; a context manager."""

    def __init__(self, kind: str, pipeline: str = "full", workers: int = 1) -> None:
        self.kind, self.pipeline, self.workers = kind, pipeline, workers
        self.http, self.grpc, self.admin = free_port(), free_port(), free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="otlp_load_"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def command(self) -> list[str]:
        if self.kind == "naive":
            return [
                sys.executable,
                "-m",
                "loadtests.naive_receiver",
                "--http",
                f"{LOOPBACK}:{self.http}",
                "--grpc",
                f"{LOOPBACK}:{self.grpc}",
            ]
        cfg = self.tmp / "sentinel.yaml"
        cfg.write_text(yaml.safe_dump(gateway_config(self.pipeline, self.http, self.grpc, self.admin)))
        exe = Path(sys.executable).with_name("sentinel")
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]
        return [*head, "run", "--config", str(cfg), "--workers", str(self.workers)]

    def __enter__(self) -> Target:
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, SENTINEL_DATA_DIR=str(self.tmp))
        self.log = (self.tmp / "target.log").open("wb")
        self.proc = subprocess.Popen(
            self.command(), cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.ps = psutil.Process(self.proc.pid)
        ports = [self.http, self.grpc] + ([self.admin] if self.kind == "gateway" else [])
        deadline = time.monotonic() + 60
        while not all(_listening(p) for p in ports):
            if self.proc.poll() is not None:
                raise RuntimeError(f"target exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                text = self.log_text()  # before __exit__ closes the log
                self.__exit__()
                raise RuntimeError(f"target did not listen within 60 s:\n{text}")
            time.sleep(0.05)
        while self.kind == "gateway" and not self._ready():  # every worker, detection kernels loaded
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log_text()
                self.__exit__()
                raise RuntimeError(f"target did not get ready within 60 s:\n{text}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.admin}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_text(self) -> str:
        self.log.flush()
        return (self.tmp / "target.log").read_text(errors="replace")[-4000:]

    def processes(self) -> list[psutil.Process]:
        assert self.ps is not None
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def peak_rss(self) -> int:
        """High-water mark of resident memory (VmHWM), summed over the process tree."""
        total = 0
        for p in self.processes():
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
                total += int(m.group(1)) * 1024 if m else p.memory_info().rss
            except (OSError, psutil.NoSuchProcess):
                pass
        return total

    def accepted_spans(self) -> int:
        """Spans the target itself says it accepted."""
        import requests

        if self.kind == "naive":
            return int(requests.get(f"http://{LOOPBACK}:{self.http}/stats", timeout=10).json()["spans"])
        text = requests.get(f"http://{LOOPBACK}:{self.admin}/metrics", timeout=10).text
        return _accepted(text)

    def worker_spans(self) -> list[int]:
        """Spans each worker accepted (several workers), read from its private admin socket."""
        import http.client

        import requests

        if self.kind != "gateway" or self.workers == 1:
            return []
        out = []
        for w in requests.get(f"http://{LOOPBACK}:{self.admin}/readyz", timeout=10).json()["workers"]:
            conn = http.client.HTTPConnection("localhost", timeout=10)
            conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.sock.connect(w["admin"].removeprefix("unix:"))
            conn.request("GET", "/metrics")
            out.append(_accepted(conn.getresponse().read().decode()))
            conn.close()
        return out


class MemorySampler:
    """Resident memory of a target's processes, sampled in a thread during the measured window.

    RSS counts every resident page; PSS shares pages mapped by several processes among them;
    USS counts pages only this process maps (what stopping it would free).
    """

    def __init__(self, target: Target, period: float = 0.5) -> None:
        self.target, self.period = target, period
        self.rss: list[int] = []
        self.pss: list[int] = []
        self.uss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.period):
                return

    def sample(self) -> None:
        rss = pss = uss = 0
        for p in self.target.processes():
            r = _rollup(p)
            rss, pss, uss = rss + r[0], pss + r[1], uss + r[2]
        if rss:
            self.rss.append(rss)
            self.pss.append(pss)
            self.uss.append(uss)

    def summary(self) -> dict[str, float]:
        """MiB: max and median RSS, median PSS and USS (0 without samples)."""
        if not self.rss:
            return {"rss_mib_max": 0.0, "rss_mib_median": 0.0, "pss_mib_median": 0.0, "uss_mib_median": 0.0}
        mib = 2**20
        return {
            "rss_mib_max": round(max(self.rss) / mib, 1),
            "rss_mib_median": round(statistics.median(self.rss) / mib, 1),
            "pss_mib_median": round(statistics.median(self.pss) / mib, 1),
            "uss_mib_median": round(statistics.median(self.uss) / mib, 1),
        }


def _rollup(p: psutil.Process) -> tuple[int, int, int]:
    """(RSS, PSS, USS) bytes of one process; PSS and USS as RSS where smaps_rollup is missing."""
    try:
        text = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
    except OSError:
        try:
            rss = int(p.memory_info().rss)
        except psutil.Error:
            return 0, 0, 0
        return rss, rss, rss
    kb = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return kb.get("Rss", 0), kb.get("Pss", 0), kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)


def _accepted(metrics_text: str) -> int:
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics_text.splitlines()
            if line.startswith("otelcol_receiver_accepted_spans_total{")
        )
    )


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((LOOPBACK, port)) == 0


# ----------------------------------------------------------------- load
@dataclass
class Counters:
    recording: bool = False
    ok: int = 0
    spans: int = 0
    errors: int = 0
    rejected: int = 0
    total_spans: int = 0  # over the whole run, warm-up included, for the server-side check
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


def _rejected(response: bytes) -> int:
    if not response:
        return 0
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp = ExportTraceServiceResponse()
    resp.ParseFromString(response)
    return int(resp.partial_success.rejected_spans)


class _HttpSender:
    def __init__(self, port: int, concurrency: int, gzipped: bool) -> None:
        import aiohttp

        self.url = f"http://{LOOPBACK}:{port}/v1/traces"
        self.headers = {"Content-Type": "application/x-protobuf"}
        if gzipped:
            self.headers["Content-Encoding"] = "gzip"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def send(self, body: bytes) -> tuple[bool, bytes, str]:
        async with self.session.post(self.url, data=body, headers=self.headers) as r:
            data = await r.read()
            return (200 <= r.status < 300), data, f"HTTP {r.status}: {data[:200]!r}"

    async def close(self) -> None:
        await self.session.close()


class _GrpcSender:
    def __init__(self, port: int, gzipped: bool, channels: int = 1) -> None:
        import grpc

        self.grpc = grpc
        options = [("grpc.max_send_message_length", MAX_MSG), ("grpc.max_receive_message_length", MAX_MSG)]
        if channels > 1:  # otherwise channels to one target share a single connection
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channels = [
            grpc.aio.insecure_channel(
                f"{LOOPBACK}:{port}",
                options=options,
                compression=grpc.Compression.Gzip if gzipped else None,
            )
            for _ in range(channels)
        ]
        # no (de)serializers: raw bytes
        self.calls = itertools.cycle([ch.unary_unary(TRACE_EXPORT) for ch in self.channels])

    async def send(self, body: bytes) -> tuple[bool, bytes, str]:
        try:
            return True, await next(self.calls)(body, timeout=60), ""
        except self.grpc.aio.AioRpcError as exc:
            return False, b"", f"{exc.code().name}: {exc.details()}"

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


async def drive(
    port: int,
    transport: str,
    payloads: Payloads,
    concurrency: int,
    gzipped: bool,
    stop: asyncio.Event,
    c: Counters,
    grpc_channels: int = 1,
    rate: float = 0.0,
    http_client: str = "aiohttp",
) -> None:
    """Closed loop (`concurrency` requests back to back) or, with `rate` > 0 spans/s, paced:
    request k is due at k × (spans per request ÷ rate) and waits for its slot (open loop
    up to `concurrency` in flight), so latency is measured at a chosen load."""
    sender: Any = (
        _GrpcSender(port, gzipped, grpc_channels)
        if transport == "grpc"
        else _HttpSender(port, concurrency, gzipped)
        if http_client == "aiohttp"
        else RawHttpSender(LOOPBACK, port, "/v1/traces", concurrency, gzipped)
    )
    n = len(payloads.wires)
    seq = itertools.count()
    interval = (sum(payloads.spans) / n) / rate if rate > 0 else 0.0
    started = time.perf_counter()

    async def worker() -> None:
        while not stop.is_set():  # bounded: the caller sets `stop` after warm-up + duration
            k = next(seq)
            if interval:
                delay = started + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            cycle, i = divmod(k, n)
            body = payloads.body(i, cycle)
            t0 = time.perf_counter()
            try:
                ok, resp, err = await sender.send(body)
            except Exception as exc:  # connection errors count, the run goes on
                ok, resp, err = False, b"", repr(exc)
            dt = time.perf_counter() - t0
            recording = c.recording and not stop.is_set()
            if ok:
                rej = _rejected(resp)
                c.total_spans += payloads.spans[i] - rej
                if recording:
                    c.ok += 1
                    c.rejected += rej
                    c.spans += payloads.spans[i] - rej
                    c.latencies.append(dt)
            else:
                if len(c.error_samples) < 3:
                    c.error_samples.append(err)
                if recording:
                    c.errors += 1
                else:
                    await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await sender.close()


@dataclass
class Result:
    target: str
    pipeline: str
    workers: int
    transport: str
    spans_per_request: int
    concurrency: int
    gzip: bool
    window_s: float
    requests_ok: int
    errors: int
    rejected_spans: int
    spans_per_s: float
    mb_per_s: float  # uncompressed OTLP protobuf
    target_cpu_s: float
    target_cores: float  # target CPU seconds per wall second
    spans_per_cpu_s: float
    client_cpu_s: float
    peak_rss_mib: float  # VmHWM: the high-water mark, start-up included
    p50_ms: float
    p99_ms: float
    client_spans: int  # accepted over the whole run (warm-up included), per the responses
    target_spans: int  # the same, per the target's own counter
    error_samples: list[str]
    worker_spans: list[int] = field(default_factory=list)  # per worker (how the kernel spread them)
    # sampled during the window (steady state), summed over the target's processes
    rss_mib_max: float = 0.0
    rss_mib_median: float = 0.0
    pss_mib_median: float = 0.0
    uss_mib_median: float = 0.0
    http_client: str = "aiohttp"  # OTLP/HTTP client (`raw`: loadtests/rawhttp.py); "-" for gRPC

    def line(self) -> str:
        total = sum(self.worker_spans)
        name = self.target if self.target == "naive" else f"gateway/{self.pipeline}"
        if self.workers > 1:
            name += f" x{self.workers}"
        return (
            f"{name:<20} {self.transport:<4} {self.spans_per_request:>4} sp/req c={self.concurrency:<2}"
            f"{' gzip' if self.gzip else ''} | {self.spans_per_s:>9,.0f} spans/s"
            f" | {self.spans_per_cpu_s:>9,.0f} spans/CPU-s ({self.target_cores:.2f} cores)"
            f" | p50 {self.p50_ms:6.1f} ms p99 {self.p99_ms:6.1f} ms"
            f" | RSS {self.rss_mib_median:4.0f}/{self.rss_mib_max:.0f} MiB median/max"
            f" (peak {self.peak_rss_mib:.0f})"
            f" | client CPU {self.client_cpu_s:.1f} s"
            f" | errors {self.errors} | target saw {self.target_spans:,}/{self.client_spans:,}"
            + (f" | split {' / '.join(f'{n / total:.0%}' for n in self.worker_spans)}" if total else "")
        )


async def _run_async(
    target: Target,
    transport: str,
    payloads: Payloads,
    concurrency: int,
    gzipped: bool,
    warmup: float,
    duration: float,
    grpc_channels: int = 1,
    rate: float = 0.0,
    memory: MemorySampler | None = None,
    http_client: str = "aiohttp",
) -> tuple[Counters, float, float, float]:
    port = target.grpc if transport == "grpc" else target.http
    c = Counters()
    stop = asyncio.Event()
    task = asyncio.create_task(
        drive(port, transport, payloads, concurrency, gzipped, stop, c, grpc_channels, rate, http_client)
    )
    await asyncio.sleep(warmup)
    cpu0, me0, t0 = target.cpu_seconds(), time.process_time(), time.perf_counter()
    c.recording = True
    if memory is not None:
        memory.start()
    await asyncio.sleep(duration)
    stop.set()
    cpu1, me1, t1 = target.cpu_seconds(), time.process_time(), time.perf_counter()
    if memory is not None:
        memory.stop()
    c.recording = False
    await asyncio.wait_for(task, 120)
    return c, t1 - t0, cpu1 - cpu0, me1 - me0


def run(
    *,
    target: str = "gateway",
    pipeline: str = "full",
    transport: str = "http",
    spans_per_request: int = 512,
    concurrency: int = 4,
    duration: float = 15.0,
    warmup: float = 2.0,
    gzipped: bool = False,
    n_requests: int = 64,
    payloads: Payloads | None = None,
    workers: int = 1,
    grpc_channels: int | None = None,
    rate: float = 0.0,
    http_client: str = "aiohttp",
) -> Result:
    if payloads is None:
        payloads = build_payloads(n_requests, spans_per_request, gzipped=gzipped and transport == "http")
    if grpc_channels is None:
        grpc_channels = 1 if workers == 1 else concurrency
    with Target(target, pipeline, workers) as t:
        memory = MemorySampler(t)
        c, window, cpu, client_cpu = asyncio.run(
            _run_async(
                t,
                transport,
                payloads,
                concurrency,
                gzipped,
                warmup,
                duration,
                grpc_channels,
                rate,
                memory,
                http_client,
            )
        )
        # the batch processor may still hold spans; the receiver counter does not wait for it
        target_spans = t.accepted_spans()
        worker_spans = t.worker_spans()
        rss = t.peak_rss()
    lat = np.array(c.latencies) * 1e3 if c.latencies else np.array([np.nan])
    mean_raw = payloads.raw_bytes / len(payloads.wires)
    mean_spans = sum(payloads.spans) / len(payloads.spans)
    return Result(
        target=target,
        pipeline=pipeline if target == "gateway" else "-",
        workers=workers,
        transport=transport,
        spans_per_request=spans_per_request,
        concurrency=concurrency,
        gzip=gzipped,
        window_s=round(window, 3),
        requests_ok=c.ok,
        errors=c.errors,
        rejected_spans=c.rejected,
        spans_per_s=c.spans / window,
        mb_per_s=c.spans / mean_spans * mean_raw / window / 1e6,
        target_cpu_s=round(cpu, 3),
        target_cores=cpu / window,
        spans_per_cpu_s=c.spans / cpu if cpu > 0 else 0.0,
        client_cpu_s=round(client_cpu, 3),
        peak_rss_mib=rss / 2**20,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        client_spans=c.total_spans,
        target_spans=target_spans,
        error_samples=c.error_samples,
        worker_spans=worker_spans,
        http_client=http_client if transport == "http" else "-",
        **memory.summary(),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["gateway", "naive"], default="gateway")
    ap.add_argument("--pipeline", choices=["full", "passthrough"], default="full", help="gateway pipeline")
    ap.add_argument("--transport", choices=["http", "grpc"], default="http")
    ap.add_argument("--spans-per-request", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    ap.add_argument("--gzip", action="store_true", help="gzip bodies (compressed once, before the run)")
    ap.add_argument(
        "--requests", type=int, default=64, help="distinct pre-serialised requests, sent round-robin"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--workers",
        default="1",
        help="gateway worker processes (sentinel run --workers); a comma list runs each, same payloads",
    )
    ap.add_argument("--grpc-channels", type=int, help="gRPC connections (default: see above)")
    ap.add_argument(
        "--http-client",
        choices=["aiohttp", "raw"],
        default="aiohttp",
        help="OTLP/HTTP client: aiohttp, or the lean pre-formatted one (loadtests/rawhttp.py) that leaves "
        "more of a small machine to the gateway, e.g. for worker scaling",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many spans/s (paced, at most --concurrency in flight) instead of back to back; "
        "use it for latency at a given load, e.g. half the peak a closed-loop run reached",
    )
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    if args.target == "naive" and counts != [1]:
        ap.error("--workers applies to the gateway target")
    payloads = build_payloads(
        args.requests, args.spans_per_request, gzipped=args.gzip and args.transport == "http"
    )
    results = []
    for workers in counts:
        res = run(
            target=args.target,
            pipeline=args.pipeline,
            transport=args.transport,
            spans_per_request=args.spans_per_request,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            gzipped=args.gzip,
            n_requests=args.requests,
            payloads=payloads,
            workers=workers,
            grpc_channels=args.grpc_channels,
            rate=args.rate,
            http_client=args.http_client,
        )
        results.append(res)
        print(json.dumps(asdict(res)) if args.json else res.line(), flush=True)
        if res.error_samples:
            print("error samples:", *res.error_samples, sep="\n  ", file=sys.stderr)
    base = results[0]
    for res in results[1:]:
        if not args.json:
            print(
                f"{res.workers} vs {base.workers} workers: "
                f"x{res.spans_per_s / base.spans_per_s:.2f} spans/s, "
                f"x{res.spans_per_cpu_s / base.spans_per_cpu_s:.2f} spans/CPU-s, "
                f"{res.target_cores:.2f} vs {base.target_cores:.2f} cores busy"
            )


if __name__ == "__main__":
    main()
