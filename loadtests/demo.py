"""`make demo`: the gateway on its default config, fed 90 s of synthetic LLM traffic.

Starts `sentinel run` (embedded default config), waits for /readyz, plays the
traffic generator's demo (60x real time, one anomaly of each type), prints the
alerts the admin API holds, then stops the gateway gracefully.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ADMIN = "http://127.0.0.1:8888"


def ready(timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{ADMIN}/readyz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    sentinel = Path(sys.executable).with_name("sentinel")
    gateway = subprocess.Popen([str(sentinel), "run"])
    try:
        if not ready():
            print("demo: the gateway did not become ready (is port 4317/4318/8888 in use?)", file=sys.stderr)
            return 1
        from loadtests.llmgen.__main__ import main as llmgen

        llmgen(["--demo"])
        time.sleep(1.0)
        with urllib.request.urlopen(f"{ADMIN}/api/v1/anomalies?limit=100", timeout=5) as r:
            alerts = json.load(r)["anomalies"]
        print(f"\n{len(alerts)} alert(s), newest first (also in sentinel-data/anomalies.jsonl):")
        for a in alerts:
            where = f"{a['service']}/{a['model']}"
            print(f"  {a['time']}  {a['severity']:<8} {a['type']:<17} {where}  x{a['count']}")
        return 0
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
