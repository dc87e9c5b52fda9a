"""`redact` processor: masks personal data and secrets in traces and logs (see `processor`)."""

from __future__ import annotations

from gateway.component import Factory, Kind
from processors.redact.processor import SIGNALS, RedactConfig, RedactProcessor

FACTORY = Factory(
    type="redact",
    kind=Kind.PROCESSOR,
    config=RedactConfig,
    create=lambda ctx, config: RedactProcessor(ctx, config),
    signals=SIGNALS,
    description=(
        "Masks e-mails, card numbers, SSNs, phone numbers, API keys and credentials in span, event, "
        "link and log content, and drops attributes whose key names a secret. Place it first."
    ),
)

__all__ = ["FACTORY", "RedactConfig", "RedactProcessor"]
