"""Per-bucket rate detectors: error, rate-limit (429) and truncation bursts.

Counts arrive per closed time bucket and series: `n` calls, `k` of which had the
property. Against a slowly learned baseline rate p0 (EWMA over buckets, with a
floor so a series that never failed can still alarm) the excess is measured as
a binomial z-score, z = (k − n·p0) / sqrt(n·p0·(1 − p0)). A burst needs all of:
z above its alarm level, at least `min_count` events, and an observed rate at
least `min_rate` above the baseline, so one stray 429 in a quiet minute is not
an incident. Scores use the same squashing as the ensemble (0.5 at the alarm
level, never exactly 1.0).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from processors.detect.kernels import squash

# state columns per (series, property): buckets seen, baseline rate
RATE_WIDTH = 2


@njit(cache=True, nogil=True)
def burst_update(rows, n, k, state, alpha, warmup, p_floor, z_alarm, min_count, min_rate):  # pragma: no cover
    """Score each closed bucket; update the baseline with non-alarming buckets only.

    rows: int64[m] state rows; n, k: float64[m] calls and events in the bucket.
    Returns (score float64[m], rate float64[m], baseline float64[m]); score is NaN for empty buckets.
    """
    m = rows.shape[0]
    score = np.full(m, np.nan)
    rate = np.full(m, np.nan)
    base = np.full(m, np.nan)
    for i in range(m):
        r = rows[i]
        if n[i] <= 0:
            continue
        p = k[i] / n[i]
        rate[i] = p
        seen = state[r, 0]
        p0 = state[r, 1] if seen > 0 else p
        p0f = max(p0, p_floor)
        base[i] = p0
        z = (k[i] - n[i] * p0f) / np.sqrt(n[i] * p0f * (1.0 - p0f) + 1e-12)
        alarm = seen >= warmup and k[i] >= min_count and p - p0 >= min_rate and z > 0
        if seen >= warmup:
            score[i] = squash(max(z, 0.0) / z_alarm) if (k[i] >= min_count and p - p0 >= min_rate) else 0.0
        else:
            score[i] = 0.0
        if not alarm or score[i] < 0.5:
            # learn only from normal buckets, so a long burst does not become the new normal at once
            state[r, 1] = p if seen == 0 else (1.0 - alpha) * p0 + alpha * p
        state[r, 0] = seen + 1.0
    return score, rate, base
