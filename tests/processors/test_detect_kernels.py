"""Streaming detection kernels and their ensemble: what each catches, what it ignores, batch semantics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from processors.detect import kernels as K
from processors.detect.ensemble import (
    DEFAULT_THRESHOLD,
    DET_CUSUM,
    DET_RANGE,
    DETECTOR_NAMES,
    EnsembleParams,
    EnsembleState,
    score_batch,
    score_series,
    warm_up,
)

WARM = 30
REL = 1e-3
ABS = 1e-9

Result = tuple[np.ndarray, np.ndarray]


@dataclass
class Det:
    """A detector under test: fresh state for n series, and the batch call."""

    make: Callable[[int], tuple[np.ndarray, ...]]
    call: Callable[[np.ndarray, np.ndarray, tuple[np.ndarray, ...]], Result]


def _win(w: int) -> Callable[[int], tuple[np.ndarray, ...]]:
    return lambda n: (np.zeros((n, K.WINDOW_WIDTH)), np.zeros((n, 2 * w)))


DETECTORS: dict[str, Det] = {
    "ewma": Det(
        lambda n: (np.zeros((n, K.EWMA_WIDTH)),),
        lambda i, v, s: K.ewma_update(i, v, s[0], 0.02, WARM, 4.0, REL, ABS),
    ),
    "robust_z": Det(_win(64), lambda i, v, s: K.robust_update(i, v, s[0], s[1], WARM, 4.0, REL, ABS)),
    # outer fence (k = 3) for the quiet-on-noise property: the inner fence flags ~0.7% of Gaussian data
    "iqr": Det(_win(64), lambda i, v, s: K.iqr_update(i, v, s[0], s[1], WARM, 3.0, REL, ABS)),
    "cusum": Det(
        lambda n: (np.zeros((n, K.CUSUM_WIDTH)),),
        lambda i, v, s: K.cusum_update(i, v, s[0], 0.01, WARM, 0.75, 10.0, 3.0, REL, ABS),
    ),
    # w = 32 here: the MAD of 16 Gaussian values is too noisy for a max-score quietness check
    "hampel": Det(_win(32), lambda i, v, s: K.hampel_update(i, v, s[0], s[1], WARM, 3.0, REL, ABS)),
    "range": Det(
        lambda n: (np.zeros((n, K.RANGE_WIDTH)), np.zeros((n, 2 * 8))),
        lambda i, v, s: K.range_update(i, v, s[0], s[1], 0.01, WARM, 64, 1.0, REL, ABS),
    ),
}
ALL = sorted(DETECTORS)
POINT = [d for d in ALL if d != "cusum"]  # CUSUM scores persistence, not single points


def run(name: str, values: np.ndarray, state: tuple[np.ndarray, ...] | None = None) -> Result:
    det = DETECTORS[name]
    st = det.make(1) if state is None else state
    v = np.asarray(values, dtype=np.float64)
    return det.call(np.zeros(v.shape[0], dtype=np.int64), v, st)


def noise(n: int, seed: int = 0, level: float = 100.0) -> np.ndarray:
    return level + np.random.default_rng(seed).standard_normal(n)


def ensemble_scores(values: np.ndarray) -> np.ndarray:
    return score_series(values).score


# ------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("w", [1, 2, 3, 8, 17, 64])
def test_sorted_window_matches_numpy(w: int) -> None:
    rng = np.random.default_rng(w)
    row, buf = np.zeros(2), np.zeros(2 * w)
    hist: list[float] = []
    for t in range(4 * w + 20):
        x = float(rng.integers(0, 4)) if t % 3 else float(rng.standard_t(2))  # ties and outliers
        K.window_push(row, buf, w, x)
        hist.append(x)
        win = np.array(hist[-w:])
        f = win.shape[0]
        assert np.array_equal(buf[w : w + f], np.sort(win))
        med = K.sorted_median(buf, w, f)
        assert med == np.median(win)
        assert K.sorted_mad(buf, w, f, med) == pytest.approx(np.median(np.abs(win - med)), abs=1e-12)
        for q in (0.25, 0.75):
            assert K.sorted_quantile(buf, w, f, q) == pytest.approx(np.quantile(win, q), abs=1e-12)


def test_squash_is_monotone_unsaturated_and_centred() -> None:
    assert K.squash(0.0) == 0.0
    assert K.squash(-1.0) == 0.0
    assert K.squash(math.nan) == 0.0
    assert K.squash(1.0) == 0.5
    us = np.concatenate([np.linspace(1e-3, 3, 500), np.logspace(0.5, 300, 500)])
    s = np.array([K.squash(u) for u in us])
    assert np.all(np.diff(s) > 0)
    assert s[-1] < 1.0  # even at u = 1e300
    assert 0.53 < K.squash(1.05) < 0.56 and 0.78 < K.squash(2.0) < 0.8


# ---------------------------------------------------------------------------- what each catches


@pytest.mark.parametrize("name", POINT)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_detector_catches_a_spike_with_its_direction(name: str, sign: float) -> None:
    v = noise(600, seed=1)
    v[500] += sign * 15.0
    score, direction = run(name, v)
    assert score[500] >= 0.5
    assert direction[500] == int(sign)
    assert score[500] == np.max(score)


@pytest.mark.parametrize("sign", [1, -1])
def test_cusum_catches_a_small_sustained_shift_and_its_direction(sign: int) -> None:
    v = noise(1200, seed=2)
    v[800:] += sign * 2.0  # 2 sigma: invisible point by point
    score, direction = run("cusum", v)
    assert np.max(score[:800]) < 0.5
    first = 800 + int(np.argmax(score[800:] >= 0.5))
    assert score[first] >= 0.5 and first < 820
    assert direction[first] == sign
    # the point detectors do not see a 2 sigma shift at all
    for name in ("robust_z", "hampel", "iqr"):
        assert np.max(run(name, v)[0][800:820]) < 0.5


def test_cusum_ignores_a_lone_spike_and_grows_with_shift_size() -> None:
    v = noise(600, seed=1)
    v[500] += 1e6
    assert run("cusum", v)[0][500] < 0.5  # winsorised increment
    base = noise(900, seed=23)
    after = []
    for shift in (1.0, 1.5, 2.0, 2.5):
        w = base.copy()
        w[800:] += shift
        after.append(run("cusum", w)[0][815])
    assert np.all(np.diff(after) > 0)


@pytest.mark.parametrize("name", ["ewma", "robust_z", "range"])
def test_large_level_shift_is_flagged_at_once(name: str) -> None:
    v = noise(800, seed=3)
    v[600:] += 12.0
    score, direction = run(name, v)
    assert score[600] >= 0.5 and direction[600] == 1


def test_hampel_follows_a_trend_and_flags_a_spike_on_it() -> None:
    rng = np.random.default_rng(4)
    v = 0.1 * np.arange(1000) + rng.standard_normal(1000)
    clean, _ = run("hampel", v)
    assert np.max(clean[WARM:]) < 0.5  # the trailing median keeps up with the trend
    v[700] += 20.0
    spiky, direction = run("hampel", v)
    assert spiky[700] >= 0.5 and direction[700] == 1


def test_range_alerts_once_per_episode() -> None:
    v = noise(2000, seed=5)
    v[1500:1505] = 130.0  # the same excursion five times
    score, _ = run("range", v)
    assert score[1500] > DEFAULT_THRESHOLD
    assert np.all(score[1501:1505] <= 0.5)  # equal to the new extreme: not a new breakout


# ---------------------------------------------------------------------------- what each ignores


@pytest.mark.parametrize("name", ALL)
def test_quiet_on_stationary_noise(name: str) -> None:
    v = noise(4000, seed=6)
    score, _ = run(name, v)
    if name == "range":
        # a record of the recent range happens by chance about twice per window length
        assert np.mean(score[WARM:] >= DEFAULT_THRESHOLD) < 0.005
    else:
        # alarm levels are ~4-6 sigma: a handful of chance alarms in 4000 points at most
        assert np.mean(score[WARM:] >= 0.5) < 0.002
        assert np.median(score[WARM:]) < 0.05
    assert np.all(score[:WARM] == 0.0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("level", [42.0, 0.0, -3.5e6])
def test_flat_line_and_tiny_wiggles_stay_quiet(name: str, level: float) -> None:
    v = np.full(1500, level)
    assert np.all(run(name, v)[0] == 0.0)
    # a wiggle far below the series' magnitude (or below the absolute floor at 0)
    wiggle = v.copy()
    wiggle[1000::7] += max(abs(level) * 1e-8, 1e-12)
    assert np.max(run(name, wiggle)[0]) < 0.5


@pytest.mark.parametrize("name", POINT)
def test_flat_line_then_real_jump_is_flagged(name: str) -> None:
    v = np.full(1500, 42.0)
    v[1200] = 46.2  # +10%: far beyond the relative MAD floor
    assert run(name, v)[0][1200] >= 0.5


def test_ensemble_quiet_on_noise_and_flat_lines() -> None:
    s = ensemble_scores(noise(6000, seed=7))
    assert np.mean(s >= DEFAULT_THRESHOLD) < 0.005
    assert np.all(ensemble_scores(np.full(3000, 5.0)) == 0.0)


# ------------------------------------------------------------------------------- score properties


def _spike_scores(fn: Callable[[np.ndarray], np.ndarray], sizes: list[float]) -> np.ndarray:
    base = noise(700, seed=8)
    out = []
    for size in sizes:
        v = base.copy()
        v[650] += size
        out.append(fn(v)[650])
    return np.array(out)


SIZES = [12.0, 20.0, 50.0, 100.0, 1e3, 1e6, 1e9, 1e12]


@pytest.mark.parametrize("name", POINT)
def test_scores_in_unit_interval_and_increasing_with_spike_size(name: str) -> None:
    s = _spike_scores(lambda v: run(name, v)[0], SIZES)
    assert np.all(s >= 0.5) and np.all(s < 1.0)  # no saturation, even at 1e12 sigma
    assert np.all(np.diff(s) > 0)
    full, _ = run(name, noise(700, seed=8))
    assert np.all((full >= 0.0) & (full < 1.0))


def test_ensemble_scores_unsaturated_and_increasing() -> None:
    s = _spike_scores(ensemble_scores, SIZES)
    assert np.all(s > DEFAULT_THRESHOLD) and np.all(s < 1.0)
    assert np.all(np.diff(s) > 0)


# ------------------------------------------------------------------------------- batch semantics


def _three_series() -> list[np.ndarray]:
    a = noise(900, seed=9)
    a[700] += 20
    b = np.concatenate([np.full(300, 7.0), 7.0 + 0.1 * np.random.default_rng(10).standard_normal(500)])
    b[600:] += 3.0
    c = 1e6 * noise(700, seed=11, level=10.0)
    c[400] = np.nan
    return [a, b, c]


def _interleave(series: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Random arrival order that keeps each series' own order; returns idx, values, positions."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(len(s), k) for k, s in enumerate(series)])
    rng.shuffle(labels)
    idx = labels.astype(np.int64)
    vals = np.empty(idx.shape[0])
    pos = [np.flatnonzero(idx == k) for k in range(len(series))]
    for k, s in enumerate(series):
        vals[pos[k]] = s
    # map series k to row 2k+1 to exercise non-contiguous rows
    return 2 * idx + 1, vals, pos


def _batches(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=12, replace=False))
    edges = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("name", ALL)
def test_interleaved_batches_equal_separate_series(name: str) -> None:
    series = _three_series()
    idx, vals, pos = _interleave(series, seed=12)
    det = DETECTORS[name]
    state = det.make(7)
    score = np.empty(vals.shape[0])
    direction = np.empty(vals.shape[0], dtype=np.int8)
    for sl in _batches(vals.shape[0], seed=13):
        s, d = det.call(idx[sl], vals[sl], state)
        score[sl], direction[sl] = s, d
    for k, s in enumerate(series):
        alone_s, alone_d = run(name, s)
        assert np.array_equal(score[pos[k]], alone_s, equal_nan=True)
        assert np.array_equal(direction[pos[k]], alone_d)
    assert np.all(state[0][[0, 2, 4, 6]] == 0.0)  # untouched rows stay fresh


def test_ensemble_interleaved_batches_equal_separate_series() -> None:
    series = _three_series()
    idx, vals, pos = _interleave(series, seed=14)
    state = EnsembleState()
    ts = np.arange(vals.shape[0], dtype=np.float64)
    parts = [score_batch(state, idx[sl], vals[sl], ts[sl]) for sl in _batches(vals.shape[0], seed=15)]
    score = np.concatenate([p.score for p in parts])
    detector = np.concatenate([p.detector for p in parts])
    direction = np.concatenate([p.direction for p in parts])
    for k, s in enumerate(series):
        alone = score_series(s)
        assert np.array_equal(score[pos[k]], alone.score, equal_nan=True)
        assert np.array_equal(detector[pos[k]], alone.detector)
        assert np.array_equal(direction[pos[k]], alone.direction)
        assert state.points[2 * k + 1] == np.sum(np.isfinite(s))
        assert state.last_seen[2 * k + 1] == ts[pos[k]].max()
    assert np.all(state.points[[0, 2, 4, 6]] == 0)


@pytest.mark.parametrize("name", [*ALL, "ensemble"])
def test_nan_and_inf_are_skipped(name: str) -> None:
    clean = noise(500, seed=16)
    clean[450] += 20
    dirty = np.insert(clean, [100, 300, 300, 460], [np.nan, np.inf, -np.inf, np.nan])
    bad = ~np.isfinite(dirty)
    if name == "ensemble":
        r_clean, r_dirty = score_series(clean), score_series(dirty)
        assert np.array_equal(r_dirty.score[~bad], r_clean.score)
        assert np.all(np.isnan(r_dirty.score[bad])) and np.all(r_dirty.detector[bad] == 0)
        assert np.all(r_dirty.direction[bad] == 0)
        return
    s_clean, d_clean = run(name, clean)
    s_dirty, d_dirty = run(name, dirty)
    assert np.array_equal(s_dirty[~bad], s_clean) and np.array_equal(d_dirty[~bad], d_clean)
    assert np.all(np.isnan(s_dirty[bad])) and np.all(d_dirty[bad] == 0)


@pytest.mark.parametrize("name", ALL)
def test_warm_up_is_respected(name: str) -> None:
    v = noise(200, seed=17)
    v[1:WARM:2] = 1e9  # wild values inside the warm-up
    v[2:WARM:2] = -1e9
    score, direction = run(name, v)
    assert np.all(score[:WARM] == 0.0) and np.all(direction[:WARM] == 0)


def test_ensemble_warm_up_is_respected() -> None:
    p = EnsembleParams()
    v = noise(400, seed=18)
    v[5 : p.warmup : 3] = 1e9
    s = score_series(v).score
    assert np.all(s[: p.warmup] == 0.0)


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name: str) -> None:
    v = noise(800, seed=19)
    v[600] += 30
    a, b = run(name, v), run(name, v)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --------------------------------------------------------------------------------------- ensemble


def test_ensemble_attribution_and_direction() -> None:
    v = noise(3000, seed=20)
    v[2000] += 25.0
    v[2500] -= 25.0
    r = score_series(v)
    assert r.score[2000] > DEFAULT_THRESHOLD and r.direction[2000] == 1
    assert r.score[2500] > DEFAULT_THRESHOLD and r.direction[2500] == -1
    assert r.detector[2000] == DET_RANGE and DETECTOR_NAMES[r.detector[2000]] == "range"
    assert set(np.unique(r.detector)) <= set(range(len(DETECTOR_NAMES)))
    assert np.all(r.detector[r.score == 0.0] == 0)


def test_ensemble_cusum_attribution_for_a_shift_inside_a_wide_range() -> None:
    # a bursty history keeps the range wide, so a sustained small shift is a CUSUM signal
    rng = np.random.default_rng(21)
    v = 100 + rng.standard_normal(5000)
    v[1000:3000:200] += 40.0
    v[4000:] += 3.0
    r = score_series(v)
    hits = np.flatnonzero(r.score[4000:4200] > DEFAULT_THRESHOLD)
    assert hits.size > 0
    first = 4000 + hits[0]
    assert r.detector[first] == DET_CUSUM and r.direction[first] == 1


def test_ensemble_state_grows_and_resets() -> None:
    v = noise(600, seed=22)
    state = EnsembleState(capacity=0)
    first = score_batch(state, np.zeros(300, dtype=np.int64), v[:300])
    assert state.capacity >= 1
    score_batch(state, np.array([500], dtype=np.int64), np.array([1.0]))  # grows
    assert state.capacity >= 501
    rest = score_batch(state, np.zeros(300, dtype=np.int64), v[300:])
    whole = score_series(v)
    assert np.array_equal(np.concatenate([first.score, rest.score]), whole.score)
    assert state.nbytes() > 0
    state.reset([0])
    assert state.points[0] == 0 and state.points[500] == 1
    again = score_batch(state, np.zeros(300, dtype=np.int64), v[:300])
    assert np.array_equal(again.score, first.score)


def test_score_batch_validates_input() -> None:
    state = EnsembleState()
    with pytest.raises(ValueError):
        score_batch(state, np.zeros(3, dtype=np.int64), np.zeros(2))
    with pytest.raises(ValueError):
        score_batch(state, np.array([-1]), np.array([1.0]))
    with pytest.raises(ValueError):
        score_batch(state, np.zeros(2, dtype=np.int64), np.zeros(2), np.zeros(3))
    empty = score_batch(state, np.zeros(0, dtype=np.int64), np.zeros(0))
    assert empty.score.shape == (0,)
    with pytest.raises(ValueError):
        EnsembleParams(weights=(1.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EnsembleParams(window=1)


def test_warm_up_runs() -> None:
    assert warm_up() >= 0.0
