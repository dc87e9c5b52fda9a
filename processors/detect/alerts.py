"""Alert deduplication and the in-memory alert store behind `GET /api/v1/anomalies`.

Deduplication works in event time, so a replay yields the same alerts: the
same (service, model, type) within `window` seconds of the first occurrence is
one alert whose `count` and `last_seen` grow; it is emitted once, and again
only when its severity escalates. After the window a new alert starts.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from gateway.anomaly import AnomalyEvent, AnomalyType, Severity, rfc3339


@dataclass
class Deduplicator:
    window_ns: int
    max_open: int = 100_000
    _open: OrderedDict[tuple[str, str, str], AnomalyEvent] = field(default_factory=OrderedDict)

    def offer(self, ev: AnomalyEvent) -> AnomalyEvent | None:
        """Fold `ev` into its open alert; return the alert to emit now, or None if suppressed."""
        key = ev.dedup_key
        cur = self._open.get(key)
        if cur is not None and ev.time_ns - cur.first_seen_ns < self.window_ns:
            cur.count += 1
            cur.last_seen_ns = max(cur.last_seen_ns, ev.time_ns)
            for tid in ev.trace_ids:
                if len(cur.trace_ids) < AnomalyEvent.MAX_TRACE_IDS and tid not in cur.trace_ids:
                    cur.trace_ids.append(tid)
            if ev.severity.rank > cur.severity.rank:
                cur.severity = ev.severity
                cur.score, cur.value, cur.baseline = ev.score, ev.value, ev.baseline
                cur.time_ns, cur.detector = ev.time_ns, ev.detector
                return cur.copy()
            cur.score = max(cur.score, ev.score)
            return None
        self._open[key] = ev
        self._open.move_to_end(key)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return ev.copy()

    def current(self, key: tuple[str, str, str]) -> AnomalyEvent | None:
        return self._open.get(key)

    def is_open(self, key: tuple[str, str, str], t_ns: int, extra: float = 1.0) -> bool:
        """An alert for `key` started less than `extra` windows before `t_ns`."""
        cur = self._open.get(key)
        return cur is not None and t_ns - cur.first_seen_ns < extra * self.window_ns


class AlertStore:
    """The newest alerts, bounded; updated in place as deduplicated alerts grow."""

    def __init__(self, registry: CollectorRegistry, max_events: int = 10_000) -> None:
        self._events: deque[AnomalyEvent] = deque(maxlen=max_events)
        self._by_id: dict[str, AnomalyEvent] = {}
        self.counter = Counter(
            "llm_sentinel_anomalies",
            "Alerts emitted by detection (first occurrence and severity escalations).",
            ["type", "severity", "service_name", "gen_ai_request_model"],
            registry=registry,
        )

    def record(self, ev: AnomalyEvent, live: AnomalyEvent | None = None) -> None:
        """Store an emitted alert; `live` is the deduplicator's growing copy, shown by the API."""
        shown = live or ev
        if ev.id in self._by_id:
            self._by_id[ev.id] = shown
        else:
            if len(self._events) == self._events.maxlen:
                self._by_id.pop(self._events[0].id, None)
            self._events.append(shown)
            self._by_id[ev.id] = shown
        self.counter.labels(ev.type.value, ev.severity.value, ev.service, ev.model).inc()

    def query(
        self,
        service: str | None = None,
        model: str | None = None,
        type_: str | None = None,
        severity: str | None = None,
        since_ns: int = 0,
        limit: int = 100,
    ) -> list[AnomalyEvent]:
        min_rank = Severity(severity).rank if severity else 0
        out = []
        for ev in sorted(self._by_id.values(), key=lambda e: (e.last_seen_ns, e.id), reverse=True):
            if service and ev.service != service:
                continue
            if model and ev.model != model:
                continue
            if type_ and ev.type.value != type_:
                continue
            if ev.severity.rank < min_rank:
                continue
            if ev.last_seen_ns < since_ns:
                continue
            out.append(ev)
            if len(out) >= limit:
                break
        return out

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/anomalies", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 10_000:
                raise ValueError("limit must be between 1 and 10000")
            if q.get("type") and q["type"] not in {t.value for t in AnomalyType}:
                raise ValueError(f"unknown type {q['type']!r}")
            if q.get("severity") and q["severity"] not in {s.value for s in Severity}:
                raise ValueError(f"unknown severity {q['severity']!r}; use low, medium, high or critical")
            since_ns = parse_since(q.get("since"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        events = self.query(
            q.get("service"), q.get("model"), q.get("type"), q.get("severity"), since_ns, limit
        )
        body: dict[str, Any] = {"anomalies": [e.to_json() for e in events], "count": len(events)}
        return web.json_response(body)


def parse_since(text: str | None) -> int:
    """`since` as RFC 3339, epoch seconds, or a duration back from now (`15m`, `2h`)."""
    if not text:
        return 0
    from datetime import datetime

    from gateway.component import parse_duration

    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        pass
    try:
        return time.time_ns() - int(parse_duration(text) * 1e9)
    except ValueError:
        raise ValueError(
            f"since: expected RFC 3339, epoch seconds or a duration like 15m, got {text!r}"
        ) from None


__all__ = ["AlertStore", "Deduplicator", "parse_since", "rfc3339"]
