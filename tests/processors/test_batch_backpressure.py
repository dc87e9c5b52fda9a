"""Backpressure through a batch processor, end to end: a dead backend fills the exporter queue, the
batch processor holds what it accepted and then answers 429; once the backend is up, everything
that got a 200 arrives."""

from __future__ import annotations

import time

import requests

from tests.conftest import free_port, running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config, make_trace_request, spans_in_file

PB = {"Content-Type": "application/x-protobuf"}


def test_accepted_data_survives_a_full_queue_behind_batch(ports, tmp_path):
    down_ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    upstream = gateway_config(ports, tmp_path / "unused.jsonl", signals=("traces",))
    upstream["processors"] = {"batch": {"send_batch_size": 10, "timeout": "50ms", "max_buffered_items": 20}}
    upstream["exporters"] = {
        "otlp/down": {
            "endpoint": f"127.0.0.1:{down_ports['grpc']}",
            "sending_queue": {"queue_size": 1, "num_consumers": 1},
            "retry_on_failure": {
                "initial_interval": "100ms",
                "max_interval": "200ms",
                "max_elapsed_time": "5m",
            },
            "timeout": "1s",
        }
    }
    upstream["service"]["pipelines"]["traces"]["processors"] = ["batch"]
    upstream["service"]["pipelines"]["traces"]["exporters"] = ["otlp/down"]
    url = f"http://127.0.0.1:{ports['http']}/v1/traces"
    accepted: list[str] = []
    throttled = 0
    with running_gateway(upstream):
        for i in range(30):
            req = make_trace_request(5, service=f"req-{i}")
            r = requests.post(url, data=req.SerializeToString(), headers=PB, timeout=10)
            if r.status_code == 200:
                accepted.append(f"req-{i}")
            else:
                assert r.status_code == 429, r.text
                assert int(r.headers["Retry-After"]) >= 1
                throttled += 1
            time.sleep(0.02)
        assert throttled > 0, "a dead backend must eventually push back on clients"
        out = tmp_path / "down.jsonl"
        with running_gateway(gateway_config(down_ports, out, signals=("traces",))):
            wait_until(lambda: len(spans_in_file(out)) >= 5 * len(accepted), timeout=30)
    assert len(spans_in_file(out)) == 5 * len(accepted)
