"""The detector's cheaper building blocks give exactly what the straightforward forms give:
the counting/shifting sorted window and the one-search MAD (against numpy), the fused point
builder (against the numpy interleave it replaced), and the lateness buffer's in-order shortcut."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processors.detect import kernels as K
from processors.detect.call_kernels import value_points
from processors.detect.calls import METRICS, RATES, CallRows, LatenessBuffer


def _same_bits(a: float, b: float) -> bool:
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@pytest.mark.parametrize("w", [1, 2, 5, 16, 33, 128])
def test_window_median_and_mad_are_exactly_numpy(w: int) -> None:
    rng = np.random.default_rng(100 + w)
    for kind in range(4):
        row, buf = np.zeros(2), np.zeros(2 * w)
        hist: list[float] = []
        for _ in range(3 * w + 40):
            if kind == 0:
                x = float(rng.normal())
            elif kind == 1:
                x = float(rng.integers(0, 4))  # many ties
            elif kind == 2:
                x = round(float(rng.lognormal()), 1)
            else:
                x = float(rng.standard_cauchy())  # far outliers
            K.window_push(row, buf, w, x)
            hist.append(x)
            win = np.array(hist[-w:])
            f = win.shape[0]
            assert np.array_equal(buf[w : w + f], np.sort(win))
            med = K.sorted_median(buf, w, f)
            assert _same_bits(K.sorted_mad(buf, w, f, med), float(np.median(np.abs(win - med))))


def _points_reference(
    series: np.ndarray, values: np.ndarray, error: np.ndarray, t_ns: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The numpy interleave `Detector._score_values` used before `value_points`."""
    n, k = values.shape
    rows = (series[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    vals = np.stack([np.where(~error, values[:, j], np.nan) for j in range(k)], axis=1).reshape(-1)
    ts = np.repeat(t_ns / 1e9, k)
    point = np.repeat(np.arange(n), k)
    finite = np.isfinite(vals)
    rows, vals, ts, point = rows[finite], vals[finite], ts[finite], point[finite]
    before = seen[rows]
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    rank_sorted = np.arange(rows.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, rows.shape[0]]))
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rows, vals, ts, point, before + rank + 1


@pytest.mark.parametrize("seed", range(6))
def test_value_points_equals_the_numpy_interleave(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k, n_series = int(rng.integers(1, 400)), len(METRICS), int(rng.integers(1, 30))
    series = rng.integers(0, n_series, n).astype(np.int64)
    values = rng.lognormal(size=(n, k))
    values[rng.random((n, k)) < 0.1] = np.nan
    values[rng.random((n, k)) < 0.02] = np.inf
    values[rng.random((n, k)) < 0.02] = -np.inf
    error = rng.random(n) < 0.1
    t_ns = np.sort(rng.integers(1_700_000_000 * 10**9, 1_700_000_100 * 10**9, n)).astype(np.int64)
    seen = rng.integers(0, 1000, n_series * k).astype(np.float64)
    got = value_points(series, values, error, t_ns, seen)
    want = _points_reference(series, values, error, t_ns, seen)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        assert np.array_equal(g, w)


def _calls(t: list[int]) -> CallRows:
    n = len(t)
    return CallRows(
        t_ns=np.array(t, dtype=np.int64),
        key=np.zeros(n, dtype=np.int32),
        keys=[("svc", "openai", "chat", "gpt-4o")],
        model=np.zeros(n, dtype=np.int32),
        models=["gpt-4o-2024-08-06"],
        trace_hi=np.arange(n, dtype=np.uint64),
        trace_lo=np.arange(n, dtype=np.uint64),
        values=np.arange(n * len(METRICS), dtype=np.float64).reshape(n, len(METRICS)),
        flags=np.zeros((n, len(RATES)), dtype=np.bool_),
    )


@pytest.mark.parametrize(
    "chunks",
    [
        [[1, 2, 2, 5], [6, 6, 9]],  # in order: released as they are
        [[1, 5, 2], [3, 9]],  # out of order: sorted, arrival order breaking ties
        [[4, 4, 4], [4, 1]],
    ],
)
def test_release_order_with_and_without_the_in_order_shortcut(chunks: list[list[int]]) -> None:
    buf = LatenessBuffer()
    for c in chunks:
        buf.add(_calls(c))
    out = buf.release(5)
    arrival = [(t, i, j) for i, c in enumerate(chunks) for j, t in enumerate(c) if t <= 5]
    expected = sorted(arrival, key=lambda a: a[0])  # stable: arrival order among equal times
    assert out is not None
    assert out.t_ns.tolist() == [a[0] for a in expected]
    assert out.trace_hi.tolist() == [a[2] for a in expected]
