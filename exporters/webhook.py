"""`webhook` exporter: POSTs alerts (the `anomalies` signal) to an HTTP endpoint.

Payload (`format`)
  json   the public alert JSON (`AnomalyEvent.to_json()`): one object per request, or with
         `batch: true` a JSON array of up to `max_alerts_per_request` objects.
  slack  a Slack incoming-webhook message: `{"text": <one line per alert>}`, plus Block Kit
         `blocks` (a section and a context line per alert) when `slack_blocks` is set.

Signature (optional, `secret`)
  Header `X-Sentinel-Signature: t=<unix seconds>,v1=<hex>` where
  `<hex> = HMAC-SHA256(key=secret, msg=f"{t}.".encode() + body)` over the exact body bytes
  sent (the same scheme as Stripe's webhook signatures). A receiver recomputes the HMAC,
  compares in constant time and rejects stale `t` to stop replays; `verify_signature` below
  does exactly that. The timestamp is taken per attempt, so a retried request is signed anew.

Delivery
  Alerts go out in order, one request at a time per batch, through the shared sending queue.
  2xx is success. 429, 408, 5xx, connection errors and timeouts (`timeout` bounds each
  request) are retried with backoff, honouring Retry-After. Any other status is permanent:
  that request's alerts are dropped and the batch is counted in
  `otelcol_exporter_send_failed_anomalies` (the batch is the unit, as in the Collector), after
  the rest of the batch has still been tried. A retry resumes after the last delivered request
  (see `SendProgress`), so a failure in the middle of a batch does not resend what the
  endpoint already took. `timeout` bounds each request and also one attempt at a whole batch
  (the queued sender's limit): a batch cut short by it resumes where it stopped. A request
  that timed out may still have been processed, so receivers should deduplicate on the alert
  `id` (stable across retries and replays).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator

from exporters.otlp import USER_AGENT, parse_retry_after
from gateway.anomaly import AnomalyEvent, Severity
from gateway.batch import Batch, Signal
from gateway.component import ComponentContext, Factory, Kind, PermanentError
from gateway.exporterhelper import (
    QueuedExporter,
    QueuedExporterConfig,
    RetryableError,
    SendProgress,
    alert_events,
)

SIGNATURE_HEADER = "X-Sentinel-Signature"
RETRYABLE_STATUS = frozenset({408, 429})


# ---------------------------------------------------------------- signature
def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The X-Sentinel-Signature value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: bytes, header: str, body: bytes, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Receiver side: True when one v1 signature matches and `t` is within `tolerance` seconds."""
    t: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            sigs.append(value)
    if t is None or not sigs:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s) for s in sigs)


# ---------------------------------------------------------------- slack rendering
_SEVERITY_ICON = {
    Severity.CRITICAL: ":rotating_light:",
    Severity.HIGH: ":red_circle:",
    Severity.MEDIUM: ":large_orange_circle:",
    Severity.LOW: ":large_yellow_circle:",
}
_MRKDWN = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _num(v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:.4g}"


def summary(e: AnomalyEvent) -> str:
    """One readable line, e.g. `[HIGH] latency_spike in checkout: latency_s 12.5 vs baseline 2.1 ...`."""
    target = "/".join(x for x in (e.provider, e.model) if x) or "-"
    op = f" {e.operation}" if e.operation else ""
    repeat = f", x{e.count}" if e.count > 1 else ""
    d = e.to_json()
    return (
        f"[{e.severity.value.upper()}] {e.type.value} in {e.service or '-'} ({target}{op}): "
        f"{e.metric} {_num(d['value'])} vs baseline {_num(d['baseline'])} "
        f"(score {e.score:.2f}{repeat}) at {d['time']}"
    )


def slack_message(events: list[AnomalyEvent], blocks: bool) -> dict[str, Any]:
    lines = [f"{_SEVERITY_ICON[e.severity]} {summary(e)}".translate(_MRKDWN) for e in events]
    msg: dict[str, Any] = {"text": "\n".join(lines)}
    if blocks:
        out: list[dict[str, Any]] = []
        for e, line in zip(events, lines, strict=True):
            traces = ", ".join(f"`{t}`" for t in e.trace_ids[:3]) or "none"
            context = f"id `{e.id}` · detector {e.detector} · traces {traces}".translate(_MRKDWN)
            out.append({"type": "section", "text": {"type": "mrkdwn", "text": line}})
            out.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
        msg["blocks"] = out[:50]  # Slack's limit per message
    return msg


# ---------------------------------------------------------------- config
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class WebhookConfig(QueuedExporterConfig):
    endpoint: str = Field(description="URL to POST to (http:// or https://).")
    format: Literal["json", "slack"] = "json"
    batch: bool = Field(default=False, description="Send a batch of alerts per request instead of one.")
    max_alerts_per_request: int = Field(default=100, ge=1, le=10000, description="With batch: true.")
    slack_blocks: bool = Field(default=False, description="format slack: add Block Kit blocks.")
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for X-Sentinel-Signature.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v) or any(c.isspace() for c in v):
            raise ValueError(f"invalid endpoint {v!r}: expected an http:// or https:// URL")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() == SIGNATURE_HEADER.lower():
                raise ValueError(f"header {name} is set by the exporter (configure secret instead)")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name}: value must not contain line breaks")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            raise ValueError("secret must not be empty (leave it out to send unsigned requests)")
        return v


# ---------------------------------------------------------------- exporter
class _Progress:
    __slots__ = ("first_error", "next", "rejected")

    def __init__(self) -> None:
        self.next = 0
        self.rejected = 0
        self.first_error = ""


class WebhookExporter(QueuedExporter):
    config: WebhookConfig

    def __init__(self, ctx: ComponentContext, config: WebhookConfig) -> None:
        super().__init__(ctx, config)
        self._session: aiohttp.ClientSession | None = None
        self._secret = config.secret.get_secret_value().encode() if config.secret else None
        self._progress: SendProgress[_Progress] = SendProgress(4 * config.sending_queue.num_consumers + 8)
        self._headers = {"Content-Type": "application/json", **config.headers}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"User-Agent": USER_AGENT},
        )
        await super().start()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def payload(self, events: list[AnomalyEvent]) -> bytes:
        cfg = self.config
        if cfg.format == "slack":
            return orjson.dumps(slack_message(events, cfg.slack_blocks))
        if cfg.batch:
            return orjson.dumps([e.to_json() for e in events])
        return events[0].to_bytes()

    def requests(self, events: list[AnomalyEvent]) -> list[list[AnomalyEvent]]:
        if not self.config.batch:
            return [[e] for e in events]
        n = self.config.max_alerts_per_request
        return [events[i : i + n] for i in range(0, len(events), n)]

    async def send(self, batch: Batch) -> None:
        events = alert_events(batch)
        groups = self.requests(events)
        state = self._progress.get(batch, _Progress)
        while state.next < len(groups):
            group = groups[state.next]
            try:
                await self._post(group)
            except PermanentError as exc:
                state.rejected += len(group)
                state.first_error = state.first_error or str(exc)
            state.next += 1
        self._progress.done(batch)
        if state.rejected:
            raise PermanentError(f"{state.rejected} of {len(events)} alert(s) rejected: {state.first_error}")

    async def _post(self, events: list[AnomalyEvent]) -> None:
        assert self._session is not None, "exporter not started"
        url = self.config.endpoint
        body = self.payload(events)
        headers = dict(self._headers)
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                status = resp.status
                text = (await resp.read())[:300].decode("utf-8", "replace").strip()
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"POST {url} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        if 200 <= status < 300:
            return
        msg = f"HTTP {status} from {url}" + (f": {text}" if text else "")
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryableError(msg, retry_after=parse_retry_after(retry_after))
        raise PermanentError(msg)


FACTORY = Factory(
    type="webhook",
    kind=Kind.EXPORTER,
    config=WebhookConfig,
    create=WebhookExporter,
    signals=frozenset({Signal.ANOMALIES}),
    description="POSTs alerts as JSON or Slack messages, optionally HMAC-signed, with retries.",
)
