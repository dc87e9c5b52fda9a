"""llmgen: determinism, event-time order, statistics, each injection, labels, OTLP/JSON, live to a gateway."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import otlpjson
from gateway.batch import SpanBatch
from loadtests.llmgen import (
    ANOMALY_TYPES,
    Anomaly,
    Calls,
    TrafficConfig,
    calls_table,
    generate,
    generate_chunks,
    inject_all,
    parse_spec,
    read_labels,
    resolve,
    span_stream,
)
from loadtests.llmgen.__main__ import check_loopback, live_config, main, send_live
from loadtests.llmgen.anomalies import parse_duration, rfc3339
from loadtests.llmgen.model import DEFAULT_SERVICES, series_of
from processors.genai.extract import extract
from tests.conftest import running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config

NOON = datetime(2025, 1, 6, 12, tzinfo=UTC)
H = 3600.0


def spans_of(req: ExportTraceServiceRequest) -> list[Any]:
    return [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def model_of(service: str, request_model: str) -> Any:
    for s in series_of(TrafficConfig()):
        if s.key == (service, request_model):
            return s
    raise KeyError((service, request_model))


# ---------------------------------------------------------------- determinism and order
def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    cfg = TrafficConfig(seed=7, duration_s=0.5 * H, spans_per_request=300)
    a = [c.wire for c in generate_chunks(cfg)]
    b = [c.wire for c in generate_chunks(cfg)]
    c = [c.wire for c in generate_chunks(replace(cfg, seed=8))]
    assert a == b
    assert len(a) > 3
    assert a != c
    # the wire bytes are the canonical serialisation of the request they parse into
    for wire in a:
        assert ExportTraceServiceRequest.FromString(wire).SerializeToString() == wire


def test_spans_in_event_time_order_and_requests_of_n() -> None:
    """Delivery order is span end time, as SDKs export a span when it ends."""
    cfg = TrafficConfig(seed=2, start=NOON, duration_s=0.75 * H, spans_per_request=250)
    starts = np.concatenate([f.end_ns for f in span_stream(cfg)])
    assert np.all(np.diff(starts) >= 0)
    assert starts[0] >= cfg.start_ns
    reqs = list(generate(cfg))
    sizes = [len(spans_of(r)) for r in reqs]
    assert all(n == 250 for n in sizes[:-1]) and 0 < sizes[-1] <= 250
    assert sum(sizes) == starts.shape[0]
    prev_max = 0
    for r in reqs:
        for rs in r.resource_spans:
            for ss in rs.scope_spans:
                s = [sp.end_time_unix_nano for sp in ss.spans]
                assert s == sorted(s)  # delivery order inside each service and scope
        s = [sp.end_time_unix_nano for sp in spans_of(r)]
        assert min(s) >= prev_max  # and between requests
        prev_max = max(s)
    # one resource per service, service.name on each
    names = {rs.resource.attributes[0].value.string_value for r in reqs for rs in r.resource_spans}
    assert names == {s.name for s in DEFAULT_SERVICES}


def test_out_of_order_fraction_is_bounded_by_lateness() -> None:
    cfg = TrafficConfig(
        seed=3, start=NOON, duration_s=0.75 * H, out_of_order_fraction=0.1, max_lateness_s=20.0
    )
    starts = np.concatenate([f.end_ns for f in span_stream(cfg)])
    behind = np.maximum.accumulate(starts) - starts
    assert behind.max() <= 20e9
    late = (behind > 0).mean()
    assert 0.02 < late < 0.1  # a late span is behind only if something later overtook it
    assert behind.max() > 5e9
    # the same bound between requests
    seen_max = 0
    for chunk in generate_chunks(cfg):
        s = np.array([sp.end_time_unix_nano for sp in spans_of(chunk.request)])
        assert s.min() >= seen_max - 20e9
        seen_max = max(seen_max, int(s.max()))


# ---------------------------------------------------------------- statistics
@pytest.fixture(scope="module")
def busy() -> tuple[TrafficConfig, Calls]:
    cfg = TrafficConfig(seed=11, start=NOON, duration_s=4 * H, rate_scale=3.0)
    return cfg, calls_table(cfg)


def test_base_rates_and_distributions(busy: tuple[TrafficConfig, Calls]) -> None:
    cfg, c = busy
    n = len(c)
    assert n > 80_000
    other_errors = (c.error & ~c.rate_limited).mean()
    assert other_errors == pytest.approx(cfg.error_rate, rel=0.15)
    assert c.rate_limited.mean() == pytest.approx(cfg.rate_limit_rate, rel=0.2)
    assert set(np.unique(c.error_type[c.error])) == {
        "RateLimitError",
        "InternalServerError",
        "APITimeoutError",
    }
    assert np.all(c.http_status[c.rate_limited] == 429)
    ok = ~c.error
    for s in series_of(cfg):
        mine = (c.series == s.index) & ok
        m = s.model
        assert np.median(c.latency[mine]) == pytest.approx(m.latency_median_s, rel=0.06), s.key
        assert np.median(c.input_tokens[mine]) == pytest.approx(m.input_median, rel=0.06), s.key
        assert np.all(c.response_model[mine] == m.response_model)
        if m.is_chat:
            assert c.truncated[mine].mean() == pytest.approx(m.truncation_rate, abs=0.006), s.key
            assert np.all(c.output_tokens[mine] <= c.max_tokens[mine])
            assert np.all(c.finish_reason[mine] == np.where(c.truncated[mine], "length", "stop"))
            assert (c.cached_tokens[mine] > 0).mean() == pytest.approx(s.service.cache_fraction, abs=0.03)
            assert np.all(c.cached_tokens[mine] < c.input_tokens[mine])
            assert c.stream[mine].mean() == pytest.approx(s.service.stream_fraction, abs=0.03), s.key
        else:
            assert not c.stream[mine].any() and np.all(c.output_tokens[mine] == -1)
    # latency follows output length
    chat = ok & (c.max_tokens > 0) & ~c.truncated
    assert np.corrcoef(np.log(c.latency[chat]), np.log(c.output_tokens[chat]))[0, 1] > 0.4
    # TTFT only on successful streams, and below the latency
    streams = c.stream & ok
    assert not np.isnan(c.ttft[streams]).any() and np.isnan(c.ttft[~streams]).all()
    assert np.all(c.ttft[streams] < c.latency[streams])
    assert 0.2 < np.median(c.ttft[streams]) < 0.6
    # timing of the surrounding spans
    assert np.all(c.llm_start > c.t) and np.all(c.http_end > c.llm_start + c.latency)
    assert np.all(c.db_end[c.has_db] < c.llm_start[c.has_db])
    # series rates: mean of the diurnal curve over its peak third is above base, per series
    for s in series_of(cfg):
        hours = 4.0
        rate = ((c.series == s.index).sum()) / (hours * H)
        assert rate > s.spec.rate * cfg.rate_scale  # noon to 16:00 UTC: near the 15:00 peak


def test_diurnal_and_weekly_shape() -> None:
    day = TrafficConfig(seed=5, duration_s=24 * H, slice_s=1800.0, rate_scale=0.5)
    c = calls_table(day)
    # first Fourier component of the arrival times over the day: peak hour and relative amplitude
    phase = np.exp(2j * np.pi * c.t / (24 * H)).mean()
    peak_hour = (np.angle(phase) / (2 * np.pi) * 24) % 24
    assert peak_hour == pytest.approx(day.diurnal_peak_hour, abs=0.3)
    assert 2 * abs(phase) == pytest.approx(day.diurnal_amplitude, abs=0.03)
    total_rate = sum(s.spec.rate for s in series_of(day)) * day.rate_scale
    assert len(c) / (24 * H) == pytest.approx(total_rate, rel=0.03)  # the cosine averages out
    sunday = replace(day, start=datetime(2025, 1, 12, tzinfo=UTC), weekly=(1, 1, 1, 1, 1, 0.5, 0.25))
    assert len(calls_table(sunday)) / len(c) == pytest.approx(0.25, rel=0.08)


# ---------------------------------------------------------------- injections
BASE = TrafficConfig(seed=21, start=NOON, duration_s=2 * H, rate_scale=2.0)
WINDOW = (1 * H, 1 * H + 20 * 60)

CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "latency_spike": ("chat-api", "gpt-4o-mini", {}),
    "ttft_spike": ("chat-api", "gpt-4o-mini", {}),
    "token_spike": ("rag-worker", "gpt-4o-mini", {}),
    "cost_spike": ("chat-api", "gpt-4o-mini", {}),
    "error_burst": ("rag-worker", "text-embedding-3-small", {}),
    "rate_limit_burst": ("chat-api", "gpt-4o", {}),
    "truncation_spike": ("chat-api", "gpt-4o-mini", {}),
    "traffic_spike": ("chat-api", "gpt-4o", {}),
    "traffic_drop": ("rag-worker", "gpt-4o-mini", {}),
    "model_change": ("chat-api", "gpt-4o-mini", {}),
    "drift": ("chat-api", "gpt-4o-mini", {}),
    "level_shift": ("rag-worker", "gpt-4o-mini", {}),
}


@pytest.fixture(scope="module")
def baseline() -> Calls:
    return calls_table(BASE)


def _equal(a: Calls, b: Calls) -> None:
    assert len(a) == len(b)
    for f in fields(Calls):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert np.array_equal(x, y), f.name


def test_every_type_has_a_case() -> None:
    assert set(CASES) == set(ANOMALY_TYPES)


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_injection_changes_only_its_series_and_window(kind: str, baseline: Calls) -> None:
    service, model, extra = CASES[kind]
    a = Anomaly(kind, service, model, WINDOW[0], WINDOW[1] - WINDOW[0], **extra)
    cfg = replace(BASE, anomalies=(a,))
    (resolved,) = resolve(cfg)
    c = calls_table(cfg)
    target = model_of(service, model).index

    def split(x: Calls) -> tuple[Calls, Calls, Calls]:
        mine = x.series == target
        inside = mine & (x.t >= WINDOW[0]) & (x.t < WINDOW[1])
        untouched = ~mine | (x.t < WINDOW[0]) | ((x.t >= WINDOW[1]) & (kind != "drift"))
        return x.take(np.flatnonzero(untouched)), x.take(np.flatnonzero(inside)), x.take(np.flatnonzero(mine))

    base_out, base_in, base_all = split(baseline)
    inj_out, inj_in, inj_all = split(c)
    _equal(base_out, inj_out)  # bit-identical outside the window and on every other series
    assert len(base_in) > 40

    ok_b, ok_i = ~base_in.error, ~inj_in.error
    k = resolved.k
    if kind == "latency_spike":
        assert np.median(inj_in.latency[ok_i]) / np.median(base_in.latency[ok_b]) == pytest.approx(
            k, rel=0.05
        )
    elif kind == "ttft_spike":
        s_b, s_i = ok_b & base_in.stream, ok_i & inj_in.stream
        assert np.median(inj_in.ttft[s_i]) / np.median(base_in.ttft[s_b]) == pytest.approx(k, rel=0.05)
        assert np.all(inj_in.ttft[s_i] < inj_in.latency[s_i])
        assert np.median(inj_in.latency[s_i]) > np.median(base_in.latency[s_b])
    elif kind == "token_spike":
        ratio = np.median(inj_in.input_tokens[ok_i]) / np.median(base_in.input_tokens[ok_b])
        assert ratio == pytest.approx(k, rel=0.05)
        np.testing.assert_array_equal(inj_in.output_tokens, base_in.output_tokens)
    elif kind == "cost_spike":
        assert resolved.to == "gpt-4o-2024-08-06" and k > 10  # gpt-4o costs ~16× gpt-4o-mini
        assert set(inj_in.response_model[ok_i]) == {"gpt-4o-2024-08-06"}
    elif kind == "error_burst":
        assert inj_in.error.mean() == pytest.approx(k, abs=0.08)
        assert base_in.error.mean() < 0.05
    elif kind == "rate_limit_burst":
        assert inj_in.rate_limited.mean() == pytest.approx(k, abs=0.08)
        assert set(inj_in.error_type[inj_in.rate_limited]) == {"RateLimitError"}
    elif kind == "truncation_spike":
        assert (inj_in.finish_reason[ok_i] == "length").mean() == pytest.approx(k, abs=0.08)
        assert (base_in.finish_reason[ok_b] == "length").mean() < 0.05
    elif kind == "traffic_spike":
        assert len(inj_in) / len(base_in) == pytest.approx(k, rel=0.2)
    elif kind == "traffic_drop":
        assert k == 0 and len(inj_in) == 0
    elif kind == "model_change":
        assert set(inj_in.response_model[ok_i]) == {"gpt-4o-mini-2025-01-31"}
        assert set(base_in.response_model[ok_b]) == {"gpt-4o-mini-2024-07-18"}
    elif kind == "drift":
        # ramps 1 → k over the window and stays at k afterwards
        late = (inj_all.t >= WINDOW[1]) & ~inj_all.error
        late_b = (base_all.t >= WINDOW[1]) & ~base_all.error
        np.testing.assert_allclose(inj_all.latency[late], base_all.latency[late_b] * k)
        first = ok_i & (inj_in.t < WINDOW[0] + 120)
        assert np.all(inj_in.latency[first] < base_in.latency[ok_b & (base_in.t < WINDOW[0] + 120)] * 1.11)
    elif kind == "level_shift":
        np.testing.assert_allclose(inj_in.latency[ok_i], base_in.latency[ok_b] * k)
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize("duration_s", [600.0, 2 * H, 5400.0, 24 * H])
def test_inject_all_schedules_each_type_once_inside_the_run(duration_s: float) -> None:
    cfg = inject_all(replace(BASE, duration_s=duration_s))
    anomalies = resolve(cfg)
    assert sorted(a.type for a in anomalies) == sorted(ANOMALY_TYPES)
    for a in anomalies:
        assert 0.25 * cfg.duration_s <= a.start and a.end <= cfg.duration_s
    short = sorted((a for a in anomalies if a.type not in ("drift", "level_shift")), key=lambda a: a.start)
    assert all(x.end <= y.start for x, y in itertools.pairwise(short))  # one after another
    assert all(a.duration >= min(60.0, duration_s / 20) for a in short)


def test_spec_parsing() -> None:
    a = parse_spec("latency_spike@2h:10m:chat-api/gpt-4o-mini")
    assert (a.type, a.service, a.model, a.start, a.duration, a.magnitude) == (
        "latency_spike",
        "chat-api",
        "gpt-4o-mini",
        7200.0,
        600.0,
        None,
    )
    b = parse_spec("drift@1h30m:2h:summarizer/gpt-4o:1.5:metric=output_tokens")
    assert (b.start, b.k, b.effective_metric) == (5400.0, 1.5, "output_tokens")
    c = parse_spec("model_change@90s:5m:chat-api/claude-3-5-sonnet:to=claude-3-opus-20240229")
    assert c.to == "claude-3-opus-20240229" and c.start == 90.0
    assert parse_spec("cost_spike@0:1m:chat-api/gpt-4o:20:via=output").effective_metric == "output_tokens"
    assert parse_duration("250ms") == 0.25 and parse_duration("1.5h") == 5400
    for bad in (
        "nope@1h:1m:chat-api/gpt-4o",
        "latency_spike@1h:chat-api/gpt-4o",
        "latency_spike@1h:0m:chat-api/gpt-4o",
        "error_burst@1h:1m:chat-api/gpt-4o:3",
        "latency_spike@1x:1m:chat-api/gpt-4o",
        "cost_spike@1h:1m:chat-api/gpt-4o:5",
        "latency_spike@1h:1m:chat-api/gpt-4o:metric=cost",
    ):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(ValueError, match="no series"):
        resolve(replace(BASE, anomalies=(parse_spec("latency_spike@1h:1m:chat-api/gpt-5"),)))
    with pytest.raises(ValueError, match="never streams"):
        resolve(replace(BASE, anomalies=(parse_spec("ttft_spike@1h:1m:summarizer/gpt-4o"),)))


# ---------------------------------------------------------------- what the gateway reads
def test_llm_spans_read_back_through_the_genai_extractor() -> None:
    cfg = TrafficConfig(
        seed=4,
        start=NOON,
        duration_s=0.5 * H,
        anomalies=(
            Anomaly("error_burst", "chat-api", "gpt-4o-mini", 600, 600),
            Anomaly("truncation_spike", "chat-api", "gpt-4o", 600, 600),
        ),
    )
    c = calls_table(cfg)
    row_of = {int(sid): i for i, sid in enumerate(c.llm_id)}
    seen = 0
    non_llm = 0
    for req in generate(cfg):
        batch = SpanBatch.from_request(req)
        ex = extract(batch)
        sids = batch.columns["span_id"]
        non_llm += int((~ex.llm).sum())
        strings = batch.strings.values
        for r in np.flatnonzero(ex.llm):
            i = row_of[int(sids[r])]
            seen += 1
            assert ex.error[r] == c.error[i] and ex.rate_limited[r] == c.rate_limited[i]
            assert ex.truncated[r] == c.truncated[i]
            chat = c.max_tokens[i] > 0
            assert ex.stream[r] == (int(c.stream[i]) if chat else -1)  # embeddings say nothing
            assert ex.floats["latency_s"][r] == pytest.approx(c.latency[i], abs=2e-9)
            model = ex.strings["response_model"][r]
            assert (strings[model] if model >= 0 else "") == c.response_model[i]
            if c.error[i]:
                assert strings[ex.strings["error_type"][r]] == c.error_type[i]
                assert np.isnan(ex.floats["input_tokens"][r])
                continue
            assert ex.floats["input_tokens"][r] == c.input_tokens[i]
            out = c.output_tokens[i]
            assert ex.floats["output_tokens"][r] == (0 if out < 0 else out)  # embeddings: no output
            ttft = ex.floats["ttft_s"][r]
            assert (np.isnan(ttft) and np.isnan(c.ttft[i])) or ttft == c.ttft[i]
    assert seen == len(c)
    assert non_llm == len(c) + int(c.has_db.sum())
    assert c.error.sum() > 30 and c.truncated.sum() > 30


# ---------------------------------------------------------------- CLI: files and labels
def test_cli_writes_otlp_json_lines_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, labels = tmp_path / "t.jsonl.gz", tmp_path / "labels.json"
    argv = [
        "--hours",
        "0.25",
        "--seed",
        "9",
        "--start",
        "2025-01-06T12:00:00Z",
        "--batch-spans",
        "400",
        "--inject",
        "latency_spike@3m:3m:chat-api/gpt-4o-mini",
        "--inject",
        "model_change@6m:4m:chat-api/claude-3-5-sonnet:0.5",
        "--inject",
        "level_shift@12m:1h:rag-worker/gpt-4o-mini:2",
        "--out",
        str(out),
        "--labels",
        str(labels),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "anomalies injected: 3" in text and "spans/s" in text

    got = read_labels(labels)
    assert got == [
        {
            "type": "latency_spike",
            "service": "chat-api",
            "model": "gpt-4o-mini",
            "start": "2025-01-06T12:03:00Z",
            "end": "2025-01-06T12:06:00Z",
            "magnitude": 5.0,
            "metric": "latency",
        },
        {
            "type": "model_change",
            "service": "chat-api",
            "model": "claude-3-5-sonnet",
            "start": "2025-01-06T12:06:00Z",
            "end": "2025-01-06T12:10:00Z",
            "magnitude": 0.5,
            "metric": "response_model",
            "to": "claude-3-7-sonnet-20250219",
        },
        {
            "type": "level_shift",
            "service": "rag-worker",
            "model": "gpt-4o-mini",
            "start": "2025-01-06T12:12:00Z",
            "end": "2025-01-06T12:15:00Z",  # clipped to the run
            "magnitude": 2.0,
            "metric": "latency",
        },
    ]
    cfg = TrafficConfig(
        seed=9,
        start=NOON,
        duration_s=0.25 * H,
        spans_per_request=400,
        anomalies=tuple(parse_spec(s) for s in argv[9:14:2]),
    )
    expected = list(generate(cfg))
    with gzip.open(out, "rb") as fh:
        lines = fh.read().splitlines()
    decoded = [otlpjson.decode(line, ExportTraceServiceRequest) for line in lines]
    assert decoded == expected
    first = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(first["traceId"]) == 32 and len(first["spanId"]) == 16  # hex, per OTLP/JSON
    assert f"spans {sum(len(spans_of(r)) for r in expected):,}" in text


def test_cli_rejects_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "x.jsonl"), "--inject", "latency_spike@1h:1m:nobody/gpt-4o"]) == 2
    assert "no series" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--hours", "1"])  # no output chosen
    for url in ("http://10.1.2.3:4318", "http://example.com:4318", "https://127.0.0.1:4318"):
        with pytest.raises(ValueError):
            check_loopback(url)
    assert check_loopback("http://127.0.0.1:4318") == ("127.0.0.1", 4318, "/v1/traces")
    assert check_loopback("http://localhost:9/v1/traces") == ("localhost", 9, "/v1/traces")
    assert check_loopback("http://[::1]:4318/") == ("::1", 4318, "/v1/traces")


def test_live_config_ends_now_and_labels_follow() -> None:
    now = 1_800_000_000.4
    cfg = live_config(TrafficConfig(), duration_s=90, speedup=60, now=now)
    assert cfg.duration_s == 5400
    assert cfg.end_epoch_s == pytest.approx(now + 90, abs=1)
    assert rfc3339(cfg.start_epoch_s).endswith("Z")
    assert cfg.max_request_event_s == 15.0


# ---------------------------------------------------------------- live, end to end
def _requests_total(gw: Any, **labels: str) -> float:
    total = 0.0
    for fam in gw.gateway.telemetry.registry.collect():
        for s in fam.samples:
            if s.name == "llm_sentinel_requests_total" and all(
                s.labels.get(k) == v for k, v in labels.items()
            ):
                total += s.value
    return total


def test_live_send_to_a_running_gateway(ports: dict[str, int], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw_cfg = gateway_config(
        ports, out, processors=["genai"], processor_defs={"genai": None}, signals=("traces",)
    )
    base = TrafficConfig(
        seed=13,
        spans_per_request=300,
        anomalies=(Anomaly("rate_limit_burst", "chat-api", "gpt-4o-mini", 600, 300),),
    )
    with running_gateway(gw_cfg) as gw:
        launch = time.time()
        cfg = live_config(base, duration_s=1.0, speedup=1200, now=launch)
        summary = send_live(cfg, f"http://127.0.0.1:{ports['http']}", 1200, launch, 1.0)
        assert summary.failed_requests == 0 and not summary.stopped_early
        assert summary.accepted_spans == summary.spans and summary.rejected_spans == 0
        assert summary.llm_calls > 1000 and summary.non_llm_spans > summary.llm_calls
        # every LLM span is counted once, and none of the HTTP / DB spans
        wait_until(lambda: _requests_total(gw) == summary.llm_calls, timeout=10)
        assert _requests_total(gw, outcome="rate_limited") == summary.rate_limited > 20
        assert _requests_total(gw, outcome="error") == summary.errors - summary.rate_limited
        wait_until(lambda: out.exists() and out.read_bytes().count(b'"spanId":') == summary.spans, timeout=10)
    # timestamps trail the wall clock and end near it
    last = max(c.max_end_ns for c in generate_chunks(cfg))
    assert abs(last / 1e9 - (launch + 1.0)) < 60
