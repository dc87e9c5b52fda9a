"""Batch numba kernels of the streaming anomaly detectors.

Layout. All per-series state lives in numpy arrays with one row per series and fixed columns, so a
processor keeps thousands of series in a few contiguous blocks and grows them by reallocating:

* ``state: float64[n_series, <DETECTOR>_WIDTH]`` per detector (counters are stored as floats), and
* where a detector needs recent values, a buffer row per series: for the median/MAD/quantile
  detectors ``win: float64[n_series, 2·w]`` (columns ``[0, w)`` a ring in arrival order, ``[w, 2w)``
  the same values kept sorted), for the range detector a ring of block extremes.

All arrays start as zeros (a zero row is a fresh series). A batch kernel processes a whole batch in
one call, ``<detector>_update(series_idx int64[m], values float64[m], state..., params...)`` and
returns ``(score float64[m], direction int8[m])``: the score in [0, 1) and the direction (+1 the
value is above what the detector expects, −1 below, 0 no opinion). Points are taken in arrival order
and each one updates only its own series' row, so a batch of interleaved series gives exactly the
result of one batch per series. A NaN (or ±inf) value scores NaN with direction 0 and leaves the
state untouched — one bad sample must not poison a series' statistics for good.

Scores. Every detector computes a signed statistic ``u`` in *alarm units*: ``|u| = 1`` is the
detector's classical alarm level (k robust σ, Tukey's fence, the CUSUM decision interval h, a new
extreme of the recent range, ...). :func:`squash` maps ``|u|`` to the score: strictly increasing, 0 at
0, exactly 0.5 at the alarm level, steep just above it (``u = 1.05`` → 0.54, ``u = 2`` → 0.79) and
logarithmic beyond, so it never reaches 1.0 in float64 for any finite statistic — strong anomalies keep
their ranking instead of tying at 1.0. During its warm-up (the first ``warmup`` values of a series) a
detector learns but scores 0.

Spread floor. Dispersion estimates (EWM standard deviation, MAD, IQR, range span) are floored at
``max(rel_floor·|level|, abs_floor)`` where ``level`` is the detector's estimate of the series' level
(mean or median): on a flat stretch a wiggle must be large relative to the series' own magnitude
before it counts, instead of producing an infinite z-score. (The range detector also floors its span
at a multiple of the long-run mean absolute deviation.) For a series that sits at exactly 0, only
``abs_floor`` is left: set it to the smallest change that matters in the metric's unit.

The ``*_stat`` / ``*_step`` functions hold each detector's arithmetic for one value; the batch kernels
and :func:`ensemble_kernel` (at the end of this module, wrapped by ``processors.detect.ensemble``)
call them in their loops.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Columns of the per-detector state rows.
EWMA_WIDTH = 3  # count, mean, var
WINDOW_WIDTH = 2  # count, ring head (robust z, IQR, Hampel: the values live in the `win` buffer)
CUSUM_WIDTH = 5  # count, mean, var, s_pos, s_neg
RANGE_WIDTH = 11  # count, centre, lr_mean, lr_dev, blk_max, blk_min, n_in_block, block, hi, lo, n_blocks

MAD_TO_SIGMA = 1.4826
SQUASH_POWER = 4.0


@njit(cache=True, nogil=True)
def squash(u):  # pragma: no cover - compiled
    """Score of a statistic ``u >= 0`` in alarm units: ``v/(1+v)`` with ``v = u⁴`` below the alarm
    level and ``v = 1 + 4·ln u`` above it (continuous with continuous slope at ``u = 1``)."""
    if not u > 0.0:
        return 0.0
    if u <= 1.0:
        v = u * u
        v = v * v
    else:
        v = 1.0 + SQUASH_POWER * math.log(u)
    return v / (1.0 + v)


@njit(cache=True, nogil=True)
def spread_floor(level, rel_floor, abs_floor):  # pragma: no cover - compiled
    f = rel_floor * abs(level)
    return f if f > abs_floor else abs_floor


@njit(cache=True, nogil=True)
def _sign(u):  # pragma: no cover - compiled
    if u > 0.0:
        return 1
    if u < 0.0:
        return -1
    return 0


# ------------------------------------------------------------------------------------------ EWMA


@njit(cache=True, nogil=True)
def ewma_step(row, x, alpha, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover - compiled
    """One value of the EWMA/EWMV z-score detector; returns the signed statistic in alarm units."""
    n = row[0]
    mean = row[1]
    var = row[2]
    u = 0.0
    if n == 0.0:
        row[1] = x
        row[2] = 0.0
    else:
        sd = math.sqrt(var)
        fl = spread_floor(mean, rel_floor, abs_floor)
        if sd < fl:
            sd = fl
        if n >= warmup:
            u = (x - mean) / sd / k_alarm
        d = x - mean
        a = 1.0 / (n + 1.0)  # plain running mean/variance until 1/(n+1) drops below alpha
        if a < alpha:
            a = alpha
        row[1] = mean + a * d
        row[2] = (1.0 - a) * (var + a * d * d)
    row[0] = n + 1.0
    return u


@njit(cache=True, nogil=True)
def ewma_update(series_idx, values, state, alpha, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover
    """EWMA/EWMV z-score.

    Catches: values far from an exponentially weighted mean in units of the exponentially weighted
    standard deviation — spikes, dips and the first values of a level shift; follows slow drift.
    Statistic: ``(x − mean) / max(sd, floor) / k_alarm`` with mean and variance taken *before* the
    value is absorbed (``d = x − mean; mean += a·d; var = (1 − a)(var + a·d²)`` with
    ``a = max(α, 1/(n+1))``: the plain running mean/variance at first, so the early σ is not biased
    low, then the exponential forgetting of ``α``).
    Parameters: ``alpha`` smoothing (≈ 2/(span + 1)); ``k_alarm`` the z at score 0.5 (e.g. 4);
    ``rel_floor``/``abs_floor`` the floor on sd. Warm-up: ``warmup`` values (the first value only
    initialises the mean). State: ``float64[n_series, EWMA_WIDTH]`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        u = ewma_step(state[series_idx[i]], x, alpha, warmup, k_alarm, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ------------------------------------------------------------------------------- sorted ring window


@njit(cache=True, nogil=True)
def _lower_bound(buf, lo, hi, x):  # pragma: no cover - compiled
    """First index of the sorted ``buf[lo:hi]`` whose value is not below ``x``, i.e. ``lo`` + how many
    are below. Counting is branch-free and vectorises (zero-based loop over a slice, so no negative-
    index wrap-around check); at window sizes it beats a binary search and its mispredicted branches."""
    seg = buf[lo:hi]
    below = 0
    for j in range(seg.shape[0]):
        below += seg[j] < x
    return lo + below


@njit(cache=True, nogil=True)
def _shift_down(seg):  # pragma: no cover - compiled
    """``seg[j] = seg[j + 1]`` for every j but the last (a memmove one place towards the front)."""
    for j in range(seg.shape[0] - 1):
        seg[j] = seg[j + 1]


@njit(cache=True, nogil=True)
def _shift_up(seg):  # pragma: no cover - compiled
    """``seg[j] = seg[j - 1]`` for every j but the first, from the back (a memmove one place back)."""
    for j in range(seg.shape[0] - 1, 0, -1):
        seg[j] = seg[j - 1]


@njit(cache=True, nogil=True)
def window_push(row, buf, w, x):  # pragma: no cover - compiled
    """Add ``x`` to a series' window (ring ``buf[:w]``, sorted copy ``buf[w:2w]``), evicting the oldest.

    ``row[0]`` counts the values seen, ``row[1]`` is the ring head. Two positions (counts, see
    :func:`_lower_bound`) and one shift of the sorted values between the evicted and the inserted
    position (at most w moves).
    """
    n = int(row[0])
    filled = n if n < w else w
    head = int(row[1])
    if filled == w:
        p_old = _lower_bound(buf, w, w + filled, buf[head])
        p_new = _lower_bound(buf, w, w + filled, x)
        if p_new > p_old:
            _shift_down(buf[p_old:p_new])
            buf[p_new - 1] = x
        else:
            _shift_up(buf[p_new : p_old + 1])
            buf[p_new] = x
    else:
        p_new = _lower_bound(buf, w, w + filled, x)
        _shift_up(buf[p_new : w + filled + 1])
        buf[p_new] = x
    buf[head] = x
    head += 1
    if head == w:
        head = 0
    row[1] = float(head)
    row[0] = float(n + 1)


@njit(cache=True, nogil=True)
def sorted_quantile(buf, w, filled, q):  # pragma: no cover - compiled
    """Linearly interpolated quantile of the sorted part ``buf[w:w+filled]`` (numpy's default rule)."""
    pos = q * (filled - 1)
    lo = int(pos)  # pos >= 0: truncation is floor
    hi = lo + 1 if lo + 1 < filled else lo
    frac = pos - lo
    return buf[w + lo] * (1.0 - frac) + buf[w + hi] * frac


@njit(cache=True, nogil=True)
def sorted_median(buf, w, filled):  # pragma: no cover - compiled
    h = filled >> 1
    if filled & 1:
        return buf[w + h]
    return 0.5 * (buf[w + h - 1] + buf[w + h])


@njit(cache=True, nogil=True)
def _kth_split(buf, left0, na, right0, nb, med, k):  # pragma: no cover - compiled
    """How many of the k+1 smallest of the union of A_j = med − buf[left0 − j] (j < na) and
    B_j = buf[right0 + j] − med (j < nb), both ascending, come from A: the least i with
    B[k − i] ≤ A[i] (that test only turns from true to false as i grows), by a binary search
    written with selects rather than branches (its outcomes are unpredictable)."""
    lo = k + 1 - nb
    if lo < 0:
        lo = 0
    hi = k + 1 if k + 1 < na else na
    first = lo
    length = hi - lo
    while length > 0:
        half = length >> 1
        mid = first + half
        more = buf[right0 + k - mid] - med > med - buf[left0 - mid]
        first = mid + 1 if more else first
        length = length - half - 1 if more else half
    return first


@njit(cache=True, nogil=True)
def sorted_mad(buf, w, filled, med):  # pragma: no cover - compiled
    """Median absolute deviation from ``med`` of the sorted part, in O(log w).

    The deviations of the values left of ``med`` (read leftward) and right of it (read rightward)
    are two ascending sequences, A and B. One k-th-of-a-union binary search splits off the k+1
    smallest deviations (k = filled // 2); the largest of them is the upper median, and for an even
    count the largest of the others (one step back on the side it came from) the lower one.
    """
    start = _lower_bound(buf, w, w + filled, med)
    na = start - w
    nb = w + filled - start
    k = filled // 2
    i = _kth_split(buf, start - 1, na, start, nb, med, k)
    j = k + 1 - i
    a = med - buf[start - i] if i > 0 else -math.inf  # A[i-1]
    b = buf[start + j - 1] - med if j > 0 else -math.inf  # B[j-1]
    d_hi = a if a > b else b
    if filled % 2 == 1:
        return d_hi
    if a > b:  # A[i-1] was the largest: the next is A[i-2] or B[j-1]
        a2 = med - buf[start - i + 1] if i > 1 else -math.inf
        d_lo = a2 if a2 > b else b
    else:  # B[j-1] was: the next is A[i-1] or B[j-2]
        b2 = buf[start + j - 2] - med if j > 1 else -math.inf
        d_lo = a if a > b2 else b2
    return 0.5 * (d_hi + d_lo)


# ------------------------------------------------------------------------------------ robust z


@njit(cache=True, nogil=True)
def robust_stat(buf, w, filled, x, k_alarm, rel_floor, abs_floor):  # pragma: no cover - compiled
    """Signed robust z of ``x`` against the window, in alarm units (no state change)."""
    med = sorted_median(buf, w, filled)
    sd = MAD_TO_SIGMA * sorted_mad(buf, w, filled, med)
    fl = spread_floor(med, rel_floor, abs_floor)
    if sd < fl:
        sd = fl
    return (x - med) / sd / k_alarm


@njit(cache=True, nogil=True)
def robust_update(series_idx, values, state, win, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover
    """Robust z-score over a rolling median and MAD.

    Catches: values far from the median of the last ``w`` values in units of 1.4826·MAD (σ for
    Gaussian data) — spikes, dips, the start of level shifts; the window's own outliers barely move
    median and MAD (50% breakdown point), unlike mean and sd. Statistic:
    ``(x − med) / max(1.4826·MAD, floor) / k_alarm``; the MAD floor ``max(rel_floor·|med|,
    abs_floor)`` keeps flat or quantised stretches (MAD = 0) from producing infinite z.
    Parameters: window ``w = win.shape[1] // 2``; ``k_alarm`` robust z at score 0.5 (e.g. 4).
    Warm-up: ``warmup`` values (use ≥ 8 so the MAD means something).
    State: ``state float64[n, WINDOW_WIDTH]`` zeros, ``win float64[n, 2w]``.
    """
    w = win.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        row = state[s]
        n = int(row[0])
        u = 0.0
        if n >= warmup and n > 0:
            u = robust_stat(win[s], w, n if n < w else w, x, k_alarm, rel_floor, abs_floor)
        window_push(row, win[s], w, x)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ------------------------------------------------------------------------------------ IQR fences


@njit(cache=True, nogil=True)
def iqr_stat(buf, w, filled, x, k_fence, rel_floor, abs_floor):  # pragma: no cover - compiled
    """Signed distance beyond the nearer quartile in units of k·IQR (0 between the quartiles)."""
    q1 = sorted_quantile(buf, w, filled, 0.25)
    q3 = sorted_quantile(buf, w, filled, 0.75)
    iqr = q3 - q1
    fl = spread_floor(0.5 * (q1 + q3), rel_floor, abs_floor)
    if iqr < fl:
        iqr = fl
    if x > q3:
        return (x - q3) / (k_fence * iqr)
    if x < q1:
        return (x - q1) / (k_fence * iqr)
    return 0.0


@njit(cache=True, nogil=True)
def iqr_update(series_idx, values, state, win, warmup, k_fence, rel_floor, abs_floor):  # pragma: no cover
    """Tukey IQR fences over the exact quartiles of the last ``w`` values.

    Catches: values outside ``[q25 − k·IQR, q75 + k·IQR]`` — spikes and drops relative to the bulk
    of the recent distribution, without a normality assumption (skewed metrics: latency, token
    counts). Statistic: distance beyond the nearer quartile in units of ``k_fence·IQR`` (1.5 = Tukey's
    inner fence at score 0.5), 0 between the quartiles.
    Quantile source: a small sorted ring of the last ``w`` values — exact, windowed and deterministic.
    P² estimators were the alternative: O(1) memory, but they summarise the whole history (they
    cannot forget, so they never re-centre after a regime change) and their 5-marker parabolic
    update per quantile costs about as much as shifting a ring of a few hundred sorted values.
    Parameters: ``w = win.shape[1] // 2``, ``k_fence``, floors on the IQR. Warm-up: ``warmup`` values.
    State as :func:`robust_update`.
    """
    w = win.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        row = state[s]
        n = int(row[0])
        u = 0.0
        if n >= warmup and n > 0:
            u = iqr_stat(win[s], w, n if n < w else w, x, k_fence, rel_floor, abs_floor)
        window_push(row, win[s], w, x)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ----------------------------------------------------------------------------------------- CUSUM


@njit(cache=True, nogil=True)
def cusum_step(row, x, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor):  # pragma: no cover
    """One value of the two-sided CUSUM; returns +S⁺/h or −S⁻/h, whichever sum is larger."""
    n = row[0]
    mean = row[1]
    var = row[2]
    if n == 0.0:
        row[1] = x
        row[2] = 0.0
        row[0] = 1.0
        return 0.0
    sd = math.sqrt(var)
    fl = spread_floor(mean, rel_floor, abs_floor)
    if sd < fl:
        sd = fl
    z = (x - mean) / sd
    sp = row[3]
    sn = row[4]
    if n >= warmup:
        zc = z  # winsorised increment: a lone spike adds at most clip - k_slack
        if zc > clip:
            zc = clip
        elif zc < -clip:
            zc = -clip
        sp = max(0.0, sp + zc - k_slack)
        sn = max(0.0, sn - zc - k_slack)
    row[3] = sp
    row[4] = sn
    # reference: during the warm-up the plain running mean/variance of the values (a = 1/(n+1));
    # afterwards a slow EWM of the value winsorised at ±clip·sd, so a shift is absorbed gradually
    a = 1.0 / (n + 1.0)
    if n >= warmup or a < alpha:
        a = alpha
        if z > clip:
            row[1] = mean + a * clip * sd
        elif z < -clip:
            row[1] = mean - a * clip * sd
        else:
            d = x - mean
            row[1] = mean + a * d
            row[2] = (1.0 - a) * (var + a * d * d)
    else:
        d = x - mean
        row[1] = mean + a * d
        row[2] = (1.0 - a) * (var + a * d * d)
    row[0] = n + 1.0
    if sp >= sn:
        return sp / h
    return -sn / h


@njit(cache=True, nogil=True)
def cusum_update(
    series_idx, values, state, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor
):  # pragma: no cover
    """Two-sided CUSUM for sustained level shifts.

    Catches: a mean shift of a few σ that persists. Each value adds ``z − k_slack`` to the upper sum
    ``S⁺`` and ``−z − k_slack`` to the lower sum ``S⁻`` (both clipped at 0), so isolated noise drains
    away while a sustained shift accumulates linearly. ``z`` is winsorised at ±``clip`` in the sums:
    a single spike, however large, adds at most ``clip − k_slack`` — spikes are the other detectors'
    business, CUSUM's statistic measures persistence (and is bounded per value, so its score is not
    a spike-size ranking). ``z`` is taken against a slow EWM reference
    (``alpha``): its mean is fed values winsorised at ±``clip``·σ and its variance only values within
    ±``clip``·σ, so a single spike moves it little, a shift neither inflates σ nor is absorbed at
    once (the mean walks towards the new level by ``alpha·clip·σ`` per value) and the sum decays once
    the reference has caught up. During the warm-up the
    reference is the plain running mean/variance of the values seen (no winsorising yet: there is
    no σ to winsorise with). Statistic
    ``max(S⁺, S⁻)/h`` (``h`` the decision interval, score 0.5 there); direction +1 for an upward shift
    (S⁺ larger), −1 for a drop. Typical: ``k_slack`` 0.5 (tuned to a 1σ shift), ``h`` 5.
    Warm-up: ``warmup`` values before the sums start. State: ``float64[n, CUSUM_WIDTH]`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        u = cusum_step(state[series_idx[i]], x, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ---------------------------------------------------------------------------------------- Hampel


@njit(cache=True, nogil=True)
def hampel_stat(buf, w, filled, x, k, rel_floor, abs_floor):  # pragma: no cover - compiled
    """Signed excess of ``x`` beyond ``median ± k·σ`` (σ = 1.4826·MAD) in units of k·σ."""
    med = sorted_median(buf, w, filled)
    sd = MAD_TO_SIGMA * sorted_mad(buf, w, filled, med)
    fl = spread_floor(med, rel_floor, abs_floor)
    if sd < fl:
        sd = fl
    dev = (x - med) / sd
    if dev > k:
        return (dev - k) / k
    if dev < -k:
        return (dev + k) / k
    return 0.0


@njit(cache=True, nogil=True)
def hampel_update(series_idx, values, state, win, warmup, k, rel_floor, abs_floor):  # pragma: no cover
    """Hampel identifier (trailing window) for isolated spikes.

    Catches: a value more than ``k`` robust σ (1.4826·MAD) from the median of the last ``w`` values.
    The window is short, so the band follows the *local* level (trends, daily cycles) and a spike
    stands out against its neighbourhood; values inside the band score exactly 0. Statistic:
    ``(|x − med|/σ − k)/k`` beyond the band, so the score is 0.5 at 2k σ. Parameters:
    ``w = win.shape[1] // 2`` (e.g. 16), ``k`` (classically 3), floors on the MAD.
    Warm-up: ``warmup`` values (≥ w is sensible). State as :func:`robust_update`.
    """
    w = win.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        row = state[s]
        n = int(row[0])
        u = 0.0
        if n >= warmup and n > 0:
            u = hampel_stat(win[s], w, n if n < w else w, x, k, rel_floor, abs_floor)
        window_push(row, win[s], w, x)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ----------------------------------------------------------------------------------- range breakout


@njit(cache=True, nogil=True)
def range_step(row, blocks, x, alpha, warmup, block_size, gamma, rel_floor, abs_floor):  # pragma: no cover
    """One value of the range-breakout detector; signed statistic in alarm units (1 = a new extreme)."""
    n = row[0]
    nblk = blocks.shape[0] // 2
    c = row[1]
    u = 0.0
    if n >= warmup and n > 0.0:
        hi = row[8] if row[8] > row[4] else row[4]
        lo = row[9] if row[9] < row[5] else row[5]
        fl = gamma * row[3]
        f2 = spread_floor(c, rel_floor, abs_floor)
        if f2 > fl:
            fl = f2
        if x >= c:
            span = hi - c
            u = (x - c) / (span if span > fl else fl)
        else:
            span = c - lo
            u = -(c - x) / (span if span > fl else fl)
    if n == 0.0:
        row[1] = x
        row[2] = x
        row[3] = 0.0
        row[4] = x
        row[5] = x
        row[8] = -math.inf
        row[9] = math.inf
    else:
        row[1] = c + alpha * (x - c)
        # long-run mean absolute deviation (memory ~1000 values) for the span floor
        a = 1.0 / (n + 1.0)
        if a < 0.001:
            a = 0.001
        row[3] += a * (abs(x - row[2]) - row[3])
        row[2] += a * (x - row[2])
        if x > row[4]:
            row[4] = x
        if x < row[5]:
            row[5] = x
    row[6] += 1.0
    if row[6] >= block_size:
        b = int(row[7])
        blocks[b] = row[4]
        blocks[nblk + b] = row[5]
        b += 1
        if b == nblk:
            b = 0
        row[7] = float(b)
        if row[10] < nblk:
            row[10] += 1.0
        filled = int(row[10])
        hi = -math.inf
        lo = math.inf
        for j in range(filled):
            if blocks[j] > hi:
                hi = blocks[j]
            if blocks[nblk + j] < lo:
                lo = blocks[nblk + j]
        row[8] = hi
        row[9] = lo
        row[6] = 0.0
        row[4] = -math.inf
        row[5] = math.inf
    row[0] = n + 1.0
    return u


@njit(cache=True, nogil=True)
def range_update(
    series_idx, values, state, blocks, alpha, warmup, block_size, gamma, rel_floor, abs_floor
):  # pragma: no cover
    """Range breakout: is the value outside the range of (about) the last ``nblk·block_size`` values?

    Catches: new extremes — a spike above the highest value (or a drop below the lowest) of a long
    recent horizon, and the first values of a level shift that leaves the recent range. It calibrates
    itself on heavy-tailed and bursty series (the yardstick is the series' own recent extremes, not
    a Gaussian spread), and after an alert the window holds the new extreme, so one episode alerts
    once unless it grows. Statistic: ``(x − c)/(max − c)`` above the centre ``c`` (EWM mean with
    ``alpha``) and ``−(c − x)/(c − min)`` below it, so ``|u| = 1`` (score 0.5) is exactly a new extreme
    and a value equal to the current extreme ties there; the span is floored at
    ``max(gamma·long-run mean absolute deviation, rel_floor·|c|, abs_floor)``.
    Window: ``blocks: float64[n, 2·nblk]`` holds the maxima (``[0, nblk)``) and minima of the last
    ``nblk`` complete blocks of ``block_size`` values, plus the running block in the state row; the
    horizon is between ``(nblk−1)·block_size`` and ``nblk·block_size`` values. O(1) per value, O(nblk)
    once per block; memory O(nblk) per series. Warm-up: ``warmup`` values.
    State: ``float64[n, RANGE_WIDTH]`` zeros, ``blocks`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        u = range_step(state[s], blocks[s], x, alpha, warmup, block_size, gamma, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        direction[i] = _sign(u)
    return score, direction


# ---------------------------------------------------------------------------------------- ensemble


@njit(cache=True, nogil=True)
def ensemble_kernel(
    series_idx,
    values,
    timestamps,
    ewma,
    win_state,
    win,
    ham_state,
    ham,
    cusum,
    range_state,
    range_blocks,
    peaks,
    meta,
    prm,
    weights,
    norm_mode,
):  # pragma: no cover - compiled
    """The ensemble of all six detectors over a batch (see ``processors.detect.ensemble``).

    It lives in this module, not next to its Python wrapper, because numba's on-disk cache only
    notices changes to the file that defines a function: kept here, any edit of a detector also
    invalidates the cached ensemble.
    """
    warmup = prm[0]
    rel_floor = prm[1]
    abs_floor = prm[2]
    ewma_alpha = prm[3]
    ewma_k = prm[4]
    robust_k = prm[5]
    iqr_k = prm[6]
    hampel_k = prm[7]
    cusum_alpha = prm[8]
    cusum_k = prm[9]
    cusum_h = prm[10]
    cusum_clip = prm[11]
    range_alpha = prm[12]
    range_block_size = prm[13]
    range_gamma = prm[14]
    peak_decay = prm[15]
    norm_floor = prm[16]
    range_warmup = prm[17]
    bg_alpha = prm[18]
    bg_scale = prm[19]
    w = win.shape[1] // 2
    hw = ham.shape[1] // 2

    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    detector = np.zeros(m, dtype=np.int8)
    direction = np.zeros(m, dtype=np.int8)
    u = np.zeros(6)
    for i in range(m):
        x = values[i]
        if not math.isfinite(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        row_meta = meta[s]
        n = row_meta[0]
        row_meta[0] = n + 1.0
        t = timestamps[i]
        if t > row_meta[1]:
            row_meta[1] = t

        u[0] = ewma_step(ewma[s], x, ewma_alpha, warmup, ewma_k, rel_floor, abs_floor)
        nw = int(win_state[s, 0])
        if nw >= warmup and nw > 0:
            fw = nw if nw < w else w
            u[1] = robust_stat(win[s], w, fw, x, robust_k, rel_floor, abs_floor)
            u[2] = iqr_stat(win[s], w, fw, x, iqr_k, rel_floor, abs_floor)
        else:
            u[1] = 0.0
            u[2] = 0.0
        window_push(win_state[s], win[s], w, x)
        u[3] = cusum_step(
            cusum[s], x, cusum_alpha, warmup, cusum_k, cusum_h, cusum_clip, rel_floor, abs_floor
        )
        nh = int(ham_state[s, 0])
        if nh >= warmup and nh > 0:
            u[4] = hampel_stat(ham[s], hw, nh if nh < hw else hw, x, hampel_k, rel_floor, abs_floor)
        else:
            u[4] = 0.0
        window_push(ham_state[s], ham[s], hw, x)
        u[5] = range_step(
            range_state[s],
            range_blocks[s],
            x,
            range_alpha,
            range_warmup,
            range_block_size,
            range_gamma,
            rel_floor,
            abs_floor,
        )

        best = 0.0
        who = 0
        pk = peaks[s]
        for d in range(6):
            a = abs(u[d])
            mode = norm_mode[d]
            if mode == 1.0:  # relative to the detector's own recent peak on this series
                p = pk[d]
                ref = p if p > norm_floor else norm_floor
                v = weights[d] * a / ref
                p *= peak_decay
                pk[d] = a if a > p else p
            elif mode == 2.0:  # relative to a multiple of its recent mean level on this series
                p = pk[d]
                ref = bg_scale * p
                if ref < norm_floor:
                    ref = norm_floor
                v = weights[d] * a / ref
                pk[d] = p + bg_alpha * (a - p)
            else:
                v = weights[d] * a
            if v > best:
                best = v
                who = d + 1
        score[i] = squash(best)
        if who > 0:
            detector[i] = who
            direction[i] = _sign(u[who - 1])
    return score, detector, direction
