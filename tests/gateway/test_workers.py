"""`sentinel run --workers N`: supervisor, shared ports, merged admin endpoints, series ownership.

The end-to-end tests start the real command as a subprocess and talk to it over
many client connections, so the kernel (SO_REUSEPORT) spreads them over the
workers; the unit tests cover the merge rules, per-worker config and the CLI.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin_merge import MetricsMerger, merge_anomalies
from gateway.cli import main
from gateway.component import Kind
from gateway.config.model import build_config
from gateway.config.source import load_text
from gateway.worker_config import for_worker, multi_worker_issues
from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.receivers.otlp_helpers import spans_in_file

PB = {"Content-Type": "application/x-protobuf"}


# ---------------------------------------------------------------- harness
class Sentinel:
    """`sentinel run` as a subprocess on free loopback ports, logging to a file."""

    def __init__(self, tmp: Path, config: dict[str, Any], workers: int, http_port: int = 0) -> None:
        self.tmp = tmp
        self.http, self.grpc, self.admin = http_port or free_port(), free_port(), free_port()
        receivers = {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{self.grpc}"},
                    "http": {"endpoint": f"127.0.0.1:{self.http}"},
                }
            }
        }
        service = config.setdefault("service", {})
        service["telemetry"] = {"admin": {"endpoint": f"127.0.0.1:{self.admin}"}}
        service.setdefault("shutdown_timeout", "10s")
        path = tmp / "gw.yaml"
        path.write_text(yaml.safe_dump({"receivers": receivers, **config}))
        self.log_path = tmp / "sentinel.log"
        self._log = self.log_path.open("w")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(path), "--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            return r.status, json.loads(body) if "json" in r.getheader("Content-Type", "") else body.decode()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sentinel exited with {self.proc.returncode}:\n{self.log}")
            try:
                status, body = self.get("/readyz")
                if status == 200:
                    return dict(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log}")

    def metrics(self) -> dict[str, Any]:
        return families(self.get("/metrics")[1])

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Any]:
    started: list[Sentinel] = []

    def start(config: dict[str, Any], workers: int, name: str = "gw", http_port: int = 0) -> Sentinel:
        tmp = tmp_path / name
        tmp.mkdir()
        s = Sentinel(tmp, config, workers, http_port)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    """Sum of a family's samples named `name` (default: the family's own) matching `labels`."""
    total = 0.0
    for s in fams[family].samples if family in fams else []:
        if s.name in (name or family, f"{family}_total") and all(
            s.labels.get(k) == v for k, v in labels.items()
        ):
            total += s.value
    return total


def worker_metrics(readyz: dict[str, Any], index: int) -> dict[str, Any]:
    """A worker's own /metrics, over its private admin socket."""
    path = readyz["workers"][index]["admin"].removeprefix("unix:")
    conn = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    conn.sock = sock
    try:
        conn.request("GET", "/metrics")
        return families(conn.getresponse().read().decode())
    finally:
        conn.close()


def post_all(port: int, bodies: list[bytes], connections: int) -> None:
    """One request at a time, round-robin over `connections` keep-alive connections."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(connections)]
    try:
        for i, body in enumerate(bodies):
            c = conns[i % connections]
            c.request("POST", "/v1/traces", body, PB)
            r = c.getresponse()
            assert r.status == 200, (r.status, r.read())
            r.read()
    finally:
        for c in conns:
            c.close()


def file_pipeline(**batch: Any) -> dict[str, Any]:
    processors = {"batch": batch} if batch else {}
    return {
        "processors": processors,
        "exporters": {"file/spans": {"path": "out/spans.jsonl", "flush_interval": "10ms"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": list(processors), "exporters": ["file/spans"]}
            }
        },
    }


def sdk_spans(n: int) -> list[ReadableSpan]:
    """`n` finished spans made by the real SDK."""
    memory = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "workers-test"}))
    tp.add_span_processor(SimpleSpanProcessor(memory))
    tracer = tp.get_tracer("workers-test")
    for i in range(n):
        with tracer.start_as_current_span(f"span-{i}", attributes={"i": i}):
            pass
    tp.shutdown()
    return list(memory.get_finished_spans())


# ---------------------------------------------------------------- end to end
def test_workers_share_the_ports_count_every_span_and_drain_on_sigterm(sentinel: Any) -> None:
    # a long batch timeout: only the drain on SIGTERM writes the spans out
    gw = sentinel(file_pipeline(timeout="60s", send_batch_size=100_000), workers=2)
    readyz = gw.wait_ready()
    assert [w["ready"] for w in readyz["workers"]] == [True, True]
    assert len({w["pid"] for w in readyz["workers"]}) == 2

    spans = sdk_spans(25)
    sent = {"http": 0, "grpc": 0}
    # separate exporters = separate connections; the kernel hashes each to a worker
    for _ in range(8):
        http_exp = HttpSpanExporter(endpoint=f"http://127.0.0.1:{gw.http}/v1/traces", timeout=60)
        grpc_exp = GrpcSpanExporter(
            endpoint=f"http://127.0.0.1:{gw.grpc}",
            timeout=60,
            insecure=True,
            channel_options=(("grpc.use_local_subchannel_pool", 1),),
        )
        for transport, exp in (("http", http_exp), ("grpc", grpc_exp)):
            for _ in range(3):
                assert exp.export(spans) == SpanExportResult.SUCCESS
                sent[transport] += len(spans)
            exp.shutdown()

    merged = gw.metrics()
    for transport, n in sent.items():
        assert sample(merged, "otelcol_receiver_accepted_spans", transport=transport) == n
    per_worker = [sample(worker_metrics(readyz, i), "otelcol_receiver_accepted_spans") for i in (0, 1)]
    assert all(n > 0 for n in per_worker), per_worker  # both workers got connections
    assert sum(per_worker) == sum(sent.values())
    # gauges: summed where they are amounts, per worker otherwise
    assert (
        sample(merged, "otelcol_process_memory_rss")
        > sum(sample(worker_metrics(readyz, i), "otelcol_process_memory_rss") for i in (0, 1)) * 0.8
    )
    assert sample(merged, "llm_sentinel_worker_up", worker="1") == 1.0

    status, health = gw.get("/healthz")
    assert status == 200 and health["workers"] == {"configured": 2, "running": 2}
    status, anomalies = gw.get("/api/v1/anomalies")
    assert status == 200 and anomalies["detection"] == "not configured"

    out = gw.tmp / "out"
    files = [out / "spans.worker-0.jsonl", out / "spans.worker-1.jsonl"]
    assert sum(len(spans_in_file(f)) for f in files) == 0  # still in the workers' batch buffers
    assert gw.stop() == 0, gw.log
    written = [len(spans_in_file(f)) for f in files]
    assert sum(written) == sum(sent.values()) and all(written), written
    assert not (out / "spans.jsonl").exists()
    assert gw.log.rstrip().endswith("gateway stopped"), gw.log
    assert "Traceback" not in gw.log


def replay_config() -> dict[str, Any]:
    return {
        "processors": {"genai": {}},
        "connectors": {"detect": {}},
        "exporters": {"file/alerts": {"path": "out/anomalies.jsonl", "flush_interval": "0s"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["genai"], "exporters": ["detect"]},
                "anomalies": {"receivers": ["detect"], "exporters": ["file/alerts"]},
            }
        },
    }


def alerts(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        for line in p.read_text().splitlines():
            event = json.loads(line)
            event.pop("detected_at")  # wall clock
            out.append(json.dumps(event, sort_keys=True))
    return sorted(out)


def test_one_and_two_workers_find_the_same_anomalies_in_replayed_traffic(sentinel: Any) -> None:
    from loadtests.llmgen import TrafficConfig, generate
    from loadtests.llmgen.model import inject_all

    traffic = inject_all(TrafficConfig(seed=1, duration_s=2 * 3600.0, spans_per_request=512))
    bodies = [r.SerializeToString() for r in generate(traffic)]

    results: dict[int, tuple[list[str], list[dict[str, Any]]]] = {}
    for workers in (1, 2):
        gw = sentinel(replay_config(), workers=workers, name=f"w{workers}")
        readyz = gw.wait_ready()
        post_all(gw.http, bodies, connections=8)
        status, api = gw.get("/api/v1/anomalies?limit=10000")
        assert status == 200
        status, bad = gw.get("/api/v1/anomalies?limit=0")
        assert status == 400 and "limit" in bad["error"]
        if workers == 2:
            per_worker = [worker_metrics(readyz, i) for i in (0, 1)]
            assert all(sample(m, "otelcol_receiver_accepted_spans") > 0 for m in per_worker)
            forwarded = [sample(m, "llm_sentinel_detect_forwarded_calls") for m in per_worker]
            assert all(n > 0 for n in forwarded), forwarded  # each worker handed calls to the other
            assert sample(gw.metrics(), "llm_sentinel_detect_forward_failed_calls") == 0
        assert gw.stop() == 0, gw.log
        out = gw.tmp / "out"
        files = [out / "anomalies.jsonl"] if workers == 1 else sorted(out.glob("anomalies.worker-*.jsonl"))
        if workers == 2:
            assert len(files) == 2 and all(f.stat().st_size for f in files)  # both own alerting series
        results[workers] = alerts(files), api["anomalies"]

    one, two = results[1], results[2]
    types = {json.loads(a)["type"] for a in one[0]}
    assert len(types) >= 8, types  # the injected anomalies were found, not an empty comparison
    assert one[0] == two[0]  # every emitted alert: type, series, event time, value, score, count
    for api in (one[1], two[1]):
        for a in api:
            a.pop("detected_at")
    assert one[1] == two[1]  # the admin API, merged over workers, in the same order


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(sentinel: Any) -> None:
    gw = sentinel(file_pipeline(), workers=2)
    readyz = gw.wait_ready()
    spans = sdk_spans(10)

    def send(times: int) -> None:
        for _ in range(times):  # a fresh connection each time
            exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{gw.http}/v1/traces", timeout=60)
            assert exporter.export(spans) == SpanExportResult.SUCCESS
            exporter.shutdown()

    send(10)
    assert sample(gw.metrics(), "otelcol_receiver_accepted_spans") == 100
    victim = readyz["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    send(10)  # served by the surviving worker while the other restarts

    def restarted() -> bool:
        status, body = gw.get("/readyz")
        w = body["workers"][1]
        return status == 200 and w["pid"] not in (None, victim) and w["restarts"] == 1

    wait_until(restarted, timeout=60, interval=0.1)
    send(10)
    merged = gw.metrics()
    # what the killed worker had counted is kept: merged counters never go backwards
    assert sample(merged, "otelcol_receiver_accepted_spans") == 300
    assert sample(merged, "llm_sentinel_worker_restarts", worker="1") == 1
    assert sample(merged, "llm_sentinel_worker_restarts", worker="0") == 0
    assert "worker 1 exited with signal SIGKILL" in gw.log
    assert gw.stop(signal.SIGINT) == 0, gw.log  # Ctrl-C: forwarded to the workers as SIGTERM
    out = gw.tmp / "out"
    assert sum(len(spans_in_file(f)) for f in out.glob("spans.worker-*.jsonl")) >= 200


def test_a_worker_failing_at_start_up_stops_the_gateway_with_exit_1(sentinel: Any) -> None:
    with socket.socket() as taken:  # held without SO_REUSEPORT: the workers cannot bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        gw = sentinel(file_pipeline(), workers=2, http_port=taken.getsockname()[1])
        assert gw.proc.wait(120) == 1, gw.log
    assert "during start-up; stopping the gateway" in gw.log
    assert "address already in use" in gw.log.lower()


# ---------------------------------------------------------------- merge rules
WORKER_0 = """\
# HELP otelcol_receiver_accepted_spans_total Spans.
# TYPE otelcol_receiver_accepted_spans_total counter
otelcol_receiver_accepted_spans_total{receiver="otlp",transport="http"} 5.0
otelcol_receiver_accepted_spans_created{receiver="otlp",transport="http"} 1.7e9
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le="1.0",m="a"} 1.0
lat_bucket{le="+Inf",m="a"} 2.0
lat_count{m="a"} 2.0
lat_sum{m="a"} 3.5
# HELP otelcol_exporter_queue_size Queue.
# TYPE otelcol_exporter_queue_size gauge
otelcol_exporter_queue_size{exporter="otlp"} 3.0
# HELP otelcol_process_uptime Uptime.
# TYPE otelcol_process_uptime gauge
otelcol_process_uptime 100.0
# HELP some_state A gauge that is not an amount.
# TYPE some_state gauge
some_state 7.0
"""


def test_metrics_merge_sums_counters_and_histograms_and_labels_other_gauges() -> None:
    worker_1 = WORKER_0.replace("} 5.0", "} 4.0").replace(
        'queue_size{exporter="otlp"} 3.0', 'queue_size{exporter="otlp"} 1.0'
    )
    merged = MetricsMerger().merge({0: (10, WORKER_0), 1: (11, worker_1)})
    text = "".join(_render(merged))
    fams = families(text)
    assert sample(fams, "otelcol_receiver_accepted_spans", transport="http") == 9
    assert "_created" not in text
    assert sample(fams, "lat", "lat_bucket", le="+Inf") == 4 and sample(fams, "lat", "lat_sum") == 7
    assert sample(fams, "otelcol_exporter_queue_size") == 4  # an amount: summed
    assert sample(fams, "some_state", worker="0") == 7 and sample(fams, "some_state", worker="1") == 7
    assert "otelcol_process_uptime" not in fams  # the supervisor's own, given by the caller


def test_merged_counters_survive_a_worker_restart() -> None:
    merger = MetricsMerger()

    def total(scrapes: dict[int, tuple[int, str | None]]) -> float:
        return sample(families("".join(_render(merger.merge(scrapes)))), "otelcol_receiver_accepted_spans")

    assert total({0: (10, WORKER_0), 1: (11, WORKER_0)}) == 10
    assert total({0: (10, WORKER_0), 1: (0, None)}) == 10  # worker 1 down: its last count stays
    restarted = WORKER_0.replace("} 5.0", "} 2.0")
    assert total({0: (10, WORKER_0), 1: (12, restarted)}) == 12  # a new process counts on top
    assert total({0: (10, WORKER_0), 1: (12, restarted)}) == 12  # and is not carried twice


def _render(metrics: list[Any]) -> list[str]:
    from prometheus_client import generate_latest

    from gateway.admin_merge import Exposition

    return [generate_latest(Exposition(metrics)).decode()]


def test_merged_anomalies_are_newest_first_and_limited() -> None:
    a = {"anomalies": [{"id": "a", "last_seen": "2025-01-06T01:00:00.000000Z"}], "count": 1}
    b = {
        "anomalies": [
            {"id": "c", "last_seen": "2025-01-06T03:00:00.000000Z"},
            {"id": "b", "last_seen": "2025-01-06T02:00:00.000000Z"},
        ],
        "count": 2,
    }
    assert [e["id"] for e in merge_anomalies([a, b], limit=2)["anomalies"]] == ["c", "b"]
    assert merge_anomalies([a, b], limit=10)["count"] == 3


# ---------------------------------------------------------------- per-worker config and CLI
PER_WORKER = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}, http: {endpoint: "127.0.0.1:4318"}}}
exporters:
  file: {path: data/otlp.jsonl}
  otlp:
    endpoint: "127.0.0.1:4999"
    sending_queue: {storage: {directory: /var/lib/sentinel/queue}}
  prometheusremotewrite: {endpoint: "http://127.0.0.1:8428/api/v1/write", instance: gw-a}
service:
  workers: 2
  pipelines:
    traces: {receivers: [otlp], exporters: [file, otlp]}
    metrics: {receivers: [otlp], exporters: [prometheusremotewrite]}
"""


def test_each_worker_gets_its_own_files_and_queue_directory_and_shares_the_ports() -> None:
    raw, locs = load_text(PER_WORKER, "t.yaml")
    config = build_config(raw, locs)
    assert config.service.workers == 2
    w1 = for_worker(config, 1)
    exporters = {str(cid): spec.config for cid, spec in w1.components[Kind.EXPORTER].items()}
    assert exporters["file"].path == "data/otlp.worker-1.jsonl"
    assert exporters["otlp"].sending_queue.storage.directory == "/var/lib/sentinel/queue/worker-1"
    assert exporters["prometheusremotewrite"].instance == "gw-a/worker-1"  # its own series per worker
    receiver = next(iter(w1.components[Kind.RECEIVER].values())).config
    assert receiver.protocols.grpc.reuse_port and receiver.protocols.http.reuse_port
    # the user's config is untouched
    original = next(iter(config.components[Kind.RECEIVER].values())).config
    assert not original.protocols.http.reuse_port
    assert multi_worker_issues(config) == []
    raw, locs = load_text(PER_WORKER.replace("127.0.0.1:4318", "127.0.0.1:0"), "t.yaml")
    issues = multi_worker_issues(build_config(raw, locs))
    assert len(issues) == 1 and "fixed port" in issues[0]


def test_workers_option_and_setting_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workers", "0"]) == 2
    assert "workers must be between 1 and 256 (got 0)" in capsys.readouterr().err
    assert main(["run", "--workers", "two"]) == 2
    assert "expected a whole number" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(PER_WORKER.replace("workers: 2", "workers: 0"))
    assert main(["validate", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "service.workers" in err and "workers must be between 1 and 256 (got 0)" in err
    assert main(["run", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--workers N" in help_text and "SO_REUSEPORT" in help_text and "service.workers" in help_text


def test_run_refuses_random_ports_with_several_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(PER_WORKER.replace("127.0.0.1:4317", "127.0.0.1:0"))
    assert main(["run", "-c", str(cfg)]) == 2  # service.workers: 2
    assert "fixed port" in capsys.readouterr().err
