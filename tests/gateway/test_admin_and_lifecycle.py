"""Admin endpoints, readiness, start order and graceful shutdown drain of a real gateway."""

from __future__ import annotations

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningGateway, running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config, make_trace_request, spans_in_file

PB = {"Content-Type": "application/x-protobuf"}


def test_healthz_readyz_metrics(ports, tmp_path):
    with running_gateway(gateway_config(ports, tmp_path / "o.jsonl")) as gw:
        admin = f"http://127.0.0.1:{ports['admin']}"
        assert requests.get(admin + "/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(admin + "/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["receivers"] == {"otlp": True}
        assert sorted(ready.json()["pipelines"]) == ["logs", "metrics", "traces"]
        body = make_trace_request(3).SerializeToString()
        requests.post(f"http://127.0.0.1:{ports['http']}/v1/traces", data=body, headers=PB, timeout=5)
        wait_until(lambda: len(spans_in_file(tmp_path / "o.jsonl")) == 3)
        text = requests.get(admin + "/metrics", timeout=5).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        for name in (
            "otelcol_receiver_accepted_spans",
            "otelcol_receiver_refused_spans",
            "otelcol_exporter_sent_spans",
            "otelcol_exporter_send_failed_spans",
            "otelcol_exporter_enqueue_failed_spans",
            "otelcol_receiver_accepted_metric_points",
            "otelcol_exporter_sent_log_records",
            "otelcol_exporter_queue_size",
            "otelcol_exporter_queue_capacity",
            "otelcol_process_memory_rss",
        ):
            assert name in fams, name
        accepted = [
            s for s in fams["otelcol_receiver_accepted_spans"].samples if s.labels.get("transport") == "http"
        ]
        assert accepted[0].value == 3 and accepted[0].labels["receiver"] == "otlp"
        sent = [s for s in fams["otelcol_exporter_sent_spans"].samples if s.name.endswith("_total")]
        assert sent[0].labels == {"exporter": "file/out"} and sent[0].value == 3
        rss = fams["otelcol_process_memory_rss"].samples[0].value
        assert 10e6 < rss < 4e9
        assert gw.gateway is not None


def test_not_ready_while_draining(ports, tmp_path):
    with running_gateway(gateway_config(ports, tmp_path / "o.jsonl")) as gw:
        assert gw.gateway is not None
        assert gw.gateway.readiness()[0]
        gw.gateway._stopping = True
        try:
            r = requests.get(f"http://127.0.0.1:{ports['admin']}/readyz", timeout=5)
            assert r.status_code == 503
        finally:
            gw.gateway._stopping = False


def test_shutdown_drains_queued_batches(ports, tmp_path):
    """Receivers stop first; everything already accepted reaches the exporter before exit."""
    out = tmp_path / "o.jsonl"
    cfg = gateway_config(
        ports,
        out,
        processors=["batch"],
        processor_defs={"batch": {"timeout": "10s", "send_batch_size": 100000}},
    )
    gw = RunningGateway(yaml.safe_dump(cfg)).start()
    try:
        url = f"http://127.0.0.1:{ports['http']}/v1/traces"
        for _ in range(20):
            r = requests.post(url, data=make_trace_request(50).SerializeToString(), headers=PB, timeout=5)
            assert r.status_code == 200
        # the batch processor still holds everything (10 s timeout, huge size)
        assert len(spans_in_file(out)) == 0
    finally:
        gw.stop()
    assert len(spans_in_file(out)) == 1000
    with pytest.raises(requests.ConnectionError):
        requests.post(url, data=b"", headers=PB, timeout=2)


def test_start_failure_releases_ports(ports, tmp_path):
    """A receiver that cannot bind aborts start-up and leaves nothing listening."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports["http"]))
    blocker.listen()
    try:
        with pytest.raises(OSError), running_gateway(gateway_config(ports, tmp_path / "o.jsonl")):
            pass
    finally:
        blocker.close()
    # the admin and gRPC ports were released again
    for p in (ports["admin"], ports["grpc"]):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        s.close()
