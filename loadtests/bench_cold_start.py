"""Cold start: process start (`sentinel run`) → first `/readyz` 200, with warm and cold numba caches.

    .venv/bin/python -m loadtests.bench_cold_start [--runs 5] [--configs default,bench]
        [--no-cold] [--importtime]

Why /readyz: it turns 200 only once every receiver listens and the detection kernels are
loaded (a cold numba cache compiles them first), which is when a pod may get traffic.

Configs: `default` is the embedded default config (loopback, free ports via the
SENTINEL_*_ENDPOINT variables, data in a temporary SENTINEL_DATA_DIR); `bench` is the
full-pipeline config of loadtests/otlp_load.py. Each config is started `--runs` times with
the numba caches as they are (warm after the first run ever), and once with
NUMBA_CACHE_DIR pointing at an empty directory (cold: every kernel compiles), unless
`--no-cold`. Prints min / median / max seconds, and the median CPU seconds of the gateway
process up to readiness (on a shared machine wall time includes waiting for a core).
`--importtime` adds the ten slowest top-level imports of one warm start.

Warm also means warm bytecode: an installed package has its .pyc files (pip compiles them),
but a dev checkout run with PYTHONDONTWRITEBYTECODE=1 recompiles every module of the project
at each start. The gateway is started without that variable (the first, uncounted start
writes the repo's __pycache__, which git ignores) unless `--no-pyc`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from loadtests.otlp_load import LOOPBACK, free_port, gateway_config

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


def command() -> list[str]:
    exe = Path(sys.executable).with_name("sentinel")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/readyz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_once(
    config: str, tmp: Path, *, cold: bool, pyc: bool = True, importtime: bool = False
) -> tuple[float, float]:
    """Seconds from spawning the process to the first /readyz 200, and the CPU seconds it used
    by then (on a shared machine wall time includes waiting for a core; CPU time does not)."""
    http, grpc_port, admin = free_port(), free_port(), free_port()
    env = dict(os.environ, SENTINEL_DATA_DIR=str(tmp / "data"))
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    argv = [*command(), "run"]
    if config == "default":
        env |= {
            "SENTINEL_HTTP_ENDPOINT": f"{LOOPBACK}:{http}",
            "SENTINEL_GRPC_ENDPOINT": f"{LOOPBACK}:{grpc_port}",
            "SENTINEL_ADMIN_ENDPOINT": f"{LOOPBACK}:{admin}",
        }
    else:
        cfg = tmp / "bench.yaml"
        cfg.write_text(yaml.safe_dump(gateway_config("full", http, grpc_port, admin)))
        argv += ["--config", str(cfg)]
    if cold:
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba_cold_", dir=tmp)
    if importtime:
        argv = [sys.executable, "-X", "importtime", "-m", "gateway", "run", *argv[argv.index("run") + 1 :]]
    err = (tmp / "stderr.txt").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not ready(admin):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {proc.returncode}: {(tmp / 'stderr.txt').read_text()}"
                )
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("gateway not ready within 600 s")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        cpu = psutil.Process(proc.pid).cpu_times()
        return wall, cpu.user + cpu.system
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        err.close()


def slowest_imports(stderr: Path, n: int = 10) -> list[tuple[float, str]]:
    """Top-level imports (the first level below the interpreter) by cumulative time."""
    rows = []
    for line in stderr.read_text(errors="replace").splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if name.startswith(" ") and not name.startswith("  "):
            try:
                rows.append((int(cumulative) / 1e6, name.strip()))
            except ValueError:
                continue
    return sorted(rows, reverse=True)[:n]


def summary(name: str, runs: list[tuple[float, float]]) -> str:
    wall = [w for w, _ in runs]
    cpu = [c for _, c in runs]
    median = statistics.median(wall)
    verdict = "ok" if median < TARGET_S else "MISSES"
    return (
        f"{name:<13} n={len(runs):<2} wall min {min(wall):.2f} / median {median:.2f} / max {max(wall):.2f} s"
        f"  {verdict} (< {TARGET_S:g} s) | CPU median {statistics.median(cpu):.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="warm starts per config")
    ap.add_argument("--configs", default="default,bench", help="comma-separated: default, bench")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache start")
    ap.add_argument("--importtime", action="store_true", help="slowest imports of one warm start")
    ap.add_argument("--no-pyc", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as it is")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cold_start_"))
    pyc = not args.no_pyc
    try:
        for config in args.configs.split(","):
            start_once(config, tmp, cold=False, pyc=pyc)  # page cache and numba cache warm, not counted
            warm = [start_once(config, tmp, cold=False, pyc=pyc) for _ in range(args.runs)]
            print(summary(f"{config} warm", warm), flush=True)
            if not args.no_cold:
                print(summary(f"{config} cold", [start_once(config, tmp, cold=True, pyc=pyc)]), flush=True)
            if args.importtime:
                start_once(config, tmp, cold=False, pyc=pyc, importtime=True)
                print(f"  slowest imports ({config}, cumulative):")
                for seconds, name in slowest_imports(tmp / "stderr.txt"):
                    print(f"    {seconds * 1000:7.1f} ms  {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
