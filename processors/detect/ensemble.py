"""Ensemble of the streaming detectors: one batch kernel, one score in [0, 1) per point.

For every point the kernel runs the six detectors of :mod:`processors.detect.kernels` on the point's
series — EWMA z, robust z (median/MAD), IQR fences, CUSUM, Hampel and range breakout — each giving a
statistic ``u_d`` in *alarm units* (1.0 = that detector's own alarm level). Each contribution is
``weight_d · |u_d| / ref_d`` where the reference depends on ``norm_mode[d]``:

* **0 — none** (range breakout, weight 1): the statistic is used as is. It is self-calibrating — its
  yardstick is the series' own extremes over the last ~8k values — and by construction an episode
  raises it once.
* **1 — recent peak** (EWMA, robust z, IQR, Hampel; weight 0.5): ``ref = max(peak_floor, P_d)`` with
  ``P_d = max(P_d·peak_decay, |u_d|)`` updated after scoring. A detector that fires all the time on
  a noisy or heavy-tailed series is muted relative to its own habit, and a repeat of the same
  excursion does not re-alert. With the defaults such a detector reaches the alarm level only at
  4× its alarm statistic (e.g. a robust z of 16) *and* above its strongest signal of the recent past.
* **2 — recent mean level** (CUSUM; weight 0.5): ``ref = max(peak_floor, bg_scale·B_d)`` with
  ``B_d`` an EWM (``bg_alpha``) of ``|u_d|``. A peak reference would mute any statistic that *grows*
  (each value is compared with the previous one), which is exactly how CUSUM reports a sustained
  shift; the mean level still mutes a CUSUM that is busy all the time (seasonal data).

The ensemble statistic is the maximum of the contributions (no averaging: one strong, specific
signal is not diluted by detectors that do not see that kind of anomaly), mapped through
:func:`processors.detect.kernels.squash` — 0.5 at the alarm level, steep just above it, logarithmic
far above it, never exactly 1.0. ``detector`` names the contributor of the maximum and ``direction``
its sign (+1 spike / upward shift, −1 drop), so an alert can say what fired and which way.

Defaults were chosen on the NAB corpus (``loadtests/bench_nab.py``, ``loadtests/DETECTION_RESULTS.md``):
the range detector alone scores ~59 (standard, oracle threshold) and carries most of it; the classical
detectors are weighted so that they cost nothing there (CUSUM adds ~1-2 points, within the noise of a
116-window benchmark) while still catching what a range test cannot — a shift or a spike *inside* a
wide historical range, or on a young series whose range is not established yet.

Default threshold :data:`DEFAULT_THRESHOLD` = 0.52: a breakout of 2% of the span beyond the recent
extreme (a value that merely *equals* the current extreme scores exactly 0.5 and does not alert). It
was fixed by that rule, not by maximising NAB. In stationary noise the range detector still alerts on
chance records, about once per few thousand values per series (see DETECTION_RESULTS.md); raise the
threshold or the range horizon where that matters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from processors.detect import kernels as K
from processors.detect.kernels import ensemble_kernel

DET_NONE = 0
DET_EWMA = 1
DET_ROBUST = 2
DET_IQR = 3
DET_CUSUM = 4
DET_HAMPEL = 5
DET_RANGE = 6
DETECTOR_NAMES: tuple[str, ...] = ("none", "ewma", "robust_z", "iqr", "cusum", "hampel", "range")

DEFAULT_THRESHOLD = 0.52
GROUP_MIN_SPAN = 2048  # score_batch sorts a batch by series when its rows span at least this many

_META_WIDTH = 2  # points scored (non-NaN), last event time seen (s)


@dataclass(frozen=True)
class EnsembleParams:
    """Detector parameters; see each detector's docstring in :mod:`processors.detect.kernels`."""

    warmup: int = 30  # values per series before any detector may score > 0
    rel_floor: float = 1e-3  # spread floors relative to |level| ...
    abs_floor: float = 1e-9  # ... and absolute
    ewma_alpha: float = 0.02
    ewma_k: float = 4.0
    window: int = 128  # robust z and IQR share one sorted window of this many values
    robust_k: float = 4.0
    iqr_k: float = 1.5
    hampel_window: int = 16
    hampel_k: float = 3.0
    cusum_alpha: float = 0.01
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    cusum_clip: float = 3.0
    range_blocks: int = 32
    range_block_size: int = 256
    range_alpha: float = 0.01
    range_gamma: float = 1.0
    range_warmup: int = 256  # the range needs some history: in the first n values a record comes every ~n
    # ewma, robust_z, iqr, cusum, hampel, range
    weights: tuple[float, float, float, float, float, float] = (0.5, 0.5, 0.5, 0.5, 0.5, 1.0)
    # how each contribution is normalised: 0 none, 1 by its recent peak, 2 by its recent mean level
    norm_mode: tuple[int, int, int, int, int, int] = (1, 1, 1, 2, 1, 0)
    peak_decay: float = 0.9999
    peak_floor: float = 2.0  # least reference for a normalised contribution (modes 1 and 2)
    bg_alpha: float = 0.01
    bg_scale: float = 5.0

    def __post_init__(self) -> None:
        if self.window < 2 or self.hampel_window < 2:
            raise ValueError("window sizes must be >= 2")
        if self.range_blocks < 1 or self.range_block_size < 1:
            raise ValueError("range_blocks and range_block_size must be >= 1")
        if len(self.weights) != 6 or any(w < 0 for w in self.weights):
            raise ValueError("weights: six non-negative numbers")
        if len(self.norm_mode) != 6 or any(m not in (0, 1, 2) for m in self.norm_mode):
            raise ValueError("norm_mode: six of 0 (none), 1 (peak), 2 (mean level)")
        if not 0.0 < self.peak_decay <= 1.0:
            raise ValueError("peak_decay must be in (0, 1]")

    def packed(self) -> np.ndarray:
        """Scalar parameters in the order the kernel reads them."""
        return np.array(
            [
                self.warmup,
                self.rel_floor,
                self.abs_floor,
                self.ewma_alpha,
                self.ewma_k,
                self.robust_k,
                self.iqr_k,
                self.hampel_k,
                self.cusum_alpha,
                self.cusum_k,
                self.cusum_h,
                self.cusum_clip,
                self.range_alpha,
                self.range_block_size,
                self.range_gamma,
                self.peak_decay,
                self.peak_floor,
                self.range_warmup,
                self.bg_alpha,
                self.bg_scale,
            ],
            dtype=np.float64,
        )


class Scored(NamedTuple):
    """Per-point ensemble output: score in [0, 1) (NaN for NaN/±inf input), detector code, direction."""

    score: np.ndarray  # float64[m]
    detector: np.ndarray  # int8[m], index into DETECTOR_NAMES
    direction: np.ndarray  # int8[m], +1 above / -1 below expectation, 0 none


@dataclass
class EnsembleState:
    """Per-series state of the ensemble: one row per series in each array, grown on demand.

    Row ``i`` belongs to whatever series the caller maps to index ``i``; a zero row is a fresh
    series (:meth:`reset` recycles rows). Memory per series with the defaults is about 3 KB.
    """

    params: EnsembleParams = field(default_factory=EnsembleParams)
    capacity: int = 0

    def __post_init__(self) -> None:
        p = self.params
        n = self.capacity
        self.ewma = np.zeros((n, K.EWMA_WIDTH))
        self.win_state = np.zeros((n, K.WINDOW_WIDTH))
        self.win = np.zeros((n, 2 * p.window))
        self.ham_state = np.zeros((n, K.WINDOW_WIDTH))
        self.ham = np.zeros((n, 2 * p.hampel_window))
        self.cusum = np.zeros((n, K.CUSUM_WIDTH))
        self.range_state = np.zeros((n, K.RANGE_WIDTH))
        self.range_blocks = np.zeros((n, 2 * p.range_blocks))
        self.peaks = np.zeros((n, 6))
        self.meta = np.zeros((n, _META_WIDTH))
        self._packed = p.packed()
        self._weights = np.asarray(p.weights, dtype=np.float64)
        self._norm_mode = np.asarray(p.norm_mode, dtype=np.float64)

    _ARRAYS = (
        "ewma",
        "win_state",
        "win",
        "ham_state",
        "ham",
        "cusum",
        "range_state",
        "range_blocks",
        "peaks",
        "meta",
    )

    def ensure(self, n_series: int) -> None:
        """Make room for series indices ``< n_series`` (capacity at least doubles when it grows)."""
        if n_series <= self.capacity:
            return
        new = max(n_series, 2 * self.capacity, 16)
        for name in self._ARRAYS:
            old = getattr(self, name)
            grown = np.zeros((new, old.shape[1]), dtype=old.dtype)
            grown[: old.shape[0]] = old
            setattr(self, name, grown)
        self.capacity = new

    def reset(self, rows: np.ndarray | list[int]) -> None:
        """Forget the given series rows (e.g. to reuse the rows of expired series)."""
        idx = np.asarray(rows, dtype=np.int64)
        for name in self._ARRAYS:
            getattr(self, name)[idx] = 0.0

    @property
    def points(self) -> np.ndarray:
        """Number of (non-NaN) values seen per series row."""
        return self.meta[:, 0]

    @property
    def last_seen(self) -> np.ndarray:
        """Latest event time (s) seen per series row (0 if none) — for expiring idle series."""
        return self.meta[:, 1]

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._ARRAYS)


def score_batch(
    state: EnsembleState,
    series_idx: np.ndarray,
    values: np.ndarray,
    timestamps_s: np.ndarray | None = None,
) -> Scored:
    """Score ``values[i]`` of series ``series_idx[i]`` in arrival order; state is updated in place.

    ``timestamps_s`` (event time, seconds) is recorded per series (``state.last_seen``); it does not
    change the scores — the detectors count points, not seconds.
    """
    idx = np.ascontiguousarray(series_idx, dtype=np.int64)
    vals = np.ascontiguousarray(values, dtype=np.float64)
    if idx.shape != vals.shape or idx.ndim != 1:
        raise ValueError("series_idx and values must be 1-D arrays of the same length")
    if timestamps_s is None:
        ts = np.zeros(vals.shape[0], dtype=np.float64)
    else:
        ts = np.ascontiguousarray(timestamps_s, dtype=np.float64)
        if ts.shape != vals.shape:
            raise ValueError("timestamps_s must have the same length as values")
    if idx.shape[0] == 0:
        return Scored(np.empty(0), np.empty(0, np.int8), np.empty(0, np.int8))
    lo = int(idx.min())
    hi = int(idx.max())
    if lo < 0:
        raise ValueError("series_idx must be >= 0")
    state.ensure(hi + 1)
    # With many series, group the points by series first (stable: each series keeps its arrival
    # order, so the result is identical): consecutive points then hit the same state rows instead of
    # missing the cache on every point (~1.5x faster at 10k series). The rows a batch touches fit in
    # cache when they span up to a couple of thousand series (~3 KB each); then sorting only costs.
    order = np.argsort(idx, kind="stable") if hi - lo >= GROUP_MIN_SPAN and idx.shape[0] > 1 else None
    if order is not None:
        idx, vals, ts = idx[order], vals[order], ts[order]
    score, detector, direction = ensemble_kernel(
        idx,
        vals,
        ts,
        state.ewma,
        state.win_state,
        state.win,
        state.ham_state,
        state.ham,
        state.cusum,
        state.range_state,
        state.range_blocks,
        state.peaks,
        state.meta,
        state._packed,
        state._weights,
        state._norm_mode,
    )
    if order is not None:
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0])
        score, detector, direction = score[inv], detector[inv], direction[inv]
    return Scored(score, detector, direction)


def score_series(values: np.ndarray, params: EnsembleParams | None = None) -> Scored:
    """Convenience: score one series from scratch (a fresh single-row state)."""
    state = EnsembleState(params or EnsembleParams(), capacity=1)
    vals = np.asarray(values, dtype=np.float64)
    return score_batch(state, np.zeros(vals.shape[0], dtype=np.int64), vals)


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel with the types used in production.

    Call it from a background thread at start-up; returns the seconds it took.
    """
    t0 = time.perf_counter()
    idx = np.zeros(4, dtype=np.int64)
    vals = np.array([1.0, 2.0, math.nan, 1.5])
    score_series(vals)
    p = EnsembleParams()
    warm, rel, absf = int(p.warmup), float(p.rel_floor), float(p.abs_floor)
    K.ewma_update(idx, vals, np.zeros((1, K.EWMA_WIDTH)), 0.02, warm, 4.0, rel, absf)
    K.robust_update(idx, vals, np.zeros((1, K.WINDOW_WIDTH)), np.zeros((1, 8)), warm, 4.0, rel, absf)
    K.iqr_update(idx, vals, np.zeros((1, K.WINDOW_WIDTH)), np.zeros((1, 8)), warm, 1.5, rel, absf)
    K.hampel_update(idx, vals, np.zeros((1, K.WINDOW_WIDTH)), np.zeros((1, 8)), warm, 3.0, rel, absf)
    K.cusum_update(idx, vals, np.zeros((1, K.CUSUM_WIDTH)), 0.01, warm, 0.5, 5.0, 3.0, rel, absf)
    K.range_update(idx, vals, np.zeros((1, K.RANGE_WIDTH)), np.zeros((1, 8)), 0.01, warm, 256, 1.0, rel, absf)
    return time.perf_counter() - t0


__all__ = [
    "DEFAULT_THRESHOLD",
    "DETECTOR_NAMES",
    "EnsembleParams",
    "EnsembleState",
    "Scored",
    "score_batch",
    "score_series",
    "warm_up",
]
