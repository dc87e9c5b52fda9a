"""Receivers: type name → module exposing FACTORY."""

REGISTRY: dict[str, str] = {
    "otlp": "receivers.otlp",
}
