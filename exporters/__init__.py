"""Exporters: type name → module exposing FACTORY."""

REGISTRY: dict[str, str] = {
    "debug": "exporters.debug",
    "file": "exporters.file",
    "influxdb": "exporters.influxdb",
    "otlp": "exporters.otlp",
    "prometheusremotewrite": "exporters.prometheusremotewrite",
    "rabbitmq": "exporters.rabbitmq",
    "webhook": "exporters.webhook",
}
