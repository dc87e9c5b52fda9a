"""NAB-compatible scoring (Numenta Anomaly Benchmark) and the windowed-Gaussian baseline.

Scoring follows the published method (see the corpus' SCORING.md):

* Probation: the first ``min(floor(0.15·n), 750)`` rows of each file are never scored.
* A detection is a row whose anomaly score is ``>= threshold`` (NaN never detects).
* Inside a labelled window only the earliest detection counts. It is worth ``A_TP·σ(y)/σ(−1)`` with
  ``σ(y) = 2/(1+e^{5y}) − 1`` and ``y = −(right − i + 1)/width`` (``−1`` at the left edge, just above
  ``0`` at the right edge), so the earliest possible detection is worth exactly ``A_TP``. A window
  without any detection costs ``−A_FN``.
* A detection outside every window is worth ``A_FP·σ(y)`` with ``y = (i − right_prev)/(width_prev − 1)``,
  the distance past the previous window relative to its width; with no earlier window it is ``−A_FP``.
  As in the reference implementation, ``σ(y)`` is taken as exactly ``−1`` for ``y >= 3``.
* Normalised score ``100·(S − S_null)/(S_perfect − S_null)`` with ``S_perfect = n_windows·A_TP`` and
  ``S_null = −n_windows·A_FN`` (the detector that never fires).

The oracle threshold (what the public scoreboard reports) is found by one sort of all scores of the
corpus followed by a single pass from the highest score down (:func:`sweep`): every row changes the
total by a known amount when the threshold drops below its score (an FP adds its weight; a window's
value only improves when an earlier row of it is detected), so all distinct thresholds are scored in
``O(N log N)``.

:func:`windowed_gaussian` is NAB's "windowedGaussian" baseline (published 39.6 / 20.9 / 47.4): the
score of a value is ``1 − Q(|z|)`` where ``z`` is its z-score against the mean and standard deviation of
up to 6400 preceding values, which are refreshed after every value while the window fills and then every
100 values (the window slides by that step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit


@dataclass(frozen=True)
class Profile:
    """Weights of a NAB application profile."""

    tp: float
    fn: float
    fp: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fn=1.0, fp=0.11),
    "reward_low_FP_rate": Profile(tp=1.0, fn=1.0, fp=0.22),
    "reward_low_FN_rate": Profile(tp=1.0, fn=2.0, fp=0.11),
}

KIND_PROBATION = 0
KIND_WINDOW = 1
KIND_OUTSIDE = 2


def scaled_sigmoid(y: float) -> float:
    """σ(y) = 2/(1+e^{5y}) − 1, and exactly −1 for y >= 3 (far past a window)."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are not scored."""
    return min(math.floor(0.15 * n_rows), 750)


# --------------------------------------------------------------------------------------------- corpus


@dataclass
class NabFile:
    """One data file with its labelled windows as inclusive row-index pairs."""

    name: str
    timestamps: np.ndarray  # datetime64[s]
    values: np.ndarray  # float64
    windows: list[tuple[int, int]] = field(default_factory=list)

    @property
    def timestamps_s(self) -> np.ndarray:
        """Event time in seconds since the epoch (float64)."""
        return self.timestamps.astype("datetime64[s]").astype(np.int64).astype(np.float64)

    def __len__(self) -> int:
        return int(self.values.shape[0])


def read_series_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NAB-format ``timestamp,value`` CSV into (datetime64[s] array, float64 array)."""
    stamps: list[str] = []
    values: list[float] = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
        try:
            ti, vi = header.index("timestamp"), header.index("value")
        except ValueError as exc:
            raise ValueError(f"{path}: expected a 'timestamp,value' header, got {header}") from exc
        for line in fh:
            line = line.strip()
            if not line:
                continue
            parts = line.split(",")
            stamps.append(parts[ti].strip())
            raw = parts[vi].strip()
            values.append(float(raw) if raw else math.nan)
    return parse_timestamps(stamps), np.asarray(values, dtype=np.float64)


def parse_timestamps(stamps: Sequence[str]) -> np.ndarray:
    """NAB timestamps ('2014-04-10 07:15:00[.000000]') to datetime64[s]."""
    return np.array([s.replace(" ", "T") for s in stamps], dtype="datetime64[us]").astype("datetime64[s]")


def window_indices(timestamps: np.ndarray, windows: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Map label windows (timestamp pairs) to inclusive row ranges of a file."""
    out: list[tuple[int, int]] = []
    for start, end in windows:
        t0, t1 = parse_timestamps([start, end])
        left = int(np.searchsorted(timestamps, t0, side="left"))
        right = int(np.searchsorted(timestamps, t1, side="right")) - 1
        if left <= right:
            out.append((left, right))
    return out


def load_corpus(
    root: str | Path, windows_file: str = "labels/combined_windows.json", data_dir: str = "data"
) -> list[NabFile]:
    """Load every file listed in the windows JSON (NAB layout: ``data/<category>/<file>.csv``)."""
    root = Path(root)
    with open(root / windows_file, encoding="utf-8") as fh:
        labels: dict[str, list[list[str]]] = json.load(fh)
    files: list[NabFile] = []
    for name in sorted(labels):
        ts, vals = read_series_csv(root / data_dir / name)
        files.append(NabFile(name=name, timestamps=ts, values=vals, windows=window_indices(ts, labels[name])))
    return files


# -------------------------------------------------------------------------------------------- scoring


@dataclass
class RowLayout:
    """Per-row scoring facts of one file, independent of the detector and the profile.

    ``kind``: 0 probation (never scored), 1 inside a window, 2 outside every window.
    ``unit``: inside a window σ(y)/σ(−1) (the A_TP multiplier); outside σ(y) (the A_FP multiplier,
    −1 before the first window). ``window``: file-local window index of the row, or −1.
    """

    kind: np.ndarray
    unit: np.ndarray
    window: np.ndarray
    n_windows: int


def row_layout(n_rows: int, windows: Sequence[tuple[int, int]]) -> RowLayout:
    kind = np.full(n_rows, KIND_OUTSIDE, dtype=np.int8)
    unit = np.full(n_rows, -1.0, dtype=np.float64)
    window = np.full(n_rows, -1, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    ordered = sorted(windows)
    for w, (left, right) in enumerate(ordered):
        width = right - left + 1
        for i in range(left, right + 1):
            kind[i] = KIND_WINDOW
            window[i] = w
            unit[i] = scaled_sigmoid(-(right - i + 1) / width) / max_tp
        end = ordered[w + 1][0] if w + 1 < len(ordered) else n_rows
        span = max(width - 1, 1)
        for i in range(right + 1, end):
            unit[i] = scaled_sigmoid((i - right) / span)
    kind[: probation_length(n_rows)] = KIND_PROBATION
    return RowLayout(kind=kind, unit=unit, window=window, n_windows=len(ordered))


@dataclass
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    normalized: float
    detected_windows: int
    missed_windows: int
    false_positives: int


def normalize(raw: float, n_windows: int, profile: Profile) -> float:
    s_null = -n_windows * profile.fn
    s_perfect = n_windows * profile.tp
    if s_perfect == s_null:
        return 0.0
    return 100.0 * (raw - s_null) / (s_perfect - s_null)


def score_file(scores: np.ndarray, layout: RowLayout, profile: Profile, threshold: float) -> float:
    """Raw NAB score of one file at a fixed threshold (direct, non-sweep computation)."""
    scores = np.asarray(scores, dtype=np.float64)
    hit = (scores >= threshold) & (layout.kind != KIND_PROBATION)  # NaN compares False
    total = float(np.sum(layout.unit[hit & (layout.kind == KIND_OUTSIDE)])) * profile.fp
    for w in range(layout.n_windows):
        in_w = hit & (layout.window == w)
        if np.any(in_w):
            total += profile.tp * float(np.max(layout.unit[in_w]))
        else:
            total -= profile.fn
    return total


@njit(cache=True, nogil=True)
def _sweep_kernel(order, scores, kind, unit, window, n_windows, a_tp, a_fn, a_fp):  # pragma: no cover
    n = order.shape[0]
    thr = np.empty(n, dtype=np.float64)
    tot = np.empty(n, dtype=np.float64)
    det = np.empty(n, dtype=np.int64)
    fps = np.empty(n, dtype=np.int64)
    best = np.full(n_windows, -np.inf)
    total = -n_windows * a_fn
    n_det = 0
    n_fp = 0
    g = 0
    for k in range(n):
        i = order[k]
        kd = kind[i]
        if kd == 2:
            total += a_fp * unit[i]
            n_fp += 1
        elif kd == 1:
            w = window[i]
            u = unit[i]
            if best[w] == -np.inf:
                total += a_fn + a_tp * u
                best[w] = u
                n_det += 1
            elif u > best[w]:
                total += a_tp * (u - best[w])
                best[w] = u
        s = scores[i]
        if k == n - 1 or scores[order[k + 1]] != s:
            thr[g] = s
            tot[g] = total
            det[g] = n_det
            fps[g] = n_fp
            g += 1
    return thr[:g], tot[:g], det[:g], fps[:g]


@dataclass
class Sweep:
    """Total raw score for every distinct threshold (descending), with counts."""

    thresholds: np.ndarray
    totals: np.ndarray
    detected: np.ndarray
    false_positives: np.ndarray
    n_windows: int
    profile: Profile

    def at(self, threshold: float) -> tuple[float, int, int]:
        """(raw, detected windows, FPs) with detections = rows with score >= threshold."""
        # thresholds are descending; the last group whose threshold is >= `threshold`
        k = int(np.searchsorted(-self.thresholds, -threshold, side="right")) - 1
        if k < 0:
            return -self.n_windows * self.profile.fn, 0, 0
        return float(self.totals[k]), int(self.detected[k]), int(self.false_positives[k])

    def best(self) -> tuple[float, float, int, int]:
        """(threshold, raw, detected, FPs) maximising the total; the null detector if nothing beats it."""
        null = -self.n_windows * self.profile.fn
        if self.totals.shape[0] == 0 or float(np.max(self.totals)) <= null:
            return math.inf, null, 0, 0
        k = int(np.argmax(self.totals))
        return (
            float(self.thresholds[k]),
            float(self.totals[k]),
            int(self.detected[k]),
            int(self.false_positives[k]),
        )


class Scorer:
    """Scores detector outputs over a fixed corpus; the per-row layout is computed once."""

    def __init__(self, files: Sequence[NabFile]) -> None:
        self.files = list(files)
        kinds, units, wins = [], [], []
        offset = 0
        self.layouts: list[RowLayout] = []
        for f in self.files:
            lay = row_layout(len(f), f.windows)
            self.layouts.append(lay)
            kinds.append(lay.kind)
            units.append(lay.unit)
            wins.append(np.where(lay.window >= 0, lay.window + offset, -1))
            offset += lay.n_windows
        self.n_windows = offset
        self.kind = np.concatenate(kinds) if kinds else np.empty(0, np.int8)
        self.unit = np.concatenate(units) if units else np.empty(0, np.float64)
        self.window = np.concatenate(wins) if wins else np.empty(0, np.int64)

    def _concat(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        if len(scores) != len(self.files):
            raise ValueError(f"expected {len(self.files)} score arrays, got {len(scores)}")
        for f, s in zip(self.files, scores, strict=True):
            if len(s) != len(f):
                raise ValueError(f"{f.name}: {len(s)} scores for {len(f)} rows")
        if not scores:
            return np.empty(0, np.float64)
        return np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])

    def sweep(self, scores: Sequence[np.ndarray], profile: Profile) -> Sweep:
        allscores = self._concat(scores)
        candidates = np.flatnonzero((self.kind != KIND_PROBATION) & ~np.isnan(allscores))
        order = candidates[np.argsort(-allscores[candidates], kind="stable")]
        thr, tot, det, fps = _sweep_kernel(
            order,
            allscores,
            self.kind,
            self.unit,
            self.window,
            self.n_windows,
            profile.tp,
            profile.fn,
            profile.fp,
        )
        return Sweep(thr, tot, det, fps, self.n_windows, profile)

    def evaluate(
        self,
        scores: Sequence[np.ndarray],
        fixed_threshold: float | None = None,
        profiles: Mapping[str, Profile] = PROFILES,
    ) -> dict[str, dict[str, ProfileResult]]:
        """Per profile: ``{"oracle": ProfileResult, "fixed": ProfileResult}`` (fixed only if given)."""
        out: dict[str, dict[str, ProfileResult]] = {}
        for name, prof in profiles.items():
            sw = self.sweep(scores, prof)
            thr, raw, det, fps = sw.best()
            res = {"oracle": self._result(name, prof, thr, raw, det, fps)}
            if fixed_threshold is not None:
                raw_f, det_f, fps_f = sw.at(fixed_threshold)
                res["fixed"] = self._result(name, prof, fixed_threshold, raw_f, det_f, fps_f)
            out[name] = res
        return out

    def _result(self, name: str, prof: Profile, thr: float, raw: float, det: int, fps: int) -> ProfileResult:
        return ProfileResult(
            profile=name,
            threshold=thr,
            raw=raw,
            normalized=normalize(raw, self.n_windows, prof),
            detected_windows=det,
            missed_windows=self.n_windows - det,
            false_positives=fps,
        )

    def per_file(self, scores: Sequence[np.ndarray], profile: Profile, threshold: float) -> list[float]:
        """Raw score of each file at one threshold (for diagnostics)."""
        return [score_file(s, lay, profile, threshold) for s, lay in zip(scores, self.layouts, strict=True)]


# ------------------------------------------------------------------------------- windowed Gaussian


@njit(cache=True, nogil=True)
def windowed_gaussian(values, window=6400, step=100):  # pragma: no cover
    """NAB's windowedGaussian on one series: ``1 − Q(|z|)`` against the preceding window.

    While fewer than ``window`` values have been seen, every value joins the window and the mean and
    standard deviation (population) are refreshed; afterwards values are buffered and the window
    slides by ``step`` values at a time. The first value scores 0; a zero deviation is replaced by
    1e-6. NaN values score NaN and are not added.
    """
    n = values.shape[0]
    out = np.empty(n, dtype=np.float64)
    buf = np.empty(window, dtype=np.float64)
    pending = np.empty(step, dtype=np.float64)
    filled = 0
    head = 0
    n_pending = 0
    mean = 0.0
    std = 1.0
    m2 = 0.0
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    for i in range(n):
        x = values[i]
        if math.isnan(x):
            out[i] = math.nan
            continue
        if filled > 0:
            z = abs(x - mean) / std
            out[i] = 1.0 - 0.5 * math.erfc(z * inv_sqrt2)
        else:
            out[i] = 0.0
        if filled < window:
            buf[filled] = x
            filled += 1
            # Welford running moments while filling (same values as a full recompute)
            d = x - mean if filled > 1 else x
            if filled == 1:
                mean = x
                m2 = 0.0
            else:
                mean += d / filled
                m2 += d * (x - mean)
            std = math.sqrt(max(m2, 0.0) / filled)
            if std == 0.0:
                std = 1e-6
        else:
            pending[n_pending] = x
            n_pending += 1
            if n_pending == step:
                for j in range(step):
                    buf[head] = pending[j]
                    head += 1
                    if head == window:
                        head = 0
                n_pending = 0
                s = 0.0
                for j in range(window):
                    s += buf[j]
                mean = s / window
                s2 = 0.0
                for j in range(window):
                    d2 = buf[j] - mean
                    s2 += d2 * d2
                std = math.sqrt(s2 / window)
                if std == 0.0:
                    std = 1e-6
    return out
