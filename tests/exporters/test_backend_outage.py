"""A backend down for 60 s while traffic flows, then back: every point arrives as if it had never gone.

Real components end to end: generated LLM traffic over OTLP/HTTP → genai → the `influxdb`
exporter (persistent queue) → a real VictoriaMetrics that is stopped for 60 s mid-stream and
restarted on the same data directory. The points read back through VictoriaMetrics' own export API
equal the LLM calls sent, value for value.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from loadtests.llmgen import TrafficConfig, generate
from tests.conftest import running_gateway, wait_until
from tests.servers.fixtures import vm_flush

OUTAGE_S = 60.0


def exported_latencies(vm_url: str) -> dict[tuple[str, str], list[float]]:
    """(service, model) → sorted latency_ms of every llm_calls point VictoriaMetrics holds."""
    vm_flush(vm_url)
    url = f"{vm_url}/api/v1/export?match[]=llm_calls_latency_ms"
    out: dict[tuple[str, str], list[float]] = {}
    with urllib.request.urlopen(url, timeout=30) as resp:
        for line in resp.read().splitlines():
            series = json.loads(line)
            labels = series["metric"]
            out.setdefault((labels["service"], labels["model"]), []).extend(map(float, series["values"]))
    return {k: sorted(v) for k, v in out.items()}


def test_sixty_second_outage_loses_nothing(server_factory, ports, tmp_path):
    vm = server_factory("victoriametrics")
    start = datetime.now(UTC) - timedelta(minutes=40)
    traffic = dataclasses.replace(
        TrafficConfig(seed=11, duration_s=30 * 60, spans_per_request=128), start=start
    )
    bodies = [r.SerializeToString() for r in generate(traffic)]
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{ports['http']}"}}}},
        "processors": {"genai": {}},
        "exporters": {
            "influxdb": {
                "url": vm.url,
                "bucket": "llm",
                "org": "sentinel",
                "precision": "ms",
                "string_fields": False,
                "sending_queue": {"num_consumers": 2, "storage": {"directory": str(tmp_path / "queue")}},
                "retry_on_failure": {
                    "initial_interval": "200ms",
                    "max_interval": "2s",
                    "max_elapsed_time": "5m",
                },
            }
        },
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["genai"], "exporters": ["influxdb"]}
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{ports['admin']}"}},
            "shutdown_timeout": "30s",
        },
    }
    outage_done = threading.Event()

    def outage() -> None:
        time.sleep(2.0)
        vm.stop()
        time.sleep(OUTAGE_S)
        vm.restart()
        outage_done.set()

    with running_gateway(config) as gw:
        threading.Thread(target=outage, daemon=True).start()
        session = requests.Session()
        pace = (OUTAGE_S + 6.0) / len(bodies)  # traffic keeps flowing through the whole outage
        for body in bodies:
            r = session.post(
                f"http://127.0.0.1:{ports['http']}/v1/traces",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=30,
            )
            assert r.status_code == 200
            time.sleep(pace)
        assert outage_done.wait(OUTAGE_S + 60)
        exporter = next(iter(gw.gateway.graph.exporters.values()))
        wait_until(lambda: exporter.queue_len() == 0, timeout=60)  # the backlog drains once it is back
        failed = gw.metric("otelcol_exporter_send_failed_spans_total", exporter="influxdb")
    assert failed == 0
    # what was sent: every LLM call with a latency, keyed like the export
    expected: dict[tuple[str, str], list[float]] = {}
    for body in bodies:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            service = rs.resource.attributes[0].value.string_value
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    attrs = {a.key: a.value for a in sp.attributes}
                    if "gen_ai.request.model" not in attrs:
                        continue
                    key = (service, attrs["gen_ai.request.model"].string_value)
                    latency = (sp.end_time_unix_nano - sp.start_time_unix_nano) / 1e6
                    expected.setdefault(key, []).append(latency)
    expected = {k: sorted(v) for k, v in expected.items()}
    n_expected = sum(len(v) for v in expected.values())
    assert n_expected > 1000

    def complete() -> dict[tuple[str, str], list[float]] | None:
        got = exported_latencies(vm.url)
        return got if sum(len(v) for v in got.values()) >= n_expected else None

    got = wait_until(complete, timeout=30)
    assert set(got) == set(expected)
    for key, want in expected.items():
        have = got[key]
        assert len(have) == len(want), f"{key}: {len(want) - len(have)} points lost"
        assert all(abs(a - b) < 1e-3 for a, b in zip(have, want, strict=True)), key
