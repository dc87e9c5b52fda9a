"""NAB-compatible scorer, windowed-Gaussian baseline and the single-series replay.

All expected values are computed by hand from the scoring rules (SCORING.md); the fixtures in
tests/fixtures/nab are tiny synthetic files in the NAB layout.
"""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from processors.detect.nab import (
    KIND_OUTSIDE,
    KIND_PROBATION,
    KIND_WINDOW,
    PROFILES,
    NabFile,
    Scorer,
    load_corpus,
    normalize,
    probation_length,
    read_series_csv,
    row_layout,
    scaled_sigmoid,
    score_file,
    windowed_gaussian,
)
from processors.detect.series_cli import Progress, replay_series

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nab"
STD = PROFILES["standard"]


def sigma(y: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@pytest.fixture(scope="module")
def corpus() -> list[NabFile]:
    return load_corpus(FIXTURES)


def by_name(files: list[NabFile], name: str) -> NabFile:
    return next(f for f in files if f.name == name)


def hits(n: int, rows: list[int]) -> np.ndarray:
    s = np.zeros(n)
    s[rows] = 1.0
    return s


# ------------------------------------------------------------------------------------ basic rules


def test_scaled_sigmoid_exact_values() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(2.0 / (1.0 + math.exp(-5.0)) - 1.0, abs=1e-15)
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661429815, abs=1e-11)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828363995, abs=1e-11)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661429815, abs=1e-11)
    assert scaled_sigmoid(2.9) == pytest.approx(2.0 / (1.0 + math.exp(14.5)) - 1.0, abs=1e-15)
    assert scaled_sigmoid(3.0) == -1.0  # clamped far past a window
    ys = np.linspace(-1, 2.99, 50)
    vals = [scaled_sigmoid(y) for y in ys]
    assert all(a > b for a, b in itertools.pairwise(vals))  # strictly decreasing


def test_probation_length() -> None:
    assert probation_length(40) == 6
    assert probation_length(1000) == 150
    assert probation_length(5000) == 750
    assert probation_length(22695) == 750
    assert probation_length(3) == 0


def test_load_corpus_maps_windows_to_rows(corpus: list[NabFile]) -> None:
    assert [f.name for f in corpus] == [
        "synthetic/missed.csv",
        "synthetic/one_window.csv",
        "synthetic/spike.csv",
    ]
    assert by_name(corpus, "synthetic/one_window.csv").windows == [(20, 29)]
    assert by_name(corpus, "synthetic/missed.csv").windows == [(15, 24)]
    spike = by_name(corpus, "synthetic/spike.csv")
    assert spike.windows == [(340, 379)] and len(spike) == 400 and spike.values[350] == 25.0
    ts = spike.timestamps_s
    assert np.all(np.diff(ts) == 300.0)


def test_row_layout_units() -> None:
    lay = row_layout(40, [(20, 29)])
    assert np.all(lay.kind[:6] == KIND_PROBATION)
    assert np.all(lay.kind[6:20] == KIND_OUTSIDE) and np.all(lay.kind[30:] == KIND_OUTSIDE)
    assert np.all(lay.kind[20:30] == KIND_WINDOW)
    assert lay.unit[20] == pytest.approx(1.0, abs=1e-15)  # left edge worth exactly A_TP
    assert lay.unit[25] == pytest.approx(sigma(-0.5) / sigma(-1.0), abs=1e-15)
    assert lay.unit[29] == pytest.approx(sigma(-0.1) / sigma(-1.0), abs=1e-15)
    assert lay.unit[10] == -1.0  # no earlier window
    assert lay.unit[34] == pytest.approx(sigma(5 / 9), abs=1e-15)


# ---------------------------------------------------------------------------- hand-computed files


def test_detection_at_left_edge_is_a_tp(corpus: list[NabFile]) -> None:
    f = by_name(corpus, "synthetic/one_window.csv")
    lay = row_layout(len(f), f.windows)
    assert score_file(hits(40, [20]), lay, STD, 0.5) == pytest.approx(1.0, abs=1e-12)


def test_only_earliest_detection_in_window_counts() -> None:
    lay = row_layout(40, [(20, 29)])
    expected = sigma(-0.5) / sigma(-1.0)
    assert score_file(hits(40, [25, 27, 29]), lay, STD, 0.5) == pytest.approx(expected, abs=1e-12)


def test_false_positive_before_any_window_costs_a_fp() -> None:
    lay = row_layout(40, [(20, 29)])
    assert score_file(hits(40, [10, 20]), lay, STD, 0.5) == pytest.approx(1.0 - 0.11, abs=1e-12)
    low_fp = PROFILES["reward_low_FP_rate"]
    assert score_file(hits(40, [10, 20]), lay, low_fp, 0.5) == pytest.approx(1.0 - 0.22, abs=1e-12)


def test_false_positive_after_window_is_scaled() -> None:
    lay = row_layout(40, [(20, 29)])
    expected = 1.0 + 0.11 * sigma((34 - 29) / (10 - 1))
    assert score_file(hits(40, [20, 34]), lay, STD, 0.5) == pytest.approx(expected, abs=1e-12)


def test_probation_rows_are_ignored() -> None:
    lay = row_layout(40, [(20, 29)])
    assert score_file(hits(40, [0, 2, 5, 20]), lay, STD, 0.5) == pytest.approx(1.0, abs=1e-12)
    assert score_file(hits(40, [0, 2, 5]), lay, STD, 0.5) == pytest.approx(-1.0, abs=1e-12)


def test_missed_window_costs_a_fn(corpus: list[NabFile]) -> None:
    f = by_name(corpus, "synthetic/missed.csv")
    lay = row_layout(len(f), f.windows)
    assert score_file(np.zeros(40), lay, STD, 0.5) == -1.0
    assert score_file(np.zeros(40), lay, PROFILES["reward_low_FN_rate"], 0.5) == -2.0


def test_nan_scores_never_detect() -> None:
    lay = row_layout(40, [(20, 29)])
    s = np.full(40, np.nan)
    s[25] = 1.0
    assert score_file(s, lay, STD, 0.5) == pytest.approx(sigma(-0.5) / sigma(-1.0), abs=1e-12)


def test_corpus_scores_and_normalisation(corpus: list[NabFile]) -> None:
    scorer = Scorer(corpus)
    assert scorer.n_windows == 3
    # one_window: TP at left edge + FP before the window + FP after; missed: FN; spike: TP at 350
    scores = [
        np.zeros(40),
        hits(40, [10, 20, 34]),
        hits(400, [350]),
    ]
    raw_one = 1.0 - 0.11 + 0.11 * sigma(5 / 9)
    raw_spike = sigma(-(379 - 350 + 1) / 40) / sigma(-1.0)
    expected_raw = -1.0 + raw_one + raw_spike
    res = scorer.evaluate(scores, fixed_threshold=0.5)
    fixed = res["standard"]["fixed"]
    assert fixed.raw == pytest.approx(expected_raw, abs=1e-12)
    assert fixed.normalized == pytest.approx(100 * (expected_raw + 3) / 6, abs=1e-9)
    assert (fixed.detected_windows, fixed.missed_windows, fixed.false_positives) == (2, 1, 2)
    low_fn = res["reward_low_FN_rate"]["fixed"]
    assert low_fn.raw == pytest.approx(expected_raw - 1.0, abs=1e-12)
    assert low_fn.normalized == pytest.approx(100 * (expected_raw - 1.0 + 6) / 9, abs=1e-9)
    # the oracle can only do better than a fixed threshold
    assert res["standard"]["oracle"].raw >= fixed.raw - 1e-12


def test_null_and_perfect_detectors(corpus: list[NabFile]) -> None:
    scorer = Scorer(corpus)
    null = [np.zeros(len(f)) for f in corpus]
    perfect = [hits(len(f), [w[0] for w in f.windows]) for f in corpus]
    for name, prof in PROFILES.items():
        r_null = scorer.evaluate(null, fixed_threshold=0.5, profiles={name: prof})[name]
        assert r_null["fixed"].normalized == pytest.approx(0.0, abs=1e-12)
        assert r_null["oracle"].normalized == pytest.approx(0.0, abs=1e-12)
        r_perf = scorer.evaluate(perfect, fixed_threshold=0.5, profiles={name: prof})[name]
        assert r_perf["fixed"].normalized == pytest.approx(100.0, abs=1e-9)
        assert r_perf["oracle"].normalized == pytest.approx(100.0, abs=1e-9)
        assert r_perf["oracle"].threshold == 1.0
    assert normalize(-3.0, 3, STD) == 0.0 and normalize(3.0, 3, STD) == 100.0


def test_sweep_matches_brute_force_at_every_threshold(corpus: list[NabFile]) -> None:
    rng = np.random.default_rng(3)
    scorer = Scorer(corpus)
    # coarse scores so that there are ties
    scores = [np.round(rng.random(len(f)), 2) for f in corpus]
    scores[2][350] = 0.995
    for prof in PROFILES.values():
        sw = scorer.sweep(scores, prof)
        assert np.all(np.diff(sw.thresholds) < 0)  # distinct, descending
        for thr, total in zip(sw.thresholds, sw.totals, strict=True):
            brute = sum(scorer.per_file(scores, prof, float(thr)))
            assert total == pytest.approx(brute, abs=1e-9)
        # between two thresholds the lower-threshold group is not included
        mid = 0.5 * (sw.thresholds[3] + sw.thresholds[4])
        assert sw.at(mid)[0] == pytest.approx(sum(scorer.per_file(scores, prof, mid)), abs=1e-9)
        assert sw.at(2.0)[0] == -3 * prof.fn
        best_thr, best_raw, _, _ = sw.best()
        assert best_raw == pytest.approx(max(sw.totals.max(), -3 * prof.fn))
        assert best_raw == pytest.approx(sum(scorer.per_file(scores, prof, best_thr)), abs=1e-9)


def test_scorer_rejects_wrong_lengths(corpus: list[NabFile]) -> None:
    scorer = Scorer(corpus)
    with pytest.raises(ValueError):
        scorer.sweep([np.zeros(3)], STD)
    with pytest.raises(ValueError):
        scorer.sweep([np.zeros(40), np.zeros(40), np.zeros(399)], STD)


# ------------------------------------------------------------------------------ windowed Gaussian


def reference_windowed_gaussian(values: np.ndarray, window: int, step: int) -> np.ndarray:
    """Straightforward re-statement of the published algorithm (recomputes mean/std each update)."""
    data: list[float] = []
    buffer: list[float] = []
    mean, std = 0.0, 1.0
    out = []
    for x in values:
        score = 0.0
        if data:
            z = abs(x - mean) / std
            score = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
        out.append(score)
        if len(data) < window:
            data.append(x)
            mean, std = float(np.mean(data)), float(np.std(data)) or 1e-6
        else:
            buffer.append(x)
            if len(buffer) == step:
                data = data[step:] + buffer
                buffer = []
                mean, std = float(np.mean(data)), float(np.std(data)) or 1e-6
    return np.array(out)


def test_windowed_gaussian_matches_reference() -> None:
    rng = np.random.default_rng(11)
    v = rng.normal(50, 5, size=300)
    v[200] = 120.0
    got = windowed_gaussian(v, 10, 3)
    ref = reference_windowed_gaussian(v, 10, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    assert got[0] == 0.0


def test_windowed_gaussian_constant_then_spike() -> None:
    v = np.full(50, 7.0)
    v[40] = 8.0
    s = windowed_gaussian(v, 20, 5)
    assert s[0] == 0.0
    assert np.all(s[1:40] == 0.5)  # z = 0 -> 1 - Q(0)
    assert s[40] > 0.999


# -------------------------------------------------------------------------------- series replay


def test_read_series_csv(corpus: list[NabFile]) -> None:
    ts, vals = read_series_csv(FIXTURES / "data" / "synthetic" / "spike.csv")
    assert ts.dtype == np.dtype("datetime64[s]") and vals.shape == (400,)
    assert str(ts[0]) == "2020-01-01T00:00:00"


def test_replay_series_writes_scores(tmp_path: Path) -> None:
    src = FIXTURES / "data" / "synthetic" / "spike.csv"
    out = tmp_path / "scored.csv"
    summary = replay_series(src, out, progress=True)
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score"
    assert len(lines) == 401 and summary["rows"] == 400 and summary["scored"] == 400
    rows = [ln.split(",") for ln in lines[1:]]
    src_rows = [ln.split(",") for ln in src.read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == src_rows  # timestamp and value passed through unchanged
    scores = np.array([float(r[2]) for r in rows])
    assert np.all((scores >= 0) & (scores < 1))
    assert int(np.argmax(scores)) == 350
    assert summary["anomalies"] >= 1 and summary["seconds"] >= 0
    assert summary["anomalies"] == int(np.sum(scores >= summary["threshold"]))


def test_replay_series_handles_missing_values_and_epoch_times(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("timestamp,value\n1600000000,1.0\n1600000060,\n1600000120,abc\n1600000180,2.0\n")
    out = tmp_path / "out.csv"
    summary = replay_series(src, out, progress=False)
    lines = out.read_text().splitlines()[1:]
    assert [ln.split(",")[2] for ln in lines] == ["0.0", "", "", "0.0"]
    assert summary["rows"] == 4 and summary["scored"] == 2


def test_replay_series_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    summary = replay_series(
        FIXTURES / "data" / "synthetic" / "spike.csv", tmp_path / "o.csv", png, progress=False
    )
    assert summary["plot_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_is_throttled() -> None:
    buf = io.StringIO()
    bar = Progress(1000, "x", stream=buf, interval=3600.0)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert bar.draws <= 2  # first update + close, not one per update
    assert buf.getvalue().endswith("\n") and "100.0%" in buf.getvalue()
