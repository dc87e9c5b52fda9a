"""The `sentinel` command line: run, validate, inspect.

Exit codes: 0 success; 1 a validation/start-up/runtime failure; 2 bad usage or
(for `run`) a config that does not validate; 130 interrupted while starting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from gateway import __version__
from gateway.batch import Signal
from gateway.component import Kind
from gateway.config.model import GatewayConfig, check_workers, default_config_text, load_config
from gateway.config.source import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # also: `run` refused an invalid config
EXIT_INTERRUPTED = 130

log = logging.getLogger("sentinel.cli")

_DESCRIPTION = """\
LLM-Sentinel: an OpenTelemetry gateway for LLM telemetry.

Receives OTLP traces, metrics and logs (gRPC and HTTP), passes them through
Collector-style pipelines (receivers -> processors -> exporters) and exports
them. Configuration is YAML in the OpenTelemetry Collector's shape; without
--config the embedded default is used (see `sentinel config default`)."""

_EPILOG = """\
examples:
  sentinel run                                  start with the embedded default config
  sentinel run --config gateway.yaml            start with your own config
  sentinel run -c base.yaml -c prod.yaml        merge files in order (later files win)
  sentinel validate -c gateway.yaml             check a config, print every issue, exit 1 on errors
  sentinel config default > gateway.yaml        start a config from the embedded default
  sentinel components                           list receiver/processor/exporter types

environment variables read by the embedded default config:
  SENTINEL_GRPC_ENDPOINT   OTLP/gRPC listen address   (default 127.0.0.1:4317)
  SENTINEL_HTTP_ENDPOINT   OTLP/HTTP listen address   (default 127.0.0.1:4318)
  SENTINEL_ADMIN_ENDPOINT  /healthz, /readyz, /metrics (default 127.0.0.1:8888)
  SENTINEL_DATA_DIR        directory of the file exporter's otlp.jsonl (default ./sentinel-data)

Any config file may reference environment variables as ${env:NAME} or
${env:NAME:-default}; write $$ for a literal $. An unset variable without a
default is a config error.

exit codes: 0 ok, 1 failure (invalid config for `validate`, start-up error),
2 usage error or `run` refused an invalid config."""

_CONFIG_HELP = (
    "config file (YAML); repeat to merge several in order, later files winning. "
    "Default: the embedded default config."
)


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        action="append",
        metavar="FILE",
        default=[],
        help=_CONFIG_HELP,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (llm-sentinel) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="start the gateway and serve until SIGTERM/SIGINT",
        description="Start the gateway. Refuses to start (exit 2) when the config has any issue; "
        "on SIGTERM or SIGINT it stops receiving, flushes processors, drains exporters "
        "within service.shutdown_timeout and exits 0.",
        epilog="examples:\n  sentinel run\n  sentinel run --config gateway.yaml --config local.yaml\n"
        "  sentinel run --workers 2                     one worker per core on a 2-core machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_option(run)
    run.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="run N worker processes that share the OTLP ports (SO_REUSEPORT; the kernel spreads client "
        "connections over them) under a supervisor that serves the admin endpoint (/readyz: all workers "
        "ready; /metrics and /api/v1/anomalies merged), forwards SIGTERM/SIGINT and restarts a worker "
        "that dies. Each detection series is owned by one worker, so alerts are those of one process. "
        "File exporter paths and persistent queue directories get a worker-<i> variant. "
        "Overrides service.workers; default 1 (a single process).",
    )
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a config and print every issue as file:line: key: message",
        description="Load, merge and validate config files without starting anything. "
        "Prints every issue, one per line, and exits 1 if there is any.",
        epilog="examples:\n  sentinel validate --config gateway.yaml\n"
        "  sentinel validate -c base.yaml -c prod.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_option(validate)
    validate.set_defaults(handler=_cmd_validate)

    config = sub.add_parser("config", help="config helpers (e.g. print the embedded default)")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    default = config_sub.add_parser("default", help="print the embedded default config (YAML)")
    default.set_defaults(handler=_cmd_config_default)
    config.set_defaults(handler=_missing_subcommand(config))

    components = sub.add_parser(
        "components", help="list the receiver, processor and exporter types this build provides"
    )
    components.set_defaults(handler=_cmd_components)

    replay = sub.add_parser(
        "replay",
        help="run recorded telemetry or a metric series through detection, offline",
        description="Offline detection on recorded data, through the same code as the live gateway.\n\n"
        "--otlp FILE: OTLP/JSON lines (one Export request per line, as the file exporter writes them;\n"
        "  .gz accepted) go through the config's traces pipelines into the `detect` connector in\n"
        "  event time; alerts (after deduplication) are written to --out, one JSON object per line.\n"
        "  Without --config: genai -> detect with default settings.\n"
        "--series FILE: a univariate CSV `timestamp,value` (NAB format) scored by the detector\n"
        "  ensemble; writes `timestamp,value,anomaly_score` to --out; --plot draws a PNG.",
        epilog="examples:\n"
        "  sentinel replay --otlp sentinel-data/otlp.jsonl --out anomalies.jsonl\n"
        "  sentinel replay --otlp traffic.jsonl.gz --out alerts.jsonl --config gateway.yaml\n"
        "  sentinel replay --series nab/realKnownCause/nyc_taxi.csv --out scores.csv --plot scores.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--otlp", metavar="FILE", help="OTLP/JSON lines to replay (.gz accepted)")
    source.add_argument("--series", metavar="CSV", help="a timestamp,value series to score")
    replay.add_argument("--out", metavar="FILE", required=True, help="where results are written")
    replay.add_argument("--plot", metavar="PNG", help="with --series: draw the series and its anomalies")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_config_option(replay)
    replay.set_defaults(handler=_cmd_replay)

    warm = sub.add_parser(
        "warm-up",
        help="compile the numba kernels into the on-disk cache (once per install)",
        description="Compile every numba kernel into numba's cache so that `sentinel run` starts in\n"
        "about a second instead of compiling for tens of seconds on first start. Run it after\n"
        "installing or upgrading (the container image does it at build time). The cache lives next\n"
        "to the installed modules, or in $NUMBA_CACHE_DIR when set.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    warm.add_argument("--jobs", type=int, default=0, help="parallel compiler processes (default: CPUs)")
    warm.set_defaults(handler=_cmd_warm_up)
    return parser


def _cmd_warm_up(args: argparse.Namespace) -> int:
    from gateway.warmup import KERNEL_GROUPS, warm_all

    t0 = time.perf_counter()
    print(f"warming {len(KERNEL_GROUPS)} kernel groups ...", file=sys.stderr, flush=True)

    def report(module: str, seconds: float) -> None:
        print(f"  {module:40s} {seconds:6.1f} s", file=sys.stderr, flush=True)

    warm_all(args.jobs or None, report)
    print(f"numba kernels cached in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _worker_count(text: str) -> int:
    try:
        return check_workers(int(text))
    except ValueError as exc:
        msg = str(exc) if text.strip().lstrip("-").isdigit() else f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except ImportError as exc:  # a component module is missing or broken: not the user's config
        print(
            f"sentinel: cannot load a component module ({exc}); the installation is incomplete",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except BrokenPipeError:  # e.g. `sentinel config default | head`: not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return EXIT_FAILURE


def _missing_subcommand(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return EXIT_USAGE

    return handler


# ---------------------------------------------------------------- config helpers
def _load(paths: Sequence[str], out: TextIO, header: str) -> GatewayConfig | None:
    """Load and validate; on failure print a header and every issue, one per line."""
    try:
        return load_config(paths)
    except ConfigError as exc:
        n = len(exc.issues)
        print(f"{header} ({n} issue{'s' if n != 1 else ''}):", file=out)
        for issue in exc.issues:
            print(str(issue), file=out)
        return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summarize(config: GatewayConfig) -> str:
    names = ", ".join(p.name for p in config.pipelines)
    kinds = [k for k in Kind if k is not Kind.CONNECTOR or config.components[k]]
    counts = ", ".join(_plural(len(config.components[k]), k.singular) for k in kinds)
    return f"{_plural(len(config.pipelines), 'pipeline')} ({names}); {counts}"


# ---------------------------------------------------------------- commands
def _cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config, sys.stderr, "config invalid")
    if config is None:
        return EXIT_FAILURE
    sources = ", ".join(config.sources)
    print(f"config OK: {summarize(config)}; from {sources}")
    return EXIT_OK


def _cmd_config_default(_: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.series:
        if args.config:
            print("sentinel replay: --config applies to --otlp only", file=sys.stderr)
            return EXIT_USAGE
        from processors.detect.series_cli import replay_series

        summary = replay_series(args.series, args.out, plot_png=args.plot, progress=not args.no_progress)
        print(summary)
        return EXIT_OK
    if args.plot:
        print("sentinel replay: --plot applies to --series only", file=sys.stderr)
        return EXIT_USAGE
    from gateway.replay import replay_otlp, summary_line

    in_path = Path(args.otlp)
    if not in_path.is_file():
        print(f"sentinel replay: no such file: {in_path}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        result = asyncio.run(replay_otlp(in_path, Path(args.out), args.config, progress=not args.no_progress))
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"sentinel replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(summary_line(result))
    return EXIT_OK


def _cmd_components(_: argparse.Namespace) -> int:
    from gateway.registry import get_factory, known_types

    failed = False
    for kind in Kind:
        print(f"{kind.value}:")
        types = known_types(kind)
        width = max((len(t) for t in types), default=0)
        for type_name in types:
            try:
                factory = get_factory(kind, type_name)
            except Exception as exc:  # a broken component should not hide the others
                failed = True
                print(f"  {type_name:<{width}}  (cannot be loaded: {type(exc).__name__}: {exc})")
                continue
            if factory is None:  # listed but gone; keep the listing honest
                failed = True
                print(f"  {type_name:<{width}}  (not registered)")
                continue
            signals = ", ".join(s.value for s in Signal if s in factory.signals)
            description = factory.description or "(no description)"
            print(f"  {type_name:<{width}}  {description} [{signals}]")
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config, sys.stderr, "sentinel: refusing to start, the config is invalid")
    if config is None:
        return EXIT_USAGE

    from gateway.telemetry import setup_logging

    workers = args.workers if args.workers is not None else config.service.workers
    if workers > 1:
        from gateway.worker_config import multi_worker_issues

        issues = multi_worker_issues(config)
        if issues:
            print(f"sentinel: refusing to start {workers} workers:", file=sys.stderr)
            for issue in issues:
                print(issue, file=sys.stderr)
            return EXIT_USAGE
    logs = config.service.telemetry.logs
    setup_logging(logs.level, logs.format)
    fields: dict[str, Any] = {"version": __version__, "config": ", ".join(config.sources)}
    if workers > 1:
        fields["workers"] = workers
    log.info("starting LLM-Sentinel", extra={"fields": fields})
    if workers > 1:
        from gateway.workers import run_supervisor

        try:
            return run_supervisor(config, args.config, workers)
        except KeyboardInterrupt:
            log.warning("interrupted during start-up")
            return EXIT_INTERRUPTED
    try:
        from gateway.runtime import Gateway

        gateway = Gateway(config)
    except Exception:
        log.exception("could not build the pipelines from the config")
        return EXIT_FAILURE

    try:
        _run_event_loop(gateway.run_until_stopped)
    except KeyboardInterrupt:  # SIGINT before the gateway installed its own handlers
        log.warning("interrupted during start-up")
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.error("gateway failed: %s", exc, exc_info=not isinstance(exc, OSError))
        return EXIT_FAILURE
    return EXIT_OK


def _run_event_loop(entry: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `entry` on uvloop when it is installed, else on the default asyncio loop."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    log.debug("event loop: %s", "uvloop" if loop_factory else "asyncio")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(entry())
