"""NAB (Numenta Anomaly Benchmark) scores and speed of the detectors.

    .venv/bin/python loadtests/bench_nab.py [--nab ../shared/data/nab] [--batch 4096] [--json out.json]

Detectors:

* ``ensemble`` — ``processors.detect.ensemble`` with its defaults. All 58 series go through ONE
  ``EnsembleState``, interleaved in event-time order (ties by file) and cut into batches of
  ``--batch`` points, as the gateway would feed them; the timing covers the ``score_batch`` calls
  only. The per-file scores are checked to be identical to scoring each file alone.
* ``windowed_gaussian`` — NAB's published baseline (``processors.detect.nab.windowed_gaussian``).
* ``ewma_z`` — EWMA z-score (α = 0.02), the untuned streaming baseline of SCORING.md.
* ``range``, ``robust_z``, ``iqr``, ``hampel``, ``ewma``, ``cusum`` — one detector of the ensemble
  alone (its batch kernel, ensemble default parameters), to show what each contributes.

For each: normalised NAB score per profile (standard / reward_low_FP_rate / reward_low_FN_rate)
with the oracle threshold (the corpus-wide sweep the scoreboard uses) and with a fixed, untuned
threshold (ours: ``DEFAULT_THRESHOLD``; baselines: the score of |z| = 4), plus wall time and
µs per point. Timestamps are used as event time only: every score depends on earlier rows only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from processors.detect import kernels as K  # noqa: E402
from processors.detect.ensemble import (  # noqa: E402
    DEFAULT_THRESHOLD,
    DETECTOR_NAMES,
    EnsembleParams,
    EnsembleState,
    score_batch,
    score_series,
    warm_up,
)
from processors.detect.nab import PROFILES, NabFile, Scorer, load_corpus, windowed_gaussian  # noqa: E402

Z4_SQUASHED = 0.5  # kernels' score at the alarm level (k_alarm = 4 -> |z| = 4)
Z4_GAUSSIAN = 1.0 - 3.167124183311998e-05  # 1 - Q(4)


def run_ensemble(files: list[NabFile], batch: int) -> tuple[list[np.ndarray], float, dict[str, int]]:
    # event time; a file's rows keep their order (one file has a clock step back: use its running max)
    stamps = np.concatenate([np.maximum.accumulate(f.timestamps_s) for f in files])
    series = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(files)])
    rows = np.concatenate([np.arange(len(f), dtype=np.int64) for f in files])
    values = np.concatenate([f.values for f in files])
    order = np.lexsort((rows, series, stamps))  # event time, then file, then row
    idx, vals, ts = series[order], values[order], stamps[order]
    state = EnsembleState(capacity=len(files))
    out = np.empty(vals.shape[0])
    dets = np.empty(vals.shape[0], dtype=np.int8)
    t0 = time.perf_counter()
    for a in range(0, vals.shape[0], batch):
        res = score_batch(state, idx[a : a + batch], vals[a : a + batch], ts[a : a + batch])
        out[a : a + batch] = res.score
        dets[a : a + batch] = res.detector
    elapsed = time.perf_counter() - t0
    per_row = np.empty_like(out)
    per_row[order] = out
    bounds = np.cumsum([0] + [len(f) for f in files])
    scores = [per_row[bounds[i] : bounds[i + 1]] for i in range(len(files))]
    attributed = {DETECTOR_NAMES[d]: int(np.sum(dets[out >= DEFAULT_THRESHOLD] == d)) for d in range(7)}
    return scores, elapsed, attributed


def run_gaussian(files: list[NabFile]) -> tuple[list[np.ndarray], float]:
    windowed_gaussian(np.zeros(3), 6400, 100)  # compile outside the timing
    t0 = time.perf_counter()
    scores = [windowed_gaussian(f.values, 6400, 100) for f in files]
    return scores, time.perf_counter() - t0


def run_ewma(files: list[NabFile]) -> tuple[list[np.ndarray], float]:
    def one(v: np.ndarray) -> np.ndarray:
        state = np.zeros((1, K.EWMA_WIDTH))
        return K.ewma_update(np.zeros(v.shape[0], dtype=np.int64), v, state, 0.02, 1, 4.0, 0.0, 1e-12)[0]

    one(np.zeros(3))
    t0 = time.perf_counter()
    scores = [one(f.values) for f in files]
    return scores, time.perf_counter() - t0


def run_kernel(files: list[NabFile], name: str) -> tuple[list[np.ndarray], float]:
    """One detector of the ensemble on its own, with the ensemble's default parameters."""
    p = EnsembleParams()
    warm, rel, absf = int(p.warmup), float(p.rel_floor), float(p.abs_floor)

    def one(v: np.ndarray) -> np.ndarray:
        i = np.zeros(v.shape[0], dtype=np.int64)
        z = np.zeros
        if name == "ewma":
            return K.ewma_update(i, v, z((1, K.EWMA_WIDTH)), p.ewma_alpha, warm, p.ewma_k, rel, absf)[0]
        if name == "robust_z":
            st, win = z((1, K.WINDOW_WIDTH)), z((1, 2 * p.window))
            return K.robust_update(i, v, st, win, warm, p.robust_k, rel, absf)[0]
        if name == "iqr":
            st, win = z((1, K.WINDOW_WIDTH)), z((1, 2 * p.window))
            return K.iqr_update(i, v, st, win, warm, p.iqr_k, rel, absf)[0]
        if name == "hampel":
            st, win = z((1, K.WINDOW_WIDTH)), z((1, 2 * p.hampel_window))
            return K.hampel_update(i, v, st, win, warm, p.hampel_k, rel, absf)[0]
        if name == "cusum":
            st = z((1, K.CUSUM_WIDTH))
            return K.cusum_update(
                i, v, st, p.cusum_alpha, warm, p.cusum_k, p.cusum_h, p.cusum_clip, rel, absf
            )[0]
        if name == "range":
            st, blocks = z((1, K.RANGE_WIDTH)), z((1, 2 * p.range_blocks))
            return K.range_update(
                i,
                v,
                st,
                blocks,
                p.range_alpha,
                int(p.range_warmup),
                int(p.range_block_size),
                p.range_gamma,
                rel,
                absf,
            )[0]
        raise ValueError(name)

    one(np.zeros(3))
    t0 = time.perf_counter()
    scores = [one(f.values) for f in files]
    return scores, time.perf_counter() - t0


KERNELS = ("range", "robust_z", "iqr", "hampel", "ewma", "cusum")


def evaluate(scorer: Scorer, scores: list[np.ndarray], threshold: float) -> dict[str, Any]:
    res = scorer.evaluate(scores, fixed_threshold=threshold)
    out: dict[str, Any] = {}
    for prof, r in res.items():
        o, f = r["oracle"], r["fixed"]
        out[prof] = {
            "oracle": round(o.normalized, 2),
            "oracle_threshold": o.threshold,
            "oracle_detected": o.detected_windows,
            "oracle_fp": o.false_positives,
            "fixed": round(f.normalized, 2),
            "fixed_threshold": threshold,
            "fixed_detected": f.detected_windows,
            "fixed_fp": f.false_positives,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", default=str(REPO.parent / "shared" / "data" / "nab"), help="NAB root")
    ap.add_argument("--batch", type=int, default=4096, help="points per score_batch call")
    ap.add_argument(
        "--detectors",
        default="ensemble,windowed_gaussian,ewma_z",
        help="comma list of: ensemble, windowed_gaussian, ewma_z, " + ", ".join(KERNELS) + " (one "
        "ensemble detector alone, default parameters) or 'all'",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the interleaved == per-file check")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    files = load_corpus(args.nab)
    n_points = sum(len(f) for f in files)
    scorer = Scorer(files)
    print(
        f"NAB corpus {args.nab}: {len(files)} files, {n_points} rows, {scorer.n_windows} windows "
        f"(loaded in {time.perf_counter() - t0:.2f} s)"
    )
    t0 = time.perf_counter()
    compile_s = warm_up()
    print(f"warm_up(): {compile_s:.2f} s (numba compile or cache load)")

    results: dict[str, Any] = {}
    wanted = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if wanted == ["all"]:
        wanted = ["ensemble", "windowed_gaussian", "ewma_z", *KERNELS]
    for name in wanted:
        extra: dict[str, Any] = {}
        if name == "ensemble":
            scores, elapsed, attributed = run_ensemble(files, args.batch)
            threshold = DEFAULT_THRESHOLD
            extra["alerts_by_detector"] = attributed
            if not args.no_check:
                same = all(
                    np.array_equal(s, score_series(f.values).score, equal_nan=True)
                    for s, f in zip(scores, files, strict=True)
                )
                extra["interleaved_equals_per_file"] = same
        elif name == "windowed_gaussian":
            scores, elapsed = run_gaussian(files)
            threshold = Z4_GAUSSIAN
        elif name == "ewma_z":
            scores, elapsed = run_ewma(files)
            threshold = Z4_SQUASHED
        elif name in KERNELS:
            scores, elapsed = run_kernel(files, name)
            threshold = DEFAULT_THRESHOLD
        else:
            ap.error(f"unknown detector {name!r}")
        t1 = time.perf_counter()
        ev = evaluate(scorer, scores, threshold)
        score_s = time.perf_counter() - t1
        results[name] = {
            "profiles": ev,
            "seconds": round(elapsed, 4),
            "us_per_point": round(elapsed / n_points * 1e6, 4),
            "scoring_seconds": round(score_s, 3),
            **extra,
        }

    print()
    head = (
        f"{'detector':<18} {'profile':<19} {'oracle':>7} {'(thr)':>9} {'det/fp':>9}  "
        f"{'fixed':>7} {'det/fp':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        for prof in PROFILES:
            p = r["profiles"][prof]
            print(
                f"{name:<18} {prof:<19} {p['oracle']:7.1f} {p['oracle_threshold']:9.4f} "
                f"{p['oracle_detected']:>4}/{p['oracle_fp']:<4}  {p['fixed']:7.1f} "
                f"{p['fixed_detected']:>4}/{p['fixed_fp']:<4}"
            )
    print()
    for name, r in results.items():
        line = f"{name:<18} {r['seconds']:.3f} s, {r['us_per_point']:.3f} µs/point"
        if "interleaved_equals_per_file" in r:
            line += f", interleaved == per-file: {r['interleaved_equals_per_file']}"
        print(line)
        if "alerts_by_detector" in r:
            print(f"{'':<18} alerts (score >= {DEFAULT_THRESHOLD}) by detector: {r['alerts_by_detector']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
