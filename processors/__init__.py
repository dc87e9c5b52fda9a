"""Processors: type name → module exposing FACTORY."""

REGISTRY: dict[str, str] = {
    "batch": "processors.batch",
    "genai": "processors.genai",
    "memory_limiter": "processors.memory_limiter",
    "redact": "processors.redact",
}

# Connectors (exporter of one pipeline, receiver of another) live with the processors.
CONNECTORS: dict[str, str] = {
    "detect": "processors.detect.connector",
}
