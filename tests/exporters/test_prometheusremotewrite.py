"""prometheusremotewrite exporter against real Prometheus 2.42 and VictoriaMetrics 1.79 (tests/servers).

Values are read back through the servers' own query APIs. Every test writes series with a unique
`test_id` label or metric name, because the servers are shared by the whole session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import cramjam
import pytest
import requests
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from pydantic import ValidationError

from exporters.prometheusremotewrite import (
    FACTORY,
    STALE_NAN,
    PrometheusRemoteWriteExporter,
    SeriesSet,
    encode_labels,
    encode_timeseries,
    format_float,
    metric_name,
    sanitize_label_name,
    snappy_block,
)
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import MetricBatch
from gateway.component import ComponentId, Kind
from gateway.config.model import build_config
from gateway.config.source import load_text
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.conftest import free_port, running_gateway
from tests.exporters.test_otlp import self_signed  # noqa: F401 (fixture)
from tests.processors.test_genai import SEMCONV
from tests.processors.test_genai import request as trace_request
from tests.servers.fixtures import Servers, prom_query, vm_flush, wait_for_value

FAST_RETRY = {"initial_interval": "50ms", "max_interval": "100ms", "randomization_factor": 0}
WRITE = "/api/v1/write"
LOGGER = "sentinel.exporter.prometheusremotewrite"


def uid() -> str:
    return uuid.uuid4().hex[:10]


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- helpers
def build(config: dict[str, Any]) -> tuple[PrometheusRemoteWriteExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("prometheusremotewrite"), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate({"interval": "1h", **config}))
    assert isinstance(exp, PrometheusRemoteWriteExporter)
    return exp, tel


@contextlib.asynccontextmanager
async def started(exp: PrometheusRemoteWriteExporter) -> AsyncIterator[PrometheusRemoteWriteExporter]:
    await exp.start()
    try:
        yield exp
    finally:
        await exp.shutdown()


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def failed_points(tel: SelfTelemetry) -> float:
    v = tel.registry.get_sample_value(
        "otelcol_exporter_send_failed_metric_points_total", {"exporter": "prometheusremotewrite"}
    )
    return float(v or 0)


def sent_points(tel: SelfTelemetry) -> float:
    v = tel.registry.get_sample_value(
        "otelcol_exporter_sent_metric_points_total", {"exporter": "prometheusremotewrite"}
    )
    return float(v or 0)


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def query(url: str, promql: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
    """Instant query; VictoriaMetrics is force-flushed first (Prometheus answers that with 404)."""
    with contextlib.suppress(urllib.error.HTTPError):
        vm_flush(url)
    return prom_query(url, promql, at)


def range_values(base_url: str, selector: str, window: str = "5m") -> list[tuple[int, float]]:
    """Raw samples of one series: a range-vector instant query, [(ts_ms, value)]."""
    with contextlib.suppress(urllib.error.HTTPError):
        vm_flush(base_url)
    q = urllib.parse.urlencode({"query": f"{selector}[{window}]"})
    with urllib.request.urlopen(f"{base_url}/api/v1/query?{q}", timeout=10) as resp:
        body = json.loads(resp.read())
    result = body["data"]["result"]
    assert len(result) <= 1, result
    return [(round(float(t) * 1000), float(v)) for t, v in result[0]["values"]] if result else []


def one(result: dict[frozenset[tuple[str, str]], float]) -> tuple[dict[str, str], float]:
    assert len(result) == 1, result
    ((labels, value),) = result.items()
    return dict(labels), value


# ---- a minimal protobuf reader, to look at what went over the wire
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 1:
            v, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield num, v


def decode_write_request(raw: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    out = []
    for num, ts in _fields(raw):
        assert num == 1
        labels: list[tuple[str, str]] = []
        samples: list[tuple[int, float]] = []
        for fnum, v in _fields(ts):
            if fnum == 1:
                d = dict(_fields(v))
                labels.append((d[1].decode(), d[2].decode()))
            else:
                d = dict(_fields(v))
                t = d.get(2, 0)
                t = t - (1 << 64) if t >= 1 << 63 else t
                samples.append((t, struct.unpack("<d", d[1])[0]))
        out.append((labels, samples))
    return out


# ---- a forwarding proxy that records requests and can answer in the server's place
Responder = Callable[[int, bytes], tuple[int, dict[str, str], str] | None]


class Proxy:
    """Counts requests to a real server; `respond(n, body)` may answer instead (None = forward)."""

    def __init__(
        self, target: str, respond: Responder | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.target = target
        self.respond = respond
        self.tls = tls
        self.port = free_port()
        self.log: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{WRITE}"

    def statuses(self) -> list[int]:
        return [r["status"] for r in self.log]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        n = len(self.log) + 1
        answer = self.respond(n, body) if self.respond else None
        if answer is None:
            assert self._session is not None
            fwd = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with self._session.post(self.target, data=body, headers=fwd) as resp:
                status, headers, text = resp.status, {}, await resp.text()
        else:
            status, headers, text = answer
        self.log.append(
            {"t": time.monotonic(), "status": status, "body": body, "headers": dict(request.headers)}
        )
        return web.Response(status=status, text=text, headers=headers)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    async def _stop(self) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    def __enter__(self) -> Proxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# ---- OTLP metrics
def _attrs(target: Any, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        kv = target.add()
        kv.key = k
        if isinstance(v, bool):
            kv.value.bool_value = v
        elif isinstance(v, int):
            kv.value.int_value = v
        elif isinstance(v, float):
            kv.value.double_value = v
        else:
            kv.value.string_value = v


def gauge_request(name: str, points: list[tuple[int, float]], **attrs: Any) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(rm.resource.attributes, {"service.name": "svc"})
    m = rm.scope_metrics.add().metrics.add()
    m.name = name
    for ts_ms, value in points:
        p = m.gauge.data_points.add()
        p.time_unix_nano = ts_ms * 1_000_000
        p.as_double = value
        _attrs(p.attributes, attrs)
    return req


# ---------------------------------------------------------------- unit: names, encoding, config
@pytest.mark.parametrize(
    ("name", "unit", "kind", "monotonic", "expected"),
    [
        ("http.server.duration", "s", "histogram", False, "http_server_duration_seconds"),
        ("system.filesystem.usage", "By", "gauge", False, "system_filesystem_usage_bytes"),
        ("requests", "{request}", "sum", True, "requests_total"),
        ("requests.total", "1", "sum", True, "requests_total"),
        ("memory.utilization", "1", "gauge", False, "memory_utilization_ratio"),
        ("queue.depth", "{items}", "sum", False, "queue_depth"),
        ("speed", "m/s", "gauge", False, "speed_meters_per_second"),
        ("cost", "$", "sum", True, "cost_dollars_total"),
        ("(lambda).function.executions(#)", "", "gauge", False, "lambda_function_executions"),
        ("2xx.responses", "", "gauge", False, "_2xx_responses"),
        (
            "gen_ai.client.operation.duration",
            "s",
            "histogram",
            False,
            "gen_ai_client_operation_duration_seconds",
        ),
    ],
)
def test_metric_names_follow_the_collector(name, unit, kind, monotonic, expected):
    assert metric_name(name, unit, kind, monotonic) == expected


def test_metric_names_without_suffixes_and_with_namespace():
    assert metric_name("a.b-c", "s", "sum", True, add_suffixes=False) == "a_b_c"
    assert metric_name("9lives", "", "gauge", False, add_suffixes=False) == "_9lives"
    assert metric_name("x.y", "ms", "gauge", False, namespace="llm") == "llm_x_y_milliseconds"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("host.name", "host_name"),
        ("name (of the host)", "name__of_the_host_"),
        ("2 cents", "key_2_cents"),
        ("_name", "key_name"),
        ("__name", "__name"),
        ("héllo", "h_llo"),
    ],
)
def test_label_names_are_sanitised(key, expected):
    assert sanitize_label_name(key) == expected


def test_bounds_are_formatted_like_go():
    assert [format_float(x) for x in (1.0, 0.1, 2.5e-7, 1e16, 1e21, float("inf"))] == [
        "1",
        "0.1",
        "0.00000025",
        "10000000000000000",
        "1000000000000000000000",
        "+Inf",
    ]


def test_encoding_round_trips_and_splits_by_series():
    s = SeriesSet()
    for i in range(7):
        s.add((("__name__", "m"), ("i", str(i))), 2000, float(i), 1)
    s.add((("__name__", "m"), ("i", "0")), 1000, -1.0)  # older sample of series 0, added last
    s.add((("__name__", "neg"),), -5, STALE_NAN)
    chunks = s.encode(3)
    assert [c.series for c in chunks] == [3, 3, 2]
    assert sum(c.points for c in chunks) == 7 and sum(c.samples for c in chunks) == 9
    decoded = [ts for c in chunks for ts in decode_write_request(c.body)]
    assert decoded[0] == ([("__name__", "m"), ("i", "0")], [(1000, -1.0), (2000, 0.0)])  # sorted
    labels, samples = decoded[-1]
    assert labels == [("__name__", "neg")] and samples[0][0] == -5
    assert struct.pack("<d", samples[0][1]) == struct.pack("<Q", 0x7FF0000000000002)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({}, "endpoint"),
        ({"endpoint": "prometheus:9090"}, "invalid endpoint"),
        ({"endpoint": "ftp://x/y"}, "invalid endpoint"),
        ({"endpoint": "http://x/y", "headers": {"content-encoding": "gzip"}}, "reserved header"),
        ({"endpoint": "http://x/y", "headers": {"User-Agent": "me"}}, "reserved header"),
        ({"endpoint": "http://x/y", "external_labels": {"bad-name": "v"}}, "invalid label name"),
        ({"endpoint": "http://x/y", "external_labels": {"__meta": "v"}}, "invalid label name"),
        ({"endpoint": "http://x/y", "external_labels": {"env": ""}}, "empty value"),
        ({"endpoint": "http://x/y", "sending_queue": {"num_consumers": 4}}, "must be 1"),
        ({"endpoint": "http://x/y", "max_series_per_request": 0}, "max_series_per_request"),
        ({"endpoint": "http://x/y", "interval": "-1s"}, "interval"),
        ({"endpoint": "http://x/y", "tls": {"ca_file": "/ca.pem"}}, "https"),
        ({"endpoint": "https://x/y", "tls": {"cert_file": "/c.pem"}}, "together"),
        ({"endpoint": "http://x/y", "namespace": "a-b"}, "namespace"),
        ({"endpoint": "http://x/y", "bogus": 1}, "bogus"),
        ({"endpoint": "http://x/y", "sending_queue": {"storage": {"directory": "/tmp/q"}}}, "storage"),
    ],
)
def test_config_errors(config, needle):
    with pytest.raises(ValidationError, match=needle):
        FACTORY.config.model_validate(config)


GATEWAY = """\
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  genai: {}
connectors:
  detect: {}
exporters:
  prometheusremotewrite: {endpoint: "http://127.0.0.1:9090/api/v1/write", external_labels: {env: prod}}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [genai], exporters: [detect]}
    metrics: {receivers: [otlp], exporters: [prometheusremotewrite]}
    anomalies: {receivers: [detect], exporters: [prometheusremotewrite]}
"""


def test_gateway_config_places_it_in_metrics_and_anomalies_pipelines():
    raw, locs = load_text(GATEWAY, "gw.yaml")
    cfg = build_config(raw, locs)
    assert {str(p.name) for p in cfg.pipelines} == {"traces", "metrics", "anomalies"}
    bad = GATEWAY.replace("exporters: [detect]", "exporters: [detect, prometheusremotewrite]")
    raw, locs = load_text(bad, "gw.yaml")
    with pytest.raises(Exception, match="does not support traces"):
        build_config(raw, locs)


def test_config_defaults():
    cfg = FACTORY.config.model_validate({"endpoint": "http://x:9090/api/v1/write"})
    assert cfg.interval == 15 and cfg.include == ["gen_ai_*", "llm_sentinel_*"]
    assert cfg.max_series_per_request == 500 and cfg.sending_queue.num_consumers == 1
    assert {s.value for s in FACTORY.signals} == {"metrics", "anomalies"}


# ---------------------------------------------------------------- wire format against Prometheus
def test_snappy_block_is_accepted_framed_is_rejected(servers: Servers):
    name = f"prw_snappy_{uid()}"
    labels = (("__name__", name),)
    body = encode_timeseries(encode_labels(labels), [(now_ms(), 7.0)])
    headers = {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    framed = bytes(cramjam.snappy.compress(body))
    r = requests.post(servers.prometheus + WRITE, data=framed, headers=headers, timeout=5)
    assert r.status_code == 400 and "snappy" in r.text
    r = requests.post(servers.prometheus + WRITE, data=snappy_block(body), headers=headers, timeout=5)
    assert r.status_code == 204
    assert one(query(servers.prometheus, name))[1] == 7.0


def test_request_format_on_the_wire(servers: Servers):
    name = f"prw_wire_{uid()}"
    t = now_ms()
    req = gauge_request(name, [(t - 2000, 1.0)], **{"z.attr": "z", "a.attr": "a", "a_attr": "b", "empty": ""})
    for i in range(4):  # 5 series in all
        req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points.add(
            time_unix_nano=(t - 1000) * 1_000_000, as_double=float(i)
        ).attributes.add(key="i", value={"string_value": str(i)})

    async def go() -> None:
        exp, _ = build(
            {
                "endpoint": proxy.url,
                "max_series_per_request": 2,
                "headers": {"X-Scope-OrgID": "tenant-1"},
                "external_labels": {"cluster": "c1", "job": "overridden"},
            }
        )
        async with started(exp):
            await exp.consume(MetricBatch.from_request(req))
            await until(lambda: len(proxy.log) == 3)

    with Proxy(servers.prometheus + WRITE) as proxy:
        run(go())
    assert proxy.statuses() == [204, 204, 204]  # 5 series, at most 2 per request
    h = proxy.log[0]["headers"]
    assert h["Content-Encoding"] == "snappy" and h["Content-Type"] == "application/x-protobuf"
    assert h["X-Prometheus-Remote-Write-Version"] == "0.1.0" and h["User-Agent"].startswith("LLM-Sentinel/")
    assert h["X-Scope-OrgID"] == "tenant-1"
    series = []
    for rec in proxy.log:
        assert not rec["body"].startswith(b"\xff\x06\x00\x00sNaPpY")  # not the framed format
        series += decode_write_request(bytes(cramjam.snappy.decompress_raw(rec["body"])))
    assert len(series) == 5
    for labels, _ in series:
        names = [n for n, _ in labels]
        assert names == sorted(names) and len(set(names)) == len(names)
        assert all(v for _, v in labels)
    first = dict(series[0][0])
    # colliding attributes joined with ';' in key order; empty value dropped; resource wins over external
    assert first == {"__name__": name, "a_attr": "a;b", "cluster": "c1", "job": "svc", "z_attr": "z"}


# ---------------------------------------------------------------- round trips
def test_llm_metrics_round_trip_through_a_gateway(servers: Servers, ports):
    tid = uid()
    exporter = {"interval": "100ms", "external_labels": {"test_id": tid}, "instance": "gw-1"}
    config = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
                    "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
                }
            }
        },
        "processors": {"genai": {}},
        "exporters": {
            "debug": {},
            "prometheusremotewrite/prom": {"endpoint": servers.prometheus + WRITE, **exporter},
            "prometheusremotewrite/vm": {"endpoint": servers.victoriametrics + WRITE, **exporter},
        },
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["genai"], "exporters": ["debug"]},
                "metrics": {
                    "receivers": ["otlp"],
                    "exporters": ["prometheusremotewrite/prom", "prometheusremotewrite/vm"],
                },
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{ports['admin']}"}},
        },
    }
    spans = [{**SEMCONV, "_latency": lat} for lat in (0.5, 1.0, 2.0)]
    with running_gateway(config):
        r = requests.post(
            f"http://127.0.0.1:{ports['http']}/v1/traces",
            data=trace_request(*spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200
        for url in (servers.prometheus, servers.victoriametrics):
            sel = f'{{test_id="{tid}"}}'
            requests_total = wait_for_value(
                lambda url=url, sel=sel: query(url, f"llm_sentinel_requests_total{sel}"),
                lambda res: res and list(res.values()) == [3.0],
            )
            labels, _ = one(requests_total)
            assert labels == {
                "__name__": "llm_sentinel_requests_total",
                "test_id": tid,
                "job": "llm-sentinel",
                "instance": "gw-1",
                "service_name": "svc",
                "gen_ai_provider_name": "openai",
                "gen_ai_operation_name": "chat",
                "gen_ai_request_model": "gpt-4o-mini",
                "gen_ai_response_model": "gpt-4o-mini-2024-07-18",
                "outcome": "ok",
            }
            hist = "gen_ai_client_operation_duration_seconds"
            buckets = query(url, f"{hist}_bucket{sel}")
            by_le = {dict(k)["le"]: v for k, v in buckets.items()}
            assert by_le["0.32"] == 0 and by_le["0.64"] == 1 and by_le["1.28"] == 2 and by_le["2.56"] == 3
            assert by_le["+Inf"] == 3 and len(by_le) == 15
            assert one(query(url, f"{hist}_count{sel}"))[1] == 3
            assert one(query(url, f"{hist}_sum{sel}"))[1] == 3.5
            tokens = query(url, f"gen_ai_client_token_usage_sum{sel}")
            assert sorted(tokens.values()) == [600.0, 3000.0]
            assert not query(url, f"{hist}_created{sel}")  # _created is left out


def metrics_request(prefix: str, t_ns: int) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _attrs(
        rm.resource.attributes,
        {
            "service.name": "billing",
            "service.namespace": "shop",
            "service.instance.id": "pod-7",
            "k8s.x": "y",
        },
    )
    sm = rm.scope_metrics.add()
    sm.scope.name, sm.scope.version = "meter", "1.2"
    g = sm.metrics.add(name=f"{prefix}.temperature", unit="Cel")
    _attrs(g.gauge.data_points.add(time_unix_nano=t_ns, as_double=21.5).attributes, {"room.name": "lab"})
    c = sm.metrics.add(name=f"{prefix}.requests", unit="{request}")
    c.sum.is_monotonic, c.sum.aggregation_temporality = True, 2
    _attrs(c.sum.data_points.add(time_unix_nano=t_ns, as_int=42).attributes, {"http.method": "GET"})
    u = sm.metrics.add(name=f"{prefix}.inflight", unit="{request}")
    u.sum.is_monotonic, u.sum.aggregation_temporality = False, 2
    u.sum.data_points.add(time_unix_nano=t_ns, as_int=-3)
    h = sm.metrics.add(name=f"{prefix}.latency", unit="ms")
    h.histogram.aggregation_temporality = 2
    hp = h.histogram.data_points.add(time_unix_nano=t_ns, count=6, sum=123.5)
    hp.explicit_bounds.extend([10, 100.5])
    hp.bucket_counts.extend([1, 2, 3])
    s = sm.metrics.add(name=f"{prefix}.size", unit="By")
    sp = s.summary.data_points.add(time_unix_nano=t_ns, count=4, sum=10)
    sp.quantile_values.add(quantile=0.5, value=2)
    sp.quantile_values.add(quantile=0.99, value=5)
    d = sm.metrics.add(name=f"{prefix}.delta", unit="1")
    d.sum.is_monotonic, d.sum.aggregation_temporality = True, 1
    d.sum.data_points.add(time_unix_nano=t_ns, as_int=1)
    return req


def test_otlp_metrics_conversion_round_trip(servers: Servers, caplog):
    p = f"prw_conv_{uid()}"
    t = now_ms()

    async def go(url: str) -> SelfTelemetry:
        exp, tel = build({"endpoint": url + WRITE, "external_labels": {"region": "eu"}})
        async with started(exp):
            await exp.consume(MetricBatch.from_request(metrics_request(p, t * 1_000_000)))
            await until(lambda: sent_points(tel) == 5)
        return tel

    common = {
        "job": "shop/billing",
        "instance": "pod-7",
        "otel_scope_name": "meter",
        "otel_scope_version": "1.2",
        "region": "eu",
    }
    expect = {
        (f"{p}_temperature_celsius", (("room_name", "lab"),)): 21.5,
        (f"{p}_requests_total", (("http_method", "GET"),)): 42,
        (f"{p}_inflight", ()): -3,
        (f"{p}_latency_milliseconds_bucket", (("le", "10"),)): 1,
        (f"{p}_latency_milliseconds_bucket", (("le", "100.5"),)): 3,
        (f"{p}_latency_milliseconds_bucket", (("le", "+Inf"),)): 6,
        (f"{p}_latency_milliseconds_sum", ()): 123.5,
        (f"{p}_latency_milliseconds_count", ()): 6,
        (f"{p}_size_bytes", (("quantile", "0.5"),)): 2,
        (f"{p}_size_bytes", (("quantile", "0.99"),)): 5,
        (f"{p}_size_bytes_sum", ()): 10,
        (f"{p}_size_bytes_count", ()): 4,
    }
    for url in (servers.prometheus, servers.victoriametrics):
        tel = run(go(url))
        assert failed_points(tel) == 1  # the delta sum: not expressible, counted
        got = wait_for_value(
            lambda url=url: query(url, f'{{__name__=~"{p}_.*"}}', at=t / 1000),
            lambda res: len(res) == len(expect),
        )
        assert {
            (
                dict(k)["__name__"],
                tuple(sorted((n, v) for n, v in k if n not in common and n != "__name__")),
            ): v
            for k, v in got.items()
        } == expect
        for k in got:
            assert {n: v for n, v in k if n in common} == common
        samples = range_values(url, f"{p}_requests_total")
        assert samples == [(t, 42.0)]  # the point's own timestamp
    assert sum("dropping metric" in r.getMessage() for r in caplog.records) == 2  # once per exporter


def test_alert_counts_in_an_anomalies_pipeline(servers: Servers):
    tid = uid()

    def event(kind: AnomalyType, sev: Severity) -> AnomalyEvent:
        return AnomalyEvent(
            time_ns=time.time_ns(),
            service="checkout",
            provider="openai",
            operation="chat",
            model="gpt-4o",
            metric="latency",
            type=kind,
            severity=sev,
            value=9.0,
            baseline=1.0,
            score=0.95,
            detector="test",
        )

    async def go() -> None:
        exp, tel = build(
            {"endpoint": servers.prometheus + WRITE, "include": [], "external_labels": {"test_id": tid}}
        )
        async with started(exp):
            spike = event(AnomalyType.LATENCY_SPIKE, Severity.HIGH)
            await exp.consume(AnomalyBatch([spike, spike.copy()]))
            await exp.consume(AnomalyBatch([event(AnomalyType.ERROR_BURST, Severity.CRITICAL)]))
            assert await exp.snapshot()
            await until(lambda: sent_points(tel) == 2)
            await asyncio.sleep(0.01)
            await exp.consume(AnomalyBatch([event(AnomalyType.LATENCY_SPIKE, Severity.HIGH)]))
        # shutdown sent a final snapshot
        assert (
            tel.registry.get_sample_value(
                "otelcol_exporter_sent_anomalies_total", {"exporter": "prometheusremotewrite"}
            )
            == 4
        )

    run(go())
    res = query(servers.prometheus, f'llm_sentinel_alerts_total{{test_id="{tid}"}}')
    by_type = {dict(k)["type"]: (dict(k), v) for k, v in res.items()}
    labels, value = by_type["latency_spike"]
    assert value == 3 and labels["severity"] == "high"
    assert labels["service_name"] == "checkout" and labels["gen_ai_request_model"] == "gpt-4o"
    assert labels["job"] == "llm-sentinel"
    assert by_type["error_burst"][1] == 1
    # a new series starts with a 0 sample, so increase() sees its first alert
    values = [
        v
        for _, v in range_values(
            servers.prometheus, f'llm_sentinel_alerts_total{{test_id="{tid}",type="latency_spike"}}'
        )
    ]
    assert values == [0.0, 2.0, 3.0]


# ---------------------------------------------------------------- failures
def test_4xx_is_dropped_counted_and_logged_once(servers: Servers, caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    name = f"prw_ooo_{uid()}"
    t = now_ms()
    # The server already has a newer sample of the series: older ones are "out of order" (HTTP 400).
    body = encode_timeseries(encode_labels((("__name__", name), ("job", "svc"))), [(t, 100.0)])
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    assert (
        requests.post(servers.prometheus + WRITE, data=snappy_block(body), headers=headers).status_code == 204
    )

    async def go() -> SelfTelemetry:
        exp, tel = build({"endpoint": proxy.url, "retry_on_failure": FAST_RETRY})
        async with started(exp):
            for i in range(3):
                await exp.consume(MetricBatch.from_request(gauge_request(name, [(t - 5000 + i, float(i))])))
            await exp.consume(MetricBatch.from_request(gauge_request(name + "_ok", [(t, 1.0)])))
            await until(lambda: len(proxy.log) == 4)
            await asyncio.sleep(0.3)  # would-be retries have time to show up
        return tel

    with Proxy(servers.prometheus + WRITE) as proxy:
        tel = run(go())
    assert proxy.statuses() == [400, 400, 400, 204]  # no retries, and the queue moved on
    assert failed_points(tel) == 3 and sent_points(tel) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 400" in errors[0] and "out of order sample" in errors[0]
    assert range_values(servers.prometheus, name) == [(t, 100.0)]
    assert one(query(servers.prometheus, name + "_ok"))[1] == 1.0


def test_429_retry_after_is_honoured(servers: Servers):
    name = f"prw_429_{uid()}"

    def respond(n: int, _body: bytes) -> tuple[int, dict[str, str], str] | None:
        return (429, {"Retry-After": "1"}, "slow down") if n == 1 else None

    async def go() -> None:
        exp, tel = build({"endpoint": proxy.url, "retry_on_failure": FAST_RETRY})
        async with started(exp):
            await exp.consume(MetricBatch.from_request(gauge_request(name, [(now_ms(), 5.0)])))
            await until(lambda: sent_points(tel) == 1)

    with Proxy(servers.prometheus + WRITE, respond) as proxy:
        run(go())
    assert proxy.statuses() == [429, 204]
    assert proxy.log[1]["t"] - proxy.log[0]["t"] >= 0.95
    assert one(query(servers.prometheus, name))[1] == 5.0


def test_5xx_is_retried_until_victoriametrics_recovers(servers: Servers, server_factory):
    # A VictoriaMetrics whose disk is "full": every write gets 503 until it restarts normally.
    vm = server_factory("victoriametrics", extra_args=["-storage.minFreeDiskSpaceBytes=1000000000000000"])
    name = f"prw_5xx_{uid()}"
    t = now_ms()

    async def go() -> SelfTelemetry:
        exp, tel = build(
            {"endpoint": vm.url + WRITE, "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": "60s"}}
        )
        async with started(exp):
            await exp.consume(MetricBatch.from_request(gauge_request(name, [(t, 11.0)], k="v")))
            await until(lambda: exp.requests >= 3)
            assert sent_points(tel) == 0
            await asyncio.to_thread(vm.restart, [])  # connection refused meanwhile: retried as well
            await until(lambda: sent_points(tel) == 1, timeout=20)
            assert exp.requests > 3
        return tel

    tel = run(go(), timeout=45)
    assert failed_points(tel) == 0
    res = wait_for_value(lambda: query(vm.url, name), lambda r: len(r) == 1, timeout=15)
    assert one(res) == ({"__name__": name, "job": "svc", "k": "v"}, 11.0)


@pytest.mark.parametrize("queue", [True, False], ids=["queued", "no-queue"])
def test_order_is_kept_across_retries(servers: Servers, queue: bool):
    """Prometheus answers 400 to an out-of-order sample, so any overtaking would lose data."""
    name = f"prw_order_{uid()}"
    t0 = now_ms() - 10_000

    def respond(n: int, _body: bytes) -> tuple[int, dict[str, str], str] | None:
        return (503, {}, "unavailable") if n <= 3 else None

    async def go() -> None:
        exp, tel = build(
            {"endpoint": proxy.url, "retry_on_failure": FAST_RETRY, "sending_queue": {"enabled": queue}}
        )
        async with started(exp):
            batches = [
                MetricBatch.from_request(gauge_request(name, [(t0 + 1000 * i, float(i))])) for i in range(5)
            ]
            if queue:
                for b in batches:
                    await exp.consume(b)
            else:  # concurrent callers, as pipelines would be: the first one is retried, the rest wait
                await asyncio.gather(*(exp.consume(b) for b in batches))
            await until(lambda: sent_points(tel) == 5)
            assert failed_points(tel) == 0

    with Proxy(servers.prometheus + WRITE, respond) as proxy:
        run(go())
    assert proxy.statuses() == [503, 503, 503, 204, 204, 204, 204, 204]
    sent_ts = [
        s[0]
        for r in proxy.log
        for _, ss in decode_write_request(bytes(cramjam.snappy.decompress_raw(r["body"])))
        for s in ss
    ]
    assert sent_ts[3:] == sorted(sent_ts[3:])
    assert range_values(servers.prometheus, name) == [(t0 + 1000 * i, float(i)) for i in range(5)]


def test_no_new_snapshot_while_one_is_retried(servers: Servers):
    tid = uid()
    failing = threading.Event()
    failing.set()

    def respond(_n: int, _body: bytes) -> tuple[int, dict[str, str], str] | None:
        return (503, {}, "down") if failing.is_set() else None

    async def go() -> PrometheusRemoteWriteExporter:
        exp, _ = build(
            {
                "endpoint": proxy.url,
                "interval": "50ms",
                "include": ["otelcol_exporter_queue_capacity"],
                "external_labels": {"test_id": tid},
                "retry_on_failure": FAST_RETRY,
            }
        )
        async with started(exp):
            await asyncio.sleep(0.6)  # ~12 ticks while the first snapshot is being retried
            assert exp.snapshots == 1 and exp.snapshots_skipped >= 5 and exp.snapshot_pending()
            failing.clear()
            await until(lambda: exp.snapshots >= 3)
            await until(lambda: not exp.snapshot_pending())
        return exp

    with Proxy(servers.prometheus + WRITE, respond) as proxy:
        exp = run(go())
    assert 503 in proxy.statuses() and proxy.statuses()[-1] == 204
    samples = range_values(servers.prometheus, f'otelcol_exporter_queue_capacity{{test_id="{tid}"}}')
    assert len(samples) == exp.snapshots  # every snapshot landed (the final one included), in order
    assert [t for t, _ in samples] == sorted({t for t, _ in samples})


@pytest.mark.parametrize("tls", ["ca_file", "insecure", "default"])
def test_https_endpoints(servers: Servers, self_signed, tls: str):  # noqa: F811
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    name = f"prw_tls_{uid()}"
    settings = {"ca_file": {"ca_file": cert}, "insecure": {"insecure": True}, "default": {}}[tls]

    async def go() -> SelfTelemetry:
        exp, tel = build(
            {
                "endpoint": proxy.url,
                "tls": settings,
                "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": "300ms"},
            }
        )
        async with started(exp):
            await exp.consume(MetricBatch.from_request(gauge_request(name, [(now_ms(), 3.0)])))
            await until(lambda: sent_points(tel) + failed_points(tel) == 1)
        return tel

    with Proxy(servers.prometheus + WRITE, tls=server_ctx) as proxy:
        tel = run(go())
    if tls == "default":  # a self-signed certificate is not trusted: retried, then given up
        assert failed_points(tel) == 1 and proxy.log == []
    else:
        assert sent_points(tel) == 1 and proxy.statuses() == [204]
        assert one(query(servers.prometheus, name))[1] == 3.0
