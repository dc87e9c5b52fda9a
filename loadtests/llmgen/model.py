"""The traffic model: which services call which models, how often, and what each call looks like.

Simulated event time only: a run covers [start, start + duration) and every
timestamp is computed, never read from the clock. Generation is vectorised per
time slice (default 5 min) and series (service, request model):

* arrivals: a non-homogeneous Poisson process by thinning; the rate is the
  series' base rate × `rate_scale` × a diurnal cosine (period 24 h, peak at
  `diurnal_peak_hour` UTC, relative amplitude `diurnal_amplitude`) × an optional
  weekday factor;
* per call: input tokens log-normal; output tokens log-normal, capped at a
  `max_tokens` set so that a fraction `truncation_rate` hits it (finish_reason
  "length"); latency log-normal with the model's median and σ, correlated
  (ρ = `latency_token_corr`) with the output tokens; streaming with the service's
  probability, TTFT log-normal and below the latency; prompt-cache hits; errors
  (InternalServerError, APITimeoutError) and 429s (RateLimitError) at base rates;
  an HTTP server span around each call and sometimes a DB span before it.

Every random draw comes from a generator seeded by (seed, slice, series, stream),
and the draws of a call never depend on the injections: a run with an anomaly is
identical to the run without it outside the anomaly's window (drift: before it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import numpy as np

from loadtests.llmgen.anomalies import Anomaly, Target, schedule_all

DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, 00:00 UTC

RATE_LIMIT_ERROR = "RateLimitError"
SERVER_ERROR = "InternalServerError"
TIMEOUT_ERROR = "APITimeoutError"
MAX_MODEL_NAME = 64


@dataclass(frozen=True)
class ModelSpec:
    """One (provider, operation, request model → response model) combination and its distributions."""

    provider: str
    operation: str  # "chat" or "embeddings"
    request_model: str
    response_model: str
    latency_median_s: float
    latency_sigma: float
    input_median: float
    input_sigma: float = 0.6
    output_median: float = 0.0  # chat only
    output_sigma: float = 0.6
    ttft_median_s: float = 0.35
    ttft_sigma: float = 0.35
    truncation_rate: float = 0.015  # share of calls whose output reaches max_tokens
    changed_response_model: str = ""  # model_change default target
    expensive_response_model: str = ""  # cost_spike default target
    server_address: str = ""

    @property
    def is_chat(self) -> bool:
        return self.operation == "chat"

    @property
    def max_tokens(self) -> int:
        """The max_tokens cap: the (1 − truncation_rate) quantile of the output distribution."""
        if not self.is_chat:
            return -1
        z = NormalDist().inv_cdf(1.0 - self.truncation_rate)
        return round(self.output_median * math.exp(self.output_sigma * z))


@dataclass(frozen=True)
class SeriesSpec:
    model: ModelSpec
    rate: float  # mean calls/s over a day (before rate_scale)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    calls: tuple[SeriesSpec, ...]
    stream_fraction: float = 0.0  # share of chat calls that stream
    db_fraction: float = 0.0  # share of requests with a DB span before the LLM call
    cache_fraction: float = 0.3  # share of chat calls that read part of the prompt from cache
    route: str = "/v1/chat"
    version: str = "1.0.0"


def _openai(req: str, resp: str, **kw: Any) -> ModelSpec:
    return ModelSpec("openai", kw.pop("operation", "chat"), req, resp, server_address="api.openai.com", **kw)


def _anthropic(req: str, resp: str, **kw: Any) -> ModelSpec:
    return ModelSpec("anthropic", "chat", req, resp, server_address="api.anthropic.com", **kw)


GPT_4O_MINI = _openai(
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    latency_median_s=1.1,
    latency_sigma=0.4,
    input_median=600,
    output_median=180,
    ttft_median_s=0.3,
    changed_response_model="gpt-4o-mini-2025-01-31",
    expensive_response_model="gpt-4o-2024-08-06",
)
GPT_4O = _openai(
    "gpt-4o",
    "gpt-4o-2024-08-06",
    latency_median_s=2.4,
    latency_sigma=0.45,
    input_median=900,
    output_median=300,
    ttft_median_s=0.45,
    changed_response_model="gpt-4o-2024-11-20",
    expensive_response_model="o1-2024-12-17",
)
CLAUDE_SONNET = _anthropic(
    "claude-3-5-sonnet",
    "claude-3-5-sonnet-20241022",
    latency_median_s=2.9,
    latency_sigma=0.45,
    input_median=1100,
    output_median=350,
    ttft_median_s=0.55,
    changed_response_model="claude-3-7-sonnet-20250219",
    expensive_response_model="claude-3-opus-20240229",
)
CLAUDE_HAIKU = _anthropic(
    "claude-3-5-haiku",
    "claude-3-5-haiku-20241022",
    latency_median_s=0.9,
    latency_sigma=0.35,
    input_median=700,
    output_median=120,
    ttft_median_s=0.25,
    changed_response_model="claude-3-haiku-20240307",
    expensive_response_model="claude-3-5-sonnet-20241022",
)
EMBED_SMALL = _openai(
    "text-embedding-3-small",
    "text-embedding-3-small",
    operation="embeddings",
    latency_median_s=0.3,
    latency_sigma=0.3,
    input_median=250,
    input_sigma=0.5,
    changed_response_model="text-embedding-ada-002",
    expensive_response_model="text-embedding-3-large",
)

DEFAULT_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "chat-api",
        (SeriesSpec(GPT_4O_MINI, 0.6), SeriesSpec(GPT_4O, 0.2), SeriesSpec(CLAUDE_SONNET, 0.15)),
        stream_fraction=0.7,
        db_fraction=0.1,
        cache_fraction=0.4,
        route="/api/chat",
        version="2.3.1",
    ),
    ServiceSpec(
        "rag-worker",
        (
            SeriesSpec(EMBED_SMALL, 0.5),
            SeriesSpec(replace(GPT_4O_MINI, input_median=1800, output_median=250, latency_median_s=1.4), 0.4),
            SeriesSpec(CLAUDE_HAIKU, 0.12),
        ),
        stream_fraction=0.2,
        db_fraction=0.9,
        cache_fraction=0.2,
        route="/rag/answer",
        version="0.9.4",
    ),
    ServiceSpec(
        "summarizer",
        (
            SeriesSpec(replace(GPT_4O, input_median=2000, input_sigma=0.5, output_median=400), 0.1),
            SeriesSpec(replace(CLAUDE_SONNET, input_median=1900, input_sigma=0.5, output_median=500), 0.1),
        ),
        stream_fraction=0.0,
        db_fraction=0.3,
        cache_fraction=0.1,
        route="/jobs/summarize",
        version="1.1.0",
    ),
)


@dataclass(frozen=True)
class TrafficConfig:
    seed: int = 1
    start: datetime = DEFAULT_START
    duration_s: float = 6 * 3600.0
    services: tuple[ServiceSpec, ...] = DEFAULT_SERVICES
    rate_scale: float = 1.0  # multiplies every series' base rate
    diurnal_amplitude: float = 0.5  # rate swings between (1 − a) and (1 + a) × base
    diurnal_period_s: float = 86400.0
    diurnal_peak_hour: float = 15.0  # UTC
    weekly: tuple[float, ...] | None = None  # 7 factors, Monday first
    error_rate: float = 0.005
    rate_limit_rate: float = 0.003
    timeout_s: float = 30.0  # latency of an APITimeoutError
    latency_token_corr: float = 0.6
    anomalies: tuple[Anomaly, ...] = ()
    slice_s: float = 300.0  # generation step; part of what the seed reproduces
    spans_per_request: int = 512
    max_request_event_s: float | None = None  # also cut a request when its spans span more event time
    out_of_order_fraction: float = 0.0  # share of spans delivered late
    max_lateness_s: float = 30.0  # how late, at most (uniform in [0, max])

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not self.duration_s > 0:
            raise ValueError("duration must be > 0")
        if not self.slice_s > 0:
            raise ValueError("slice_s must be > 0")
        if self.spans_per_request < 1:
            raise ValueError("spans_per_request must be >= 1")
        if not 0 <= self.diurnal_amplitude < 1:
            raise ValueError("diurnal_amplitude must be in [0, 1)")
        if self.weekly is not None and (len(self.weekly) != 7 or min(self.weekly) < 0):
            raise ValueError("weekly must be 7 factors >= 0, Monday first")
        if not 0 <= self.out_of_order_fraction <= 1:
            raise ValueError("out_of_order_fraction must be in [0, 1]")
        if self.max_lateness_s < 0:
            raise ValueError("max_lateness_s must be >= 0")
        keys = [(s.name, c.model.request_model) for s in self.services for c in s.calls]
        if len(set(keys)) != len(keys):
            raise ValueError("each (service, request model) may appear once")

    @property
    def start_epoch_s(self) -> float:
        return self.start.timestamp()

    @property
    def start_ns(self) -> int:
        return round(self.start.timestamp() * 1e9)

    @property
    def end_epoch_s(self) -> float:
        return self.start_epoch_s + self.duration_s


@dataclass(frozen=True)
class Series:
    index: int
    service_index: int
    service: ServiceSpec
    spec: SeriesSpec

    @property
    def model(self) -> ModelSpec:
        return self.spec.model

    @property
    def key(self) -> tuple[str, str]:
        return self.service.name, self.model.request_model


def series_of(config: TrafficConfig) -> list[Series]:
    out: list[Series] = []
    for si, svc in enumerate(config.services):
        for spec in svc.calls:
            out.append(Series(len(out), si, svc, spec))
    return out


def targets_of(config: TrafficConfig) -> list[Target]:
    return [
        Target(
            s.service.name,
            s.model.request_model,
            s.model.operation,
            s.spec.rate * config.rate_scale,
            s.service.stream_fraction if s.model.is_chat else 0.0,
        )
        for s in series_of(config)
    ]


def inject_all(config: TrafficConfig) -> TrafficConfig:
    """`config` with one anomaly of every type scheduled in its window (see `anomalies.schedule_all`)."""
    return replace(
        config, anomalies=(*config.anomalies, *schedule_all(config.duration_s, targets_of(config)))
    )


@functools.lru_cache(maxsize=64)
def _price_ratio(model: ModelSpec, to: str) -> float:
    """Cost of a median call on `to` over the same call on the normal response model."""
    from processors.genai.pricing import default_price_table

    table = default_price_table()
    cost = []
    for name in (model.response_model, to):
        price = table.lookup(model.provider, name)
        if price is None:
            raise ValueError(f"cost_spike: no price known for {model.provider}/{name}; pass via=output")
        cost.append(price.input * model.input_median + price.output * model.output_median)
    if cost[0] <= 0:
        raise ValueError(f"cost_spike: {model.response_model} costs nothing; pass via=output")
    return round(cost[1] / cost[0], 2)


def resolve(config: TrafficConfig) -> tuple[Anomaly, ...]:
    """The anomalies with their target checked and defaults made explicit (to=, magnitude)."""
    by_key = {s.key: s for s in series_of(config)}
    out = []
    for a in config.anomalies:
        s = by_key.get((a.service, a.model))
        if s is None:
            known = ", ".join(f"{k[0]}/{k[1]}" for k in by_key)
            raise ValueError(f"{a.type}: no series {a.service}/{a.model} (known: {known})")
        if a.start >= config.duration_s:
            raise ValueError(f"{a.type}: starts at {a.start:g}s, after the run ends ({config.duration_s:g}s)")
        m = s.model
        if a.type in ("ttft_spike",) and not (m.is_chat and s.service.stream_fraction > 0):
            raise ValueError(f"ttft_spike: {a.service}/{a.model} never streams")
        needs_chat = a.type in ("truncation_spike", "cost_spike") or a.effective_metric in (
            "output_tokens",
            "ttft",
        )
        if needs_chat and not m.is_chat:
            raise ValueError(f"{a.type}: {a.service}/{a.model} is an embeddings model (no output, no TTFT)")
        if a.type == "model_change":
            a = replace(a, to=a.to or m.changed_response_model, magnitude=a.k)
        elif a.type == "cost_spike" and a.via == "model":
            to = a.to or m.expensive_response_model
            a = replace(a, to=to, magnitude=_price_ratio(m, to))
        else:
            a = replace(a, magnitude=a.k)
        if a.to is not None and len(a.to) > MAX_MODEL_NAME:
            raise ValueError(f"{a.type}: model name longer than {MAX_MODEL_NAME} characters")
        out.append(a)
    return tuple(out)


# ---------------------------------------------------------------- columns
@dataclass
class Calls:
    """One row per LLM call (with its HTTP and optional DB span). Times are seconds from the run start.

    Tokens are -1 where the span carries no value (errors; output/cached of embeddings);
    strings are "" where absent.
    """

    series: np.ndarray  # int16
    service: np.ndarray  # int16
    t: np.ndarray  # HTTP request arrival (span start)
    trace_hi: np.ndarray  # uint64
    trace_lo: np.ndarray
    http_id: np.ndarray
    db_id: np.ndarray
    llm_id: np.ndarray
    has_db: np.ndarray  # bool
    db_start: np.ndarray
    db_end: np.ndarray
    llm_start: np.ndarray
    latency: np.ndarray  # s (LLM span duration)
    http_end: np.ndarray
    stream: np.ndarray  # bool
    ttft: np.ndarray  # s, NaN unless streaming and successful
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray
    cached_tokens: np.ndarray
    max_tokens: np.ndarray
    truncated: np.ndarray  # bool
    finish_reason: np.ndarray  # U16
    response_model: np.ndarray  # U64
    error: np.ndarray  # bool (rate-limited calls included)
    rate_limited: np.ndarray  # bool
    error_type: np.ndarray  # U24
    http_status: np.ndarray  # int16 status the provider answered (0: none, e.g. timeout)
    late_http: np.ndarray  # s each span is delivered late (0: on time)
    late_db: np.ndarray
    late_llm: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, idx: np.ndarray) -> Calls:
        return Calls(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @classmethod
    def concat(cls, parts: Sequence[Calls]) -> Calls:
        if len(parts) == 1:
            return parts[0]
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def empty(cls) -> Calls:
        return _EMPTY_CALLS.take(np.zeros(0, dtype=np.intp))


@dataclass
class _Draws:
    """Every random number a call uses, drawn in a fixed order whatever the config says."""

    z: np.ndarray  # (6, n): input, output, latency, ttft, db duration, error latency
    u: np.ndarray  # (14, n): see _U
    late: np.ndarray  # (2, 3, n): [0] selects late spans, [1] how late (http, db, llm)
    ids: np.ndarray  # (5, n) uint64: trace hi, trace lo, http, db, llm span ids


_U = {
    name: i
    for i, name in enumerate(
        (
            "stream",
            "cache",
            "cache_frac",
            "err",
            "rl",
            "err_type",
            "trunc",
            "model",
            "keep",
            "db",
            "pre1",
            "pre2",
            "post",
            "timeout",
        )
    )
}


def _draw(rng: np.random.Generator, n: int) -> _Draws:
    z = rng.standard_normal((6, n))
    u = rng.random((len(_U), n))
    late = rng.random((2, 3, n))
    ids = rng.integers(1, 2**64, size=(5, n), dtype=np.uint64)  # never 0: an all-zero id is invalid
    return _Draws(z, u, late, ids)


@dataclass
class _Effects:
    """Per-call knobs the anomalies turn; defaults reproduce the base traffic."""

    lat: np.ndarray
    ttft: np.ndarray  # drift / level shift of the TTFT distribution
    ttft_spike: np.ndarray  # extra wait before the first chunk (adds to latency)
    inp: np.ndarray
    out: np.ndarray
    p_err: np.ndarray
    p_rl: np.ndarray
    p_trunc: np.ndarray
    p_model: np.ndarray
    model_to: np.ndarray
    keep: np.ndarray

    def metric_factor(self, metric: str) -> np.ndarray:
        return {"latency": self.lat, "ttft": self.ttft, "input_tokens": self.inp, "output_tokens": self.out}[
            metric
        ]


def _effects(
    t: np.ndarray,
    series: np.ndarray,
    anomalies: Sequence[tuple[int, Anomaly]],
    config: TrafficConfig,
    bounds: tuple[float, float],
) -> _Effects:
    """The knobs for calls at times `t` (all within `bounds`) of the given series."""
    n = t.shape[0]
    ones = np.ones(n)
    e = _Effects(
        lat=ones.copy(),
        ttft=ones.copy(),
        ttft_spike=ones.copy(),
        inp=ones.copy(),
        out=ones.copy(),
        p_err=np.full(n, config.error_rate),
        p_rl=np.full(n, config.rate_limit_rate),
        p_trunc=np.zeros(n),
        p_model=np.zeros(n),
        model_to=np.full(n, "", dtype=f"U{MAX_MODEL_NAME}"),
        keep=ones,
    )
    lo, hi = bounds
    for target, a in anomalies:
        if a.start >= hi or (a.end <= lo and a.type != "drift"):
            continue
        k = a.k
        mine = series == target
        if a.type == "drift":
            e.metric_factor(a.effective_metric)[mine] *= a.ramp(t[mine])
            continue
        m = mine & a.active(t)
        if not m.any():
            continue
        kind = a.type
        if kind == "latency_spike":
            e.lat[m] *= k
        elif kind == "ttft_spike":
            e.ttft_spike[m] *= k
        elif kind in ("token_spike", "level_shift") or (kind == "cost_spike" and a.via == "output"):
            e.metric_factor(a.effective_metric)[m] *= k
        elif kind in ("model_change", "cost_spike"):
            e.p_model[m] = k if kind == "model_change" else 1.0
            assert a.to is not None
            e.model_to[m] = a.to
        elif kind == "error_burst":
            e.p_err[m] = k
        elif kind == "rate_limit_burst":
            e.p_rl[m] = k
        elif kind == "truncation_spike":
            e.p_trunc[m] = k
        elif kind in ("traffic_spike", "traffic_drop"):
            if k < 1:
                e.keep[m] *= k
        else:  # pragma: no cover - ANOMALY_TYPES is closed
            raise AssertionError(kind)
    return e


def _lognormal(median: np.ndarray | float, sigma: np.ndarray | float, z: np.ndarray) -> np.ndarray:
    return np.exp(np.log(median) + sigma * z)


@dataclass
class _Params:
    """Per-series parameters as arrays, to be gathered by each call's series index."""

    service: np.ndarray
    chat: np.ndarray
    lat_med: np.ndarray
    lat_sig: np.ndarray
    in_med: np.ndarray
    in_sig: np.ndarray
    out_med: np.ndarray
    out_sig: np.ndarray
    ttft_med: np.ndarray
    ttft_sig: np.ndarray
    max_tokens: np.ndarray
    stream: np.ndarray
    db: np.ndarray
    cache: np.ndarray
    response_model: np.ndarray

    @classmethod
    def of(cls, series: Sequence[Series]) -> _Params:
        def col(get: Any, dtype: Any = np.float64) -> np.ndarray:
            return np.array([get(s) for s in series], dtype=dtype)

        return cls(
            service=col(lambda s: s.service_index, np.int16),
            chat=col(lambda s: s.model.is_chat, np.bool_),
            lat_med=col(lambda s: s.model.latency_median_s),
            lat_sig=col(lambda s: s.model.latency_sigma),
            in_med=col(lambda s: s.model.input_median),
            in_sig=col(lambda s: s.model.input_sigma),
            out_med=col(lambda s: s.model.output_median or 1.0),
            out_sig=col(lambda s: s.model.output_sigma),
            ttft_med=col(lambda s: s.model.ttft_median_s),
            ttft_sig=col(lambda s: s.model.ttft_sigma),
            max_tokens=col(lambda s: s.model.max_tokens),
            stream=col(lambda s: s.service.stream_fraction if s.model.is_chat else 0.0),
            db=col(lambda s: s.service.db_fraction),
            cache=col(lambda s: s.service.cache_fraction if s.model.is_chat else 0.0),
            response_model=col(lambda s: s.model.response_model, f"U{MAX_MODEL_NAME}"),
        )


def _realise(
    t: np.ndarray, series: np.ndarray, d: _Draws, e: _Effects, p: _Params, config: TrafficConfig
) -> tuple[Calls, np.ndarray]:
    """Calls from their draws and the anomaly knobs; also the keep mask (traffic drops)."""
    n = t.shape[0]
    u = d.u
    zin, zout, zlat, zttft, zdb, zerr = d.z
    rho = config.latency_token_corr
    chat = p.chat[series]
    inp = np.maximum(1, np.rint(_lognormal(p.in_med[series], p.in_sig[series], zin) * e.inp)).astype(np.int64)
    raw = _lognormal(p.out_med[series], p.out_sig[series], zout) * e.out
    cap = np.where(chat, np.rint(p.max_tokens[series] * e.out), -1).astype(np.int64)
    truncated = chat & ((raw >= cap) | (u[_U["trunc"]] < e.p_trunc))
    out = np.where(truncated, cap, np.maximum(1, np.rint(raw)).astype(np.int64))
    out[~chat] = -1
    cache_hit = u[_U["cache"]] < p.cache[series]
    cached = np.where(cache_hit, np.floor(inp * (0.2 + 0.7 * u[_U["cache_frac"]])), 0).astype(np.int64)
    cached[~chat] = -1
    finish = np.where(truncated, "length", np.where(chat, "stop", "")).astype("U16")
    # latency follows the output length (chat) or the input length (embeddings)
    zl = rho * np.where(chat, zout, zin) + math.sqrt(1 - rho * rho) * zlat
    stream = u[_U["stream"]] < p.stream[series]
    latency = _lognormal(p.lat_med[series], p.lat_sig[series], zl) * e.lat
    ttft = _lognormal(p.ttft_med[series], p.ttft_sig[series], zttft) * e.ttft
    ttft = np.minimum(ttft, 0.8 * latency)
    extra = ttft * (e.ttft_spike - 1.0)
    ttft = ttft + extra
    latency = np.where(stream, latency + extra, latency)

    rate_limited = u[_U["rl"]] < e.p_rl
    error = rate_limited | (u[_U["err"]] < e.p_err)
    server = error & ~rate_limited & (u[_U["err_type"]] < 0.7)
    timeout = error & ~rate_limited & ~server
    err_type = np.full(n, "", dtype="U24")
    err_type[rate_limited] = RATE_LIMIT_ERROR
    err_type[server] = SERVER_ERROR
    err_type[timeout] = TIMEOUT_ERROR
    status = np.where(rate_limited, 429, np.where(server, 500, np.where(timeout, 0, 200))).astype(np.int16)
    latency = np.where(rate_limited, _lognormal(0.15, 0.5, zerr), latency)
    latency = np.where(server, _lognormal(0.8, 0.5, zerr), latency)
    latency = np.where(timeout, config.timeout_s * (1 + 0.02 * u[_U["timeout"]]), latency)
    ok = ~error
    ttft = np.where(stream & ok, ttft, np.nan)
    response = np.where(u[_U["model"]] < e.p_model, e.model_to, p.response_model[series])
    response[error] = ""
    inp[error] = -1
    out[error] = -1
    cached[error] = -1
    truncated &= ok
    finish[error] = ""

    has_db = u[_U["db"]] < p.db[series]
    db_start = t + 0.001 + 0.004 * u[_U["pre1"]]
    db_end = db_start + _lognormal(0.015, 0.5, zdb)
    llm_start = np.where(has_db, db_end, t) + 0.001 + 0.003 * u[_U["pre2"]]
    http_end = llm_start + latency + 0.002 + 0.018 * u[_U["post"]]
    late = np.where(d.late[0] < config.out_of_order_fraction, d.late[1] * config.max_lateness_s, 0.0)
    calls = Calls(
        series=series.astype(np.int16),
        service=p.service[series],
        t=t,
        trace_hi=d.ids[0],
        trace_lo=d.ids[1],
        http_id=d.ids[2],
        db_id=d.ids[3],
        llm_id=d.ids[4],
        has_db=has_db,
        db_start=db_start,
        db_end=db_end,
        llm_start=llm_start,
        latency=latency,
        http_end=http_end,
        stream=stream,
        ttft=ttft,
        input_tokens=inp,
        output_tokens=out,
        cached_tokens=cached,
        max_tokens=cap,
        truncated=truncated,
        finish_reason=finish,
        response_model=response,
        error=error,
        rate_limited=rate_limited,
        error_type=err_type,
        http_status=status,
        late_http=late[0],
        late_db=late[1],
        late_llm=late[2],
    )
    return calls, u[_U["keep"]] < e.keep


# ---------------------------------------------------------------- simulation
@dataclass
class Simulator:
    """Generates `Calls` slice by slice. Deterministic given the config (seed included)."""

    config: TrafficConfig
    series: list[Series] = field(init=False)
    anomalies: tuple[Anomaly, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.series = series_of(self.config)
        self.anomalies = resolve(self.config)
        c = self.config
        self._epoch = c.start_epoch_s
        self._wmax = max(c.weekly) if c.weekly else 1.0
        self._params = _Params.of(self.series)
        index = {s.key: s.index for s in self.series}
        self._targets = [(index[(a.service, a.model)], a) for a in self.anomalies]

    @property
    def n_slices(self) -> int:
        return math.ceil(self.config.duration_s / self.config.slice_s)

    def slice_bounds(self, k: int) -> tuple[float, float]:
        c = self.config
        return k * c.slice_s, min((k + 1) * c.slice_s, c.duration_s)

    def rate(self, s: Series, t: np.ndarray) -> np.ndarray:
        """Base arrival rate (calls/s) of series `s` at offsets `t` (before anomalies)."""
        c = self.config
        abs_t = self._epoch + t
        phase = 2 * math.pi * (abs_t - c.diurnal_peak_hour * 3600.0) / c.diurnal_period_s
        r = s.spec.rate * c.rate_scale * (1.0 + c.diurnal_amplitude * np.cos(phase))
        if c.weekly:
            weekday = (np.floor(abs_t / 86400.0).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
            r = r * np.asarray(c.weekly)[weekday]
        return r

    def _arrivals(self, rng: np.random.Generator, s: Series, lo: float, hi: float, k: float) -> np.ndarray:
        """Poisson arrivals in [lo, hi) at k × the base rate, by thinning."""
        c = self.config
        rmax = s.spec.rate * c.rate_scale * (1.0 + c.diurnal_amplitude) * self._wmax * k
        n = int(rng.poisson(rmax * (hi - lo))) if rmax > 0 else 0
        t = np.sort(lo + (hi - lo) * rng.random(n))
        accept = rng.random(n) * rmax < self.rate(s, t) * k
        return t[accept]

    def slice_calls(self, k: int) -> Calls:
        """The calls arriving in slice `k`, ordered by series, then arrival time.

        Each series draws its arrivals and their attributes from generators of its
        own; the extra arrivals of a traffic spike come from generators of the spike.
        """
        lo, hi = self.slice_bounds(k)
        seed = self.config.seed
        times, owners, draws = [], [], []
        for s in self.series:
            blocks = [(np.random.default_rng([seed, k, s.index, 0]), 1.0, lo, hi, 1)]
            for j, (target, a) in enumerate(self._targets):
                if target == s.index and a.type in ("traffic_spike", "traffic_drop") and a.k > 1:
                    wlo, whi = max(lo, a.start), min(hi, a.end)
                    if wlo < whi:
                        blocks.append(
                            (np.random.default_rng([seed, k, s.index, 100 + j]), a.k - 1, wlo, whi, 200 + j)
                        )
            for rng, factor, blo, bhi, attr_stream in blocks:
                t = self._arrivals(rng, s, blo, bhi, factor)
                times.append(t)
                owners.append(np.full(t.shape[0], s.index, dtype=np.intp))
                draws.append(_draw(np.random.default_rng([seed, k, s.index, attr_stream]), t.shape[0]))
        t = np.concatenate(times)
        series = np.concatenate(owners)
        d = _Draws(
            z=np.concatenate([x.z for x in draws], axis=1),
            u=np.concatenate([x.u for x in draws], axis=1),
            late=np.concatenate([x.late for x in draws], axis=2),
            ids=np.concatenate([x.ids for x in draws], axis=1),
        )
        e = _effects(t, series, self._targets, self.config, (lo, hi))
        calls, keep = _realise(t, series, d, e, self._params, self.config)
        order = np.lexsort((t, series))
        return calls.take(order[keep[order]])

    def slices(self) -> Iterator[tuple[int, Calls]]:
        for k in range(self.n_slices):
            yield k, self.slice_calls(k)


def simulate(config: TrafficConfig) -> Iterator[Calls]:
    """The calls of the run, slice by slice."""
    for _, calls in Simulator(config).slices():
        yield calls


def calls_table(config: TrafficConfig) -> Calls:
    """Every call of the run in one `Calls` (slices concatenated)."""
    parts = list(simulate(config))
    return Calls.concat(parts) if parts else Calls.empty()


_EMPTY_CALLS = Calls(
    **{
        f.name: np.zeros(
            0,
            dtype={
                "series": np.int16,
                "service": np.int16,
                "trace_hi": np.uint64,
                "trace_lo": np.uint64,
                "http_id": np.uint64,
                "db_id": np.uint64,
                "llm_id": np.uint64,
                "has_db": np.bool_,
                "stream": np.bool_,
                "truncated": np.bool_,
                "error": np.bool_,
                "rate_limited": np.bool_,
                "input_tokens": np.int64,
                "output_tokens": np.int64,
                "cached_tokens": np.int64,
                "max_tokens": np.int64,
                "http_status": np.int16,
                "finish_reason": "U16",
                "response_model": f"U{MAX_MODEL_NAME}",
                "error_type": "U24",
            }.get(f.name, np.float64),
        )
        for f in fields(Calls)
    }
)
