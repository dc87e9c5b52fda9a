"""Anomaly events: the payload of the `anomalies` signal.

An anomaly is produced by detection (in event time), deduplicated into alerts,
and carried to alert exporters as an `AnomalyBatch`. The JSON shape is a public
contract: fields may be added, never renamed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import orjson

from gateway.batch import Signal


class AnomalyType(StrEnum):
    LATENCY_SPIKE = "latency_spike"
    TTFT_SPIKE = "ttft_spike"
    TOKEN_SPIKE = "token_spike"
    COST_SPIKE = "cost_spike"
    ERROR_BURST = "error_burst"
    RATE_LIMIT_BURST = "rate_limit_burst"
    TRUNCATION_SPIKE = "truncation_spike"
    TRAFFIC_SPIKE = "traffic_spike"
    TRAFFIC_DROP = "traffic_drop"
    MODEL_CHANGE = "model_change"
    DRIFT = "drift"
    LEVEL_SHIFT = "level_shift"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    @classmethod
    def from_score(cls, score: float, bounds: tuple[float, float, float] = (0.7, 0.8, 0.9)) -> Severity:
        """Severity from a detector score in [0, 1): `bounds` are where medium, high and critical start.

        The defaults sit at about 1.4x, 2.1x and 7x the alarm statistic (scores are 0.5 at 1x).
        """
        if score >= bounds[2]:
            return cls.CRITICAL
        if score >= bounds[1]:
            return cls.HIGH
        if score >= bounds[0]:
            return cls.MEDIUM
        return cls.LOW


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class AnomalyEvent:
    """One (possibly deduplicated) anomaly. Times are nanoseconds since the epoch."""

    time_ns: int  # event time of the point that triggered it
    service: str
    provider: str
    operation: str
    model: str
    metric: str
    type: AnomalyType
    severity: Severity
    value: float
    baseline: float
    score: float
    detector: str
    detected_at_ns: int = 0  # wall clock when emitted
    count: int = 1
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    trace_ids: list[str] = field(default_factory=list)
    id: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    MAX_TRACE_IDS: ClassVar[int] = 10

    def __post_init__(self) -> None:
        # plain Python numbers: values often come out of numpy arrays, and JSON needs the builtins
        self.value, self.baseline, self.score = float(self.value), float(self.baseline), float(self.score)
        self.time_ns = int(self.time_ns)
        if not self.first_seen_ns:
            self.first_seen_ns = self.time_ns
        if not self.last_seen_ns:
            self.last_seen_ns = self.time_ns
        if not self.id:
            self.id = self.make_id()

    def make_id(self) -> str:
        """Stable across replays: derived from what fired and when (event time), not from wall time."""
        key = f"{self.service}|{self.provider}|{self.operation}|{self.model}|{self.type}|{self.first_seen_ns}"
        return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()

    @property
    def dedup_key(self) -> tuple[str, str, str]:
        return (self.service, self.model, self.type.value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "time": rfc3339(self.time_ns),
            "detected_at": rfc3339(self.detected_at_ns) if self.detected_at_ns else None,
            "service": self.service,
            "provider": self.provider,
            "operation": self.operation,
            "model": self.model,
            "metric": self.metric,
            "type": self.type.value,
            "severity": self.severity.value,
            "value": _finite(self.value),
            "baseline": _finite(self.baseline),
            "score": round(self.score, 6),
            "detector": self.detector,
            "count": self.count,
            "first_seen": rfc3339(self.first_seen_ns),
            "last_seen": rfc3339(self.last_seen_ns),
            "trace_ids": list(self.trace_ids),
        }
        if self.details:
            out["details"] = self.details
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AnomalyEvent:
        """The inverse of `to_json` (times at its microsecond precision; null value/baseline -> NaN).

        `from_json(e.to_json()).to_json() == e.to_json()`: what exporters write is unchanged.
        """
        nan = float("nan")
        return cls(
            time_ns=parse_rfc3339(obj["time"]),
            service=obj["service"],
            provider=obj["provider"],
            operation=obj["operation"],
            model=obj["model"],
            metric=obj["metric"],
            type=AnomalyType(obj["type"]),
            severity=Severity(obj["severity"]),
            value=nan if obj.get("value") is None else float(obj["value"]),
            baseline=nan if obj.get("baseline") is None else float(obj["baseline"]),
            score=float(obj["score"]),
            detector=obj["detector"],
            detected_at_ns=parse_rfc3339(obj["detected_at"]) if obj.get("detected_at") else 0,
            count=int(obj.get("count", 1)),
            first_seen_ns=parse_rfc3339(obj["first_seen"]) if obj.get("first_seen") else 0,
            last_seen_ns=parse_rfc3339(obj["last_seen"]) if obj.get("last_seen") else 0,
            trace_ids=list(obj.get("trace_ids") or []),
            id=obj.get("id") or "",
            details=dict(obj.get("details") or {}),
        )

    def copy(self) -> AnomalyEvent:
        d = asdict(self)
        d["type"], d["severity"] = self.type, self.severity
        return AnomalyEvent(**d)


def _finite(v: float) -> float | None:
    return None if v != v or v in (float("inf"), float("-inf")) else v


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time as `rfc3339` writes it (exact, no float)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


@dataclass
class AnomalyBatch:
    """Alerts travelling on the `anomalies` signal; quacks like a Batch for queues and exporters."""

    events: list[AnomalyEvent]
    _nbytes: int | None = None

    signal: ClassVar[Signal] = Signal.ANOMALIES

    def __len__(self) -> int:
        return len(self.events)

    @property
    def item_count(self) -> int:
        return len(self.events)

    @property
    def nbytes(self) -> int:
        if self._nbytes is None:
            self._nbytes = sum(len(e.to_bytes()) + 1 for e in self.events)
        return self._nbytes

    def serialize(self) -> bytes:
        """JSON lines, one alert per line."""
        return b"".join(e.to_bytes() + b"\n" for e in self.events)

    @classmethod
    def from_bytes(cls, data: bytes) -> AnomalyBatch:
        """The inverse of `serialize` (JSON lines), e.g. to restore a batch from a persistent queue."""
        return cls([AnomalyEvent.from_json(orjson.loads(line)) for line in data.splitlines() if line.strip()])

    def copy(self) -> AnomalyBatch:
        return AnomalyBatch([e.copy() for e in self.events])
