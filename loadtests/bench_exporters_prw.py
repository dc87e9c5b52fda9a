"""Throughput of the `prometheusremotewrite` exporter into real VictoriaMetrics and Prometheus.

    .venv/bin/python loadtests/bench_exporters_prw.py [--batches 40] [--points 1000]
                                                       [--histograms 0.1] [--max-series 500]
                                                       [--llm-series 1000] [--repeat 3] [--json out.json]

Servers: the ones of `tests/servers/run.sh` (`.test-servers/servers.json`); started (and stopped
again) by the benchmark when they are not running.

Workload: `--batches` OTLP metric batches of `--points` data points each, over one fixed set of
series (a `service.name` resource, 4 attributes a point); a fraction `--histograms` of the points
are histograms with 14 bounds (17 samples each: 15 buckets, _sum, _count), the rest half gauges,
half cumulative counters. Batch i carries timestamp t0 + i ms, so every series gets `--batches`
samples in order. Each run writes under a fresh `run` label.

Measurements, best of `--repeat`:

* **encode** (no network): OTLP request -> series -> protobuf -> snappy, as `consume()` does it.
* **baseline** per server: the same pre-encoded, compressed requests POSTed back to back on one
  connection (aiohttp) - the server's and HTTP's ceiling for this request size and one sender.
* **exporter** per server: `consume()` every batch into the exporter (queue, 1 consumer) and wait
  until all are acknowledged; from the first consume to the last 2xx.
* **snapshot**: one registry snapshot of the `genai` LLM metrics with `--llm-series` label sets
  (encode only, and through the exporter into the server).

Points are OTLP data points (what otelcol_exporter_sent_metric_points counts); samples are what the
TSDB stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)

from exporters.prometheusremotewrite import (  # noqa: E402
    FACTORY,
    Chunker,
    OtlpConverter,
    PrometheusRemoteWriteExporter,
    RegistryEncoder,
    registry_series,
    snappy_block,
)
from gateway.batch import MetricBatch  # noqa: E402
from gateway.component import ComponentId, Kind  # noqa: E402
from gateway.pipeline import _context  # noqa: E402
from gateway.pressure import Admission  # noqa: E402
from gateway.telemetry import SelfTelemetry  # noqa: E402
from processors.genai.metrics import LABELS, LlmMetrics  # noqa: E402

SERVERS_JSON = REPO / ".test-servers" / "servers.json"
RUN_SH = REPO / "tests" / "servers" / "run.sh"
BOUNDS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "bench",
}


def make_request(run: str, points: int, hist_fraction: float, ts_ns: int) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for k, v in (("service.name", "bench"), ("service.instance.id", "host-1"), ("run", run)):
        kv = rm.resource.attributes.add()
        kv.key, kv.value.string_value = k, v
    sm = rm.scope_metrics.add()
    sm.scope.name = "bench"
    n_hist = int(points * hist_fraction)
    n_gauge = (points - n_hist) // 2
    n_sum = points - n_hist - n_gauge
    rng = np.random.default_rng(7)

    def attrs(p: Any, i: int) -> None:
        for k, v in (
            ("run", run),
            ("gen_ai.request.model", f"model-{i % 20}"),
            ("gen_ai.provider.name", f"provider-{i % 5}"),
            ("series", str(i)),
        ):
            kv = p.attributes.add()
            kv.key, kv.value.string_value = k, v

    g = sm.metrics.add(name="bench.queue.depth", unit="{item}")
    for i in range(n_gauge):
        p = g.gauge.data_points.add(time_unix_nano=ts_ns, as_double=float(rng.random()))
        attrs(p, i)
    c = sm.metrics.add(name="bench.requests", unit="{request}")
    c.sum.is_monotonic, c.sum.aggregation_temporality = True, 2
    for i in range(n_sum):
        p = c.sum.data_points.add(time_unix_nano=ts_ns, as_int=int(rng.integers(0, 10**6)))
        attrs(p, i)
    h = sm.metrics.add(name="bench.duration", unit="s")
    h.histogram.aggregation_temporality = 2
    for i in range(n_hist):
        counts = rng.integers(0, 100, len(BOUNDS) + 1)
        p = h.histogram.data_points.add(
            time_unix_nano=ts_ns, count=int(counts.sum()), sum=float(counts.sum())
        )
        p.explicit_bounds.extend(BOUNDS)
        p.bucket_counts.extend(int(x) for x in counts)
        attrs(p, i)
    return req


def batches(args: argparse.Namespace, run: str) -> list[MetricBatch]:
    t0 = time.time_ns() - 60 * 10**9  # a minute ago: every batch is in the past, in order
    base = make_request(run, args.points, args.histograms, t0)
    out = []
    for i in range(args.batches):
        req = ExportMetricsServiceRequest()
        req.CopyFrom(base)
        ts = t0 + i * 1_000_000
        for m in req.resource_metrics[0].scope_metrics[0].metrics:
            for p in getattr(m, m.WhichOneof("data")).data_points:
                p.time_unix_nano = ts
        out.append(MetricBatch.from_request(req))
    return out


def ensure_servers() -> tuple[dict[str, Any], bool]:
    try:
        info = json.loads(SERVERS_JSON.read_text())
        for key, path in (("prometheus", "/-/ready"), ("victoriametrics", "/health")):
            import urllib.request

            urllib.request.urlopen(info[key] + path, timeout=2).read()
        return info, False
    except Exception:
        subprocess.run([str(RUN_SH), "start"], check=True)
        return json.loads(SERVERS_JSON.read_text()), True


def build(
    endpoint: str, args: argparse.Namespace, **extra: Any
) -> tuple[PrometheusRemoteWriteExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("prometheusremotewrite"), Kind.EXPORTER, tel, Admission())
    cfg = FACTORY.config.model_validate(
        {
            "endpoint": endpoint,
            "interval": 0,
            "max_series_per_request": args.max_series,
            "timeout": "30s",
            "retry_on_failure": {"enabled": False},
            **extra,
        }
    )
    exp = FACTORY.create(ctx, cfg)
    assert isinstance(exp, PrometheusRemoteWriteExporter)
    return exp, tel


def sent(tel: SelfTelemetry) -> float:
    return float(
        tel.registry.get_sample_value(
            "otelcol_exporter_sent_metric_points_total", {"exporter": "prometheusremotewrite"}
        )
        or 0
    )


def failed(tel: SelfTelemetry) -> float:
    return float(
        tel.registry.get_sample_value(
            "otelcol_exporter_send_failed_metric_points_total", {"exporter": "prometheusremotewrite"}
        )
        or 0
    )


def bench_encode(bs: list[MetricBatch], args: argparse.Namespace) -> dict[str, float]:
    conv = OtlpConverter({}, True, "")
    cache: dict[Any, bytes] = {}
    points = samples = raw = compressed = 0
    t = time.perf_counter()
    for b in bs:
        c = conv.convert(b.request, 0)
        for chunk in c.series.encode(args.max_series, cache):
            body = snappy_block(chunk.body)
            points += chunk.points
            samples += chunk.samples
            raw += len(chunk.body)
            compressed += len(body)
    dt = time.perf_counter() - t
    return {
        "seconds": dt,
        "points_per_s": points / dt,
        "samples_per_s": samples / dt,
        "bytes_per_sample": raw / samples,
        "snappy_ratio": raw / compressed,
    }


async def bench_baseline(url: str, bs: list[MetricBatch], args: argparse.Namespace) -> dict[str, float]:
    conv = OtlpConverter({"bench": "baseline"}, True, "")
    bodies: list[bytes] = []
    points = samples = 0
    for b in bs:
        for chunk in conv.convert(b.request, 0).series.encode(args.max_series):
            bodies.append(snappy_block(chunk.body))
            points += chunk.points
            samples += chunk.samples
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        t = time.perf_counter()
        for body in bodies:
            async with s.post(url, data=body, headers=HEADERS) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"baseline: HTTP {resp.status}: {await resp.text()}")
        dt = time.perf_counter() - t
    return {
        "seconds": dt,
        "points_per_s": points / dt,
        "samples_per_s": samples / dt,
        "requests": len(bodies),
    }


async def bench_exporter(url: str, bs: list[MetricBatch], args: argparse.Namespace) -> dict[str, float]:
    exp, tel = build(url, args, sending_queue={"queue_size": 100_000, "max_size_mib": 4096})
    await exp.start()
    try:
        total = sum(b.item_count for b in bs)
        t = time.perf_counter()
        for b in bs:
            await exp.consume(b)
        t_enq = time.perf_counter() - t
        while sent(tel) + failed(tel) < total:
            await asyncio.sleep(0.002)
        dt = time.perf_counter() - t
        if failed(tel):
            raise RuntimeError(f"exporter: {failed(tel)} points failed")
    finally:
        await exp.shutdown()
    n_samples = exp_samples(bs, args)
    return {
        "seconds": dt,
        "consume_seconds": t_enq,
        "points_per_s": total / dt,
        "samples_per_s": n_samples / dt,
        "requests": exp.requests,
    }


def exp_samples(bs: list[MetricBatch], args: argparse.Namespace) -> int:
    conv = OtlpConverter({}, True, "")
    return sum(
        chunk.samples for b in bs[:1] for chunk in conv.convert(b.request, 0).series.encode(10**9)
    ) * len(bs)


def llm_registry(n_series: int) -> SelfTelemetry:
    tel = SelfTelemetry()
    metrics = LlmMetrics(max_series=n_series + 1)
    tel.registry.register(metrics)
    keys = [
        (f"svc-{i % 10}", "openai", "chat", f"model-{i}", f"model-{i}-v1", "")[: len(LABELS)]
        for i in range(n_series)
    ]
    rows = np.arange(n_series, dtype=np.int64)
    rng = np.random.default_rng(1)
    for _ in range(3):
        metrics.observe(
            rows,
            keys,
            latency_s=rng.random(n_series) * 5,
            ttft_s=rng.random(n_series),
            input_tokens=rng.integers(1, 5000, n_series).astype(np.float64),
            output_tokens=rng.integers(1, 1000, n_series).astype(np.float64),
            cost_usd=rng.random(n_series) / 100,
            outcome=np.zeros(n_series, dtype=np.int64),
            finish_calls=rows,
            finish_codes=np.zeros(n_series, dtype=np.int64),
            finish_values=["stop"],
        )
    return tel


async def bench_snapshot(url: str, args: argparse.Namespace) -> dict[str, float]:
    tel = llm_registry(args.llm_series)
    encoder = RegistryEncoder({"job": "llm-sentinel", "instance": "bench"})
    times = []
    for _ in range(2):  # cold (label bytes not cached yet), then warm: every later interval
        t = time.perf_counter()
        chunker = Chunker(args.max_series)
        registry_series(
            tel.registry, ["gen_ai_*", "llm_sentinel_*"], [], int(time.time() * 1000), encoder, chunker
        )
        chunks = chunker.finish()
        bodies = [snappy_block(c.body) for c in chunks]
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    list(tel.registry.collect())
    t_collect = time.perf_counter() - t
    n_samples = sum(c.samples for c in chunks)
    ctx = _context(ComponentId("prometheusremotewrite"), Kind.EXPORTER, tel, Admission())
    cfg = FACTORY.config.model_validate(
        {
            "endpoint": url,
            "interval": "1h",
            "max_series_per_request": args.max_series,
            "external_labels": {"run": uuid.uuid4().hex[:8]},
        }
    )
    exp = FACTORY.create(ctx, cfg)
    assert isinstance(exp, PrometheusRemoteWriteExporter)
    await exp.start()
    try:
        sends = []
        for _ in range(2):  # the first creates the series in the server; the second is the steady state
            t = time.perf_counter()
            await exp.snapshot()
            while exp.snapshot_pending():
                await asyncio.sleep(0.002)
            sends.append(time.perf_counter() - t)
        t_first, t_send = sends
        fails = failed(tel)
    finally:
        await exp.shutdown()
    if fails:
        raise RuntimeError("snapshot: failed points")
    return {
        "series": n_samples,
        "samples": n_samples,
        "requests": len(bodies),
        "collect_ms": t_collect * 1000,
        "encode_cold_ms": times[0] * 1000,
        "encode_ms": times[1] * 1000,
        "send_ms": t_send * 1000,
        "send_first_ms": t_first * 1000,
        "samples_per_s": n_samples / t_send,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    info, started = ensure_servers()
    results: dict[str, Any] = {"args": vars(args)}
    try:
        best: dict[str, dict[str, float]] = {}

        def keep(key: str, r: dict[str, float]) -> None:
            if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
                best[key] = r

        for _ in range(args.repeat):
            run = uuid.uuid4().hex[:8]
            bs = batches(args, run)
            keep("encode", bench_encode(bs, args))
            for name in ("victoriametrics", "prometheus"):
                url = info[name] + "/api/v1/write"
                # fresh series per measurement: each sends the same timestamps
                keep(f"baseline/{name}", await bench_baseline(url, batches(args, uuid.uuid4().hex[:8]), args))
                keep(f"exporter/{name}", await bench_exporter(url, batches(args, uuid.uuid4().hex[:8]), args))
                keep(f"snapshot/{name}", await bench_snapshot(url, args))
        results.update(best)
        results["samples_per_batch"] = exp_samples(batches(args, "x")[:1], args)
    finally:
        if started:
            subprocess.run([str(RUN_SH), "stop"], check=False)
    return results


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    spb = r["samples_per_batch"]
    print(
        f"\nworkload: {args.batches} batches x {args.points} points "
        f"({args.histograms:.0%} histograms) = {spb} samples/batch, {args.max_series} series/request\n"
    )
    e = r["encode"]
    print(
        f"encode only (convert+protobuf+snappy): {e['points_per_s']:>10,.0f} points/s "
        f"{e['samples_per_s']:>11,.0f} samples/s  ({e['bytes_per_sample']:.0f} B/sample, "
        f"snappy {e['snappy_ratio']:.1f}x)"
    )
    print(
        f"\n{'server':16} {'path':22} {'points/s':>10} {'samples/s':>11} {'requests':>8} {'vs baseline':>11}"
    )
    for name in ("victoriametrics", "prometheus"):
        b, x = r[f"baseline/{name}"], r[f"exporter/{name}"]
        print(
            f"{name:16} {'baseline (raw POSTs)':22} {b['points_per_s']:>10,.0f} {b['samples_per_s']:>11,.0f} "
            f"{b['requests']:>8}"
        )
        print(
            f"{'':16} {'exporter (consume->2xx)':22} {x['points_per_s']:>10,.0f} "
            f"{x['samples_per_s']:>11,.0f} {x['requests']:>8} "
            f"{x['samples_per_s'] / b['samples_per_s']:>10.2f}x"
        )
    print(f"\nsnapshot of the LLM metrics, {args.llm_series} label sets:")
    for name in ("victoriametrics", "prometheus"):
        s = r[f"snapshot/{name}"]
        print(
            f"  {name:16} {s['series']:,} series / {s['requests']} requests: "
            f"snapshot (collect+encode+snappy) {s['encode_ms']:.0f} ms "
            f"(first {s['encode_cold_ms']:.0f} ms; registry collect alone {s['collect_ms']:.0f} ms), "
            f"queued->delivered {s['send_ms']:.0f} ms ({s['samples_per_s']:,.0f} samples/s; "
            f"first, creating the series: {s['send_first_ms']:.0f} ms)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--histograms", type=float, default=0.1)
    ap.add_argument("--max-series", type=int, default=500)
    ap.add_argument("--llm-series", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
    report(r, args)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str))


if __name__ == "__main__":
    main()
