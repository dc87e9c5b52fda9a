"""The genai wire path after extraction, in numba: grouping, cost, sanity rules, metrics.

`annotate` on the reference path does these steps with many small numpy calls per batch
(each a fixed cost, whatever the batch size); here they are two kernels with Python in
between only once per distinct value (a price key to look up, a label set to find a
series for). Each mirrors the numpy code it replaces operation for operation, so the
floats are the same bit for bit:
- `group`: string codes, and the distinct price keys and label sets (label sets in
  the order `metrics.group_rows` sorts them, which decides series creation);
- `account`: `pricing.cost_vectorized`, `validation.apply_rules` and
  `LlmMetrics.observe`, with sums accumulated per batch first as `np.bincount` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

# Rows of the pool-id / code matrix (wire_resolve.STRING_ROWS order).
OPERATION, PROVIDER, REQUEST, RESPONSE, _FINISH, ERROR_TYPE = range(6)
# Rows of the float matrix (wire_resolve.FLOAT_ROWS order).
INPUT, OUTPUT, CACHED, REASONING, SPAN_COST, TTFT = range(6)
# Positions in `rules` and in the returned violation counts.
LATENCY_RULE, TTFT_RULE, TOKEN_RULE, COST_RULE = range(4)


@njit(cache=True, nogil=True)
def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of every row, first row of every group, groups in order of first appearance) of int rows."""
    m, w = keys.shape
    cap = 16
    while cap < 2 * m:
        cap *= 2
    mask = cap - 1
    table = np.full(cap, -1, dtype=np.int64)
    group = np.empty(m, dtype=np.int64)
    first = np.empty(m, dtype=np.int64)
    k = 0
    for i in range(m):
        h = np.uint64(0x9E3779B97F4A7C15)
        for j in range(w):
            h = (h ^ np.uint64(keys[i, j])) * np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(31)
        slot = np.int64(h & np.uint64(mask))
        while True:
            g = table[slot]
            if g < 0:
                table[slot] = k
                first[k] = i
                group[i] = k
                k += 1
                break
            same = True
            for j in range(w):
                if keys[first[g], j] != keys[i, j]:
                    same = False
                    break
            if same:
                group[i] = g
                break
            slot = (slot + 1) & mask
    return group, first[:k]


@njit(cache=True, nogil=True)
def _less(keys: np.ndarray, a: int, b: int) -> bool:
    for j in range(keys.shape[1]):
        if keys[a, j] != keys[b, j]:
            return keys[a, j] < keys[b, j]
    return False


@njit(cache=True, nogil=True)
def group(ids: np.ndarray, llm: np.ndarray, code: np.ndarray, service: np.ndarray) -> tuple[Any, ...]:
    """(string codes [6, n] int32, LLM rows, price key of each LLM row, price keys [k, 3] as codes of
    (provider, response model, request model), label set of each LLM row, label sets [k, 6] as codes
    of metrics.LABELS sorted as rows of codes).

    `code` maps pool ids to the batch's string codes; its last entry (pool id -1) is -1.
    """
    n = llm.shape[0]
    strings = np.empty((ids.shape[0], n), dtype=np.int32)
    n_llm = 0
    for r in range(n):
        for j in range(ids.shape[0]):
            strings[j, r] = code[ids[j, r]]
        if llm[r]:
            n_llm += 1
    rows = np.empty(n_llm, dtype=np.int64)
    price_keys = np.empty((n_llm, 3), dtype=np.int64)
    label_keys = np.empty((n_llm, 6), dtype=np.int64)
    i = 0
    for r in range(n):
        if llm[r]:
            rows[i] = r
            price_keys[i, 0] = strings[PROVIDER, r]
            price_keys[i, 1] = strings[RESPONSE, r]
            price_keys[i, 2] = strings[REQUEST, r]
            label_keys[i, 0] = service[r]
            label_keys[i, 1] = strings[PROVIDER, r]
            label_keys[i, 2] = strings[OPERATION, r]
            label_keys[i, 3] = strings[REQUEST, r]
            label_keys[i, 4] = strings[RESPONSE, r]
            label_keys[i, 5] = strings[ERROR_TYPE, r]
            i += 1
    price_of, price_first = _distinct(price_keys)
    label_of, label_first = _distinct(label_keys)
    # Sort the label sets as rows of codes (insertion sort: a batch has few), renumber the rows.
    k = label_first.shape[0]
    order = np.arange(k)
    for a in range(1, k):
        x = order[a]
        b = a - 1
        while b >= 0 and _less(label_keys, label_first[x], label_first[order[b]]):
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = x
    rank = np.empty(k, dtype=np.int64)
    labels = np.empty((k, 6), dtype=np.int64)
    for a in range(k):
        rank[order[a]] = a
        labels[a] = label_keys[label_first[order[a]]]
    for i in range(n_llm):
        label_of[i] = rank[label_of[i]]
    return strings, rows, price_of, price_keys[price_first], label_of, labels


@njit(cache=True, nogil=True, inline="always")
def _bad(v: float, high: float) -> bool:
    """validation._out_of_range for one value."""
    return not np.isnan(v) and (v < 0 or v > high)


@njit(cache=True, nogil=True, inline="always")
def _bucket(bounds: np.ndarray, v: float) -> int:
    """np.searchsorted(bounds, v, side="left") for a value that is not NaN."""
    lo, hi = 0, bounds.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if bounds[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def account(
    floats: np.ndarray,
    latency: np.ndarray,
    rows: np.ndarray,
    price_of: np.ndarray,
    price_rows: np.ndarray,
    prices: np.ndarray,
    rules: np.ndarray,
    label_of: np.ndarray,
    series_of: np.ndarray,
    overflow: int,
    error: np.ndarray,
    limited: np.ndarray,
    pair_rows: np.ndarray,
    pair_codes: np.ndarray,
    counts: tuple[np.ndarray, ...],
    sums: tuple[np.ndarray, ...],
    bounds: tuple[np.ndarray, ...],
    outcomes: np.ndarray,
    cost_sums: np.ndarray,
) -> tuple[Any, ...]:
    """Cost, rules and metrics of the LLM `rows`; returns (cost_usd, violations per rule, calls folded
    into the overflow series, and the finish-reason counts as (series, code, count) sorted).

    floats: [6, n] FLOAT_ROWS, blanked in place by the rules; latency likewise. prices: [4, P] input,
    output, cached input, reasoning (effective) prices. rules: [enabled, max latency, max tokens,
    max cost]. series_of[label set] is the metrics series; metrics are skipped when it is empty.
    counts/sums/bounds: duration, time to first chunk, input tokens, output tokens histograms.
    """
    n = latency.shape[0]
    cost = np.full(n, np.nan)
    n_prices = prices.shape[1]
    enabled = rules[0] != 0.0
    max_latency, max_tokens, max_cost = rules[1], rules[2], rules[3]
    violations = np.zeros(4, dtype=np.int64)
    for i in range(rows.shape[0]):
        r = rows[i]
        inp, out = floats[INPUT, r], floats[OUTPUT, r]
        p = price_rows[price_of[i]]
        c = np.nan
        if 0 <= p < n_prices and inp >= 0.0 and out >= 0.0:
            cached = floats[CACHED, r]
            cached = cached if cached > 0.0 else 0.0
            cached = cached if cached <= inp else inp
            reasoning = floats[REASONING, r]
            reasoning = reasoning if reasoning > 0.0 else 0.0
            reasoning = reasoning if reasoning <= out else out
            c = (
                (inp - cached) * prices[0, p]
                + cached * prices[2, p]
                + (out - reasoning) * prices[1, p]
                + reasoning * prices[3, p]
            )
        if np.isnan(c):
            c = floats[SPAN_COST, r]
        if enabled:
            lat = latency[r]
            if _bad(lat, max_latency):
                latency[r] = np.nan
                violations[LATENCY_RULE] += 1
            lat = max_latency if np.isnan(latency[r]) else latency[r]
            ttft = floats[TTFT, r]
            if not np.isnan(ttft) and (ttft < 0 or ttft > lat):
                floats[TTFT, r] = np.nan
                violations[TTFT_RULE] += 1
            for j in (INPUT, OUTPUT, CACHED, REASONING):
                if _bad(floats[j, r], max_tokens):
                    floats[j, r] = np.nan
                    violations[TOKEN_RULE] += 1
            if _bad(c, max_cost):
                c = np.nan
                violations[COST_RULE] += 1
        cost[r] = c
    folded = 0
    n_series = series_of.shape[0]
    if n_series == 0 or rows.shape[0] == 0:
        return cost, violations, folded, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # ---- metrics: integer counts straight in, float sums per batch first (np.bincount's order)
    size = outcomes.shape[0]
    local = np.zeros((5, size))
    observed = np.zeros(4, dtype=np.bool_)
    for i in range(rows.shape[0]):
        r = rows[i]
        s = series_of[label_of[i]]
        if s == overflow:
            folded += 1
        for h in range(4):
            if h == 0:
                v = latency[r]
            elif h == 1:
                v = floats[TTFT, r]
            elif h == 2:
                v = floats[INPUT, r]
            else:
                v = floats[OUTPUT, r]
            if not np.isnan(v):
                counts[h][s, _bucket(bounds[h], v)] += 1
                local[h, s] += v
                observed[h] = True
        outcomes[s, 2 if limited[r] else (1 if error[r] else 0)] += 1
        if not np.isnan(cost[r]):
            local[4, s] += cost[r]
    for h in range(4):
        if observed[h]:
            for s in range(size):
                sums[h][s] += local[h, s]
    for s in range(size):
        cost_sums[s] += local[4, s]
    # ---- finish reasons: (series, code) pairs counted, in sorted order
    m = pair_rows.shape[0]
    keys = np.empty(m, dtype=np.int64)
    width = 1
    for e in range(m):
        width = max(width, pair_codes[e] + 1)
    j = 0
    for e in range(m):  # np.searchsorted(rows, pair_rows): both ascending, and every pair is a call's
        while j < rows.shape[0] - 1 and rows[j] < pair_rows[e]:
            j += 1
        keys[e] = series_of[label_of[j]] * width + pair_codes[e]
    keys.sort()
    fin_series = np.empty(m, dtype=np.int64)
    fin_codes = np.empty(m, dtype=np.int64)
    fin_counts = np.zeros(m, dtype=np.int64)
    k = -1
    for e in range(m):
        if e == 0 or keys[e] != keys[e - 1]:
            k += 1
            fin_series[k], fin_codes[k] = keys[e] // width, keys[e] % width
        fin_counts[k] += 1
    return cost, violations, folded, fin_series[: k + 1], fin_codes[: k + 1], fin_counts[: k + 1]
