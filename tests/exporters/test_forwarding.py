"""Gateway → gateway: the `otlp` exporter forwards everything unchanged over gRPC and HTTP."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import free_port, running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config, make_trace_request, spans_in_file

PB = {"Content-Type": "application/x-protobuf"}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_forward_to_another_gateway(protocol, ports, tmp_path):
    downstream_out = tmp_path / "downstream.jsonl"
    down_ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    endpoint = (
        f"127.0.0.1:{down_ports['grpc']}" if protocol == "grpc" else f"http://127.0.0.1:{down_ports['http']}"
    )
    upstream = gateway_config(ports, tmp_path / "up.jsonl", signals=("traces",))
    upstream["exporters"] = {"otlp/next": {"endpoint": endpoint, "protocol": protocol, "compression": "gzip"}}
    upstream["service"]["pipelines"]["traces"]["exporters"] = ["otlp/next"]
    with running_gateway(gateway_config(down_ports, downstream_out)), running_gateway(upstream) as up:
        sent = make_trace_request(25, service="fwd")
        r = requests.post(
            f"http://127.0.0.1:{ports['http']}/v1/traces",
            data=sent.SerializeToString(),
            headers=PB,
            timeout=5,
        )
        assert r.status_code == 200
        got = wait_until(lambda: len(spans_in_file(downstream_out)) == 25 and spans_in_file(downstream_out))
        want = list(sent.resource_spans[0].scope_spans[0].spans)
        assert [g.SerializeToString() for g in got] == [w.SerializeToString() for w in want]
        wait_until(lambda: up.metric("otelcol_exporter_sent_spans_total", exporter="otlp/next") == 25)
