"""LLM metrics with GenAI semconv names, aggregated in numpy and exposed on /metrics.

Aggregation is vectorised per batch (bincount into per-series bucket arrays);
a prometheus-client custom collector renders it at scrape time. The number of
label sets is capped: past the cap, new series fold into one overflow series
and the overflow is counted, so a bad label (e.g. a model name with a request
id in it) cannot blow up memory or the TSDB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# GenAI semconv explicit bucket boundaries.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
TTFC_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

LABELS = (
    "service_name",
    "gen_ai_provider_name",
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "error_type",
)
OVERFLOW = "__overflow__"
OUTCOMES = ("ok", "error", "rate_limited")


def group_rows(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct combination, group of every row) over integer code columns (>= -1).

    What np.unique(axis=0) gives up to the order of the groups, but the codes are packed into one
    int64 key per row (re-numbered densely whenever the next column would overflow it), and a 1-D
    unique sorts far faster than rows.
    """
    key = np.zeros(columns[0].shape[0], dtype=np.int64)
    span = 1
    for col in columns:
        col = col.astype(np.int64) + 1
        width = int(col.max()) + 1 if col.shape[0] else 1
        if span * width >= 1 << 62:
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1).astype(np.int64)
            span = int(key.max()) + 1
        key = key * width + col
        span *= width
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def _add(target: np.ndarray, index: np.ndarray, weights: np.ndarray | None = None) -> None:
    """target.flat[index] += weights (or 1), for repeated indices: bincount, not the slow np.add.at."""
    target += np.bincount(index, weights, minlength=target.size).reshape(target.shape).astype(target.dtype)


class _Hist:
    """Per-series histogram state over fixed bounds."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros((0, len(bounds) + 1), dtype=np.int64)
        self.sums = np.zeros(0, dtype=np.float64)

    def grow(self, n: int) -> None:
        if n > self.counts.shape[0]:
            extra = n - self.counts.shape[0]
            self.counts = np.vstack([self.counts, np.zeros((extra, self.counts.shape[1]), np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros(extra)])

    def observe(self, series: np.ndarray, values: np.ndarray) -> None:
        ok = ~np.isnan(values)
        if not ok.any():
            return
        s, v = series[ok], values[ok]
        bucket = np.searchsorted(self.bounds, v, side="left")  # first bound >= value, i.e. `le`
        _add(self.counts, s * self.counts.shape[1] + bucket)
        _add(self.sums, s, v)

    def family_samples(self, k: int) -> tuple[list[tuple[str, float]], float]:
        cum = np.cumsum(self.counts[k])
        buckets = [(_fmt(b), float(c)) for b, c in zip(self.bounds.tolist(), cum[:-1].tolist(), strict=True)]
        buckets.append(("+Inf", float(cum[-1])))
        return buckets, float(self.sums[k])


def _fmt(b: float) -> str:
    return str(int(b)) + ".0" if float(b).is_integer() else repr(float(b))


@dataclass(eq=False)
class LlmMetrics(Collector):
    max_series: int = 1000
    series: dict[tuple[str, ...], int] = field(default_factory=dict)
    keys: list[tuple[str, ...]] = field(default_factory=list)
    overflowed: int = 0

    def __post_init__(self) -> None:
        self.duration = _Hist(DURATION_BUCKETS)
        self.ttfc = _Hist(TTFC_BUCKETS)
        self.tokens_in = _Hist(tuple(float(b) for b in TOKEN_BUCKETS))
        self.tokens_out = _Hist(tuple(float(b) for b in TOKEN_BUCKETS))
        self.outcomes = np.zeros((0, len(OUTCOMES)), dtype=np.int64)
        self.cost = np.zeros(0, dtype=np.float64)
        self.finish: dict[tuple[int, str], int] = {}
        self.invalid: dict[str, int] = {}

    # ---------------------------------------------------------------- update
    def series_index(self, key: tuple[str, ...]) -> int:
        idx = self.series.get(key)
        if idx is not None:
            return idx
        if len(self.keys) >= self.max_series:
            key = (OVERFLOW,) * len(LABELS)
            idx = self.series.get(key)
            if idx is not None:
                return idx
        idx = len(self.keys)
        self.series[key] = idx
        self.keys.append(key)
        n = len(self.keys)
        for h in (self.duration, self.ttfc, self.tokens_in, self.tokens_out):
            h.grow(n)
        if n > self.outcomes.shape[0]:
            self.outcomes = np.vstack([self.outcomes, np.zeros((1, len(OUTCOMES)), np.int64)])
            self.cost = np.concatenate([self.cost, np.zeros(1)])
        return idx

    def observe(
        self,
        label_rows: np.ndarray,
        label_values: list[tuple[str, ...]],
        *,
        latency_s: np.ndarray,
        ttft_s: np.ndarray,
        input_tokens: np.ndarray,
        output_tokens: np.ndarray,
        cost_usd: np.ndarray,
        outcome: np.ndarray,
        finish_calls: np.ndarray,
        finish_codes: np.ndarray,
        finish_values: Sequence[str],
    ) -> None:
        """`label_rows[i]` indexes `label_values` (unique label tuples of this batch) for call i.

        Finish reasons come as pairs: call `finish_calls[j]` ended with `finish_values[finish_codes[j]]`.
        """
        mapping = np.array([self.series_index(k) for k in label_values], dtype=np.int64)
        s = mapping[label_rows]
        overflow_idx = self.series.get((OVERFLOW,) * len(LABELS))
        if overflow_idx is not None:
            self.overflowed += int((s == overflow_idx).sum())
        self.duration.observe(s, latency_s)
        self.ttfc.observe(s, ttft_s)
        self.tokens_in.observe(s, input_tokens)
        self.tokens_out.observe(s, output_tokens)
        _add(self.outcomes, s * self.outcomes.shape[1] + outcome)
        ok = ~np.isnan(cost_usd)
        _add(self.cost, s[ok], cost_usd[ok])
        if finish_calls.shape[0]:
            series, codes = s[finish_calls], np.asarray(finish_codes, dtype=np.int64)
            first, group = group_rows([series, codes])
            counts = np.bincount(group)
            for si, code, n in zip(
                series[first].tolist(), codes[first].tolist(), counts.tolist(), strict=True
            ):
                key = (si, finish_values[code])
                self.finish[key] = self.finish.get(key, 0) + n

    def count_invalid(self, rule: str, n: int) -> None:
        if n:
            self.invalid[rule] = self.invalid.get(rule, 0) + n

    # ---------------------------------------------------------------- exposition
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        hists = (
            ("gen_ai_client_operation_duration_seconds", "GenAI operation duration.", self.duration, None),
            (
                "gen_ai_client_operation_time_to_first_chunk_seconds",
                "Time to receive the first chunk of a streamed response.",
                self.ttfc,
                None,
            ),
        )
        for name, doc, hist, _ in hists:
            fam = HistogramMetricFamily(name, doc, labels=LABELS)
            for k, key in enumerate(self.keys):
                if hist.counts[k].sum():
                    buckets, total = hist.family_samples(k)
                    fam.add_metric(list(key), buckets, total)
            yield fam
        tok = HistogramMetricFamily(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used.",
            labels=(*LABELS, "gen_ai_token_type"),
        )
        for k, key in enumerate(self.keys):
            for ttype, hist in (("input", self.tokens_in), ("output", self.tokens_out)):
                if hist.counts[k].sum():
                    buckets, total = hist.family_samples(k)
                    tok.add_metric([*key, ttype], buckets, total)
        yield tok
        req = CounterMetricFamily(
            "llm_sentinel_requests", "LLM calls by outcome.", labels=(*LABELS, "outcome")
        )
        cost = CounterMetricFamily(
            "llm_sentinel_cost_usd", "Estimated LLM spend in US dollars.", labels=LABELS
        )
        for k, key in enumerate(self.keys):
            for o, outcome in enumerate(OUTCOMES):
                if self.outcomes[k, o]:
                    req.add_metric([*key, outcome], float(self.outcomes[k, o]))
            if self.cost[k]:
                cost.add_metric(list(key), float(self.cost[k]))
        yield req
        yield cost
        fin = CounterMetricFamily(
            "llm_sentinel_finish_reasons",
            "Finish reasons of LLM responses.",
            labels=(*LABELS, "finish_reason"),
        )
        for (k, reason), n in sorted(self.finish.items()):
            fin.add_metric([*self.keys[k], reason], float(n))
        yield fin
        inv = CounterMetricFamily(
            "llm_sentinel_invalid_values",
            "Values outside the sanity rules, excluded from metrics and detection.",
            labels=("rule",),
        )
        for rule, n in sorted(self.invalid.items()):
            inv.add_metric([rule], float(n))
        yield inv
        ovf = CounterMetricFamily(
            "llm_sentinel_metric_series_overflow",
            "LLM calls folded into the overflow series because the series cap was reached.",
        )
        ovf.add_metric([], float(self.overflowed))
        yield ovf
