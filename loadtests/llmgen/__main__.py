"""Synthetic LLM traffic: write OTLP/JSON lines, or send it live to a gateway on this machine.

File (simulated time, fast as it can):

    python -m loadtests.llmgen --hours 6 --seed 1 \\
        --inject latency_spike@2h:10m:chat-api/gpt-4o-mini \\
        --inject error_burst@4h:15m:rag-worker/gpt-4o-mini:0.3 \\
        --out traffic.jsonl.gz --labels labels.json

Live (POSTs OTLP/protobuf; the simulated timeline is shifted to end now and
played at `--speedup` × real time, so 90 s at 60× is 90 min of traffic):

    python -m loadtests.llmgen --send http://127.0.0.1:4318 --speedup 60 --duration 90s --inject-all
    python -m loadtests.llmgen --demo        # the same, with one anomaly of each type

Anomalies: TYPE@START:DURATION:SERVICE/MODEL[:MAGNITUDE][:KEY=VALUE]... (see
`loadtests.llmgen.anomalies`; `--list-series` shows the targets). In live mode
START counts from the beginning of the live window, in simulated time.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import ipaddress
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from gateway import otlpjson
from loadtests.llmgen.anomalies import (
    ANOMALY_TYPES,
    PROBABILITY_TYPES,
    Anomaly,
    parse_duration,
    parse_rfc3339,
    parse_spec,
    rfc3339,
    write_labels,
)
from loadtests.llmgen.model import DEFAULT_START, Simulator, TrafficConfig, inject_all, series_of
from loadtests.llmgen.otlp import Chunk, generate_chunks

DEMO_URL = "http://127.0.0.1:4318"
DEMO_SPEEDUP = 60.0
DEMO_DURATION_S = 90.0
MAX_CONSECUTIVE_FAILURES = 3
PROGRESS_EVERY_S = 5.0


@dataclass
class Summary:
    """What a run produced (and, live, what the gateway accepted)."""

    spans: int = 0
    llm_calls: int = 0
    errors: int = 0
    rate_limited: int = 0
    requests: int = 0
    anomalies: list[Anomaly] = field(default_factory=list)
    generate_s: float = 0.0  # building requests (simulation + encoding)
    write_s: float = 0.0  # OTLP/JSON encoding and writing, or sending
    accepted_spans: int = 0
    rejected_spans: int = 0
    failed_requests: int = 0
    stopped_early: str = ""

    @property
    def non_llm_spans(self) -> int:
        return self.spans - self.llm_calls

    def add(self, chunk: Chunk) -> None:
        self.spans += chunk.spans
        self.llm_calls += chunk.llm_calls
        self.errors += chunk.errors
        self.rate_limited += chunk.rate_limited
        self.requests += 1


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _describe(a: Anomaly) -> str:
    extra = f" → {a.to}" if a.to else ""
    mag = f"p={a.k:g}" if a.type in PROBABILITY_TYPES else f"×{a.k:g}"
    target = f"{a.service}/{a.model}"
    return f"{a.type:<17} {target:<34} {_hms(a.start)}–{_hms(a.end)}  {mag}{extra}"


def print_summary(s: Summary, config: TrafficConfig, out: IO[str], labels: Path | None) -> None:
    hours = config.duration_s / 3600
    start = rfc3339(config.start_epoch_s)
    print(f"llmgen: {hours:.2f} h of simulated traffic from {start}, seed {config.seed}", file=out)
    print(
        f"  spans {s.spans:,} in {s.requests:,} requests: LLM calls {s.llm_calls:,} "
        f"(errors {s.errors:,}, rate-limited {s.rate_limited:,}), non-LLM spans {s.non_llm_spans:,}",
        file=out,
    )
    where = f" (labels: {labels})" if labels else ""
    print(f"  anomalies injected: {len(s.anomalies)}{where}", file=out)
    for a in sorted(s.anomalies, key=lambda a: a.start):
        print(f"    {_describe(a)}", file=out)
    rate = s.spans / s.generate_s if s.generate_s > 0 else math.inf
    print(f"  generated in {s.generate_s:.2f} s ({rate:,.0f} spans/s)", file=out)
    if s.stopped_early:
        print(f"  stopped early: {s.stopped_early}", file=out)


# ---------------------------------------------------------------- file mode
def write_file(config: TrafficConfig, path: str, progress: IO[str] | None) -> Summary:
    """Write OTLP/JSON lines (one ExportTraceServiceRequest each); `-` is stdout, `.gz` is gzipped."""
    sim = Simulator(config)
    summary = Summary(anomalies=list(sim.anomalies))
    if path == "-":
        fh: Any = sys.stdout.buffer
    elif path.endswith(".gz"):
        fh = gzip.open(path, "wb", compresslevel=5)  # noqa: SIM115 - closed below
    else:
        fh = open(path, "wb")  # noqa: SIM115 - closed below
    last_report = started = time.perf_counter()
    try:
        chunks = generate_chunks(config, sim)
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            t1 = time.perf_counter()
            summary.generate_s += t1 - t0
            if chunk is None:
                break
            summary.add(chunk)
            fh.write(otlpjson.encode(chunk.request))
            fh.write(b"\n")
            t2 = time.perf_counter()
            summary.write_s += t2 - t1
            if progress is not None and t2 - last_report >= 2.0:
                last_report = t2
                done = (chunk.last_key_ns / 1e9 - config.start_epoch_s) / config.duration_s
                print(
                    f"  {min(done, 1.0) * 100:5.1f}%  sim {_hms(done * config.duration_s)}"
                    f"  spans {summary.spans:,}  ({summary.spans / (t2 - started):,.0f} spans/s written)",
                    file=progress,
                    flush=True,
                )
    finally:
        if fh is not sys.stdout.buffer:
            fh.close()
    return summary


# ---------------------------------------------------------------- live mode
def check_loopback(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an http:// URL on this machine; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"--send takes an http:// URL, got {url!r}")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"--send only sends to this machine (127.0.0.1, ::1, localhost), not {host!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/traces"):
        path += "/v1/traces"
    return host, parts.port or 4318, path


def live_config(base: TrafficConfig, duration_s: float, speedup: float, now: float) -> TrafficConfig:
    """`base` stretched to `duration_s × speedup` of simulated time that ends `duration_s` after `now`.

    Played at `speedup`, span timestamps then trail the wall clock by less and less
    and meet it at the end; requests are cut at most every 0.25 s of wall time.
    """
    if not (duration_s > 0 and speedup > 0):
        raise ValueError("duration and speedup must be > 0")
    sim_s = duration_s * speedup
    start = math.floor(now + duration_s - sim_s)
    return replace(
        base,
        start=datetime.fromtimestamp(start, UTC),
        duration_s=sim_s,
        max_request_event_s=min(base.max_request_event_s or math.inf, 0.25 * speedup),
    )


class _Poster:
    """Keep-alive POSTs of OTLP/protobuf to one loopback endpoint."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 10.0) -> None:
        self.host, self.port, self.path, self.timeout = host, port, path, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.path, body, {"Content-Type": "application/x-protobuf"})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def send_live(
    config: TrafficConfig,
    url: str,
    speedup: float,
    launch: float,
    duration_s: float,
    log: IO[str] | None = None,
) -> Summary:
    """POST the run to `url`, each request when the wall clock reaches its spans' end, scaled by `speedup`.

    `config` is a `live_config` made at `launch` (a time.time() value). Stops after
    three failed requests in a row, when more than max(30 s, duration / 2) behind, or on Ctrl-C.
    """
    host, port, path = check_loopback(url)
    sim = Simulator(config)
    summary = Summary(anomalies=list(sim.anomalies))
    start_s = config.start_epoch_s
    deadline = launch + duration_s + max(30.0, 0.5 * duration_s)
    pending = sorted(sim.anomalies, key=lambda a: a.start)
    active: list[Anomaly] = []
    poster = _Poster(host, port, path)
    failures = 0
    last_report = time.monotonic()
    try:
        chunks = generate_chunks(config, sim)
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            summary.generate_s += time.perf_counter() - t0
            if chunk is None:
                break
            due = launch + (chunk.max_end_ns / 1e9 - start_s) / speedup
            now = time.time()
            if now > deadline:
                summary.stopped_early = "fell too far behind the schedule (is the gateway keeping up?)"
                break
            if due > now:
                time.sleep(min(due, deadline) - now)
            t1 = time.perf_counter()
            try:
                status, body = poster.post(chunk.wire)
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, str(exc).encode()
            summary.write_s += time.perf_counter() - t1
            summary.add(chunk)
            if status == 200:
                failures = 0
                rejected = ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
                summary.rejected_spans += rejected
                summary.accepted_spans += chunk.spans - rejected
            else:
                failures += 1
                summary.failed_requests += 1
                summary.rejected_spans += chunk.spans
                if log is not None:
                    what = f"HTTP {status}" if status else "no connection"
                    print(f"  request failed ({what}): {body[:200].decode(errors='replace')}", file=log)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    summary.stopped_early = (
                        f"{failures} requests in a row failed; is the gateway running at {url}? (make run)"
                    )
                    break
            sim_now = chunk.last_key_ns / 1e9 - start_s
            if log is not None:
                while pending and pending[0].start <= sim_now:
                    a = pending.pop(0)
                    active.append(a)
                    print(
                        f"  ▶ {a.type} on {a.service}/{a.model} (until sim {_hms(a.end)})",
                        file=log,
                        flush=True,
                    )
                for a in [a for a in active if a.end <= sim_now]:
                    active.remove(a)
                    print(f"  ■ {a.type} on {a.service}/{a.model} over", file=log, flush=True)
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    print(
                        f"  [{time.time() - launch:5.1f}s] sim {_hms(sim_now)}/{_hms(config.duration_s)}"
                        f"  spans {summary.spans:,}  LLM calls {summary.llm_calls:,}"
                        f"  rejected {summary.rejected_spans:,}",
                        file=log,
                        flush=True,
                    )
    except KeyboardInterrupt:
        summary.stopped_early = "interrupted"
    finally:
        poster.close()
    return summary


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.llmgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--hours", type=float, help="simulated hours to write (file mode; default 6)")
    p.add_argument(
        "--start", help=f"start of the simulated run, RFC 3339 (default {rfc3339(DEFAULT_START.timestamp())})"
    )
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply every series' request rate")
    p.add_argument(
        "--diurnal-amplitude", type=float, default=0.5, help="daily rate swing, 0..1 (default 0.5)"
    )
    p.add_argument("--weekly", help="7 comma-separated day factors, Monday first (e.g. 1,1,1,1,1,0.6,0.5)")
    p.add_argument("--error-rate", type=float, default=0.005, help="base error probability (default 0.005)")
    p.add_argument(
        "--rate-limit-rate", type=float, default=0.003, help="base 429 probability (default 0.003)"
    )
    p.add_argument("--batch-spans", type=int, default=512, help="spans per request (default 512)")
    p.add_argument("--out-of-order", type=float, default=0.0, help="fraction of spans delivered late")
    p.add_argument("--lateness", default="30s", help="how late at most (default 30s)")
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="SPEC",
        help="TYPE@START:DURATION:SERVICE/MODEL[:MAG]",
    )
    p.add_argument("--inject-all", action="store_true", help="one anomaly of each type, after a warm-up")
    p.add_argument("--labels", help="write the injected anomalies to this JSON file")
    p.add_argument("--list-series", action="store_true", help="print the series (injection targets) and exit")
    mode = p.add_argument_group("output (one of)")
    mode.add_argument("--out", help="OTLP/JSON lines file (.gz: gzipped; -: stdout)")
    mode.add_argument(
        "--send", metavar="URL", help="POST live to a gateway on this machine, e.g. " + DEMO_URL
    )
    mode.add_argument(
        "--demo", action="store_true", help=f"--send {DEMO_URL} --speedup 60 --duration 90s --inject-all"
    )
    live = p.add_argument_group("live mode")
    live.add_argument(
        "--speedup", type=float, help=f"simulated seconds per real second (default {DEMO_SPEEDUP:g})"
    )
    live.add_argument("--duration", help=f"real time to send for (default {DEMO_DURATION_S:g}s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def _base_config(args: argparse.Namespace) -> TrafficConfig:
    weekly = tuple(float(x) for x in args.weekly.split(",")) if args.weekly else None
    start = DEFAULT_START
    if args.start:
        start = datetime.fromtimestamp(parse_rfc3339(args.start), UTC)
    return TrafficConfig(
        seed=args.seed,
        start=start,
        duration_s=(args.hours or 6.0) * 3600.0,
        rate_scale=args.rate_scale,
        diurnal_amplitude=args.diurnal_amplitude,
        weekly=weekly,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        spans_per_request=args.batch_spans,
        out_of_order_fraction=args.out_of_order,
        max_lateness_s=parse_duration(args.lateness),
        anomalies=tuple(parse_spec(s) for s in args.inject),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.demo:
        args.send = args.send or DEMO_URL
        args.inject_all = True
    if args.list_series:
        for s in series_of(TrafficConfig()):
            m = s.model
            print(
                f"{s.service.name + '/' + m.request_model:<36} {m.provider:<10} {m.operation:<11}"
                f" {s.spec.rate:>5g}/s  → {m.response_model}"
            )
        print("anomaly types: " + ", ".join(ANOMALY_TYPES))
        return 0
    if bool(args.out) == bool(args.send):
        p.error("give exactly one of --out FILE, --send URL or --demo")
    try:
        base = _base_config(args)
        log = None if args.quiet else sys.stderr
        if args.send:
            check_loopback(args.send)
            if args.hours and args.duration:
                p.error("live mode: give --duration (real time) or --hours (simulated), not both")
            speedup = args.speedup or DEMO_SPEEDUP
            duration = (
                parse_duration(args.duration)
                if args.duration
                else (args.hours * 3600.0 / speedup if args.hours else DEMO_DURATION_S)
            )
            launch = time.time()
            config = live_config(base, duration, speedup, launch)
            if args.inject_all:
                config = inject_all(config)
            Simulator(config)  # validate the injections before printing anything
            if args.labels:
                write_labels(
                    args.labels, Simulator(config).anomalies, config.start_epoch_s, config.duration_s
                )
            if log is not None:
                print(
                    f"llmgen: sending {_hms(config.duration_s)} of traffic to {args.send} over {duration:g} s"
                    f" ({speedup:g}× real time)",
                    file=log,
                    flush=True,
                )
            summary = send_live(config, args.send, speedup, launch, duration, log)
            out = sys.stdout
            print_summary(summary, config, out, Path(args.labels) if args.labels else None)
            print(
                f"  sent {summary.requests:,} requests in {summary.write_s:.1f} s: accepted spans"
                f" {summary.accepted_spans:,}, rejected {summary.rejected_spans:,},"
                f" failed requests {summary.failed_requests:,}",
                file=out,
            )
            return 0 if not summary.failed_requests and not summary.stopped_early else 1
        config = inject_all(base) if args.inject_all else base
        sim = Simulator(config)  # validates the injections
        if args.labels:
            write_labels(args.labels, sim.anomalies, config.start_epoch_s, config.duration_s)
        summary = write_file(config, args.out, log)
        out = sys.stderr if args.out == "-" else sys.stdout
        print_summary(summary, config, out, Path(args.labels) if args.labels else None)
        size = Path(args.out).stat().st_size if args.out != "-" else 0
        print(
            f"  wrote {args.out}"
            + (f" ({size / 1e6:.1f} MB)" if size else "")
            + f" in {summary.write_s:.2f} s",
            file=out,
        )
        return 0
    except ValueError as exc:
        print(f"llmgen: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
