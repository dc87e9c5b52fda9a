"""Numba kernels for the detector's sequential per-call bookkeeping.

Rate buckets, response-model tables and drift histograms change state call by
call in event-time order (a call in a new bucket closes the previous one; a
model is "new" only relative to the calls before it), so these loops cannot be
vectorised with numpy; as Python loops they cost microseconds per call. Each
kernel takes a whole released chunk plus the per-series state arrays, updates
the state in place and returns only the rare outcomes (closed buckets, model
changes, drift crossings) for Python to turn into events.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def bucket_points(
    bucket: np.ndarray,  # int64[n] bucket index of each call
    series: np.ndarray,  # int64[n]
    flags: np.ndarray,  # bool[n, 3]: error, rate_limited, truncated
    trace_hi: np.ndarray,
    trace_lo: np.ndarray,
    bucket_idx: np.ndarray,  # int64[S] open bucket per series (-1 none)
    bucket_counts: np.ndarray,  # float64[S, 4]: calls, errors (not 429), 429s, truncated
    traces: np.ndarray,  # uint64[S, T, 2] error trace ids of the open bucket
    n_traces: np.ndarray,  # int64[S]
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Count calls into their series' open bucket; returns (late calls, closes...) where each close is
    (series, first bucket, new bucket, counts[4], trace ids[T, 2], trace count) in the order they happen."""
    n = bucket.shape[0]
    cap_t = traces.shape[1]
    close_s = np.empty(n, dtype=np.int64)
    close_first = np.empty(n, dtype=np.int64)
    close_new = np.empty(n, dtype=np.int64)
    close_counts = np.empty((n, 4), dtype=np.float64)
    close_traces = np.empty((n, cap_t, 2), dtype=np.uint64)
    close_nt = np.empty(n, dtype=np.int64)
    k = 0
    late = 0
    for i in range(n):
        s = series[i]
        b = bucket[i]
        if bucket_idx[s] < 0:
            bucket_idx[s] = b
        elif b > bucket_idx[s]:
            close_s[k] = s
            close_first[k] = bucket_idx[s]
            close_new[k] = b
            close_counts[k] = bucket_counts[s]
            close_traces[k] = traces[s]
            close_nt[k] = n_traces[s]
            k += 1
            bucket_counts[s] = 0.0
            n_traces[s] = 0
            bucket_idx[s] = b
        elif b < bucket_idx[s]:
            late += 1  # its bucket is closed: counting it now would fake a spike
            continue
        bucket_counts[s, 0] += 1.0
        # an error burst means errors other than rate limiting, which has its own alert
        if flags[i, 0] and not flags[i, 1]:
            bucket_counts[s, 1] += 1.0
            t = n_traces[s]
            if t < cap_t:
                traces[s, t, 0] = trace_hi[i]
                traces[s, t, 1] = trace_lo[i]
                n_traces[s] = t + 1
        if flags[i, 1]:
            bucket_counts[s, 2] += 1.0
        if flags[i, 2]:
            bucket_counts[s, 3] += 1.0
    return (
        late,
        close_s[:k],
        close_first[:k],
        close_new[:k],
        close_counts[:k],
        close_traces[:k],
        close_nt[:k],
    )


@njit(cache=True, nogil=True)
def model_changes(
    series: np.ndarray,  # int64[n]
    model: np.ndarray,  # int64[n] detector-wide model id, -1 unknown
    seen: np.ndarray,  # int64[S, M] model ids per series, in first-seen order
    seen_counts: np.ndarray,  # int64[S, M]
    n_seen: np.ndarray,  # int64[S]
    need: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose response model is new for an established series, and the series' usual model then."""
    n = series.shape[0]
    cap = seen.shape[1]
    rows = np.empty(n, dtype=np.int64)
    usual = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(n):
        m = model[i]
        if m < 0:
            continue
        s = series[i]
        ns = n_seen[s]
        j = -1
        total = 0
        best = 0
        for q in range(ns):
            total += seen_counts[s, q]
            if seen[s, q] == m:
                j = q
            if seen_counts[s, q] > seen_counts[s, best]:
                best = q
        if j < 0 and ns > 0 and total >= need:
            rows[k] = i
            usual[k] = seen[s, best]
            k += 1
        if j < 0 and ns < cap:
            j = ns
            seen[s, j] = m
            n_seen[s] = ns + 1
        if j >= 0:
            seen_counts[s, j] += 1
    return rows[:k], usual[:k]


@njit(cache=True, nogil=True)
def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    eps = 1e-4
    rs = 0.0
    cs = 0.0
    for b in range(ref.shape[0]):
        rs += ref[b]
        cs += cur[b]
    rs = max(rs, 1.0)
    cs = max(cs, 1.0)
    out = 0.0
    for b in range(ref.shape[0]):
        p = ref[b] / rs + eps
        q = cur[b] / cs + eps
        out += (q - p) * math.log(q / p)
    return out


@njit(cache=True, nogil=True)
def _hist_mean(h: np.ndarray, centers: np.ndarray) -> float:
    total = 0.0
    acc = 0.0
    for b in range(h.shape[0]):
        total += h[b]
        acc += h[b] * centers[b]
    return acc / total if total else math.nan


@njit(cache=True, nogil=True)
def drift_update(
    series: np.ndarray,  # int64[n]
    bins: np.ndarray,  # int64[n] histogram bin of each call's value
    use: np.ndarray,  # bool[n] value is finite and not an alerted spike
    j: int,  # which drift metric
    ref_hist: np.ndarray,  # float64[S, J, B]
    recent_hist: np.ndarray,
    ref_n: np.ndarray,  # float64[S, J]
    recent_n: np.ndarray,
    alarmed: np.ndarray,  # bool[S, J]
    reference_points: float,
    decay: float,
    min_recent: float,
    psi_threshold: float,
    centers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference then exponentially decayed recent histograms per series; every 50 recent calls the
    PSI between them is checked. Returns (row, psi, reference mean, recent mean) of each new alarm."""
    n = series.shape[0]
    rows = np.empty(n, dtype=np.int64)
    psis = np.empty(n)
    ref_mean = np.empty(n)
    cur_mean = np.empty(n)
    k = 0
    for i in range(n):
        if not use[i]:
            continue
        s = series[i]
        if ref_n[s, j] < reference_points:
            ref_hist[s, j, bins[i]] += 1.0
            ref_n[s, j] += 1.0
            continue
        for b in range(recent_hist.shape[2]):
            recent_hist[s, j, b] *= decay
        recent_hist[s, j, bins[i]] += 1.0
        recent_n[s, j] += 1.0
        if recent_n[s, j] < min_recent or recent_n[s, j] % 50.0 != 0.0:
            continue
        psi = _psi(ref_hist[s, j], recent_hist[s, j])
        if psi >= psi_threshold and not alarmed[s, j]:
            alarmed[s, j] = True
            rows[k] = i
            psis[k] = psi
            ref_mean[k] = _hist_mean(ref_hist[s, j], centers)
            cur_mean[k] = _hist_mean(recent_hist[s, j], centers)
            k += 1
        elif psi < psi_threshold / 2:
            alarmed[s, j] = False
    return rows[:k], psis[:k], ref_mean[:k], cur_mean[:k]


@njit(cache=True, nogil=True)
def value_points(
    series: np.ndarray,  # int64[n]
    tvals: np.ndarray,  # float64[n, K] transformed values, one column per metric
    error: np.ndarray,  # bool[n]
    t_ns: np.ndarray,  # int64[n]
    seen: np.ndarray,  # float64[R] points each stream row had before this batch
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The points the ensemble scores, call-major and metric-minor (event-time order within each
    stream): finite values of calls without an error. Returns (row, value, time s, call, position in
    its stream counted from 1); one pass instead of a dozen numpy temporaries and a sort for ranks."""
    n, k = tvals.shape
    rows = np.empty(n * k, dtype=np.int64)
    vals = np.empty(n * k)
    ts = np.empty(n * k)
    point = np.empty(n * k, dtype=np.int64)
    position = np.empty(n * k)
    taken = np.zeros(seen.shape[0], dtype=np.int64)
    m = 0
    for i in range(n):
        if error[i]:
            continue
        t = t_ns[i] / 1e9
        for j in range(k):
            x = tvals[i, j]
            if not math.isfinite(x):
                continue
            r = series[i] * k + j
            taken[r] += 1
            rows[m] = r
            vals[m] = x
            ts[m] = t
            point[m] = i
            position[m] = seen[r] + taken[r]
            m += 1
    return rows[:m], vals[:m], ts[:m], point[:m], position[:m]


def warm_up() -> float:
    """Compile (or load from numba's cache) these kernels with the types the detector passes."""
    t0 = time.perf_counter()
    n = 2
    i64 = np.zeros(n, dtype=np.int64)
    u64 = np.zeros(n, dtype=np.uint64)
    bucket_points(
        i64,
        i64,
        np.zeros((n, 3), dtype=np.bool_),
        u64,
        u64,
        np.full(1, -1, dtype=np.int64),
        np.zeros((1, 4)),
        np.zeros((1, 4, 2), dtype=np.uint64),
        np.zeros(1, dtype=np.int64),
    )
    model_changes(i64, i64, np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64), np.zeros(1, np.int64), 20)
    drift_update(
        i64,
        i64,
        np.ones(n, dtype=np.bool_),
        0,
        np.zeros((1, 2, 34)),
        np.zeros((1, 2, 34)),
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        np.zeros((1, 2), dtype=np.bool_),
        500.0,
        0.99,
        500.0,
        0.25,
        np.zeros(34),
    )
    value_points(i64, np.zeros((n, 5)), np.zeros(n, dtype=np.bool_), i64, np.zeros(5))
    return time.perf_counter() - t0
