"""Injectable anomalies: what each type does, how it is written on the command line, its labels.

An anomaly hits one series (service, request model) from `start` for `duration`
seconds of simulated time, both counted from the start of the run. What it does
(applied by `model.simulate`, per call, from random draws that do not depend on
the injections, so traffic outside a window is bit-identical to a run without it):

=================  ==========================================================  =========
type               effect inside the window                                    magnitude
=================  ==========================================================  =========
latency_spike      latency × k                                                 k = 5
ttft_spike         time to first chunk × k on streaming calls (latency grows   k = 5
                   by the extra wait)
token_spike        input tokens × k (``metric=output_tokens``: output tokens   k = 5
                   and their max_tokens cap × k)
cost_spike         response model → a far more expensive one (``to=``,         derived
                   default per model; magnitude is the price ratio), or with
                   ``via=output`` output tokens × k                            k = 10
error_burst        error probability → p (InternalServerError/APITimeoutError) p = 0.3
rate_limit_burst   429 probability → p (RateLimitError)                        p = 0.4
truncation_spike   finish_reason "length" probability → p                     p = 0.5
traffic_spike      request rate × k                                            k = 5
traffic_drop       request rate × k                                            k = 0
model_change       response model → ``to`` (default per model) for a fraction  p = 1
                   p of calls
drift              ``metric`` (latency, ttft, input_tokens, output_tokens) ×   k = 2
                   a factor ramping 1 → k over the window, then held at k for
                   the rest of the run (the drifted level is the new normal)
level_shift        ``metric`` × k, a sustained step for the window             k = 1.8
=================  ==========================================================  =========

Command-line form: ``TYPE@START:DURATION:SERVICE/MODEL[:MAGNITUDE][:KEY=VALUE]...``,
e.g. ``latency_spike@2h:10m:chat-api/gpt-4o-mini:4`` or
``model_change@3h:1h:chat-api/gpt-4o-mini:to=gpt-4o-mini-2025-01-31``. Durations take
h/m/s/ms units and may be combined (``1h30m``); a bare number is seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ANOMALY_TYPES = (
    "latency_spike",
    "ttft_spike",
    "token_spike",
    "cost_spike",
    "error_burst",
    "rate_limit_burst",
    "truncation_spike",
    "traffic_spike",
    "traffic_drop",
    "model_change",
    "drift",
    "level_shift",
)

DEFAULT_MAGNITUDE: dict[str, float] = {
    "latency_spike": 5.0,
    "ttft_spike": 5.0,
    "token_spike": 5.0,
    "cost_spike": 10.0,  # via=output only; via=model derives it from prices
    "error_burst": 0.3,
    "rate_limit_burst": 0.4,
    "truncation_spike": 0.5,
    "traffic_spike": 5.0,
    "traffic_drop": 0.0,
    "model_change": 1.0,
    "drift": 2.0,
    "level_shift": 1.8,
}

# Which measured quantity each type moves (written to the labels as "metric").
DEFAULT_METRIC: dict[str, str] = {
    "latency_spike": "latency",
    "ttft_spike": "ttft",
    "token_spike": "input_tokens",
    "cost_spike": "cost",
    "error_burst": "error_rate",
    "rate_limit_burst": "rate_limit_rate",
    "truncation_spike": "truncation_rate",
    "traffic_spike": "request_rate",
    "traffic_drop": "request_rate",
    "model_change": "response_model",
    "drift": "latency",
    "level_shift": "latency",
}

# Types whose `metric=` may be chosen, and the choices.
DISTRIBUTION_METRICS = ("latency", "ttft", "input_tokens", "output_tokens")
METRIC_CHOICES: dict[str, tuple[str, ...]] = {
    "token_spike": ("input_tokens", "output_tokens"),
    "drift": DISTRIBUTION_METRICS,
    "level_shift": DISTRIBUTION_METRICS,
}
PROBABILITY_TYPES = frozenset({"error_burst", "rate_limit_burst", "truncation_spike", "model_change"})


@dataclass(frozen=True)
class Anomaly:
    """One injection. Times are seconds of simulated time from the start of the run."""

    type: str
    service: str
    model: str  # request model of the target series
    start: float
    duration: float
    magnitude: float | None = None  # None: the type's default (cost_spike via=model: the price ratio)
    metric: str | None = None  # None: the type's default
    to: str | None = None  # model_change / cost_spike: the new response model (None: the model's default)
    via: str = "model"  # cost_spike only: "model" (expensive response model) or "output" (huge output)

    def __post_init__(self) -> None:
        if self.type not in ANOMALY_TYPES:
            raise ValueError(f"unknown anomaly type {self.type!r}; one of {', '.join(ANOMALY_TYPES)}")
        if not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"{self.type}: start must be >= 0, got {self.start}")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"{self.type}: duration must be > 0, got {self.duration}")
        if self.magnitude is not None:
            if not math.isfinite(self.magnitude) or self.magnitude < 0:
                raise ValueError(f"{self.type}: magnitude must be a finite number >= 0")
            if self.type in PROBABILITY_TYPES and self.magnitude > 1:
                raise ValueError(f"{self.type}: magnitude is a probability, got {self.magnitude}")
        if self.metric is not None:
            choices = METRIC_CHOICES.get(self.type)
            if choices is None or self.metric not in choices:
                allowed = ", ".join(choices) if choices else "none"
                raise ValueError(f"{self.type}: metric {self.metric!r} not allowed (choices: {allowed})")
        if self.to is not None and self.type not in ("model_change", "cost_spike"):
            raise ValueError(f"{self.type}: to= applies only to model_change and cost_spike")
        if self.via not in ("model", "output"):
            raise ValueError(f"cost_spike: via must be model or output, got {self.via!r}")
        if self.via != "model" and self.type != "cost_spike":
            raise ValueError(f"{self.type}: via= applies only to cost_spike")

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def k(self) -> float:
        """The magnitude, defaulted."""
        return DEFAULT_MAGNITUDE[self.type] if self.magnitude is None else self.magnitude

    @property
    def effective_metric(self) -> str:
        if self.type == "cost_spike" and self.via == "output":
            return "output_tokens"
        return self.metric or DEFAULT_METRIC[self.type]

    def active(self, t: np.ndarray) -> np.ndarray:
        """Mask of times (seconds from run start) inside the window [start, end)."""
        return (t >= self.start) & (t < self.end)

    def ramp(self, t: np.ndarray) -> np.ndarray:
        """Drift factor: 1 before start, 1 → k linearly over the window, k afterwards."""
        frac = np.clip((t - self.start) / self.duration, 0.0, 1.0)
        return 1.0 + (self.k - 1.0) * frac


# ---------------------------------------------------------------- parsing
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '10m', '1.5h', '1h30m', '250ms', '2d'."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"bad duration {text!r} (examples: 90s, 10m, 1h30m)")
    return total


def parse_spec(spec: str) -> Anomaly:
    """An `Anomaly` from ``TYPE@START:DURATION:SERVICE/MODEL[:MAGNITUDE][:KEY=VALUE]...``."""
    kind, at, rest = spec.partition("@")
    if not at:
        raise ValueError(f"bad --inject {spec!r}: expected TYPE@START:DURATION:SERVICE/MODEL[:MAGNITUDE]")
    parts = rest.split(":")
    if len(parts) < 3:
        raise ValueError(f"bad --inject {spec!r}: expected TYPE@START:DURATION:SERVICE/MODEL[:MAGNITUDE]")
    service, slash, model = parts[2].partition("/")
    if not (slash and service and model):
        raise ValueError(f"bad --inject {spec!r}: target must be SERVICE/MODEL")
    fields: dict[str, Any] = {}
    for extra in parts[3:]:
        key, eq, value = extra.partition("=")
        if not eq:
            fields["magnitude"] = float(extra)
        elif key in ("metric", "to", "via"):
            fields[key] = value
        elif key in ("magnitude", "k", "p"):
            fields["magnitude"] = float(value)
        else:
            raise ValueError(f"bad --inject {spec!r}: unknown option {key!r} (metric, to, via, magnitude)")
    if kind.strip() == "cost_spike" and fields.get("via", "model") == "model" and "magnitude" in fields:
        raise ValueError(
            f"bad --inject {spec!r}: cost_spike switches to a pricier model and its magnitude is the price "
            "ratio; choose the model with to=MODEL, or use via=output with a magnitude"
        )
    return Anomaly(
        type=kind.strip(),
        service=service,
        model=model,
        start=parse_duration(parts[0]),
        duration=parse_duration(parts[1]),
        **fields,
    )


def format_spec(a: Anomaly) -> str:
    """Inverse of `parse_spec` (for messages)."""
    out = f"{a.type}@{_fmt_dur(a.start)}:{_fmt_dur(a.duration)}:{a.service}/{a.model}"
    if a.magnitude is not None:
        out += f":{a.magnitude:g}"
    if a.metric:
        out += f":metric={a.metric}"
    if a.to:
        out += f":to={a.to}"
    if a.via != "model":
        out += f":via={a.via}"
    return out


def _fmt_dur(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{int(s // 3600)}h"
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)}m"
    return f"{s:g}s"


# ---------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Target:
    """What the scheduler needs to know about a series."""

    service: str
    model: str
    operation: str
    rate: float  # mean calls/s
    stream_fraction: float


def schedule_all(
    duration_s: float, targets: Sequence[Target], warmup_fraction: float = 0.25
) -> list[Anomaly]:
    """One anomaly of every type inside a run of `duration_s`, after a clean warm-up.

    The short ones (spikes, bursts, drop, model change; 5 % of the run, between 1 and
    20 min, shorter if they would not fit) follow one another without overlapping,
    each on an eligible series, busiest first and rotating. Drift and level_shift get
    the two least busy chat series and run long: the drift over the middle half of the
    time after the warm-up, the level shift from 40 % of that time to the end.
    """
    if not targets:
        raise ValueError("no series to inject into")
    chat = sorted((t for t in targets if t.operation == "chat"), key=lambda t: -t.rate)
    if len(chat) < 3:
        raise ValueError("inject-all needs at least three chat series")
    streaming = [t for t in chat if t.stream_fraction > 0]
    # the two long anomalies take the two least busy chat series with enough traffic to see them
    long_targets = chat[-2:]
    short_pool = [t for t in chat if t not in long_targets]
    all_pool = short_pool + [t for t in sorted(targets, key=lambda t: -t.rate) if t.operation != "chat"]
    warm = duration_s * warmup_fraction
    span = duration_s - warm
    order = (
        "latency_spike",
        "error_burst",
        "traffic_spike",
        "ttft_spike",
        "rate_limit_burst",
        "token_spike",
        "truncation_spike",
        "cost_spike",
        "traffic_drop",
        "model_change",
    )
    gap = span / len(order)
    short = max(1.0, math.floor(min(max(0.05 * duration_s, 60.0), 1200.0, 0.9 * gap)))
    out: list[Anomaly] = []
    for i, kind in enumerate(order):
        if kind == "ttft_spike" and streaming:
            pool = [t for t in streaming if t not in long_targets] or streaming
        elif kind in ("traffic_spike", "traffic_drop", "error_burst", "rate_limit_burst", "model_change"):
            pool = all_pool
        else:
            pool = short_pool
        target = pool[i % len(pool)]  # rotate through the pool
        start = _round_s(warm + i * gap)
        out.append(Anomaly(kind, target.service, target.model, start, short))
    d_target, l_target = long_targets[0], long_targets[1]
    out.append(Anomaly("drift", d_target.service, d_target.model, _round_s(warm + 0.25 * span), 0.5 * span))
    level_start = _round_s(warm + 0.4 * span)
    out.append(
        Anomaly("level_shift", l_target.service, l_target.model, level_start, duration_s - level_start)
    )
    return out


def _round_s(x: float) -> float:
    return float(math.ceil(x))


# ---------------------------------------------------------------- labels
def rfc3339(epoch_s: float) -> str:
    """UTC RFC 3339 with a Z; milliseconds only when the time has them."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=round(epoch_s * 1000))
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond // 1000:03d}"
    return text + "Z"


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp (any offset; Z accepted)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def label(a: Anomaly, run_start_epoch_s: float, run_end_s: float | None = None) -> dict[str, Any]:
    """The labels-file entry of a resolved anomaly (see `model.resolve`).

    Keys: type, service, model (request model), start, end (RFC 3339; the end is
    clipped to the run), magnitude, metric (the quantity that moves) and, for
    model_change / cost_spike via=model, `to` (the response model it switches to).
    """
    end = a.end if run_end_s is None else min(a.end, run_end_s)
    out: dict[str, Any] = {
        "type": a.type,
        "service": a.service,
        "model": a.model,
        "start": rfc3339(run_start_epoch_s + a.start),
        "end": rfc3339(run_start_epoch_s + end),
        "magnitude": a.k,
        "metric": a.effective_metric,
    }
    if a.to is not None and (a.type == "model_change" or a.via == "model"):
        out["to"] = a.to
    return out


def write_labels(
    path: str | Path, anomalies: Iterable[Anomaly], run_start_epoch_s: float, run_end_s: float | None = None
) -> list[dict[str, Any]]:
    """Write the labels file (a JSON list, one object per anomaly, in start order); return it."""
    entries = [label(a, run_start_epoch_s, run_end_s) for a in sorted(anomalies, key=lambda a: a.start)]
    Path(path).write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of anomalies")
    return data
