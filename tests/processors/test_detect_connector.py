"""The `detect` connector on generated LLM traffic: every anomaly type found on the right series,
clean traffic silent, replays identical, out-of-order input within the lateness bound harmless,
deduplication and the alert API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import otlpjson
from gateway.anomaly import AnomalyEvent, AnomalyType, Severity
from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.replay import replay_otlp
from gateway.telemetry import SelfTelemetry
from loadtests.llmgen import TrafficConfig, generate, inject_all, resolve
from processors.detect.alerts import Deduplicator
from processors.detect.connector import DetectConfig, Detector
from processors.genai import FACTORY as GENAI
from tests.conftest import running_gateway, wait_until

REQUIRED_FIELDS = {
    "id",
    "time",
    "detected_at",
    "service",
    "provider",
    "operation",
    "model",
    "metric",
    "type",
    "severity",
    "value",
    "baseline",
    "score",
    "detector",
    "count",
    "first_seen",
    "last_seen",
    "trace_ids",
}


def annotator() -> Any:
    ctx = ComponentContext(
        ComponentId("genai"), Kind.PROCESSOR, logging.getLogger("t"), SelfTelemetry(), Admission(), "traces"
    )
    return GENAI.create(ctx, GENAI.config.model_validate({"metrics": {"enabled": False}}))


def detect(config: TrafficConfig, detect_cfg: DetectConfig | None = None) -> list[AnomalyEvent]:
    """Generated traffic → genai → Detector, in process (the same objects the connector drives)."""
    det = Detector(detect_cfg or DetectConfig(idle_advance=False))
    genai = annotator()
    out: list[AnomalyEvent] = []
    for req in generate(config):
        batch = SpanBatch.from_request(req)
        genai.annotate(batch)
        det.ingest(batch)
        out += det.advance()
    out += det.advance(flush=True)
    return out


@pytest.fixture(scope="module")
def injected() -> tuple[TrafficConfig, list[AnomalyEvent]]:
    config = inject_all(TrafficConfig(seed=1, duration_s=8 * 3600))
    return config, detect(config)


def test_every_anomaly_type_is_found_on_its_series(injected):
    config, alerts = injected
    labels = resolve(config)
    assert {a.type for a in labels} == {t.value for t in AnomalyType}
    for a in labels:
        start = config.start_ns + int(a.start * 1e9)
        end = config.start_ns + int(a.end * 1e9)
        hits = [
            e
            for e in alerts
            if e.type.value == a.type
            and e.service == a.service
            and e.model == a.model
            and start - 60e9 <= e.time_ns <= end + 600e9
        ]
        assert hits, f"{a.type} on {a.service}/{a.model} not detected"


def test_alerts_are_mostly_the_injected_ones(injected):
    config, alerts = injected
    labels = resolve(config)
    keys = {(a.type, a.service, a.model) for a in labels}
    stray = {(e.type.value, e.service, e.model) for e in alerts} - keys
    assert len(stray) <= 2, stray


def test_clean_traffic_raises_no_alert():
    for seed in (2, 3):
        alerts = detect(TrafficConfig(seed=seed, duration_s=6 * 3600))
        assert alerts == [], [(e.type.value, e.service, e.model, e.score) for e in alerts]


def test_out_of_order_within_lateness_gives_the_same_alerts():
    base = TrafficConfig(
        seed=4,
        duration_s=3 * 3600,
        spans_per_request=64,
        anomalies=tuple(inject_all(TrafficConfig(seed=4, duration_s=3 * 3600)).anomalies[:3]),
    )
    shuffled = dataclasses.replace(base, out_of_order_fraction=0.2, max_lateness_s=5.0)
    cfg = DetectConfig(idle_advance=False, lateness=30.0)

    def key(e: AnomalyEvent) -> tuple[Any, ...]:
        return (e.id, e.type.value, e.time_ns, e.service, e.model, e.severity.value, round(e.score, 9))

    ordered, late = detect(base, cfg), detect(shuffled, cfg)
    assert ordered, "the injected anomalies must be found"
    assert [key(e) for e in ordered] == [key(e) for e in late]


def test_replay_twice_is_identical_and_matches_the_contract(tmp_path: Path):
    config = TrafficConfig(
        seed=5,
        duration_s=3 * 3600,
        anomalies=tuple(a for a in inject_all(TrafficConfig(seed=5, duration_s=3 * 3600)).anomalies[:4]),
    )
    traffic = tmp_path / "traffic.jsonl"
    with traffic.open("wb") as f:
        for req in generate(config):
            f.write(otlpjson.encode(req) + b"\n")
    outs = []
    for n in range(2):
        out = tmp_path / f"anomalies-{n}.jsonl"
        summary = asyncio.run(replay_otlp(traffic, out, [], progress=False))
        assert summary["alerts"] > 0
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    strip = [[{k: v for k, v in a.items() if k != "detected_at"} for a in run] for run in outs]
    assert strip[0] == strip[1]
    for a in outs[0]:
        assert set(a) >= REQUIRED_FIELDS
        assert a["type"] in {t.value for t in AnomalyType}
        assert a["severity"] in {s.value for s in Severity}
        assert 0 < a["score"] < 1
        assert a["time"].endswith("Z") and a["first_seen"] <= a["last_seen"]


def _event(t_s: float, score: float, atype: AnomalyType = AnomalyType.LATENCY_SPIKE) -> AnomalyEvent:
    return AnomalyEvent(
        time_ns=int(t_s * 1e9),
        service="svc",
        provider="openai",
        operation="chat",
        model="m",
        metric="latency_s",
        type=atype,
        severity=Severity.from_score(score),
        value=5.0,
        baseline=1.0,
        score=score,
        detector="iqr",
        trace_ids=[f"{int(t_s):032x}"],
    )


def test_dedup_counts_escalates_and_expires():
    d = Deduplicator(window_ns=300 * 10**9)
    first = d.offer(_event(0, 0.6))
    assert first is not None and first.count == 1 and first.severity is Severity.LOW
    assert d.offer(_event(10, 0.6)) is None  # same alert, count grows
    assert d.offer(_event(20, 0.65)) is None
    escalated = d.offer(_event(30, 0.85))  # severity rises: re-alert with the count so far
    assert escalated is not None and escalated.severity is Severity.HIGH and escalated.count == 4
    assert escalated.id == first.id
    assert d.offer(_event(40, 0.6)) is None  # a lower severity does not re-alert
    live = d.current(("svc", "m", "latency_spike"))
    assert live is not None and live.count == 5 and len(live.trace_ids) == 5
    other = d.offer(_event(50, 0.6, AnomalyType.TOKEN_SPIKE))  # another type is another alert
    assert other is not None
    later = d.offer(_event(400, 0.6))  # past the window: a new alert
    assert later is not None and later.id != first.id and later.count == 1


def test_alert_api_and_metric_on_a_running_gateway(ports, tmp_path):
    """OTLP/HTTP in (a short run with an error burst) → /api/v1/anomalies and the anomalies counter."""
    from loadtests.llmgen import Anomaly

    config = TrafficConfig(
        seed=6,
        duration_s=2 * 3600,
        spans_per_request=256,
        anomalies=(Anomaly("error_burst", "rag-worker", "gpt-4o-mini", 5400.0, 1200.0, 0.5),),
    )
    gw_cfg = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{ports['http']}"}}}},
        "processors": {"genai": {}},
        "connectors": {"detect": {"idle_advance": False}},
        "exporters": {"file/alerts": {"path": str(tmp_path / "alerts.jsonl"), "flush_interval": "10ms"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["genai"], "exporters": ["detect"]},
                "anomalies": {"receivers": ["detect"], "exporters": ["file/alerts"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{ports['admin']}"}},
        },
    }
    admin = f"http://127.0.0.1:{ports['admin']}"
    with running_gateway(gw_cfg) as gw:
        for req in generate(config):
            r = requests.post(
                f"http://127.0.0.1:{ports['http']}/v1/traces",
                data=req.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            )
            assert r.status_code == 200
        body = wait_until(
            lambda: (
                (b := requests.get(admin + "/api/v1/anomalies?type=error_burst", timeout=5).json())["count"]
                and b
            ),
            timeout=10,
        )
        alert = body["anomalies"][0]
        assert (alert["service"], alert["model"], alert["type"]) == (
            "rag-worker",
            "gpt-4o-mini",
            "error_burst",
        )
        assert set(alert) >= REQUIRED_FIELDS
        assert requests.get(admin + "/api/v1/anomalies?service=nope", timeout=5).json()["count"] == 0
        everything = requests.get(admin + "/api/v1/anomalies?limit=1000", timeout=5).json()["anomalies"]
        times = [a["last_seen"] for a in everything]
        assert times == sorted(times, reverse=True)  # newest first
        assert requests.get(admin + "/api/v1/anomalies?severity=urgent", timeout=5).status_code == 400
        assert requests.get(admin + "/api/v1/anomalies?since=1h", timeout=5).status_code == 200
        counted = gw.metric(
            "llm_sentinel_anomalies_total",
            type="error_burst",
            severity=alert["severity"],
            service_name="rag-worker",
            gen_ai_request_model="gpt-4o-mini",
        )
        assert counted >= 1
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert any(a["type"] == "error_burst" for a in lines)
