"""Batch numba kernels of the streaming anomaly detectors.

Layout. All per-series state lives in numpy arrays with one row per series and fixed columns, so a
processor can keep thousands of series in a few contiguous blocks and grow them by reallocating:

* ``state: float64[n_series, <DETECTOR>_WIDTH]`` per detector (counters are stored as floats), and
* for the window detectors a ring of recent values plus the same values kept sorted,
  ``window: float64[n_series, 2 * w]`` (columns ``[0, w)`` ring in arrival order, ``[w, 2w)`` sorted).

A batch kernel processes a whole batch in one call:
``<detector>_update(series_idx int64[m], values float64[m], state..., params...) -> (score, direction)``
with ``score: float64[m]`` in [0, 1) and ``direction: int8[m]`` (+1 the value is above what the
detector expects, −1 below, 0 no opinion). Points are taken in arrival order and each one updates its
own series' row; rows of other series are never touched, so a batch of interleaved series gives the
same result as one batch per series. A NaN value scores NaN with direction 0 and leaves the state
untouched.

Scores. Every detector computes a non-negative statistic ``u`` in *alarm units* (1.0 = the classical
alarm level of that detector: 4 robust σ, Tukey's 1.5·IQR fence, the CUSUM decision interval h, ...)
and maps it through ``u / (1 + u)``: monotone, 0.5 exactly at the alarm level, and 1.0 is out of reach
in float64 for any finite statistic, so rankings of strong anomalies are kept (no ties at 1.0). During
its warm-up (the first ``warmup`` values of a series) a detector updates its state but scores 0.

Spread floor. Dispersion estimates (EWM standard deviation, MAD, IQR) are floored at
``max(rel_floor·|level|, abs_floor)`` where ``level`` is the detector's estimate of the series' level
(mean or median). A perfectly flat stretch therefore does not turn the next small wiggle into an
infinite z-score: a change must be large relative to the series' own magnitude.

The per-point ``*_step`` functions are the single source of each detector's arithmetic; the batch
kernels and the ensemble kernel (``processors.detect.ensemble``) call them in their loops.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Columns of the per-detector state rows.
EWMA_WIDTH = 3  # count, mean, var
ROBUST_WIDTH = 2  # count, ring head
CUSUM_WIDTH = 5  # count, mean, var, s_pos, s_neg
RANGE_WIDTH = 11  # count, center, lr_mean, lr_dev, cur_max, cur_min, n_in_block, block, hi, lo, n_blocks
# IQR and Hampel share the window layout of the robust detector (count, head + ring/sorted buffer).

JIT = {"cache": True, "nogil": True}


@njit(**JIT)
def squash(u):  # pragma: no cover - compiled
    """u/(1+u) for u >= 0: 0.5 at the alarm level (u = 1), strictly increasing, never exactly 1."""
    if u <= 0.0:
        return 0.0
    return u / (1.0 + u)


@njit(**JIT)
def spread_floor(level, rel_floor, abs_floor):  # pragma: no cover - compiled
    f = rel_floor * abs(level)
    return f if f > abs_floor else abs_floor


# ------------------------------------------------------------------------------------------ EWMA


@njit(**JIT)
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
        z = (x - mean) / sd
        if n >= warmup:
            u = z / k_alarm
        d = x - mean
        row[1] = mean + alpha * d
        row[2] = (1.0 - alpha) * (var + alpha * d * d)
    row[0] = n + 1.0
    return u


@njit(**JIT)
def ewma_update(series_idx, values, state, alpha, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover
    """EWMA/EWMV z-score.

    Catches: values far from an exponentially weighted mean in units of the exponentially weighted
    standard deviation — spikes and the first points of a level shift; adapts to slow drift.
    Statistic: ``|x − mean| / max(sd, floor) / k_alarm`` with mean and variance taken *before* the
    value is absorbed (``mean += α·d; var = (1−α)(var + α·d²)``).
    Parameters: ``alpha`` smoothing (≈ 2/(span+1)), ``k_alarm`` z at which the score is 0.5,
    ``rel_floor``/``abs_floor`` the spread floor. Warm-up: ``warmup`` values (≥ 1).
    State: ``float64[n_series, EWMA_WIDTH]`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        u = ewma_step(state[series_idx[i]], x, alpha, warmup, k_alarm, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction


# ------------------------------------------------------------------------------- sorted ring window


@njit(**JIT)
def window_push(row, buf, w, x):  # pragma: no cover - compiled
    """Add ``x`` to a series' window (ring ``buf[:w]`` + sorted copy ``buf[w:2w]``), evicting the oldest.

    ``row[0]`` counts values seen, ``row[1]`` is the ring head. O(w) moves, O(log w) search.
    """
    n = int(row[0])
    filled = n if n < w else w
    head = int(row[1])
    if filled == w:
        old = buf[head]
        # position of one copy of `old` in the sorted part
        lo = w
        hi = w + filled
        while lo < hi:
            mid = (lo + hi) >> 1
            if buf[mid] < old:
                lo = mid + 1
            else:
                hi = mid
        p_old = lo
        # insertion point of x (as if `old` were absent)
        lo = w
        hi = w + filled
        while lo < hi:
            mid = (lo + hi) >> 1
            if buf[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        p_new = lo
        if p_new > p_old:
            for j in range(p_old, p_new - 1):
                buf[j] = buf[j + 1]
            buf[p_new - 1] = x
        else:
            for j in range(p_old, p_new, -1):
                buf[j] = buf[j - 1]
            buf[p_new] = x
    else:
        lo = w
        hi = w + filled
        while lo < hi:
            mid = (lo + hi) >> 1
            if buf[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        for j in range(w + filled, lo, -1):
            buf[j] = buf[j - 1]
        buf[lo] = x
    buf[head] = x
    head += 1
    if head == w:
        head = 0
    row[1] = float(head)
    row[0] = float(n + 1)


@njit(**JIT)
def sorted_quantile(buf, w, filled, q):  # pragma: no cover - compiled
    """Linear-interpolated quantile of the sorted part (``buf[w:w+filled]``)."""
    pos = q * (filled - 1)
    lo = int(math.floor(pos))
    hi = lo + 1 if lo + 1 < filled else lo
    frac = pos - lo
    return buf[w + lo] * (1.0 - frac) + buf[w + hi] * frac


@njit(**JIT)
def sorted_mad(buf, w, filled, med):  # pragma: no cover - compiled
    """Median absolute deviation from ``med`` of the sorted part, by merging outward from the median.

    The deviations left of ``med`` and right of it are two sorted sequences; their k-th smallest is
    found by walking both from ``med`` outward (at most filled/2 + 1 steps).
    """
    # first index with value >= med
    lo = w
    hi = w + filled
    while lo < hi:
        mid = (lo + hi) >> 1
        if buf[mid] < med:
            lo = mid + 1
        else:
            hi = mid
    left = lo - 1  # walks down
    right = lo  # walks up
    end = w + filled
    k_hi = filled // 2
    k_lo = k_hi if filled % 2 == 1 else k_hi - 1
    prev = 0.0
    cur = 0.0
    for k in range(k_hi + 1):
        if left >= w and (right >= end or med - buf[left] <= buf[right] - med):
            cur = med - buf[left]
            left -= 1
        else:
            cur = buf[right] - med
            right += 1
        if k == k_lo:
            prev = cur
    return 0.5 * (prev + cur)


@njit(**JIT)
def sorted_median(buf, w, filled):  # pragma: no cover - compiled
    h = filled >> 1
    if filled & 1:
        return buf[w + h]
    return 0.5 * (buf[w + h - 1] + buf[w + h])


# ------------------------------------------------------------------------------------ robust z


MAD_TO_SIGMA = 1.4826


@njit(**JIT)
def robust_step(row, buf, w, x, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover - compiled
    """One value of the rolling median/MAD z-score; signed statistic in alarm units."""
    n = int(row[0])
    filled = n if n < w else w
    u = 0.0
    if n >= warmup and filled > 0:
        med = sorted_median(buf, w, filled)
        sd = MAD_TO_SIGMA * sorted_mad(buf, w, filled, med)
        fl = spread_floor(med, rel_floor, abs_floor)
        if sd < fl:
            sd = fl
        u = (x - med) / sd / k_alarm
    window_push(row, buf, w, x)
    return u


@njit(**JIT)
def robust_update(series_idx, values, state, buf, warmup, k_alarm, rel_floor, abs_floor):  # pragma: no cover
    """Robust z-score over a rolling median and MAD.

    Catches: values far from the median of the last ``w`` values, in units of 1.4826·MAD (σ for
    Gaussian data) — spikes, dips and the start of level shifts; insensitive to the outliers in the
    window itself (50% breakdown point), unlike mean/sd. Statistic ``|x − med| / max(1.4826·MAD,
    floor) / k_alarm``; the MAD floor ``max(rel_floor·|med|, abs_floor)`` keeps flat or quantised
    stretches (MAD = 0) from producing infinite z.
    Parameters: window ``w = buf.shape[1] // 2``, ``k_alarm`` (robust z at score 0.5), floors.
    Warm-up: ``warmup`` values (clamped by the caller to ≥ a handful so the MAD means something).
    State: ``state float64[n, ROBUST_WIDTH]`` zeros, ``buf float64[n, 2w]``.
    """
    w = buf.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        u = robust_step(state[s], buf[s], w, x, warmup, k_alarm, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction


# ------------------------------------------------------------------------------------ IQR fences


@njit(**JIT)
def iqr_step(row, buf, w, x, warmup, k_fence, rel_floor, abs_floor):  # pragma: no cover - compiled
    """One value of the IQR-fence detector; signed statistic in alarm units."""
    n = int(row[0])
    filled = n if n < w else w
    u = 0.0
    if n >= warmup and filled > 0:
        q1 = sorted_quantile(buf, w, filled, 0.25)
        q3 = sorted_quantile(buf, w, filled, 0.75)
        iqr = q3 - q1
        fl = spread_floor(0.5 * (q1 + q3), rel_floor, abs_floor)
        if iqr < fl:
            iqr = fl
        if x > q3:
            u = (x - q3) / iqr / k_fence
        elif x < q1:
            u = (x - q1) / iqr / k_fence
    window_push(row, buf, w, x)
    return u


@njit(**JIT)
def iqr_update(series_idx, values, state, buf, warmup, k_fence, rel_floor, abs_floor):  # pragma: no cover
    """Tukey IQR fences over the exact quartiles of the last ``w`` values.

    Catches: values outside ``[q25 − k·IQR, q75 + k·IQR]`` — spikes and drops relative to the bulk
    of the recent distribution, without any normality assumption (skewed metrics such as latency or
    token counts). Statistic: distance beyond the nearer quartile in IQR units divided by
    ``k_fence`` (1.5 = Tukey's inner fence at score 0.5); 0 between the quartiles.
    Quantile source: a small sorted ring of the last ``w`` values (exact, windowed, deterministic)
    rather than P² estimators — P² tracks the whole history (no forgetting, so it cannot follow a
    changed regime) and each of its 5-marker updates is already comparable in cost to the O(w)
    shift of a ring of a few hundred values. Parameters: ``w = buf.shape[1] // 2``, ``k_fence``,
    floors on the IQR. Warm-up: ``warmup`` values. State as for :func:`robust_update`.
    """
    w = buf.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        u = iqr_step(state[s], buf[s], w, x, warmup, k_fence, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction


# ----------------------------------------------------------------------------------------- CUSUM


@njit(**JIT)
def cusum_step(row, x, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor):  # pragma: no cover
    """One value of the two-sided CUSUM; returns +S⁺/h or −S⁻/h (whichever is larger)."""
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
        sp = max(0.0, sp + z - k_slack)
        sn = max(0.0, sn - z - k_slack)
    row[3] = sp
    row[4] = sn
    # reference level/scale: EWM of the value winsorised at ±clip·sd so a shift is not absorbed at once
    zc = z
    if zc > clip:
        zc = clip
    elif zc < -clip:
        zc = -clip
    d = zc * sd
    row[1] = mean + alpha * d
    row[2] = (1.0 - alpha) * (var + alpha * d * d)
    row[0] = n + 1.0
    if sp >= sn:
        return sp / h
    return -sn / h


@njit(**JIT)
def cusum_update(series_idx, values, state, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor):  # pragma: no cover
    """Two-sided CUSUM for sustained level shifts.

    Catches: a mean shift of a few σ that persists — each value adds ``z − k_slack`` to the upper sum
    ``S⁺`` (``−z − k_slack`` to ``S⁻``) and the sums are clipped at 0, so isolated noise drains away
    while a sustained shift accumulates linearly. ``z`` is taken against a slow EWM reference
    (``alpha``) fed with values winsorised at ±``clip``·σ, so a shift is absorbed gradually and the
    sum decays back once the reference has caught up. Statistic: ``max(S⁺, S⁻)/h`` (``h`` the decision
    interval, score 0.5 there); direction +1 for an upward shift (S⁺ larger), −1 for a drop.
    Warm-up: ``warmup`` values before the sums start. State: ``float64[n, CUSUM_WIDTH]`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        u = cusum_step(state[series_idx[i]], x, alpha, warmup, k_slack, h, clip, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction


# ---------------------------------------------------------------------------------------- Hampel


@njit(**JIT)
def hampel_step(row, buf, w, x, warmup, k, rel_floor, abs_floor):  # pragma: no cover - compiled
    """One value of the (trailing) Hampel identifier; signed excess over k robust σ, in units of k."""
    n = int(row[0])
    filled = n if n < w else w
    u = 0.0
    if n >= warmup and filled > 0:
        med = sorted_median(buf, w, filled)
        sd = MAD_TO_SIGMA * sorted_mad(buf, w, filled, med)
        fl = spread_floor(med, rel_floor, abs_floor)
        if sd < fl:
            sd = fl
        dev = (x - med) / sd
        if dev > k:
            u = (dev - k) / k
        elif dev < -k:
            u = (dev + k) / k
    window_push(row, buf, w, x)
    return u


@njit(**JIT)
def hampel_update(series_idx, values, state, buf, warmup, k, rel_floor, abs_floor):  # pragma: no cover
    """Hampel filter (trailing window) for isolated spikes.

    Catches: a value more than ``k`` robust σ (1.4826·MAD) from the median of the last ``w`` values —
    a short window, so it reacts to spikes relative to the *local* level even on trending or seasonal
    series, and ignores anything within ``k`` σ. Statistic: ``(|x − med|/σ − k)/k`` when beyond the
    band (score 0.5 at 2k σ), 0 inside. Parameters: ``w = buf.shape[1] // 2`` (e.g. 15–31), ``k``
    (classically 3), floors on the MAD. Warm-up: ``warmup`` values. State as :func:`robust_update`.
    """
    w = buf.shape[1] // 2
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        u = hampel_step(state[s], buf[s], w, x, warmup, k, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction


# ----------------------------------------------------------------------------------- range breakout


@njit(**JIT)
def range_step(row, blocks, x, alpha, warmup, block_size, gamma, rel_floor, abs_floor):  # pragma: no cover
    """One value of the range-breakout detector; signed statistic in alarm units (1 = new extreme)."""
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
    # centre (EWM mean) and long-run mean absolute deviation (for the floor)
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


@njit(**JIT)
def range_update(
    series_idx, values, state, blocks, alpha, warmup, block_size, gamma, rel_floor, abs_floor
):  # pragma: no cover
    """Range breakout: is the value outside the range of (roughly) the last ``nblk·block_size`` values?

    Catches: new extremes — a spike above the highest value (or a drop below the lowest) of a long
    recent horizon, and the first values of a level shift that leaves the recent range. It is
    self-calibrating on heavy-tailed or bursty series (its yardstick is the series' own recent
    extremes, not a Gaussian spread), and after an alert the window holds the new extreme, so the
    same episode does not alert again unless it grows: one alert per episode. Statistic:
    ``(x − c)/(max − c)`` above the centre ``c`` (EWM mean, ``alpha``), ``(c − x)/(c − min)`` below,
    so 1.0 (score 0.5) is exactly a new extreme; the span is floored at
    ``max(gamma·long-run mean absolute deviation, rel_floor·|c|, abs_floor)``.
    Window: a ring of per-block maxima/minima, ``blocks: float64[n, 2·nblk]`` (nblk blocks of
    ``block_size`` values) plus the running block, so memory is O(nblk) per series and the cost O(1)
    per value (O(nblk) once per block). Warm-up: ``warmup`` values.
    State: ``float64[n, RANGE_WIDTH]`` zeros, ``blocks`` zeros.
    """
    m = values.shape[0]
    score = np.empty(m, dtype=np.float64)
    direction = np.zeros(m, dtype=np.int8)
    for i in range(m):
        x = values[i]
        if math.isnan(x):
            score[i] = math.nan
            continue
        s = series_idx[i]
        u = range_step(state[s], blocks[s], x, alpha, warmup, block_size, gamma, rel_floor, abs_floor)
        score[i] = squash(abs(u))
        if u > 0.0:
            direction[i] = 1
        elif u < 0.0:
            direction[i] = -1
    return score, direction
