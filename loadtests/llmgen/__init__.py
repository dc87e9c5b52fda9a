"""llmgen: synthetic LLM traffic (OTLP traces) with labelled anomalies, for detection tests,
benchmarks and `make demo`.

    from loadtests.llmgen import TrafficConfig, Anomaly, generate
    for request in generate(TrafficConfig(seed=1, duration_s=3600)):
        ...

CLI: ``python -m loadtests.llmgen --help``. Modules: `model` (the traffic model and the
columnar simulation), `anomalies` (injections, their command-line form and labels),
`otlp` (spans, event-time ordering, requests).
"""

from loadtests.llmgen.anomalies import ANOMALY_TYPES, Anomaly, parse_spec, read_labels, write_labels
from loadtests.llmgen.model import (
    DEFAULT_SERVICES,
    Calls,
    ModelSpec,
    SeriesSpec,
    ServiceSpec,
    Simulator,
    TrafficConfig,
    calls_table,
    inject_all,
    resolve,
    simulate,
)
from loadtests.llmgen.otlp import Chunk, generate, generate_chunks, span_stream

__all__ = [
    "ANOMALY_TYPES",
    "DEFAULT_SERVICES",
    "Anomaly",
    "Calls",
    "Chunk",
    "ModelSpec",
    "SeriesSpec",
    "ServiceSpec",
    "Simulator",
    "TrafficConfig",
    "calls_table",
    "generate",
    "generate_chunks",
    "inject_all",
    "parse_spec",
    "read_labels",
    "resolve",
    "simulate",
    "span_stream",
    "write_labels",
]
