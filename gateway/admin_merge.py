"""The supervisor's admin answers, merged from its workers' (`sentinel run --workers N`).

`/metrics`: one exposition in which

* counters, histograms and summaries with identical labels are **summed** over
  workers. Merged totals never go backwards: a worker that is down (being
  restarted) keeps contributing its last scraped values, and when a new
  process takes its place those values are carried into the total, so
  `rate()` sees a steady counter rather than a reset. The `_created` series are
  left out (they would differ per worker).
* gauges that measure an amount are summed: sending-queue size, capacity and
  bytes on disk, and process RSS and CPU seconds (the whole gateway's
  footprint, supervisor included). `otelcol_process_uptime` is the
  supervisor's. Any other gauge is shown per worker with a `worker` label.

`/api/v1/anomalies`: every worker answers the same query about the series it
owns (a series' alerts live on one worker only); the lists are joined, sorted
newest first as one process sorts them, and cut to `limit`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SUMMED_GAUGES = frozenset(
    {
        "otelcol_exporter_queue_size",
        "otelcol_exporter_queue_capacity",
        "llm_sentinel_exporter_queue_storage_bytes",
        "otelcol_process_memory_rss",
        "otelcol_process_cpu_seconds",
    }
)
SUPERVISOR_GAUGES = frozenset({"otelcol_process_uptime"})
CUMULATIVE_TYPES = frozenset({"counter", "histogram", "summary"})
WORKER_LABEL = "worker"

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, str, Labels]  # family, sample name, labels


class MetricsMerger:
    """Merges scrapes of the workers; remembers what keeps merged counters monotonic."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._last: dict[int, tuple[int, dict[SampleKey, float]]] = {}  # worker -> (pid, cumulative)
        self._carried: dict[int, dict[SampleKey, float]] = {}  # worker -> totals of earlier processes

    def merge(self, scrapes: dict[int, tuple[int, str | None]], own: Iterable[Metric] = ()) -> list[Metric]:
        """`scrapes`: worker → (pid, /metrics text, or None when it did not answer); `own`: the
        supervisor's metrics, whose gauges named in SUMMED_GAUGES / SUPERVISOR_GAUGES join the merge."""
        sums: dict[SampleKey, float] = {}
        for worker, (pid, text) in sorted(scrapes.items()):
            if text is None:
                last = self._last.get(worker)
                if last is not None:
                    _add(sums, last[1])
            else:
                cumulative = self._scrape(worker, pid, text, sums)
                _add(sums, cumulative)
            _add(sums, self._carried.get(worker, {}))
        extra: list[Metric] = []
        for m in own:
            if m.type == "gauge" and m.name in SUMMED_GAUGES | SUPERVISOR_GAUGES:
                self._families.setdefault(m.name, (m.type, m.documentation))
                for s in m.samples:
                    key = (m.name, s.name, _labels(s.labels))
                    sums[key] = (sums.get(key, 0.0) if m.name in SUMMED_GAUGES else 0.0) + s.value
            else:
                m.samples = [s for s in m.samples if not s.name.endswith("_created")]
                extra.append(m)
        return self._render(sums) + extra

    def _scrape(
        self, worker: int, pid: int, text: str, sums: dict[SampleKey, float]
    ) -> dict[SampleKey, float]:
        cumulative: dict[SampleKey, float] = {}
        for fam in text_string_to_metric_families(text):
            self._families.setdefault(fam.name, (fam.type, fam.documentation))
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                if fam.type in CUMULATIVE_TYPES:
                    cumulative[(fam.name, s.name, _labels(s.labels))] = s.value
                elif fam.name in SUMMED_GAUGES:
                    key = (fam.name, s.name, _labels(s.labels))
                    sums[key] = sums.get(key, 0.0) + s.value
                elif fam.name not in SUPERVISOR_GAUGES:
                    labels = _labels({**s.labels, WORKER_LABEL: str(worker)})
                    sums[(fam.name, s.name, labels)] = s.value
        last = self._last.get(worker)
        if last is not None and last[0] != pid:  # a new process: keep what the old one had counted
            _add(self._carried.setdefault(worker, {}), last[1])
        self._last[worker] = (pid, cumulative)
        return cumulative

    def _render(self, sums: dict[SampleKey, float]) -> list[Metric]:
        by_family: dict[str, list[tuple[str, Labels, float]]] = {}
        for (fam, name, labels), value in sums.items():
            by_family.setdefault(fam, []).append((name, labels, value))
        out = []
        for fam in sorted(by_family):
            typ, doc = self._families.get(fam, ("untyped", ""))
            m = Metric(fam, doc, typ)
            for name, labels, value in sorted(by_family[fam], key=_sample_order):
                m.add_sample(name, dict(labels), value)
            out.append(m)
        return out


class Exposition(Collector):
    """Ready-made metric families, for `prometheus_client.generate_latest`."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _add(into: dict[SampleKey, float], values: dict[SampleKey, float]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + v


def _sample_order(sample: tuple[str, Labels, float]) -> tuple[Labels, int, str, float]:
    """Histogram samples grouped per label set, buckets by `le`, then count and sum."""
    name, labels, _ = sample
    le = dict(labels).get("le")
    rest = tuple(kv for kv in labels if kv[0] != "le")
    rank = 0 if name.endswith("_bucket") else 1
    return rest, rank, name, float(le) if le is not None else 0.0


def merge_anomalies(answers: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """Join the workers' `/api/v1/anomalies` answers to the same query."""
    events = [e for a in answers for e in a.get("anomalies", [])]
    events.sort(key=lambda e: (e.get("last_seen") or "", e.get("id") or ""), reverse=True)
    events = events[:limit]
    body: dict[str, Any] = {"anomalies": events, "count": len(events)}
    if answers and all(a.get("detection") == "not configured" for a in answers):
        body["detection"] = "not configured"
    return body
