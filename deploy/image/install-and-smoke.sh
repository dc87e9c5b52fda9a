#!/usr/bin/env bash
# The container image's install recipe, and the smoke test of what it installs.
#
# The Dockerfile runs `install` (builder stage) and `warm` + `smoke` (runtime stage) from this
# file; the test suite runs `check`, which performs the very same steps in a throwaway venv. The
# recipe therefore lives in one place and the image and its test cannot drift apart.
#
#   install-and-smoke.sh install VENV SRC
#       Build a wheel of the project in SRC (`pip wheel --no-deps`), create VENV with
#       `python -m venv`, install the wheel (non-editable) and its dependencies, remove pip and
#       setuptools from VENV (nothing needs them at run time), then check the result: the package
#       is imported from VENV, `pip check` agrees, every component loads, the default config
#       validates. The wheel is built inside SRC (setuptools leaves build/ there): pass a copy.
#   install-and-smoke.sh warm VENV
#       Compile every numba kernel into $NUMBA_CACHE_DIR (must be set), so that a start from a
#       warm cache takes ~1 s instead of ~10 s of compiling.
#   install-and-smoke.sh smoke VENV
#       Start `sentinel run` from VENV with the SENTINEL_* endpoints on free loopback ports and a
#       temporary data dir; wait for /readyz; POST one OTLP/JSON LLM span to /v1/traces; expect
#       200, the call counted in llm_sentinel_requests_total on /metrics, the span written
#       (redacted) by the file exporter; with $NUMBA_CACHE_DIR set, expect the kernels to load
#       from that cache without compiling; SIGTERM; expect exit 0 and no ERROR in the log.
#   install-and-smoke.sh check [SRC]
#       All of it in a temp dir: copy SRC's Docker build context (the allow-list in SRC's
#       .dockerignore), install, warm into one cache dir, copy that cache the way the Kubernetes
#       init container does, smoke. SRC defaults to this repository.
#
# Environment:
#   PYTHON          interpreter for `python -m venv` (default: python3.11 if present, else python3)
#   PIP_*           pip's own settings apply (cache, index; PIP_CONSTRAINT=FILE pins dependency
#                   versions)
#
# Time: `check` takes ~1.5 min on a 2-core machine: ~65 s to install (pip resolves, unpacks and
# byte-compiles numba, numpy, grpcio, matplotlib, ...), ~10 s to compile the kernels, ~4 s smoke.
#   KEEP_TMP=1      check: keep the temp dir and print where it is
#   READY_TIMEOUT   smoke: seconds to wait for /readyz (default 60)
set -euo pipefail

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

say() { printf '[install-and-smoke] %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

abspath() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
    esac
}

default_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    else
        echo python3
    fi
}

# ---------------------------------------------------------------- install
cmd_install() {
    [ $# -eq 2 ] || die "usage: install VENV SRC"
    local venv src python wheels
    venv="$(abspath "$1")"
    src="$(abspath "$2")"
    [ -f "$src/pyproject.toml" ] || die "no pyproject.toml in $src"
    [ ! -e "$venv" ] || die "$venv already exists; install wants a fresh venv"
    python="$(default_python)"
    say "python -m venv $venv ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
    "$python" -m venv "$venv"

    wheels="$(mktemp -d)"
    say "pip wheel --no-deps $src"
    "$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$src"
    set -- "$wheels"/llm_sentinel-*.whl
    if [ $# -ne 1 ] || [ ! -f "$1" ]; then
        die "expected one llm_sentinel wheel, got: $*"
    fi
    say "pip install $(basename "$1")"
    "$venv/bin/python" -m pip install --quiet "$1"
    rm -rf "$wheels"
    "$venv/bin/python" -m pip check
    say "removing pip and setuptools from the venv"
    "$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools

    # Checks of the result, run away from SRC so nothing can be imported from a source tree.
    (
        cd /
        "$venv/bin/python" - "$venv" <<'PY'
import os, sys
import gateway
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(gateway.__file__)
if not where.startswith(venv + os.sep):
    sys.exit(f"gateway imported from {where}, not from the venv {venv}")
PY
        "$venv/bin/sentinel" --version
        "$venv/bin/sentinel" components >/dev/null || die "a component does not load: sentinel components"
        "$venv/bin/sentinel" validate >/dev/null || die "the embedded default config does not validate"
    )
    say "installed into $venv"
}

# ---------------------------------------------------------------- warm
cmd_warm() {
    [ $# -eq 1 ] || die "usage: warm VENV"
    local venv
    venv="$(abspath "$1")"
    [ -n "${NUMBA_CACHE_DIR:-}" ] || die "set NUMBA_CACHE_DIR to the directory the cache goes to"
    mkdir -p "$NUMBA_CACHE_DIR"
    (
        cd /
        "$venv/bin/sentinel" warm-up
    )
    [ -n "$(find "$NUMBA_CACHE_DIR" -name '*.nbi' -print -quit)" ] ||
        die "no numba index (*.nbi) written to $NUMBA_CACHE_DIR"
    say "numba cache in $NUMBA_CACHE_DIR: $(find "$NUMBA_CACHE_DIR" -type f | wc -l) files"
}

# ---------------------------------------------------------------- smoke
cmd_smoke() {
    [ $# -eq 1 ] || die "usage: smoke VENV"
    local venv
    venv="$(abspath "$1")"
    [ -x "$venv/bin/sentinel" ] || die "no $venv/bin/sentinel"
    # The client side uses the venv's own interpreter and the standard library only: the image
    # has neither curl nor the test dependencies.
    (cd / && "$venv/bin/python" - "$venv" "${READY_TIMEOUT:-60}") <<'PY'
import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time
import urllib.error, urllib.request
from pathlib import Path

venv, ready_timeout = Path(sys.argv[1]), float(sys.argv[2])
t_start = time.monotonic()


def log(msg):
    print(f"[smoke] {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cache_snapshot(root):
    if not root or not Path(root).is_dir():
        return None
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(root).rglob("*")
        if p.is_file()
    }


grpc_port, http_port, admin_port = free_ports(3)
tmp = Path(tempfile.mkdtemp(prefix="sentinel-smoke-"))
data_dir = tmp / "data"
env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
env.update(
    SENTINEL_GRPC_ENDPOINT=f"127.0.0.1:{grpc_port}",
    SENTINEL_HTTP_ENDPOINT=f"127.0.0.1:{http_port}",
    SENTINEL_ADMIN_ENDPOINT=f"127.0.0.1:{admin_port}",
    SENTINEL_DATA_DIR=str(data_dir),
)
numba_dir = env.get("NUMBA_CACHE_DIR")
before = cache_snapshot(numba_dir)
admin = f"http://127.0.0.1:{admin_port}"
log_path = tmp / "sentinel.log"
proc = None
ok = False


def fail(msg):
    raise SystemExit(f"[smoke] FAILED: {msg}")


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            fail(f"sentinel exited with {proc.returncode} while waiting for {what}")
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def ready():
    try:
        return get(f"{admin}/readyz", timeout=2)[0] == 200
    except OSError:
        return False


try:
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "sentinel"), "run"], env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
        )
    wait_for("/readyz 200", ready, ready_timeout)
    log(f"ready after {time.monotonic() - t_start:.1f}s (admin {admin})")
    status, _ = get(f"{admin}/healthz")
    if status != 200:
        fail(f"/healthz answered {status}")

    now = time.time_ns()
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "gen_ai.prompt.0.content": "Please reply to jane.doe@example.com",
    }

    def value(v):
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}

    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "smoke-test"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "smoke"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "chat gpt-4o-mini",
                                "kind": 3,
                                "startTimeUnixNano": str(now - 800_000_000),
                                "endTimeUnixNano": str(now),
                                "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/traces",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, answer = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    if status != 200:
        fail(f"POST /v1/traces answered {status}: {answer[:300]!r}")
    partial = json.loads(answer or b"{}").get("partialSuccess") or {}
    if int(partial.get("rejectedSpans") or 0):
        fail(f"the span was rejected: {partial}")
    log("POST /v1/traces: 200")

    pattern = re.compile(r'^llm_sentinel_requests_total\{[^}]*service_name="smoke-test"[^}]*\} 1\.0$', re.M)

    def counted():
        status, text = get(f"{admin}/metrics")
        return status == 200 and pattern.search(text.decode())

    log("/metrics: " + wait_for("llm_sentinel_requests_total for the span", counted, 15).group(0))

    def exported():
        files = list(data_dir.glob("otlp*.jsonl"))
        text = "".join(p.read_text(errors="replace") for p in files)
        return "smoke-test" in text and text

    text = wait_for(f"the span in {data_dir}/otlp.jsonl (SENTINEL_DATA_DIR)", exported, 15)
    if "jane.doe@example.com" in text or "[REDACTED:email]" not in text:
        fail("the exported span was not redacted")
    log("file exporter: span written to SENTINEL_DATA_DIR, e-mail redacted")

    m = wait_for(
        "the detection kernels (log: detection kernels ready)",
        lambda: re.search(r"detection kernels ready.*?warm_up_s=([0-9.]+)", log_path.read_text(errors="replace")),
        120,
    )
    log(f"detection kernels ready in {float(m.group(1)):.2f}s")
    if before is not None:
        after = cache_snapshot(numba_dir)
        if not before:
            fail(f"NUMBA_CACHE_DIR={numba_dir} is empty: run `warm` first")
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            fail(f"numba compiled instead of using the cache in {numba_dir}; changed: {changed[:5]}")
        log("numba kernels loaded from NUMBA_CACHE_DIR without compiling")
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                log(" ".join(line.split()))
    except OSError:
        pass

    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        fail("sentinel did not exit within 60s of SIGTERM")
    if rc != 0:
        fail(f"sentinel exited with {rc} after SIGTERM (expected 0)")
    errors = [ln for ln in log_path.read_text(errors="replace").splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", ln)]
    if errors:
        fail("errors in the log:\n  " + "\n  ".join(errors[:20]))
    log(f"SIGTERM: exit 0; smoke test passed in {time.monotonic() - t_start:.1f}s")
    ok = True
finally:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if not ok and log_path.exists():
        print("---- sentinel log ----", file=sys.stderr)
        print(log_path.read_text(errors="replace")[-6000:], file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
PY
}

# ---------------------------------------------------------------- check
# Copy the Docker build context of $1 into $2: what .dockerignore lets through. Our .dockerignore is
# an allow-list (`*`, then `!path` lines, then exclusions of caches); anything else is refused
# rather than half-understood.
copy_context() {
    local src="$1" dst="$2" line first="" entry
    [ -f "$src/.dockerignore" ] || die "no .dockerignore in $src"
    mkdir -p "$dst"
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%%#*}"
        line="$(printf '%s' "$line" | tr -d '[:space:]')"
        [ -n "$line" ] || continue
        if [ -z "$first" ]; then
            first="$line"
            [ "$first" = "*" ] || die ".dockerignore must start with '*' (an allow-list); copy_context knows no other form"
            continue
        fi
        case "$line" in
        '!'*)
            entry="${line#!}"
            entry="${entry#/}"
            case "$entry" in *[\*\?\[]*) die ".dockerignore: globs in allow-list entries are not supported: $line" ;; esac
            [ -e "$src/$entry" ] || die ".dockerignore allows $entry, which does not exist"
            mkdir -p "$dst/$(dirname "$entry")"
            cp -a "$src/$entry" "$dst/$entry"
            ;;
        '**/__pycache__' | '**/*.py[cod]' | '**/.pytest_cache' | '**/.mypy_cache' | '**/.ruff_cache') ;;
        *) die ".dockerignore: unsupported pattern for copy_context: $line" ;;
        esac
    done <"$src/.dockerignore"
    find "$dst" \( -name __pycache__ -o -name .pytest_cache -o -name .mypy_cache -o -name .ruff_cache \) \
        -prune -exec rm -rf {} +
    find "$dst" -name '*.py[cod]' -delete
}

cmd_check() {
    [ $# -le 1 ] || die "usage: check [SRC]"
    local src tmp t0 t1
    src="$(cd "${1:-$(dirname "$SELF")/../..}" && pwd)"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/sentinel-image-check.XXXXXX")"
    CHECK_TMP="$tmp"
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        say "keeping $tmp"
    else
        trap 'rm -rf -- "$CHECK_TMP"' EXIT
    fi
    t0=$SECONDS
    copy_context "$src" "$tmp/context"
    # From here on, the same commands as the Dockerfile, run from the copied context.
    bash "$tmp/context/deploy/image/install-and-smoke.sh" install "$tmp/venv" "$tmp/context"
    t1=$SECONDS
    NUMBA_CACHE_DIR="$tmp/image/numba" bash "$tmp/context/deploy/image/install-and-smoke.sh" warm "$tmp/venv"
    # What the Kubernetes manifests do under readOnlyRootFilesystem: an init container runs
    # `cp -a /var/cache/sentinel/numba /cache/` into an emptyDir, which the gateway's container
    # mounts at /var/cache/sentinel. The smoke test then expects the copy to be used as a cache.
    mkdir -p "$tmp/pod"
    cp -a "$tmp/image/numba" "$tmp/pod/"
    NUMBA_CACHE_DIR="$tmp/pod/numba" bash "$tmp/context/deploy/image/install-and-smoke.sh" smoke "$tmp/venv"
    say "check passed: install $((t1 - t0))s, warm + smoke $((SECONDS - t1))s"
}

case "${1:-}" in
install | warm | smoke | check)
    cmd="$1"
    shift
    "cmd_$cmd" "$@"
    ;;
*)
    sed -n '2,/^set -euo pipefail/p' "$SELF" | sed '$d' >&2
    exit 2
    ;;
esac
