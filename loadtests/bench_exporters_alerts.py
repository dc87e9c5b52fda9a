"""Throughput of the point and alert exporters against real servers.

    tests/servers/run.sh start      # VictoriaMetrics (writes .test-servers/servers.json)
    .venv/bin/python loadtests/bench_exporters_alerts.py [--points 200000] [--alerts 20000]
        [--vm URL] [--amqp amqp://guest:guest@127.0.0.1:5672/] [--only influxdb,rabbitmq,webhook]

influxdb  LLM-call points/s: line-protocol encoding alone (baseline: the genai processor output is
          already there, nothing is sent), then end to end through the exporter's queue into
          VictoriaMetrics' /api/v2/write, gzip on and off; the stored sample count is checked.
rabbitmq  alerts/s published with publisher confirms (every alert confirmed before the batch
          counts as sent), persistent messages into a durable queue; checked by the queue depth.
webhook   alerts/s POSTed to an aiohttp receiver running in a separate process: one alert per
          request (the default), HMAC-signed, and batch mode (JSON arrays of 100).
The time runs from the first `consume` until `shutdown` has drained the queue (4 consumers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import socket
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporters import influxdb, rabbitmq, webhook
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.exporterhelper import QueuedExporter
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from processors.genai import FACTORY as GENAI
from processors.genai import GenAIProcessor

ROOT = Path(__file__).resolve().parent.parent

MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet-20241022", "gemini-1.5-pro", "llama-3.1-70b"]
PROVIDERS = ["openai", "openai", "anthropic", "gcp.gemini", "groq"]


# ---------------------------------------------------------------- data
def llm_batch(n: int, t0: int, tag: str) -> SpanBatch:
    """`n` LLM call spans over 20 services x 5 models, after the genai processor."""
    req = ExportTraceServiceRequest()
    per_service = max(1, n // 20)
    k = 0
    for s in range(20):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", f"{tag}-svc-{s}"
        ss = rs.scope_spans.add()
        for _ in range(per_service if s < 19 else n - per_service * 19):
            m = k % len(MODELS)
            sp = ss.spans.add()
            sp.trace_id = k.to_bytes(16, "big") or b"\x01" * 16
            sp.span_id = (k + 1).to_bytes(8, "big")
            sp.name = "chat"
            sp.start_time_unix_nano = t0 + k * 1_000_000
            sp.end_time_unix_nano = sp.start_time_unix_nano + 200_000_000 + (k % 997) * 1_000_000
            for key, value in (
                ("gen_ai.provider.name", PROVIDERS[m]),
                ("gen_ai.operation.name", "chat"),
                ("gen_ai.request.model", MODELS[m]),
                ("gen_ai.response.model", MODELS[m]),
            ):
                a = sp.attributes.add()
                a.key, a.value.string_value = key, value
            for key, number in (
                ("gen_ai.usage.input_tokens", 100 + k % 5000),
                ("gen_ai.usage.output_tokens", k % 800),
            ):
                a = sp.attributes.add()
                a.key, a.value.int_value = key, number
            k += 1
    ctx = ComponentContext(
        ComponentId("genai"), Kind.PROCESSOR, logging.getLogger("g"), SelfTelemetry(), Admission(), "b"
    )
    proc = GENAI.create(ctx, GENAI.config.model_validate({"metrics": {"enabled": False}}))
    assert isinstance(proc, GenAIProcessor)
    batch = SpanBatch.from_request(req)
    proc.annotate(batch)
    return batch


def alerts(n: int, tag: str) -> list[AnomalyEvent]:
    t0 = time.time_ns()
    return [
        AnomalyEvent(
            time_ns=t0 + i,
            service=f"{tag}.svc-{i % 20}",
            provider="openai",
            operation="chat",
            model=MODELS[i % 5],
            metric="latency_s",
            type=AnomalyType.LATENCY_SPIKE,
            severity=Severity.HIGH,
            value=12.5,
            baseline=2.0,
            score=0.9,
            detector="ensemble",
            detected_at_ns=t0,
            trace_ids=[f"{i:032x}"],
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------- harness
def build(factory: Any, name: str, config: dict[str, Any]) -> QueuedExporter:
    ctx = _context(ComponentId(factory.type, name), Kind.EXPORTER, SelfTelemetry(), Admission())
    exp = factory.create(ctx, factory.config.model_validate(config))
    assert isinstance(exp, QueuedExporter)
    return exp


async def pump(exp: QueuedExporter, batches: list[Any]) -> float:
    await exp.start()
    t0 = time.perf_counter()
    for b in batches:
        while True:
            try:
                await exp.consume(b)
                break
            except Exception:  # queue full: wait for the consumers
                await asyncio.sleep(0.005)
    await exp.shutdown()
    return time.perf_counter() - t0


def sent(exp: QueuedExporter, signal: str) -> float:
    tel = exp.ctx.telemetry
    return float(
        tel.registry.get_sample_value(f"otelcol_exporter_sent_{signal}_total", {"exporter": str(exp.id)}) or 0
    )


def row(what: str, items: int, seconds: float, unit: str) -> None:
    print(f"| {what} | {items:,} | {seconds:.2f} s | {items / seconds:,.0f} {unit}/s |")


# ---------------------------------------------------------------- influxdb
def vm_samples(url: str, tag: str) -> int:
    q = f'sum(count_over_time(llm_calls_latency_ms{{service=~"{tag}-svc-.*"}}[2d]))'
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': q})}", timeout=30
    ) as r:
        res = json.loads(r.read())["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0


def bench_influxdb(vm: str, points: int, per_batch: int) -> None:
    t0 = (int(time.time()) - 6 * 3600) * 10**9
    print("\n### influxdb exporter -> VictoriaMetrics /api/v2/write\n")
    print("| step | points | time | rate |\n|---|---|---|---|")
    batch = llm_batch(per_batch, t0, "enc")
    reps = max(1, points // per_batch)
    start = time.perf_counter()
    for _ in range(reps):
        lines = influxdb.Lines("ns")
        influxdb.encode_calls(batch, lines)
        influxdb.chunk_lines(lines.lines, 5000, 1 << 20)
    row("encode only (line protocol + chunking)", reps * per_batch, time.perf_counter() - start, "points")
    for gzip_on in (True, False):
        tag = f"bench{uuid.uuid4().hex[:6]}"
        batches = [llm_batch(per_batch, t0 + i * per_batch * 1_000_000, tag) for i in range(reps)]
        config = {"url": vm, "bucket": "bench", "org": "bench", "gzip": gzip_on, "string_fields": False}
        exp = build(influxdb.FACTORY, tag, {**config, "sending_queue": {"queue_size": 10000}})
        seconds = asyncio.run(pump(exp, batches))
        assert sent(exp, "spans") == reps * per_batch, sent(exp, "spans")
        row(f"end to end, gzip {'on' if gzip_on else 'off'}", reps * per_batch, seconds, "points")
        deadline = time.monotonic() + 30
        while (stored := vm_samples(vm, tag)) < reps * per_batch and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"|  (VictoriaMetrics holds {stored:,} llm_calls_latency_ms samples) | | | |")


# ---------------------------------------------------------------- rabbitmq
async def rabbit_run(amqp: str, n: int, per_batch: int) -> tuple[float, int]:
    import aio_pika

    tag = uuid.uuid4().hex[:8]
    exchange, queue = f"bench.alerts.{tag}", f"bench.q.{tag}"
    conn = await aio_pika.connect(amqp)
    ch = await conn.channel()
    try:
        ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(queue, durable=True)
        await q.bind(ex, "#")
        events = alerts(n, tag)
        batches = [AnomalyBatch(events[i : i + per_batch]) for i in range(0, n, per_batch)]
        config = {"endpoint": amqp, "exchange": exchange, "sending_queue": {"queue_size": 100_000}}
        exp = build(rabbitmq.FACTORY, tag, config)
        seconds = await pump(exp, batches)
        depth = (
            await ch.declare_queue(queue, durable=True, passive=True)
        ).declaration_result.message_count or 0
        return seconds, int(depth)
    finally:
        await ch.queue_delete(queue)
        await ch.exchange_delete(exchange)
        await conn.close()


def bench_rabbitmq(amqp: str, n: int) -> None:
    print("\n### rabbitmq exporter (publisher confirms, persistent, durable queue)\n")
    print("| alerts per batch | alerts | time | rate |\n|---|---|---|---|")
    for per_batch in (1, 50):
        count = n if per_batch > 1 else max(1000, n // 10)
        seconds, depth = asyncio.run(rabbit_run(amqp, count, per_batch))
        assert depth == count, (depth, count)
        row(f"{per_batch}", count, seconds, "alerts")


# ---------------------------------------------------------------- webhook
def _receiver(port: int, ready: Any) -> None:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def bench_webhook(n: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_receiver, args=(port, ready), daemon=True)
    proc.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{port}/hook"
    print("\n### webhook exporter -> aiohttp receiver (separate process)\n")
    print("| mode | alerts | time | rate |\n|---|---|---|---|")
    try:
        for what, extra in (
            ("json, one alert per request", {}),
            ("json, one per request, HMAC-signed", {"secret": "bench-secret"}),
            ("slack, one per request", {"format": "slack"}),
            ("json arrays of 100 (batch: true)", {"batch": True}),
        ):
            events = alerts(n, "wh")
            batches = [AnomalyBatch(events[i : i + 50]) for i in range(0, n, 50)]
            exp = build(
                webhook.FACTORY, "b", {"endpoint": url, "sending_queue": {"queue_size": 10000}, **extra}
            )
            seconds = asyncio.run(pump(exp, batches))
            assert sent(exp, "anomalies") == n
            row(what, n, seconds, "alerts")
    finally:
        proc.terminate()
        proc.join(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--points-per-batch", type=int, default=5000)
    ap.add_argument("--alerts", type=int, default=20_000)
    ap.add_argument("--vm", help="VictoriaMetrics URL (default: from .test-servers/servers.json)")
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--only", default="influxdb,rabbitmq,webhook")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    only = set(args.only.split(","))
    if "influxdb" in only:
        vm = args.vm
        if vm is None:
            state = ROOT / ".test-servers" / "servers.json"
            if not state.exists():
                sys.exit("no --vm and no .test-servers/servers.json: run tests/servers/run.sh start first")
            vm = json.loads(state.read_text())["victoriametrics"]
        bench_influxdb(vm, args.points, args.points_per_batch)
    if "rabbitmq" in only:
        bench_rabbitmq(args.amqp, args.alerts)
    if "webhook" in only:
        bench_webhook(args.alerts)


if __name__ == "__main__":
    main()
