"""Exporters: type name → module exposing FACTORY."""

REGISTRY: dict[str, str] = {
    "debug": "exporters.debug",
    "file": "exporters.file",
    "otlp": "exporters.otlp",
}
