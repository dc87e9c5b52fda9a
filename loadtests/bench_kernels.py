"""Speed of the detection kernels: compile/cache-load time and µs per point.

    .venv/bin/python loadtests/bench_kernels.py [--points 1000000] [--series 1,100,10000] [--repeat 3]

* Start-up: ``warm_up()`` in a fresh interpreter with an empty numba cache directory (cold compile,
  what the first start of a new image pays), then again in another fresh interpreter with the cache
  now filled (every later start). Import time of the module is reported separately.
* Throughput: one batch of ``--points`` points spread uniformly at random over N series (so state
  rows are hit in random order, as in a gateway batch), through each detector's batch kernel and
  through the ensemble; best of ``--repeat`` runs, state carried over between runs (steady state).
  Reported in µs per point (each point updates exactly one series). ``score_batch`` groups a batch
  by series before the kernel (same result); "no grouping" calls the kernel on the raw order.
* False alerts: ensemble alerts per 100k points of stationary i.i.d. noise (Gaussian, Student t3,
  lognormal, Poisson) at the default threshold and two stricter ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from processors.detect import kernels as K  # noqa: E402
from processors.detect.ensemble import (  # noqa: E402
    DEFAULT_THRESHOLD,
    EnsembleParams,
    EnsembleState,
    score_batch,
    score_series,
    warm_up,
)
from processors.detect.kernels import ensemble_kernel  # noqa: E402

_CHILD = """
import json, time
t0 = time.perf_counter()
from processors.detect.ensemble import warm_up
t1 = time.perf_counter()
w = warm_up()
print(json.dumps({"import_s": t1 - t0, "warm_up_s": w}))
"""


def startup_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        out = {}
        for label in ("cold", "cached"):
            t0 = time.perf_counter()
            res = subprocess.run(
                [sys.executable, "-c", _CHILD],
                env=env,
                cwd=str(REPO),
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - t0
            data = json.loads(res.stdout.strip().splitlines()[-1])
            out[f"{label}_warm_up_s"] = round(data["warm_up_s"], 3)
            out[f"{label}_import_s"] = round(data["import_s"], 3)
            out[f"{label}_process_s"] = round(wall, 3)
    return out


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def throughput(n_points: int, n_series: int, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    idx = rng.integers(0, n_series, size=n_points).astype(np.int64)
    level = rng.uniform(10, 1000, size=n_series)
    vals = level[idx] * (1.0 + 0.1 * rng.standard_normal(n_points))
    spikes = rng.random(n_points) < 1e-3
    vals[spikes] *= 5.0
    p = EnsembleParams()
    warm, rel, absf = int(p.warmup), float(p.rel_floor), float(p.abs_floor)
    z = np.zeros
    ewma = z((n_series, K.EWMA_WIDTH))
    rob_s, rob_w = z((n_series, K.WINDOW_WIDTH)), z((n_series, 2 * p.window))
    iqr_s, iqr_w = z((n_series, K.WINDOW_WIDTH)), z((n_series, 2 * p.window))
    ham_s, ham_w = z((n_series, K.WINDOW_WIDTH)), z((n_series, 2 * p.hampel_window))
    cus = z((n_series, K.CUSUM_WIDTH))
    rng_s, rng_b = z((n_series, K.RANGE_WIDTH)), z((n_series, 2 * p.range_blocks))
    state = EnsembleState(p, capacity=n_series)
    state2 = EnsembleState(p, capacity=n_series)
    ts = np.zeros(n_points)
    runs: dict[str, Callable[[], object]] = {
        "ewma": lambda: K.ewma_update(idx, vals, ewma, 0.02, warm, 4.0, rel, absf),
        f"robust_z(w={p.window})": lambda: K.robust_update(idx, vals, rob_s, rob_w, warm, 4.0, rel, absf),
        f"iqr(w={p.window})": lambda: K.iqr_update(idx, vals, iqr_s, iqr_w, warm, 1.5, rel, absf),
        "cusum": lambda: K.cusum_update(idx, vals, cus, 0.01, warm, 0.5, 5.0, 3.0, rel, absf),
        f"hampel(w={p.hampel_window})": lambda: K.hampel_update(
            idx, vals, ham_s, ham_w, warm, 3.0, rel, absf
        ),
        "range": lambda: K.range_update(idx, vals, rng_s, rng_b, 0.01, warm, 256, 1.0, rel, absf),
        "ensemble (all six)": lambda: score_batch(state, idx, vals),
        "ensemble, no grouping": lambda: ensemble_kernel(
            idx,
            vals,
            ts,
            state2.ewma,
            state2.win_state,
            state2.win,
            state2.ham_state,
            state2.ham,
            state2.cusum,
            state2.range_state,
            state2.range_blocks,
            state2.peaks,
            state2.meta,
            state2._packed,
            state2._weights,
            state2._norm_mode,
        ),
    }
    out = {}
    for name, fn in runs.items():
        out[name] = round(best_of(fn, repeat) / n_points * 1e6, 4)
    out["ensemble_bytes_per_series"] = state.nbytes() // state.capacity
    return out


def noise_alert_rates(n: int = 200_000) -> dict[str, dict[str, float]]:
    """Ensemble alerts per 100k points on stationary i.i.d. noise (no anomalies), by threshold."""
    rng = np.random.default_rng(3)
    streams = {
        "gaussian": rng.standard_normal(n),
        "student_t3": rng.standard_t(3, size=n),
        "lognormal": rng.lognormal(size=n),
        "poisson(3)": rng.poisson(3.0, size=n).astype(np.float64),
    }
    out: dict[str, dict[str, float]] = {}
    for name, v in streams.items():
        s = score_series(v).score
        out[name] = {
            f"{t:g}": round(float(np.sum(s >= t)) / n * 1e5, 1) for t in (DEFAULT_THRESHOLD, 0.6, 0.7)
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--series", default="1,100,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    results: dict[str, object] = {}
    if not args.skip_startup:
        st = startup_times()
        results["startup"] = st
        print(
            f"start-up: cold warm_up() {st['cold_warm_up_s']:.2f} s (process {st['cold_process_s']:.2f} s), "
            f"cached warm_up() {st['cached_warm_up_s']:.3f} s (process {st['cached_process_s']:.2f} s), "
            f"import {st['cached_import_s']:.2f} s"
        )
    warm_up()  # this process: compile/load before timing
    table: dict[str, dict[str, float]] = {}
    for ns in (int(s) for s in args.series.split(",")):
        table[str(ns)] = throughput(args.points, ns, args.repeat)
    results["us_per_point"] = table
    cols = list(table)
    print(
        f"\nµs per point ({args.points} points per batch, best of {args.repeat}); columns = number of series"
    )
    print(f"{'kernel':<22}" + "".join(f"{c:>10}" for c in cols))
    for name in next(iter(table.values())):
        if name == "ensemble_bytes_per_series":
            continue
        print(f"{name:<22}" + "".join(f"{table[c][name]:>10.3f}" for c in cols))
    print(f"\nensemble state: {table[cols[0]]['ensemble_bytes_per_series']} bytes per series")
    rates = noise_alert_rates()
    results["noise_alerts_per_100k"] = rates
    print("\nensemble alerts per 100k points of i.i.d. noise (one series, no anomalies), by threshold")
    for name, r in rates.items():
        print(f"  {name:<12} " + "  ".join(f">= {t}: {v:6.1f}" for t, v in r.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
