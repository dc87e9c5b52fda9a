"""Enqueue throughput of the persistent sending queue per fsync policy, against the in-memory queue.

    .venv/bin/python loadtests/bench_queue.py [--spans 100] [--batches 1000] [--producers 1,64]
                                              [--repeat 3] [--dir /var/tmp] [--json out.json]

Batches are realistic GenAI spans (the `redact` benchmark's generator, ~4 KB a span
with prompts and completions) annotated by the `genai` processor, so each record
carries the processor's columns as in a real pipeline; their wire bytes are cached
(as for a batch forwarded unchanged since receipt).

Two measurements per queue (memory, and storage with fsync always / batch /
interval / never), best of `--repeat`, each in a fresh directory under `--dir`:

* **enqueue**: `--producers` concurrent tasks call `exporter.consume()` for
  `--batches` batches in total; no consumer runs, so this is the cost a receiver
  pays before it can answer 200. Reported in batches/s, MB/s of OTLP, per-call
  latency p50/p99, and batches per group commit (appends / fsyncs).
* **enqueue + deliver**: the same with 4 consumers whose `send()` does nothing,
  until every batch is acknowledged (the pointer commits and compaction included).

The ratio column compares with the in-memory queue of the same run (an
`asyncio.Queue.put_nowait`, so it is ~0 cost; the ratio says what durability
costs, not how fast the queue is). For scale, the header also gives what
receiving one such batch costs anyway (protobuf decode + column build). `--dir`
should be on the disk a gateway would use (a tmpfs makes fsync free).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.batch import Batch, SpanBatch  # noqa: E402
from gateway.component import ComponentId, Kind  # noqa: E402
from gateway.exporterhelper import QueuedExporter, QueuedExporterConfig  # noqa: E402
from gateway.pipeline import _context  # noqa: E402
from gateway.pressure import Admission  # noqa: E402
from gateway.telemetry import SelfTelemetry  # noqa: E402
from loadtests.bench_redact import make_request  # noqa: E402
from processors.genai import FACTORY as GENAI  # noqa: E402
from processors.genai import GenAIProcessor  # noqa: E402

MODES = ("memory", "always", "batch", "interval", "never")
TRACE_REQUEST: Any = SpanBatch.layout.request_cls


class NullExporter(QueuedExporter):
    async def send(self, batch: Batch) -> None:
        return None


def make_batches(n_distinct: int, spans: int) -> list[SpanBatch]:
    tel = SelfTelemetry()
    genai = GENAI.create(_context(ComponentId("genai"), Kind.PROCESSOR, tel, Admission()), GENAI.config())
    assert isinstance(genai, GenAIProcessor)
    out = []
    for seed in range(n_distinct):
        wire = make_request(spans, 0.0, seed).SerializeToString()
        b = SpanBatch.from_request(TRACE_REQUEST.FromString(wire), wire=wire)
        genai.annotate(b)
        out.append(b)
    return out


def decode_time(batches: list[SpanBatch]) -> float:
    """Seconds to decode one batch from its wire bytes, as a receiver does."""
    t0 = time.perf_counter()
    for b in batches:
        SpanBatch.from_request(TRACE_REQUEST.FromString(b.serialize()), wire=b.serialize())
    return (time.perf_counter() - t0) / len(batches)


def exporter(mode: str, directory: Path, n: int, consumers: int) -> NullExporter:
    queue: dict[str, Any] = {"queue_size": n + 10, "max_size_mib": 1 << 20, "num_consumers": consumers}
    if mode != "memory":
        queue["storage"] = {
            "directory": str(directory),
            "fsync": mode,
            "fsync_interval": "1s",
            "max_size_mib": 1 << 20,
        }
    cfg = QueuedExporterConfig.model_validate({"sending_queue": queue})
    ctx = _context(ComponentId("null", mode), Kind.EXPORTER, SelfTelemetry(), Admission())
    return NullExporter(ctx, cfg)


async def enqueue(
    exp: NullExporter, batches: list[SpanBatch], n: int, producers: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    share = [range(p, n, producers) for p in range(producers)]

    async def producer(idx: range) -> None:
        for i in idx:
            t = time.perf_counter()
            await exp.consume(batches[i % len(batches)])
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(producer(s) for s in share))
    return time.perf_counter() - t0, latencies


async def run_once(
    mode: str, batches: list[SpanBatch], n: int, producers: int, base: Path, deliver: bool
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"q-{mode}-", dir=base))
    try:
        exp = exporter(mode, directory, n, consumers=4)
        if deliver:
            await exp.start()
        elif exp._storage is not None:
            await exp._open_storage()  # the open (lock, recovery) is not what is measured
        t0 = time.perf_counter()
        elapsed, lat = await enqueue(exp, batches, n, producers)
        if deliver:
            st = exp._storage
            if st is None:
                await exp._queue.join()
            else:
                await st.join()
            elapsed = time.perf_counter() - t0
        st = exp._storage
        stats = {"groups": st.wal.groups, "fsyncs": st.wal.fsyncs} if st is not None else {}
        await exp.shutdown()
        lat.sort()
        return {
            "seconds": elapsed,
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
            **stats,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=100, help="spans per batch")
    ap.add_argument("--batches", type=int, default=1000, help="batches per run")
    ap.add_argument("--producers", default="1,64", help="concurrent producers, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the queue directories go")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    batches = make_batches(8, args.spans)
    mb = sum(b.nbytes for b in batches) / len(batches) / 1e6
    decode_s = min(decode_time(batches) for _ in range(args.repeat))
    modes = args.modes.split(",")
    print(
        f"{args.batches} batches of {args.spans} spans ({mb * 1000:.0f} KB of OTLP each), "
        f"best of {args.repeat}, queue dirs under {args.dir}\n"
        f"reference: receiving one (protobuf decode + columns) takes {decode_s * 1000:.2f} ms "
        f"= {1 / decode_s:,.0f} batches/s on one core\n"
    )
    results: list[dict[str, Any]] = []
    for deliver in (False, True):
        title = "enqueue + deliver (4 consumers, no-op send)" if deliver else "enqueue only"
        for producers in [int(p) for p in args.producers.split(",")]:
            print(f"## {title}, {producers} producer(s)")
            print("| queue | batches/s | MB/s | vs memory | p50 ms | p99 ms | batches/fsync |")
            print("|---|---|---|---|---|---|---|")
            memory_rate = None
            for mode in modes:
                runs = [
                    asyncio.run(run_once(mode, batches, args.batches, producers, Path(args.dir), deliver))
                    for _ in range(args.repeat)
                ]
                best = min(runs, key=lambda r: r["seconds"])
                rate = args.batches / best["seconds"]
                if mode == "memory":
                    memory_rate = rate
                ratio = rate / memory_rate if memory_rate else float("nan")
                per_fsync = f"{args.batches / best['fsyncs']:.1f}" if best.get("fsyncs") else "-"
                label = "memory" if mode == "memory" else f"storage, fsync {mode}"
                print(
                    f"| {label} | {rate:,.0f} | {rate * mb:,.1f} | {ratio:.3f}x | "
                    f"{best['p50_ms']:.3f} | {best['p99_ms']:.2f} | {per_fsync} |"
                )
                results.append(
                    {
                        "deliver": deliver,
                        "producers": producers,
                        "mode": mode,
                        "batches_per_s": rate,
                        "mb_per_s": rate * mb,
                        "ratio_vs_memory": ratio,
                        **best,
                    }
                )
            print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
