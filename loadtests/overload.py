"""Overload: offer a gateway ~10x what it sustains, with real OTel SDK exporters, and count every span.

    .venv/bin/python -m loadtests.overload [--shape cpu|slow-sink] [--transport http|grpc]
        [--clients 3] [--threads 4] [--factor 10] [--measure 10] [--duration 15]
        [--limit-mib 0] [--spike-mib 0] [--request-limit-mib 4] [--drain-timeout 300] [--json]

Two phases, each against a fresh `python -m gateway run` on free loopback ports:

1. sustainable rate: the clients send as fast as they can (closed loop) for `--measure`
   seconds; the rate is what reached the sink per second (not what was accepted: a buffer
   can accept faster than the pipeline gets rid of data for a while).
2. overload: the clients create spans at `--factor` times that rate (open loop, into their
   own backlog) for `--duration` seconds, export them with the SDK's retrying exporters,
   and keep exporting until every span was delivered or `--drain-timeout` passed.

Shapes: `cpu` is the full default pipeline (memory_limiter, redact, genai, batch → file
exporter + detect); the pipeline's CPU is the bottleneck. `slow-sink` forwards with an `otlp`
exporter (small sending queue) to a local gRPC OTLP sink that answers one request at a time
after `--sink-delay` seconds, so the exporter's queue fills and the batch buffer behind it.

The memory limit (`--limit-mib`, default: the gateway's RSS once warm + 160 MiB; spike
default a quarter of the headroom) is set low on purpose so pushback happens quickly.
Clients are `loadtests.sdk_client` processes with prebuilt llmgen payloads (the SDK's own
retry loop, without re-encoding per call, so a few processes can offer 10x).

Prints: offered (spans created by the clients), accepted (the gateway's receiver counter),
delivered (the sink's count), refusals by code and whether they carried Retry-After /
RetryInfo, SDK give-ups (export() calls that failed after the SDK's own retries; the client
then exports the batch again), max RSS (VmHWM) against the limit, and the time to drain
after offering stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from loadtests.otlp_load import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# ----------------------------------------------------------------- gateway config
@dataclass
class Limits:
    limit_mib: int
    spike_mib: int
    request_limit_mib: float = 4.0


def gateway_config(
    ports: dict[str, int], out: Path, limits: Limits, *, sink: str | None = None, detect: bool = True
) -> dict[str, Any]:
    """The default pipeline with a low memory limit; `sink` (host:port) replaces the file exporter
    by an `otlp` exporter with a small sending queue."""
    exporters: dict[str, Any]
    if sink is None:
        exporters = {"file/out": {"path": str(out), "flush_interval": "100ms"}}
    else:
        exporters = {
            "otlp/sink": {
                "endpoint": sink,
                "compression": "none",
                "sending_queue": {"queue_size": 4, "num_consumers": 1},
                "retry_on_failure": {
                    "initial_interval": "50ms",
                    "max_interval": "500ms",
                    "max_elapsed_time": 0,
                },
                "timeout": "30s",
            }
        }
    sink_id = next(iter(exporters))
    traces_out = [sink_id, "detect"] if detect else [sink_id]
    pipelines: dict[str, Any] = {
        "traces": {
            "receivers": ["otlp"],
            "processors": ["memory_limiter", "redact", "genai", "batch"],
            "exporters": traces_out,
        }
    }
    config: dict[str, Any] = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{LOOPBACK}:{ports['grpc']}"},
                    "http": {"endpoint": f"{LOOPBACK}:{ports['http']}"},
                }
            }
        },
        "processors": {
            "memory_limiter": {
                "check_interval": "100ms",
                "limit_mib": limits.limit_mib,
                "spike_limit_mib": limits.spike_mib,
                "request_limit_mib": limits.request_limit_mib,
            },
            "redact": {},
            "genai": {},
            "batch": {
                "send_batch_size": 2048,
                "send_batch_max_size": 2048,  # a slow sink's pace must not depend on how much piled up
                "timeout": "100ms",
                "max_buffered_items": 8192,
            },
        },
        "exporters": exporters,
        "service": {
            "pipelines": pipelines,
            "telemetry": {"logs": {"level": "warn"}, "admin": {"endpoint": f"{LOOPBACK}:{ports['admin']}"}},
            "shutdown_timeout": "10s",
        },
    }
    if detect:
        config["connectors"] = {"detect": {}}
        config["exporters"]["debug"] = {
            "verbosity": "basic",
            "sampling_initial": 1,
            "sampling_thereafter": 1000,
        }
        pipelines["anomalies"] = {"receivers": ["detect"], "exporters": ["debug"]}
    return config


# ----------------------------------------------------------------- the gateway process
class Gateway:
    """`python -m gateway run` on free ports, its RSS sampled from outside; a context manager."""

    def __init__(self, config: dict[str, Any], ports: dict[str, int], tmp: Path) -> None:
        self.ports = ports
        self.tmp = tmp
        self.cfg = tmp / "gateway.yaml"
        self.cfg.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_rss = 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> Gateway:
        self.log = (self.tmp / "gateway.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.cfg)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600  # a cold numba cache compiles every kernel first
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_text()
                self.__exit__()
                raise RuntimeError(f"gateway did not become ready:\n{log}")
            time.sleep(0.02)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also when interrupted (a test timeout): never leave the gateway running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        self.log.close()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.ports['admin']}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _sample(self) -> None:
        assert self.proc is not None
        ps = psutil.Process(self.proc.pid)
        while not self._stop.wait(0.02):
            try:
                self.max_rss = max(self.max_rss, int(ps.memory_info().rss))
            except psutil.Error:
                return

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """The kernel's high-water mark (VmHWM): catches spikes between samples."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return max(self.max_rss, int(m.group(1)) * 1024 if m else 0)

    def metrics(self) -> dict[str, float]:
        """Self-metrics summed over their labels, keyed `name` and `name{exporter="..."}`."""
        url = f"http://{LOOPBACK}:{self.ports['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            name = key.split("{", 1)[0]
            if name.endswith("_created"):
                continue
            out[name] = out.get(name, 0.0) + float(value)
            m = re.search(r'exporter="([^"]+)"', key)
            if m:
                out[f"{name}{{{m.group(1)}}}"] = float(value)
        return out

    def log_text(self, tail: int = 4000) -> str:
        self.log.flush()
        return (self.tmp / "gateway.log").read_text(errors="replace")[-tail:]


# ----------------------------------------------------------------- a slow OTLP sink
class SlowSink:
    """A gRPC OTLP trace sink that takes one request at a time and answers after `delay` seconds."""

    def __init__(self, delay: float, keep_ids: bool = False) -> None:
        self.delay = delay
        self.keep_ids = keep_ids
        self.spans = 0
        self.requests = 0
        self.ids: list[bytes] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=1),
            options=[("grpc.max_receive_message_length", 64 * MIB)],
            maximum_concurrent_rpcs=64,
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        service, _, method = TRACE_EXPORT[1:].partition("/")
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
        self.server.add_insecure_port(f"{LOOPBACK}:{self.port}")

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _export(self, req: ExportTraceServiceRequest, _: Any) -> ExportTraceServiceResponse:
        time.sleep(self.delay)
        spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with self.lock:
            self.requests += 1
            self.spans += len(spans)
            if self.keep_ids:
                self.ids.extend(s.span_id for s in spans)
        return ExportTraceServiceResponse()

    def __enter__(self) -> SlowSink:
        self.server.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.stop(1).wait(5)


# ----------------------------------------------------------------- clients
@dataclass
class ClientSpec:
    transport: str
    endpoint: str
    spans: int
    batch: int = 512
    threads: int = 4
    rate: float = 0.0
    payload: str = "prebuilt"
    timeout: float = 30.0
    deadline: float = 120.0
    seed: int = 1
    ids_out: str = ""

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "loadtests.sdk_client"]
        for name, value in asdict(self).items():
            if value != "":
                argv += [f"--{name.replace('_', '-')}", str(value)]
        return argv


@contextlib.contextmanager
def clients(specs: list[ClientSpec]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one process per spec; they are killed if the block exits early."""
    procs = [
        subprocess.Popen(s.argv(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in specs
    ]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def reports(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(
                f"client exited with {p.returncode}: {stderr.decode(errors='replace')[-2000:]}"
            )
        out.append(json.loads(stdout))
    return out


def merge(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One client report from several: counts added, hints' range widened."""
    total: dict[str, Any] = {"responses": {}}
    for r in reps:
        for k, v in r.items():
            if k == "responses":
                for code, n in v.items():
                    total["responses"][code] = total["responses"].get(code, 0) + n
            elif k in ("hint_min_s", "first_refusal_s") and v is not None:
                total[k] = v if total.get(k) is None else min(total[k], v)
            elif k in ("hint_max_s", "drained_s", "created_done_s") and v is not None:
                total[k] = v if total.get(k) is None else max(total[k], v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return total


# ----------------------------------------------------------------- the two phases
@dataclass
class Setup:
    shape: str
    transport: str
    clients: int
    threads: int
    spans_per_request: int
    sink_delay: float
    limits: Limits | None = None


@contextlib.contextmanager
def environment(setup: Setup, limits: Limits) -> Iterator[tuple[Gateway, Any]]:
    """A fresh gateway (and slow sink) for one phase."""
    tmp = Path(tempfile.mkdtemp(prefix="overload_"))
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    try:
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(SlowSink(setup.sink_delay)) if setup.shape == "slow-sink" else None
            cfg = gateway_config(ports, tmp / "out.jsonl", limits, sink=sink.endpoint if sink else None)
            gw = stack.enter_context(Gateway(cfg, ports, tmp))
            yield gw, sink
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def delivered(gw: Gateway, sink: SlowSink | None) -> int:
    if sink is not None:
        return sink.spans
    return int(gw.metrics().get("otelcol_exporter_sent_spans_total{file/out}", 0))


def endpoint(gw: Gateway, transport: str) -> str:
    return f"{LOOPBACK}:{gw.ports['http' if transport == 'http' else 'grpc']}"


def sustainable_rate(setup: Setup, limits: Limits, seconds: float) -> tuple[float, int]:
    """Spans per second that reach the sink with the clients sending flat out; and the warm RSS."""
    with environment(setup, limits) as (gw, sink):
        spec = [
            ClientSpec(
                setup.transport,
                endpoint(gw, setup.transport),
                spans=10**9,
                batch=setup.spans_per_request,
                threads=setup.threads,
                deadline=seconds + 2,
                timeout=10,
                seed=i + 1,
            )
            for i in range(setup.clients)
        ]
        with clients(spec) as procs:
            time.sleep(2)  # clients start, the pipeline warms up
            d0, t0 = delivered(gw, sink), time.monotonic()
            time.sleep(seconds)
            rate = (delivered(gw, sink) - d0) / (time.monotonic() - t0)
            for p in procs:
                p.kill()
        time.sleep(1)
        return rate, gw.rss()


@dataclass
class OverloadResult:
    shape: str
    transport: str
    sustainable_spans_s: float
    offered_spans_s: float
    duration_s: float
    offered: int
    accepted: int
    delivered: int
    client_delivered: int
    undelivered: int
    sdk_give_ups: int
    responses: dict[str, int]
    refusals_with_hint: int
    refusals_without_hint: int
    hint_range_s: tuple[float | None, float | None]
    max_rss_mib: float
    limit_mib: int
    drain_s: float | None
    gateway_refused_spans: float
    dropped: dict[str, float] = field(default_factory=dict)
    limiter_log: list[str] = field(default_factory=list)  # the memory limiter's warnings

    def lines(self) -> list[str]:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.responses.items()))
        drain = f"{self.drain_s:.1f} s" if self.drain_s is not None else "did not drain"
        return [
            f"shape {self.shape} over {self.transport}",
            f"sustainable  {self.sustainable_spans_s:,.0f} spans/s (delivered to the sink, clients flat out)",
            f"offered      {self.offered:,} spans = {self.offered_spans_s:,.0f} spans/s "
            f"for {self.duration_s:g} s ({self.offered_spans_s / max(self.sustainable_spans_s, 1):.1f}x)",
            f"accepted     {self.accepted:,} (gateway receiver counter)",
            f"delivered    {self.delivered:,} (sink); clients saw {self.client_delivered:,} acknowledged, "
            f"{self.undelivered:,} undelivered",
            f"responses    {codes}",
            f"refusals     {self.refusals_with_hint:,} with Retry-After/RetryInfo "
            f"(range {self.hint_range_s[0]}-{self.hint_range_s[1]} s), "
            f"{self.refusals_without_hint:,} without",
            f"SDK give-ups {self.sdk_give_ups:,} export() calls failed after the SDK's retries (re-exported)",
            f"max RSS      {self.max_rss_mib:.0f} MiB (VmHWM) vs limit {self.limit_mib} MiB",
            f"drain        {drain} after offering stopped",
            f"dropped      {self.dropped or 'none'}",
            f"limiter log  {len(self.limiter_log)} warning(s)",
            *(f"  {line}" for line in self.limiter_log[:3]),
        ]


def overload(
    setup: Setup, limits: Limits, rate: float, duration: float, drain_timeout: float
) -> OverloadResult:
    with environment(setup, limits) as (gw, sink):
        per_client = rate / setup.clients
        spans = int(per_client * duration)
        specs = [
            ClientSpec(
                setup.transport,
                endpoint(gw, setup.transport),
                spans=spans,
                batch=setup.spans_per_request,
                threads=setup.threads,
                rate=per_client,
                deadline=duration + drain_timeout,
                timeout=30,
                seed=i + 1,
            )
            for i in range(setup.clients)
        ]
        with clients(specs) as procs:
            reps = reports(procs, timeout=duration + drain_timeout + 60)
        total = merge(reps)
        offered = int(total.get("created", 0))
        deadline = time.monotonic() + 30
        while delivered(gw, sink) < offered and time.monotonic() < deadline:
            time.sleep(0.1)  # the batch buffer and exporter queue empty after the last 200
        m = gw.metrics()
        got = delivered(gw, sink)
        warnings = [ln for ln in gw.log_text(200_000).splitlines() if "memory_limiter" in ln]
        # per client: from the end of its offering to its last acknowledged export
        drain_s = max(max(0.0, float(r["drained_s"]) - float(r["created_done_s"])) for r in reps)
        return OverloadResult(
            shape=setup.shape,
            transport=setup.transport,
            sustainable_spans_s=0.0,
            offered_spans_s=rate,
            duration_s=duration,
            offered=offered,
            accepted=int(m.get("otelcol_receiver_accepted_spans_total", 0)),
            delivered=got,
            client_delivered=int(total.get("delivered", 0)),
            undelivered=int(total.get("undelivered", 0)),
            sdk_give_ups=int(total.get("sdk_give_ups", 0)),
            responses=dict(total.get("responses", {})),
            refusals_with_hint=int(total.get("refusals_with_hint", 0)),
            refusals_without_hint=int(total.get("refusals_without_hint", 0)),
            hint_range_s=(total.get("hint_min_s"), total.get("hint_max_s")),
            max_rss_mib=gw.peak_rss() / MIB,
            limit_mib=limits.limit_mib,
            drain_s=drain_s if got >= offered else None,
            gateway_refused_spans=m.get("otelcol_receiver_refused_spans_total", 0.0),
            limiter_log=[ln.split("memory_limiter", 1)[1].strip()[:300] for ln in warnings],
            dropped={
                k: v
                for k, v in m.items()
                if v
                and (
                    k.startswith("otelcol_processor_dropped") or k.startswith("otelcol_exporter_send_failed")
                )
            },
        )


def warm_rss(setup: Setup) -> int:
    """RSS of an idle gateway of this shape after start (no limit pressure)."""
    with environment(setup, Limits(limit_mib=8192, spike_mib=1024, request_limit_mib=0)) as (gw, _):
        time.sleep(0.5)
        return gw.rss()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["cpu", "slow-sink"], default="cpu")
    ap.add_argument("--transport", choices=["http", "grpc"], default="http")
    ap.add_argument("--clients", type=int, default=3, help="client processes")
    ap.add_argument("--threads", type=int, default=4, help="export calls in flight per client")
    ap.add_argument("--spans-per-request", type=int, default=512)
    ap.add_argument("--factor", type=float, default=10.0, help="offered load / sustainable rate")
    ap.add_argument("--measure", type=float, default=10.0, help="seconds to measure the sustainable rate")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of overload")
    ap.add_argument("--limit-mib", type=int, default=0, help="memory limit (default: warm RSS + 160)")
    ap.add_argument("--spike-mib", type=int, default=0, help="spike (default: a quarter of the headroom)")
    ap.add_argument("--request-limit-mib", type=float, default=4.0, help="request budget (0: none)")
    ap.add_argument("--sink-delay", type=float, default=0.05, help="slow-sink: seconds per request")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    setup = Setup(
        args.shape, args.transport, args.clients, args.threads, args.spans_per_request, args.sink_delay
    )
    idle = int(warm_rss(setup) / MIB)
    limit = args.limit_mib or idle + 160
    spike = args.spike_mib or max(8, (limit - idle) // 4)
    limits = Limits(limit, spike, args.request_limit_mib)
    print(
        f"idle RSS {idle} MiB; memory limit {limit} MiB, spike {spike} MiB, "
        f"request budget {args.request_limit_mib} MiB",
        flush=True,
    )
    rate, rss = sustainable_rate(setup, limits, args.measure)
    print(f"sustainable: {rate:,.0f} spans/s (gateway RSS after it: {rss / MIB:.0f} MiB)", flush=True)
    res = overload(setup, limits, rate * args.factor, args.duration, args.drain_timeout)
    res.sustainable_spans_s = rate
    if args.json:
        print(json.dumps(asdict(res)))
    else:
        print("\n".join(res.lines()))
    ok = res.delivered == res.offered == res.accepted and res.max_rss_mib < limit
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
