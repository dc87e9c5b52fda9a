"""End-to-end alert latency under load: OTLP/HTTP request received → alert emitted.

    .venv/bin/python -m loadtests.bench_alert_latency [--hours 3] [--spans-per-request 512]

A gateway (genai → detect → anomalies pipeline, no batch processor, so each
request is processed inside its HTTP exchange) receives generated LLM traffic
with one anomaly of each type, as fast as one client can send it. Every alert
carries `detected_at` (wall clock at emission); the request that triggered it
is the one in flight at that moment, so latency = detected_at − that request's
send time. This is processing latency; the event-time semantics add their own
wait on top (a point is scored once the watermark, newest event − `lateness`,
passes it; a rate bucket once it closes), which is configuration, not load.
"""

from __future__ import annotations

import argparse
import bisect
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import requests

from loadtests.llmgen import TrafficConfig, generate, inject_all
from tests.conftest import free_port, running_gateway


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--spans-per-request", type=int, default=512)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    http, admin = free_port(), free_port()
    cfg = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{http}"}}}},
        "processors": {"genai": {}},
        "connectors": {"detect": {}},
        "exporters": {"file/alerts": {"path": str(tmp / "alerts.jsonl"), "flush_interval": "10ms"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["genai"], "exporters": ["detect"]},
                "anomalies": {"receivers": ["detect"], "exporters": ["file/alerts"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{admin}"}},
        },
    }
    traffic = inject_all(
        TrafficConfig(seed=7, duration_s=args.hours * 3600, spans_per_request=args.spans_per_request)
    )
    bodies = [r.SerializeToString() for r in generate(traffic)]
    sends: list[int] = []
    session = requests.Session()
    url = f"http://127.0.0.1:{http}/v1/traces"
    with running_gateway(cfg):
        t0 = time.perf_counter()
        for body in bodies:
            sends.append(time.time_ns())
            session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
        elapsed = time.perf_counter() - t0
    alerts = [json.loads(line) for line in (tmp / "alerts.jsonl").read_text().splitlines()]
    lat = []
    for a in alerts:
        det = int(datetime.fromisoformat(a["detected_at"].replace("Z", "+00:00")).timestamp() * 1e9)
        i = bisect.bisect_right(sends, det) - 1
        if i >= 0:
            lat.append((det - sends[i]) / 1e6)
    arr = np.array(lat)
    spans = len(bodies) * args.spans_per_request
    print(f"{len(bodies)} requests (~{spans:,} spans) in {elapsed:.1f} s: {spans / elapsed:,.0f} spans/s")
    print(
        f"{len(alerts)} alerts; latency request sent → alert emitted (ms): "
        f"p50 {np.percentile(arr, 50):.1f}  p99 {np.percentile(arr, 99):.1f}  max {arr.max():.1f}"
    )


if __name__ == "__main__":
    main()
