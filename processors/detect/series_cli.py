"""``replay --series``: score one NAB-format time series offline with the detection ensemble.

Input: a CSV with a header containing ``timestamp`` and ``value`` (NAB format: ``2014-04-10 07:15:00``
timestamps; ISO-8601 or epoch seconds are accepted too). Output: ``timestamp,value,anomaly_score``,
one row per input row in input order (the score is empty where the value is missing or not a number).
Scores come from the same kernel the gateway uses, on a single series, in file order; the
timestamps are event time only (nothing looks ahead). Optionally a PNG plot (matplotlib, Agg backend)
shows the series with the points at or above the default threshold marked, and the score below it.

A progress bar goes to stderr for inputs of more than ``PROGRESS_MIN_ROWS`` rows (redrawn at most
10 times a second).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

from processors.detect.ensemble import (
    DEFAULT_THRESHOLD,
    DETECTOR_NAMES,
    EnsembleParams,
    EnsembleState,
    score_batch,
)

PROGRESS_MIN_ROWS = 50_000
CHUNK = 65_536


class Progress:
    """A one-line text progress bar on a stream, redrawn at most every ``interval`` seconds."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None, interval: float = 0.1) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._last = 0.0
        self._start = time.monotonic()
        self.draws = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        width = 30
        fill = int(frac * width)
        rate = self.done / max(now - self._start, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
            f"{self.done}/{self.total} ({rate:,.0f}/s)"
        )
        self.stream.flush()
        self.draws += 1

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _event_seconds(stamps: list[str]) -> np.ndarray:
    """Timestamps to float seconds: datetime strings (NAB/ISO-8601) or epoch seconds."""
    if not stamps:
        return np.empty(0, dtype=np.float64)
    try:
        return np.array([float(s) for s in stamps], dtype=np.float64)
    except ValueError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about (and ignores) a 'Z' suffix
            dt = np.array([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[us]")
    except ValueError as exc:
        raise ValueError(f"unrecognised timestamp format (e.g. {stamps[0]!r})") from exc
    return dt.astype(np.int64).astype(np.float64) / 1e6


def _parse_value(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return math.nan


def _read(in_csv: Path, show: bool) -> tuple[list[str], list[str], np.ndarray]:
    size = in_csv.stat().st_size
    stamps: list[str] = []
    raw_values: list[str] = []
    bar = Progress(size, "reading") if show else None
    with open(in_csv, encoding="utf-8", newline="") as fh:
        first = fh.readline()
        header = [h.strip().lower() for h in first.strip().split(",")]
        try:
            ti, vi = header.index("timestamp"), header.index("value")
        except ValueError as exc:
            raise ValueError(f"{in_csv}: header must contain 'timestamp' and 'value', got {header}") from exc
        need = max(ti, vi)
        pending = len(first)
        for line in fh:
            pending += len(line)
            line = line.strip()
            if line:
                parts = line.split(",")
                if len(parts) <= need:
                    raise ValueError(f"{in_csv}: row {len(stamps) + 1} has {len(parts)} fields: {line!r}")
                stamps.append(parts[ti].strip())
                raw_values.append(parts[vi].strip())
            if bar is not None and pending >= 1 << 16:
                bar.update(pending)
                pending = 0
        if bar is not None:
            bar.update(pending)
            bar.close()
    values = np.array([_parse_value(v) for v in raw_values], dtype=np.float64)
    return stamps, raw_values, values


def replay_series(
    in_csv: str | Path,
    out_csv: str | Path,
    plot_png: str | Path | None = None,
    progress: bool = True,
    params: EnsembleParams | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Score ``in_csv`` (``timestamp,value``) and write ``timestamp,value,anomaly_score`` to ``out_csv``.

    Returns a summary: ``rows``, ``scored`` (rows with a numeric value), ``anomalies`` (score >=
    ``threshold``), ``threshold``, ``by_detector`` (anomalies per contributing detector),
    ``seconds`` (wall time of the whole replay), ``out_csv`` and ``plot_png``.
    """
    t0 = time.perf_counter()
    in_path, out_path = Path(in_csv), Path(out_csv)
    est_rows = in_path.stat().st_size // 24  # NAB rows are ~25-30 bytes
    show = progress and est_rows >= PROGRESS_MIN_ROWS
    stamps, raw_values, values = _read(in_path, show)
    n = len(stamps)
    show = progress and n >= PROGRESS_MIN_ROWS
    times = _event_seconds(stamps)

    state = EnsembleState(params or EnsembleParams(), capacity=1)
    scores = np.empty(n, dtype=np.float64)
    detectors = np.zeros(n, dtype=np.int8)
    bar = Progress(n, "scoring") if show else None
    with open(out_path, "w", encoding="utf-8", newline="") as out:
        out.write("timestamp,value,anomaly_score\n")
        for a in range(0, n, CHUNK):
            b = min(a + CHUNK, n)
            res = score_batch(state, np.zeros(b - a, dtype=np.int64), values[a:b], times[a:b])
            scores[a:b] = res.score
            detectors[a:b] = res.detector
            out.writelines(
                f"{stamps[i]},{raw_values[i]},{'' if math.isnan(s) else repr(float(s))}\n"
                for i, s in zip(range(a, b), res.score.tolist(), strict=True)
            )
            if bar is not None:
                bar.update(b - a)
    if bar is not None:
        bar.close()

    hits = scores >= threshold  # NaN compares False
    summary: dict[str, Any] = {
        "rows": n,
        "scored": int(np.sum(~np.isnan(scores))),
        "anomalies": int(np.sum(hits)),
        "threshold": threshold,
        "by_detector": {
            DETECTOR_NAMES[d]: int(np.sum(hits & (detectors == d)))
            for d in range(1, len(DETECTOR_NAMES))
            if np.any(hits & (detectors == d))
        },
        "out_csv": str(out_path),
        "plot_png": None,
    }
    if plot_png is not None:
        _plot(Path(plot_png), times, values, scores, threshold, in_path.name)
        summary["plot_png"] = str(plot_png)
    summary["seconds"] = round(time.perf_counter() - t0, 4)
    return summary


def _plot(
    path: Path, times: np.ndarray, values: np.ndarray, scores: np.ndarray, threshold: float, title: str
) -> None:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = times.astype("datetime64[s]") if times.size and np.all(np.isfinite(times)) else np.arange(values.size)
    hits = scores >= threshold
    fig, (ax_v, ax_s) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax_v.plot(x, values, lw=0.6, color="0.2", label="value")
    if np.any(hits):
        ax_v.scatter(x[hits], values[hits], s=18, color="red", zorder=3, label=f"score ≥ {threshold:g}")
    ax_v.set_title(f"{title}: {int(np.sum(hits))} anomalies")
    ax_v.legend(loc="upper left", fontsize=8)
    ax_s.plot(x, scores, lw=0.6, color="tab:blue")
    ax_s.axhline(threshold, color="red", lw=0.8, ls="--")
    ax_s.set_ylim(0, 1)
    ax_s.set_ylabel("anomaly score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score a timestamp,value CSV with the detection ensemble.")
    ap.add_argument("in_csv")
    ap.add_argument("out_csv")
    ap.add_argument("--plot", metavar="PNG", help="also write a plot of the series and its anomalies")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    summary = replay_series(
        args.in_csv, args.out_csv, args.plot, progress=not args.no_progress, threshold=args.threshold
    )
    print(
        f"{summary['rows']} rows, {summary['anomalies']} anomalies (score >= {summary['threshold']:g}) "
        f"{summary['by_detector']} in {summary['seconds']:.2f} s -> {summary['out_csv']}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
