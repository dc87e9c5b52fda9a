"""Connector `detect`: online anomaly detection on LLM calls, in event time.

Used as an exporter of a traces pipeline (after `genai`) and as the receiver of
an `anomalies` pipeline, as the Collector's connectors are:

    connectors:
      detect: {}
    service:
      pipelines:
        traces:    {receivers: [otlp], processors: [genai], exporters: [file, detect]}
        anomalies: {receivers: [detect], exporters: [debug, file/alerts]}

Flow per batch (all vectorised; numba kernels see whole batches):
1. LLM rows go into a lateness buffer ordered by event time (span end). Rows
   older than the watermark (newest event time − `lateness`) are released in
   event-time order, so out-of-order arrival within the bound changes nothing.
2. Per series (service × provider × operation × request model, capped), five
   value streams (log latency, log TTFT, log1p input/output tokens, log1p cost)
   are scored by the detector ensemble; an upward score ≥ `threshold` is a
   latency/ttft/token/cost spike, or a level shift when CUSUM led.
3. Calls are counted in `bucket` windows; each closed bucket (empty ones too)
   feeds the request-count ensemble (traffic spike/drop) and binomial burst
   tests for errors, 429s and `length` truncations.
4. A response model never seen before for an established request model is a
   model change; PSI between a reference and a recent histogram of latency and
   output tokens is drift.
5. Anomalies are deduplicated in event time and emitted to the anomalies
   pipeline, the alert store (`GET /api/v1/anomalies`) and
   `llm_sentinel_anomalies_total`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, model_validator

from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import Batch, Signal, SpanBatch
from gateway.component import ComponentConfig, ComponentContext, Connector, Duration, Factory, Kind
from processors.detect.alerts import AlertStore, Deduplicator
from processors.detect.call_kernels import bucket_points, drift_update, model_changes, value_points
from processors.detect.call_kernels import warm_up as call_kernels_warm_up
from processors.detect.calls import METRICS, RATES, CallRows, LatenessBuffer, SeriesKey, trace_hex
from processors.detect.ensemble import DET_CUSUM, DETECTOR_NAMES, EnsembleParams, EnsembleState, score_batch
from processors.detect.ensemble import warm_up as ensemble_warm_up
from processors.detect.kernels import CUSUM_WIDTH, cusum_update
from processors.detect.kernels import squash as squash_score
from processors.detect.rates import RATE_WIDTH, burst_update

if TYPE_CHECKING:
    from gateway.worker_config import WorkerSpec
    from processors.detect.routing import SeriesRouter

log = logging.getLogger("sentinel.detect")

# value streams per series: calls.METRICS
METRIC_TYPES = (
    AnomalyType.LATENCY_SPIKE,
    AnomalyType.TTFT_SPIKE,
    AnomalyType.TOKEN_SPIKE,
    AnomalyType.TOKEN_SPIKE,
    AnomalyType.COST_SPIKE,
)
N_METRICS = len(METRICS)
# rate streams per series: calls.RATES
RATE_TYPES = (AnomalyType.ERROR_BURST, AnomalyType.RATE_LIMIT_BURST, AnomalyType.TRUNCATION_SPIKE)
DRIFT_METRICS = ("latency_s", "output_tokens")
DRIFT_BINS = np.concatenate([[-np.inf], np.linspace(-4.0, 12.0, 33), [np.inf]])  # on the transformed scale
DRIFT_CENTERS = np.concatenate(
    [[DRIFT_BINS[1] - 0.25], (DRIFT_BINS[1:-2] + DRIFT_BINS[2:-1]) / 2, [DRIFT_BINS[-2]]]
)
MAX_MODELS = 32  # response models remembered per series


def transform(name: str, v: np.ndarray) -> np.ndarray:
    """Detection scale: logs for durations, log1p for counts and money (spikes are multiplicative)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if name in ("latency_s", "ttft_s"):
            return np.log(np.maximum(v, 1e-4))
        if name == "cost_usd":
            return np.log1p(np.maximum(v, 0.0) * 1e6)  # micro-dollars
        return np.log1p(np.maximum(v, 0.0))


def untransform(name: str, x: float) -> float:
    if name in ("latency_s", "ttft_s"):
        return math.exp(x)
    if name == "cost_usd":
        return math.expm1(x) / 1e6
    return math.expm1(x)


class SeverityBounds(ComponentConfig):
    medium: float = Field(default=0.7, gt=0, lt=1)
    high: float = Field(default=0.8, gt=0, lt=1)
    critical: float = Field(default=0.9, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> SeverityBounds:
        if not self.medium < self.high < self.critical:
            raise ValueError("severity bounds must increase: medium < high < critical")
        return self


class BurstSettings(ComponentConfig):
    z_alarm: float = Field(default=5.0, gt=0, description="Binomial z at which a burst scores 0.5.")
    min_count: int = Field(default=4, ge=1, description="Fewest events in a bucket to call it a burst.")
    min_rate: float = Field(default=0.1, ge=0, le=1, description="Rate excess over the baseline required.")
    baseline_floor: float = Field(default=0.01, ge=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, le=1)


class ShiftSettings(ComponentConfig):
    """Sustained level shifts: a dedicated two-sided CUSUM per value stream, with a wide interval."""

    enabled: bool = True
    h: float = Field(default=12.0, gt=0, description="Decision interval in σ units (score 0.5 there).")
    k_slack: float = Field(default=0.5, ge=0, description="Drift allowance per point, in σ.")
    alpha: float = Field(default=0.01, gt=0, le=1, description="Speed at which the reference adapts.")


class TrafficSettings(ComponentConfig):
    """Request-rate spikes and drops: a Poisson CUSUM over consecutive buckets against an EWMA rate."""

    z_alarm: float = Field(default=5.0, gt=0, description="Accumulated Poisson z that scores 0.5.")
    min_ratio: float = Field(
        default=2.0, gt=1, description="Spike: rate × this; drop: rate ÷ this, at least."
    )
    alpha: float = Field(default=0.1, gt=0, le=1, description="EWMA weight of each normal bucket.")
    warmup: int = Field(default=10, ge=1, description="Buckets before a series' traffic may alarm.")


class DriftSettings(ComponentConfig):
    enabled: bool = True
    reference_points: int = Field(default=500, ge=50, description="Calls forming the reference histogram.")
    recent_half_life: int = Field(
        default=500, ge=10, description="Half-life of the recent histogram, in calls."
    )
    psi_threshold: float = Field(
        default=0.25, gt=0, description="PSI above this is drift (0.25 = major shift)."
    )
    min_recent: int = Field(
        default=500, ge=10, description="Calls since the reference before drift is judged."
    )


class EnsembleSettings(ComponentConfig):
    """Detector ensemble tuning for LLM value streams (see processors/detect/ensemble.py)."""

    weights: tuple[float, float, float, float, float, float] = Field(
        default=(1.0, 1.0, 1.0, 0.5, 1.0, 0.5),
        description="ewma, robust_z, iqr, cusum, hampel, range. LLM latencies and token counts are "
        "heavy-tailed: new records are common, so the range detector counts half; CUSUM at half "
        "keeps slow wander from reading as a level shift.",
    )
    peak_floor: float = Field(default=1.5, gt=0, description="Alarm units a classical detector needs.")
    peak_decay: float = Field(default=0.999, gt=0, le=1, description="Memory of each detector's habit.")

    def params(self, warmup: int, **extra: Any) -> EnsembleParams:
        return EnsembleParams(
            warmup=warmup,
            weights=self.weights,
            peak_floor=self.peak_floor,
            peak_decay=self.peak_decay,
            **extra,
        )


class DetectConfig(ComponentConfig):
    max_series: int = Field(default=10_000, ge=1, description="Series tracked; further series are counted.")
    lateness: Duration = Field(default=10.0, ge=0, description="How late (event time) a span may arrive.")
    bucket: Duration = Field(default=60.0, gt=0, description="Width of rate buckets (errors, 429s, traffic).")
    threshold: float = Field(default=0.52, gt=0, lt=1, description="Score that makes a point anomalous.")
    confirm_within: int = Field(
        default=10,
        ge=0,
        description="A spike below critical severity alerts only if another anomalous point of the same "
        "stream came within this many points (one heavy-tail outlier is not an incident); 0 = off.",
    )
    warmup: int = Field(default=100, ge=1, description="Points per stream before it may alarm.")
    min_calls_for_model_change: int = Field(default=20, ge=1)
    dedup_window: Duration = Field(default=300.0, gt=0)
    severity: SeverityBounds = SeverityBounds()
    ensemble: EnsembleSettings = EnsembleSettings()
    bursts: BurstSettings = BurstSettings()
    traffic: TrafficSettings = TrafficSettings()
    shift: ShiftSettings = ShiftSettings()
    spike_ratio: float = Field(
        default=2.5,
        gt=1,
        description="A CUSUM-led anomaly this many times its baseline is a spike; below, a level shift.",
    )
    drift: DriftSettings = DriftSettings()
    max_alerts: int = Field(default=10_000, ge=1, description="Alerts kept for the admin API.")
    idle_advance: bool = Field(
        default=False,
        description="Advance event time with the wall clock when no span at all arrives, so total silence "
        "is seen as a traffic drop (live only; replay never does). Off by default: any traffic moves the "
        "watermark, which already closes the buckets of a series that went quiet.",
    )


@dataclass
class Released:
    """LLM calls released from the lateness buffer, in event-time order, with their series rows."""

    calls: CallRows
    series: np.ndarray  # int64 detector series row per call
    model: np.ndarray  # int64 detector-wide response model id per call (-1 unknown)

    @property
    def t_ns(self) -> np.ndarray:
        return self.calls.t_ns

    def value(self, name: str) -> np.ndarray:
        return self.calls.values[:, METRICS.index(name)]

    def flag(self, name: str) -> np.ndarray:
        return self.calls.flags[:, RATES.index(name)]

    def trace_id(self, row: int) -> str:
        return self.calls.trace_id(row)

    def take(self, idx: np.ndarray) -> Released:
        return Released(self.calls.take(idx), self.series[idx], self.model[idx])

    def __len__(self) -> int:
        return len(self.calls)


class Detector:
    """All detection state and logic; independent of asyncio so replay and live share it."""

    def __init__(self, config: DetectConfig, store: AlertStore | None = None) -> None:
        self.cfg = config
        self.store = store
        self.series: dict[SeriesKey, int] = {}
        self.keys: list[SeriesKey] = []
        self.dropped_series = 0
        self.late_points = 0  # calls that arrived after their rate bucket closed (beyond `lateness`)
        # row = series * N_METRICS + metric
        self.values = EnsembleState(config.ensemble.params(config.warmup))
        # per series: buckets seen, EWMA rate, run sum of counts, run sum of expected, run direction
        self.traffic = np.zeros((0, 5))
        self.rates = np.zeros((0, len(RATES), RATE_WIDTH))
        # open bucket per series: index and counts (calls, errors, 429s, truncated)
        self.bucket_idx = np.zeros(0, dtype=np.int64)
        self.bucket_counts = np.zeros((0, 4))
        self.bucket_traces = np.zeros((0, AnomalyEvent.MAX_TRACE_IDS, 2), dtype=np.uint64)
        self.bucket_ntraces = np.zeros(0, dtype=np.int64)
        # per series: response model ids in first-seen order and their call counts
        self.seen_models = np.zeros((0, MAX_MODELS), dtype=np.int64)
        self.seen_counts = np.zeros((0, MAX_MODELS), dtype=np.int64)
        self.n_seen = np.zeros(0, dtype=np.int64)
        self.model_ids: dict[str, int] = {}
        self.model_names: list[str] = []
        self.calls = np.zeros(0, dtype=np.int64)
        nb = len(DRIFT_BINS) - 1
        self.ref_hist = np.zeros((0, len(DRIFT_METRICS), nb))
        self.recent_hist = np.zeros((0, len(DRIFT_METRICS), nb))
        self.ref_n = np.zeros((0, len(DRIFT_METRICS)))
        self.recent_n = np.zeros((0, len(DRIFT_METRICS)))
        self.drift_alarmed = np.zeros((0, len(DRIFT_METRICS)), dtype=np.bool_)
        self.shift = np.zeros((0, CUSUM_WIDTH))  # per value-stream row: level-shift CUSUM
        self.last_hit = np.zeros(0)  # per value-stream row: position of its last anomalous point
        self.last_hit_score = np.zeros(0)
        self.pending = LatenessBuffer()
        self.max_t_ns = 0
        self.watermark_ns = 0
        self.dedup = Deduplicator(int(config.dedup_window * 1e9))
        self._bounds = (config.severity.medium, config.severity.high, config.severity.critical)

    # ---------------------------------------------------------------- series
    def _series_rows(self, keys: list[SeriesKey]) -> np.ndarray:
        """Row of each key, created on first sight; -1 once `max_series` is reached."""
        rows = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            row = self.series.get(key)
            if row is None:
                if len(self.keys) >= self.cfg.max_series:
                    rows[i] = -1
                    continue
                row = len(self.keys)
                self.series[key] = row
                self.keys.append(key)
                self._grow(row + 1)
            rows[i] = row
        return rows

    def _grow(self, n: int) -> None:
        have = self.bucket_idx.shape[0]
        if n <= have:
            return
        extra = max(n, 2 * have, 16) - have

        def pad(a: np.ndarray, fill: float = 0) -> np.ndarray:
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)])

        self.rates = pad(self.rates)
        self.traffic = pad(self.traffic)
        self.bucket_idx = pad(self.bucket_idx, -1)
        self.bucket_counts = pad(self.bucket_counts)
        self.calls = pad(self.calls)
        self.ref_hist, self.recent_hist = pad(self.ref_hist), pad(self.recent_hist)
        self.ref_n, self.recent_n = pad(self.ref_n), pad(self.recent_n)
        self.drift_alarmed = pad(self.drift_alarmed)
        self.bucket_traces = pad(self.bucket_traces)
        self.bucket_ntraces = pad(self.bucket_ntraces)
        self.seen_models, self.seen_counts = pad(self.seen_models), pad(self.seen_counts)
        self.n_seen = pad(self.n_seen)

    # ---------------------------------------------------------------- input
    def ingest(self, batch: SpanBatch) -> None:
        """Buffer the LLM calls of an annotated span batch."""
        rows = CallRows.from_batch(batch)
        if rows is not None:
            self.ingest_calls(rows)

    def ingest_calls(self, rows: CallRows) -> None:
        """Buffer calls (from a batch, or handed over by another worker)."""
        if not len(rows):
            return
        self.pending.add(rows)
        self.max_t_ns = max(self.max_t_ns, int(rows.t_ns.max()))

    def _release(self, upto_ns: int | None) -> Released | None:
        calls = self.pending.release(upto_ns)
        if calls is None:
            return None
        # series rows are assigned in event-time order of first appearance, as calls are released
        present, first = np.unique(calls.key, return_index=True)
        by_first = present[np.argsort(first)]
        key_rows = np.full(len(calls.keys), -1, dtype=np.int64)
        key_rows[by_first] = self._series_rows([calls.keys[k] for k in by_first.tolist()])
        series = key_rows[calls.key]
        self.dropped_series += int((series < 0).sum())  # every call of a series over the cap
        model_map = np.empty(len(calls.models) + 1, dtype=np.int64)
        model_map[-1] = -1
        for i, name in enumerate(calls.models):
            mid = self.model_ids.get(name)
            if mid is None:
                mid = self.model_ids[name] = len(self.model_names)
                self.model_names.append(name)
            model_map[i] = mid
        return Released(calls, series, model_map[calls.model])

    # ---------------------------------------------------------------- driving
    def advance(self, flush: bool = False, now_event_ns: int | None = None) -> list[AnomalyEvent]:
        """Process everything the watermark allows; `flush` releases all (end of replay / shutdown)."""
        if now_event_ns is not None:
            self.max_t_ns = max(self.max_t_ns, now_event_ns)
        wm = self.max_t_ns - int(self.cfg.lateness * 1e9)
        self.watermark_ns = max(self.watermark_ns, wm)
        rel = self._release(None if flush else self.watermark_ns)
        found: list[AnomalyEvent] = []
        if rel is not None and len(rel):
            ok = rel.series >= 0
            if not ok.all():
                rel = rel.take(ok)
            tvals = np.stack([transform(m, rel.value(m)) for m in METRICS], axis=1)
            spikes, spiky_points = self._score_values(rel, tvals)
            found += spikes
            found += self._bucket_points(rel)
            found += self._model_changes(rel)
            if self.cfg.drift.enabled:
                found += self._drift(rel, tvals, exclude=spiky_points)
        close_upto = self.max_t_ns if flush else self.watermark_ns
        found += self._close_buckets(close_upto)
        found.sort(key=lambda e: (e.time_ns, e.service, e.model, e.type.value, e.metric))
        return self._dedup(found)

    def _dedup(self, found: list[AnomalyEvent]) -> list[AnomalyEvent]:
        emitted = []
        now = time.time_ns()
        for ev in found:
            if ev.type is AnomalyType.DRIFT:
                # a distribution moved by an alerted spike or shift is that alert, not news
                related = (METRIC_TYPES[METRICS.index(ev.metric)], AnomalyType.LEVEL_SHIFT)
                if any(
                    self.dedup.is_open((ev.service, ev.model, a.value), ev.time_ns, extra=3) for a in related
                ):
                    continue
            if ev.metric == "cost_usd" and self.dedup.is_open(
                (ev.service, ev.model, AnomalyType.TOKEN_SPIKE.value), ev.time_ns, extra=3
            ):
                continue  # cost follows tokens: the token alert already tells this story
            if ev.type is AnomalyType.LEVEL_SHIFT:
                # a shift seen while the same metric's spike alert is open is that spike, not news
                spike = METRIC_TYPES[METRICS.index(ev.metric)]
                if self.dedup.is_open((ev.service, ev.model, spike.value), ev.time_ns, extra=3):
                    ev.type = spike
                    ev.id = ev.make_id()
            out = self.dedup.offer(ev)
            if out is None:  # folded into an open alert (the store shows that object, count included)
                continue
            out.detected_at_ns = now
            emitted.append(out)
            if self.store is not None:
                self.store.record(out, self.dedup.current(ev.dedup_key))
        return emitted

    # ---------------------------------------------------------------- value streams
    def _event(
        self,
        row: int,
        t_ns: int,
        metric: str,
        atype: AnomalyType,
        score: float,
        value: float,
        baseline: float,
        detector: str,
        trace_ids: list[str],
        **details: Any,
    ) -> AnomalyEvent:
        service, provider, operation, model = self.keys[row]
        return AnomalyEvent(
            time_ns=t_ns,
            service=service,
            provider=provider,
            operation=operation,
            model=model,
            metric=metric,
            type=atype,
            severity=Severity.from_score(score, self._bounds),
            value=value,
            baseline=baseline,
            score=score,
            detector=detector,
            trace_ids=trace_ids,
            details=details,
        )

    def _score_values(self, rel: Released, tvals: np.ndarray) -> tuple[list[AnomalyEvent], np.ndarray]:
        """Spike/level-shift events, and a mask of points that scored anomalous (kept out of drift)."""
        n = len(rel)
        spiky = np.zeros(n, dtype=np.bool_)
        self.values.ensure(int(rel.series.max()) * N_METRICS + N_METRICS)
        if self.last_hit.shape[0] < self.values.capacity:
            grown = np.full(self.values.capacity, -1e18)
            grown[: self.last_hit.shape[0]] = self.last_hit
            self.last_hit = grown
            grown_s = np.zeros(self.values.capacity)
            grown_s[: self.last_hit_score.shape[0]] = self.last_hit_score
            self.last_hit_score = grown_s
            grown_c = np.zeros((self.values.capacity, CUSUM_WIDTH))
            grown_c[: self.shift.shape[0]] = self.shift
            self.shift = grown_c
        # the metric streams interleaved point by point, keeping event-time order; failed calls
        # (timeouts, 429s) have their own burst alerts: their latency is not the model's
        rows, vals, ts, point, position = value_points(
            rel.series,
            tvals,
            np.ascontiguousarray(rel.flag("error")),
            rel.t_ns,
            np.ascontiguousarray(self.values.points),
        )
        if not rows.shape[0]:
            return [], spiky
        scored = score_batch(self.values, rows, vals, ts)
        hit = np.flatnonzero((scored.score >= self.cfg.threshold) & (scored.direction > 0))
        out = []
        confirm = self.cfg.confirm_within
        for h in hit.tolist():
            r = int(rows[h])
            s, m = divmod(r, N_METRICS)
            p = int(point[h])
            spiky[p] = True
            pos = float(position[h])
            recent = pos - self.last_hit[r] <= confirm
            score = float(scored.score[h])
            # a confirmed spike is as severe as the strongest of its points
            alert_score = max(score, float(self.last_hit_score[r])) if recent else score
            self.last_hit[r], self.last_hit_score[r] = pos, score
            if confirm and not recent and score < self.cfg.severity.critical:
                continue  # a lone outlier: wait for a second one
            name = METRICS[m]
            det = int(scored.detector[h])
            baseline = untransform(name, float(self.values.ewma[r, 1]))
            value = float(rel.value(name)[p])
            big_jump = baseline > 0 and value >= self.cfg.spike_ratio * baseline
            atype = AnomalyType.LEVEL_SHIFT if det == DET_CUSUM and not big_jump else METRIC_TYPES[m]
            out.append(
                self._event(
                    s,
                    int(rel.t_ns[p]),
                    name,
                    atype,
                    alert_score,
                    value,
                    baseline,
                    DETECTOR_NAMES[det],
                    [rel.trace_id(p)],
                )
            )
        if self.cfg.shift.enabled:
            out += self._level_shifts(rows, vals, point, position, rel)
        return out, spiky

    def _level_shifts(
        self, rows: np.ndarray, vals: np.ndarray, point: np.ndarray, position: np.ndarray, rel: Released
    ) -> list[AnomalyEvent]:
        c = self.cfg.shift
        params = self.values.params
        score, direction = cusum_update(
            rows,
            vals,
            self.shift,
            c.alpha,
            float(self.cfg.warmup),
            c.k_slack,
            c.h,
            3.0,
            params.rel_floor,
            params.abs_floor,
        )
        out = []
        for h in np.flatnonzero((score >= self.cfg.threshold) & (direction > 0)).tolist():
            r = int(rows[h])
            s, m = divmod(r, N_METRICS)
            p = int(point[h])
            name = METRICS[m]
            baseline = untransform(name, float(self.shift[r, 1]))
            value = float(rel.value(name)[p])
            # while the spike detectors are firing on this stream, the CUSUM sees the spike episode
            in_spike = abs(float(position[h]) - self.last_hit[r]) <= 50
            atype = METRIC_TYPES[m] if in_spike else AnomalyType.LEVEL_SHIFT
            out.append(
                self._event(
                    s,
                    int(rel.t_ns[p]),
                    name,
                    atype,
                    float(score[h]),
                    value,
                    baseline,
                    "cusum",
                    [rel.trace_id(p)],
                )
            )
        return out

    # ---------------------------------------------------------------- buckets
    def _bucket_points(self, rel: Released) -> list[AnomalyEvent]:
        width = int(self.cfg.bucket * 1e9)
        late, c_s, c_first, c_new, c_counts, c_traces, c_nt = bucket_points(
            rel.t_ns // width,
            rel.series,
            rel.calls.flags,
            rel.calls.trace_hi,
            rel.calls.trace_lo,
            self.bucket_idx,
            self.bucket_counts,
            self.bucket_traces,
            self.bucket_ntraces,
        )
        self.late_points += int(late)
        out: list[AnomalyEvent] = []
        for k in range(c_s.shape[0]):  # closes are rare: one per series per bucket
            traces = [trace_hex(int(h), int(lo)) for h, lo in c_traces[k, : c_nt[k]].tolist()]
            out += self._closed_bucket(int(c_s[k]), int(c_first[k]), int(c_new[k]), c_counts[k], traces)
        return out

    def _close_buckets(self, upto_ns: int) -> list[AnomalyEvent]:
        """Close every open bucket that ends at or before `upto_ns` (silent series included)."""
        width = int(self.cfg.bucket * 1e9)
        target = upto_ns // width
        n = len(self.keys)
        out: list[AnomalyEvent] = []
        for s in np.flatnonzero((self.bucket_idx[:n] >= 0) & (self.bucket_idx[:n] < target)).tolist():
            held = self.bucket_traces[s, : self.bucket_ntraces[s]].tolist()
            traces = [trace_hex(int(h), int(lo)) for h, lo in held]
            first, counts = int(self.bucket_idx[s]), self.bucket_counts[s].copy()
            self.bucket_counts[s] = 0
            self.bucket_ntraces[s] = 0
            self.bucket_idx[s] = target
            out += self._closed_bucket(s, first, int(target), counts, traces)
        return out

    def _closed_bucket(
        self, s: int, first: int, new_bucket: int, bucket_counts: np.ndarray, traces: list[str]
    ) -> list[AnomalyEvent]:
        """Score series `s`'s bucket `first` (and empty ones up to `new_bucket`) once it has closed."""
        width = int(self.cfg.bucket * 1e9)
        gap = min(new_bucket - first, 3)  # beyond a few empty buckets the traffic verdict is made
        counts = np.zeros((gap, 4))
        counts[0] = bucket_counts
        ends = (first + 1 + np.arange(gap)) * width - 1
        out: list[AnomalyEvent] = []
        for j in range(gap):
            ev = self._traffic(s, float(counts[j, 0]), int(ends[j]))
            if ev is not None:
                out.append(ev)
        # bursts: only buckets with calls
        if counts[0, 0] > 0:
            c = self.cfg.bursts
            for r, (name, atype) in enumerate(zip(RATES, RATE_TYPES, strict=True)):
                score, rate, base = burst_update(
                    np.array([s * len(RATES) + r], dtype=np.int64),
                    counts[:1, 0],
                    counts[:1, r + 1],
                    self.rates.reshape(-1, RATE_WIDTH),
                    c.alpha,
                    float(self.cfg.warmup // 3 or 1),
                    c.baseline_floor,
                    c.z_alarm,
                    float(c.min_count),
                    c.min_rate,
                )
                if score[0] >= self.cfg.threshold:
                    out.append(
                        self._event(
                            s,
                            int(ends[0]),
                            f"{name}_rate",
                            atype,
                            float(score[0]),
                            float(rate[0]),
                            float(base[0]),
                            "binomial_burst",
                            traces if name == "error" else [],
                            calls=int(counts[0, 0]),
                            events=int(counts[0, r + 1]),
                        )
                    )
        return out

    def _traffic(self, s: int, k: float, end_ns: int) -> AnomalyEvent | None:
        """Poisson CUSUM: accumulate (count − expected) over a run of same-direction buckets."""
        t = self.cfg.traffic
        st = self.traffic[s]
        seen, lam = st[0], st[1]
        st[0] = seen + 1
        if seen == 0:
            st[1] = k
            return None
        lam = max(lam, 0.5)
        direction = 1.0 if k > lam else -1.0
        if direction != st[4] or abs(k - lam) < math.sqrt(lam):  # small deviations end a run
            st[2] = st[3] = 0.0
        st[4] = direction
        st[2] += k
        st[3] += lam
        z = (st[2] - st[3]) / math.sqrt(st[3])
        ratio = (st[2] + 0.5) / (st[3] + 0.5)
        unusual = abs(z) >= t.z_alarm and (ratio >= t.min_ratio or ratio <= 1.0 / t.min_ratio)
        # learn fast from normal buckets and slowly from unusual ones, so a lasting new level is accepted
        a = t.alpha if not unusual else t.alpha / 5
        st[1] = (1.0 - a) * lam + a * k
        if seen < t.warmup or not unusual:
            return None
        score = squash_score(abs(z) / t.z_alarm)
        atype = AnomalyType.TRAFFIC_SPIKE if direction > 0 else AnomalyType.TRAFFIC_DROP
        return self._event(s, end_ns, "requests_per_bucket", atype, score, k, lam, "poisson_cusum", [])

    # ---------------------------------------------------------------- model change
    def _model_changes(self, rel: Released) -> list[AnomalyEvent]:
        np.add.at(self.calls, rel.series, 1)
        rows, usual = model_changes(
            rel.series,
            rel.model,
            self.seen_models,
            self.seen_counts,
            self.n_seen,
            self.cfg.min_calls_for_model_change,
        )
        out = []
        for i, prev in zip(rows.tolist(), usual.tolist(), strict=True):
            out.append(
                self._event(
                    int(rel.series[i]),
                    int(rel.t_ns[i]),
                    "response_model",
                    AnomalyType.MODEL_CHANGE,
                    0.85,
                    math.nan,
                    math.nan,
                    "new_response_model",
                    [rel.trace_id(i)],
                    previous=self.model_names[prev],
                    current=self.model_names[int(rel.model[i])],
                )
            )
        return out

    # ---------------------------------------------------------------- drift
    def _drift(self, rel: Released, tvals: np.ndarray, exclude: np.ndarray) -> list[AnomalyEvent]:
        d = self.cfg.drift
        decay = 0.5 ** (1.0 / d.recent_half_life)
        out = []
        for j, name in enumerate(DRIFT_METRICS):
            x = tvals[:, METRICS.index(name)]  # transform(name, rel.value(name)), made once per batch
            bins = np.digitize(x, DRIFT_BINS[1:-1]).astype(np.int64)
            rows, psis, ref_means, cur_means = drift_update(
                rel.series,
                bins,
                np.isfinite(x) & ~exclude,
                j,
                self.ref_hist,
                self.recent_hist,
                self.ref_n,
                self.recent_n,
                self.drift_alarmed,
                float(d.reference_points),
                decay,
                float(d.min_recent),
                d.psi_threshold,
                DRIFT_CENTERS,
            )
            for i, psi, ref_mean, cur_mean in zip(
                rows.tolist(), psis.tolist(), ref_means.tolist(), cur_means.tolist(), strict=True
            ):
                score = psi / (psi + d.psi_threshold)  # 0.5 at the threshold, never 1.0
                out.append(
                    self._event(
                        int(rel.series[i]),
                        int(rel.t_ns[i]),
                        name,
                        AnomalyType.DRIFT,
                        score,
                        untransform(name, cur_mean),
                        untransform(name, ref_mean),
                        "psi",
                        [rel.trace_id(i)],
                        psi=round(psi, 4),
                    )
                )
        return out


def shared_store(ctx: ComponentContext, max_events: int) -> AlertStore:
    """One alert store per runtime: the admin API serves it."""
    return ctx.telemetry.singleton("alert_store", lambda: AlertStore(ctx.telemetry.registry, max_events))


class DetectConnector(Connector):
    config: DetectConfig

    def __init__(self, ctx: ComponentContext, config: DetectConfig) -> None:
        super().__init__(ctx, config)
        self.detector = Detector(config, shared_store(ctx, config.max_alerts))
        self._tick: asyncio.Task[None] | None = None
        self._last_input = time.monotonic()
        self._annotator: Any = None
        self._warm_done = threading.Event()
        self.router: SeriesRouter | None = None  # with several workers
        self._drain_timeout = 0.0

    def attach_worker(self, worker: WorkerSpec, drain_timeout: float) -> None:
        """Run as one of several workers: series other workers own are handed to them (routing.py)."""
        from processors.detect.routing import SeriesRouter

        self.router = SeriesRouter(worker, str(self.id), self.accept, self.ctx.telemetry)
        self._drain_timeout = drain_timeout

    async def start(self) -> None:
        # compile (or load cached) kernels off the event loop: start-up is not delayed
        threading.Thread(target=self._warm, name="numba-warm-up", daemon=True).start()
        if self.config.idle_advance:
            self._tick = asyncio.create_task(self._idle_loop(), name=f"{self.id}-idle")
        if self.router is not None:
            await self.router.start()

    def ready(self) -> bool:
        """Not ready until the kernels are compiled or loaded: a cold first call would block for seconds."""
        return self._warm_done.is_set() and (self.router is None or self.router.ready())

    def _warm(self) -> None:
        try:
            seconds = ensemble_warm_up() + call_kernels_warm_up()
            log.info("detection kernels ready", extra={"fields": {"warm_up_s": round(seconds, 3)}})
        except Exception:  # pragma: no cover - a compile failure shows up on first use as well
            log.exception("numba warm-up failed")
        finally:
            self._warm_done.set()

    async def shutdown(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self.router is not None:  # calls still on their way from other workers come first
            await self.router.drain(self._drain_timeout)
        await self._emit(self.detector.advance(flush=True))
        if self.router is not None:
            await self.router.stop()

    async def consume(self, batch: Batch) -> None:
        if not isinstance(batch, SpanBatch) or not len(batch):
            return
        if "llm" not in batch.columns:
            self._annotate(batch)
        self._last_input = time.monotonic()
        if self.router is not None:
            await self.router.route(CallRows.from_batch(batch))
            return
        self.detector.ingest(batch)
        await self._emit(self.detector.advance())

    async def accept(self, rows: CallRows | None, max_t_ns: int) -> None:
        """Calls of series this worker owns, with the newest event time the sending worker saw."""
        self._last_input = time.monotonic()
        if rows is not None:
            self.detector.ingest_calls(rows)
        await self._emit(self.detector.advance(now_event_ns=max_t_ns))

    def _annotate(self, batch: SpanBatch) -> None:
        """No `genai` before us: extract here (without publishing metrics) rather than see nothing."""
        if self._annotator is None:
            from processors.genai import FACTORY as GENAI

            cfg = GENAI.config.model_validate({"metrics": {"enabled": False}})
            self._annotator = GENAI.create(self.ctx, cfg)
        self._annotator.annotate(batch)

    async def _emit(self, events: list[AnomalyEvent]) -> None:
        if not events:
            return
        consumer = self.consumers.get(Signal.ANOMALIES)
        if consumer is None:
            return
        try:
            await consumer.consume(AnomalyBatch(events))
        except Exception as exc:  # alerts must not fail the traces pipeline
            self.logger.error(f"could not hand {len(events)} alert(s) to the anomalies pipeline: {exc}")

    async def _idle_loop(self) -> None:
        """Live only: with no input, let event time follow the wall clock so silence closes buckets."""
        period = min(self.config.bucket / 2, 5.0)
        while True:
            await asyncio.sleep(period)
            idle = time.monotonic() - self._last_input
            if idle >= period and self.detector.max_t_ns:
                now_event = self.detector.max_t_ns + int(idle * 1e9)
                await self._emit(self.detector.advance(now_event_ns=now_event))
                self._last_input = time.monotonic()


FACTORY = Factory(
    type="detect",
    kind=Kind.CONNECTOR,
    config=DetectConfig,
    create=DetectConnector,
    signals=frozenset({Signal.TRACES}),
    output_signals=frozenset({Signal.ANOMALIES}),
    description="Online anomaly detection on LLM calls (traces in, deduplicated alerts out).",
)
