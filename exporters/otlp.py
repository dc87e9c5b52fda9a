"""`otlp` exporter: forwards batches to another OTLP endpoint (gRPC, HTTP/protobuf or HTTP/JSON).

gRPC sends the batch's wire bytes untouched through raw unary calls, so data
received over OTLP/protobuf is forwarded without re-encoding. Failures are
classified as the OTLP spec says (see RETRYABLE_CODES and `_http_error`) and
server hints (google.rpc.RetryInfo, Retry-After) become the retry delay of the
queued sender; partial successes are logged, never retried.
https://opentelemetry.io/docs/specs/otlp/#failures
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field, field_validator, model_validator

from gateway.batch import OTLP_SIGNALS, Batch, Signal
from gateway.component import ComponentConfig, ComponentContext, Factory, Kind, PermanentError
from gateway.exporterhelper import QueuedExporter, QueuedExporterConfig, RetryableError
from gateway.otlpjson import OtlpJsonError, decode, encode

USER_AGENT = "LLM-Sentinel/0.1.0"

GRPC_METHODS = {
    Signal.TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    Signal.METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    Signal.LOGS: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
RESPONSES: dict[Signal, Any] = {
    Signal.TRACES: ExportTraceServiceResponse,
    Signal.METRICS: ExportMetricsServiceResponse,
    Signal.LOGS: ExportLogsServiceResponse,
}
REJECTED = {
    Signal.TRACES: ("rejected_spans", "spans"),
    Signal.METRICS: ("rejected_data_points", "data points"),
    Signal.LOGS: ("rejected_log_records", "log records"),
}
# The OTLP spec's retryable gRPC codes; RESOURCE_EXHAUSTED only with RetryInfo.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_DETAILS_KEY = "grpc-status-details-bin"
_PROTOBUF, _JSON = "application/x-protobuf", "application/json"
_GZIP_INLINE_LIMIT = 256 * 1024  # compress bigger bodies off the event loop


class TLSSettings(ComponentConfig):
    insecure: bool | None = Field(
        default=None,
        description="Plaintext. Default: true unless the endpoint is https:// or a ca_file/cert_file is set.",
    )
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        return self


class OtlpConfig(QueuedExporterConfig):
    endpoint: str
    protocol: Literal["grpc", "http/protobuf", "http/json"] = "grpc"
    compression: Literal["gzip", "none"] = "gzip"
    headers: dict[str, str] = Field(default_factory=dict)
    tls: TLSSettings = TLSSettings()
    traces_endpoint: str | None = Field(default=None, description="Full URL; http protocols only.")
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"invalid endpoint {v!r}: expected host:port or a URL such as http://host:4318")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OtlpConfig:
        per_signal = [f"{s.value}_endpoint" for s in OTLP_SIGNALS if getattr(self, f"{s.value}_endpoint")]
        if self.protocol == "grpc":
            if per_signal:
                raise ValueError(f"{', '.join(per_signal)} only apply to protocol http/protobuf or http/json")
            if self.tls.insecure_skip_verify:
                raise ValueError(
                    "tls.insecure_skip_verify is not supported with grpc; set tls.ca_file instead"
                )
        return self

    def use_tls(self) -> bool:
        scheme = self.endpoint.partition("://")[0].lower() if "://" in self.endpoint else ""
        if scheme in ("https", "http"):
            return scheme == "https"
        if self.tls.insecure is not None:
            return not self.tls.insecure
        return bool(self.tls.ca_file or self.tls.cert_file)


# ---------------------------------------------------------------- error mapping
def retry_info(status: status_pb2.Status | None) -> tuple[bool, float | None]:
    """(status carries RetryInfo, its delay in seconds when positive)."""
    if status is None:
        return False, None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return True, delay if delay > 0 else None
    return False, None


def status_from_trailers(metadata: Any) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == _DETAILS_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def grpc_error(err: grpc.aio.AioRpcError) -> RetryableError | PermanentError:
    code = err.code()
    has_info, delay = retry_info(status_from_trailers(err.trailing_metadata()))
    msg = f"{code.name}: {err.details()}"
    if code in RETRYABLE_CODES or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and has_info):
        return RetryableError(msg, retry_after=delay)
    return PermanentError(msg)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_message(payload: bytes, content_type: str) -> str:
    """The google.rpc.Status message of an error body, in the body's own encoding."""
    if not payload:
        return ""
    try:
        if content_type.startswith(_PROTOBUF):
            msg = status_pb2.Status.FromString(payload).message
        elif content_type.startswith(_JSON):
            msg = decode(payload, status_pb2.Status).message
        else:
            msg = ""
    except (DecodeError, OtlpJsonError):
        msg = ""
    return msg or payload[:300].decode("utf-8", "replace").strip()


# ---------------------------------------------------------------- exporter
class OtlpExporter(QueuedExporter):
    config: OtlpConfig

    def __init__(self, ctx: ComponentContext, config: OtlpConfig) -> None:
        super().__init__(ctx, config)
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, Any] = {}
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._urls: dict[Signal, str] = {}

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        cfg = self.config
        try:
            if cfg.protocol == "grpc":
                self._open_grpc()
            else:
                self._ssl = self._ssl_context() or True
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"exporter {self.id}: TLS setup failed: {exc}") from exc
        if cfg.protocol != "grpc":
            self._urls = {s: self._url(s) for s in OTLP_SIGNALS}
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cfg.timeout), headers={"User-Agent": USER_AGENT}
            )
        await super().start()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    def _open_grpc(self) -> None:
        cfg = self.config
        target = (
            cfg.endpoint.split("://", 1)[1]
            if cfg.endpoint.startswith(("http://", "https://"))
            else cfg.endpoint
        )
        options = [("grpc.primary_user_agent", USER_AGENT)]
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression
        if cfg.use_tls():
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._read(cfg.tls.ca_file),
                private_key=self._read(cfg.tls.key_file),
                certificate_chain=self._read(cfg.tls.cert_file),
            )
            self._channel = grpc.aio.secure_channel(target, creds, options, compression)
        else:
            self._channel = grpc.aio.insecure_channel(target, options, compression)
        # No serializers: requests go out as the batch's bytes, responses come back as bytes.
        self._calls = {s: self._channel.unary_unary(m) for s, m in GRPC_METHODS.items()}

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not (tls.ca_file or tls.cert_file or tls.insecure_skip_verify):
            return None  # aiohttp's default verification
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _url(self, signal: Signal) -> str:
        cfg = self.config
        override = getattr(cfg, f"{signal.value}_endpoint")
        scheme = "https://" if cfg.use_tls() else "http://"
        if override:
            return override if "://" in override else scheme + override
        base = cfg.endpoint if "://" in cfg.endpoint else scheme + cfg.endpoint
        return f"{base.rstrip('/')}/v1/{signal.value}"

    # ---------------------------------------------------------------- sending
    async def send(self, batch: Batch) -> None:
        if self.config.protocol == "grpc":
            payload = await self._send_grpc(batch)
            response = self._parse_response(batch.signal, payload, _PROTOBUF)
        else:
            response = await self._send_http(batch)
        if response is not None:
            self._log_partial(batch.signal, response)

    async def _send_grpc(self, batch: Batch) -> bytes:
        call = self._calls[batch.signal]
        try:
            return bytes(
                await call(batch.serialize(), timeout=self.config.timeout, metadata=self._metadata or None)
            )
        except grpc.aio.AioRpcError as err:
            raise grpc_error(err) from None

    async def _send_http(self, batch: Batch) -> Any:
        assert self._session is not None, "exporter not started"
        cfg = self.config
        url = self._urls[batch.signal]
        ctype = _JSON if cfg.protocol == "http/json" else _PROTOBUF
        body = encode(batch.request) if ctype == _JSON else batch.serialize()
        headers = {**cfg.headers, "Content-Type": ctype}
        if cfg.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
            if len(body) > _GZIP_INLINE_LIMIT:
                body = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
            else:
                body = gzip.compress(body, 6, mtime=0)
        try:
            async with self._session.post(url, data=body, headers=headers, ssl=self._ssl) as resp:
                payload = await resp.read()
                status, rtype = resp.status, resp.headers.get("Content-Type", "")
                retry_after = resp.headers.get("Retry-After")
        except aiohttp.ClientError as exc:  # refused, reset, disconnected, TLS: retry per spec
            raise RetryableError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return self._parse_response(batch.signal, payload, rtype)
        msg = f"HTTP {status} from {url}: {status_message(payload, rtype)}".rstrip(": ")
        if status in RETRYABLE_HTTP:
            raise RetryableError(msg, retry_after=parse_retry_after(retry_after))
        raise PermanentError(msg)

    def _parse_response(self, signal: Signal, payload: bytes, content_type: str) -> Any:
        if not payload:
            return None
        try:
            if content_type.startswith(_JSON):
                return decode(payload, RESPONSES[signal])
            return RESPONSES[signal].FromString(payload)
        except (DecodeError, OtlpJsonError) as exc:
            # Delivered all the same: never retry (and duplicate) because of a bad acknowledgement.
            self.logger.debug(f"ignoring undecodable success response: {exc}")
            return None

    def _log_partial(self, signal: Signal, response: Any) -> None:
        if not response.HasField("partial_success"):
            return
        ps = response.partial_success
        field, what = REJECTED[signal]
        rejected = getattr(ps, field)
        if rejected or ps.error_message:
            self.logger.warning(
                f"partial success: the server rejected {rejected} {what}: "
                f"{ps.error_message or '(no message)'}",
                extra={"fields": {"rejected": rejected, "signal": signal.value}},
            )


FACTORY = Factory(
    type="otlp",
    kind=Kind.EXPORTER,
    config=OtlpConfig,
    create=OtlpExporter,
    description="Forwards data to an OTLP endpoint over gRPC, HTTP/protobuf or HTTP/JSON.",
)
