"""`influxdb` exporter: one line-protocol point per LLM call and per alert.

Signals: `traces` (after the `genai` processor; spans without its columns, and non-LLM spans,
write nothing) and `anomalies`.

Schema
------
Measurement `llm_calls` (`calls_measurement`), one point per span whose `llm` column is true.

  tags    service, provider, operation, model (the request model), response_model,
          outcome (`ok` | `error` | `rate_limited`; rate limiting wins over error),
          error_type (a tag: it is low-cardinality by the semantic conventions - an exception
          class or status code - and is what one groups errors by)
  fields  latency_ms, ttft_ms, cost_usd                                   (float)
          input_tokens, output_tokens, cached_input_tokens, reasoning_tokens (integer, `i`)
          finish_reason (string: the first reason), trace_id (string, 32 hex)
  time    span end time (the exporter's clock if the span has none), in `precision` units

Measurement `llm_anomalies` (`anomalies_measurement`), one point per alert.

  tags    type, severity, service, model, provider, operation, detector, metric
  fields  value, baseline, score (float), count (integer), id (string),
          trace_ids (string, comma separated)
  time    the alert's event time

A missing or unknown value is never written as 0: an unknown tag is left out of the point
(line protocol has no empty tags) and a NaN/inf field is omitted. latency_ms and ttft_ms are
rounded to nanoseconds and cost_usd to 1e-12 USD (float noise such as 0.00026999999999999995
becomes 0.00027). A point with no field at all is skipped. `string_fields: false` leaves out the
string fields; set it for VictoriaMetrics, which stores each field as a number (series
`llm_calls_latency_ms{service=...,...}` etc.) and turns string fields into 0, or into a huge
float when they look numeric, as hex trace ids can.

Points with the same measurement, tag set and timestamp overwrite each other in InfluxDB, so
two calls of the same series ending in the same `precision` unit within one batch are kept
apart by moving the later one forward one unit (one nanosecond by default).

Line protocol escaping (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/):
measurement: `,` and space; tag keys, tag values and field keys: `,`, `=` and space; string
field values are double-quoted with `"` and `\\` escaped. Line protocol cannot carry a line break
in a value (one is written as a space), nor a key or tag value ending in a backslash (trailing
backslashes are dropped: the parser would read them as escaping the delimiter that follows).

Transport
---------
`api: v2` writes to `/api/v2/write` (bucket, org, token) through influxdb-client's async
`WriteApiAsync` (InfluxDB 2.x/3.x, Cloud, and VictoriaMetrics which accepts the same endpoint).
`api: v1` writes to InfluxDB 1.x's `/write?db=&rp=&precision=` with basic auth, over aiohttp
directly: influxdb-client only speaks the v2 write endpoint. Both paths feed one classifier
(`classify`), so errors behave the same whatever the API: influxdb-client runs on aiohttp and
raises `ApiException` carrying the status, the server's message and Retry-After, and connection
failures surface as aiohttp errors in both cases; v2 therefore stays on the official client
(token auth, its HTTP session and request building) rather than duplicating it. The exporter
calls the client's `WriteService` with line protocol it built itself and compresses the body
itself (`gzip`: level 1, in a worker thread for big bodies): `WriteApiAsync` compresses at level
9 on the event loop, which halved end-to-end throughput.

Each batch is split into writes of at most `max_lines` lines and `max_bytes` bytes
(uncompressed). 429 and 5xx are retried (Retry-After honoured), as are connection errors and
timeouts; any other 4xx is permanent: those points are dropped and counted
(`llm_sentinel_influxdb_points_total{outcome="rejected"}`, and the batch in
`otelcol_exporter_send_failed_*`), the server's message is logged once per distinct message,
and the batch's other writes still go out. A retry resumes at the first write not yet
acknowledged, so a failure half-way through a batch does not rewrite what was stored.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import time
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson
from prometheus_client import Counter
from pydantic import Field, SecretStr, field_validator, model_validator

from exporters.otlp import USER_AGENT, parse_retry_after
from gateway.anomaly import AnomalyBatch, AnomalyEvent
from gateway.batch import Batch, Signal, SpanBatch
from gateway.component import ComponentContext, Factory, Kind, PermanentError
from gateway.exporterhelper import QueuedExporter, QueuedExporterConfig, RetryableError, SendProgress
from gateway.telemetry import SelfTelemetry

Precision = Literal["ns", "us", "ms", "s"]
PRECISION_DIVISOR = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_GZIP_INLINE_LIMIT = 256 * 1024
_ENCODE_INLINE_ROWS = 1000
# Line protocol compresses ~12x at level 1 already; level 9 costs ~7x the CPU for ~20 % fewer bytes.
_GZIP_LEVEL = 1


# ---------------------------------------------------------------- line protocol
_BLANKS = {"\n": "\\ ", "\r": "\\ ", "\t": "\\ "}
_MEASUREMENT_ESC = str.maketrans({",": "\\,", " ": "\\ ", **_BLANKS})
_KEY_ESC = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", **_BLANKS})
_STRING_ESC = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": " ", "\r": " "})


def escape_measurement(name: str) -> str:
    return name.rstrip("\\").translate(_MEASUREMENT_ESC)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key."""
    return text.rstrip("\\").translate(_KEY_ESC)


def quote_string(text: str) -> str:
    """A string field value."""
    return '"' + text.translate(_STRING_ESC) + '"'


def format_float(value: float) -> str | None:
    """Shortest round-tripping decimal; None for NaN and infinities (line protocol has neither)."""
    if value != value or value in (math.inf, -math.inf):
        return None
    return repr(float(value))


def tag_prefix(measurement: str, tags: list[tuple[str, str | None]]) -> str:
    """`measurement,k=v,...` with empty/missing tags left out; pass tags sorted by key."""
    parts = [escape_measurement(measurement)]
    for key, value in tags:
        if value:
            v = escape_key(value)
            if v:
                parts.append(f"{escape_key(key)}={v}")
    return ",".join(parts)


class Lines:
    """Points being encoded; keeps same-series points apart in time."""

    def __init__(self, precision: str) -> None:
        self.div = PRECISION_DIVISOR[precision]
        self.lines: list[str] = []
        self._seen: set[tuple[str, int]] = set()

    def add(self, prefix: str, fields: str, time_ns: int) -> None:
        """One point; `fields` is the joined field set (a point without fields is skipped)."""
        if not fields:
            return
        ts = time_ns // self.div if time_ns > 0 else time.time_ns() // self.div
        while (prefix, ts) in self._seen:
            ts += 1
        self._seen.add((prefix, ts))
        self.lines.append(f"{prefix} {fields} {ts}")


def chunk_lines(lines: list[str], max_lines: int, max_bytes: int) -> list[bytes]:
    """Bodies of at most `max_lines` lines and `max_bytes` bytes (a longer line goes alone)."""
    out: list[bytes] = []
    cur: list[str] = []
    size = 0
    for line in lines:
        n = (len(line) if line.isascii() else len(line.encode())) + 1
        if cur and (len(cur) >= max_lines or size + n > max_bytes):
            out.append("\n".join(cur).encode())
            cur, size = [], 0
        cur.append(line)
        size += n
    if cur:
        out.append("\n".join(cur).encode())
    return out


async def compress(body: bytes) -> bytes:
    """gzip, off the event loop for bodies big enough to stall it."""
    if len(body) > _GZIP_INLINE_LIMIT:
        return await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL, mtime=0)
    return gzip.compress(body, _GZIP_LEVEL, mtime=0)


def _float_fields(key: str, values: np.ndarray, scale: float = 1.0, ndigits: int | None = None) -> list[str]:
    """`key=<float>` per row, "" where the value is NaN or infinite."""
    v = values * scale if scale != 1.0 else values
    if ndigits is not None:
        v = np.round(v, ndigits)
    ok = np.isfinite(v).tolist()
    return [f"{key}={x!r}" if good else "" for x, good in zip(v.tolist(), ok, strict=True)]


def _int_fields(key: str, values: np.ndarray) -> list[str]:
    """`key=<int>i` per row (rounded), "" where the value is unknown."""
    ok = np.isfinite(values)
    ints = np.rint(np.where(ok, values, 0.0)).astype(np.int64).tolist()
    return [f"{key}={i}i" if good else "" for i, good in zip(ints, ok.tolist(), strict=True)]


_OUTCOMES = ("ok", "error", "rate_limited")
_CALL_TAGS = ("error_type", "model", "operation", "outcome", "provider", "response_model", "service")


def encode_calls(
    batch: SpanBatch, lines: Lines, measurement: str = "llm_calls", string_fields: bool = True
) -> int:
    """Append one point per LLM call of `batch`; returns the number of points added."""
    c = batch.columns
    if "llm" not in c:
        return 0
    rows = np.flatnonzero(c["llm"])
    if not rows.shape[0]:
        return 0
    values = batch.strings.values

    def codes(name: str) -> list[int]:
        return list(c[name][rows].tolist())

    outcome = np.where(c["rate_limited"][rows], 2, np.where(c["error"][rows], 1, 0)).tolist()
    # one tuple of codes per row, in the (sorted) order of _CALL_TAGS; outcome is an index into _OUTCOMES
    tag_codes = zip(
        codes("error_type"),
        codes("request_model"),
        codes("operation"),
        outcome,
        codes("provider"),
        codes("response_model"),
        codes("service"),
        strict=True,
    )
    # the field set, column by column ("" = left out), joined per row below
    columns = [
        _float_fields("latency_ms", c["latency_s"][rows], 1000.0, 6),
        _float_fields("ttft_ms", c["ttft_s"][rows], 1000.0, 6),
        _int_fields("input_tokens", c["input_tokens"][rows]),
        _int_fields("output_tokens", c["output_tokens"][rows]),
        _int_fields("cached_input_tokens", c["cached_input_tokens"][rows]),
        _int_fields("reasoning_tokens", c["reasoning_tokens"][rows]),
        _float_fields("cost_usd", c["cost_usd"][rows], ndigits=12),
    ]
    if string_fields:
        reasons = {
            code: f"finish_reason={quote_string(values[code])}" for code in set(codes("finish_reason"))
        }
        reasons[-1] = ""
        columns.append([reasons[code] for code in codes("finish_reason")])
        hi, lo = c["trace_id_hi"][rows].tolist(), c["trace_id_lo"][rows].tolist()
        columns.append(
            [f'trace_id="{h:016x}{x:016x}"' if h or x else "" for h, x in zip(hi, lo, strict=True)]
        )
    prefixes: dict[tuple[int, ...], str] = {}
    n0 = len(lines.lines)
    add = lines.add
    for key, parts, end in zip(
        tag_codes, zip(*columns, strict=True), c["end_ns"][rows].tolist(), strict=True
    ):
        prefix = prefixes.get(key)
        if prefix is None:
            tags = [
                (name, _OUTCOMES[code] if name == "outcome" else values[code] if code >= 0 else None)
                for name, code in zip(_CALL_TAGS, key, strict=True)
            ]
            prefix = prefixes[key] = tag_prefix(measurement, tags)
        add(prefix, ",".join(filter(None, parts)), end)
    return len(lines.lines) - n0


def encode_alerts(
    events: list[AnomalyEvent], lines: Lines, measurement: str = "llm_anomalies", string_fields: bool = True
) -> int:
    n0 = len(lines.lines)
    for e in events:
        prefix = tag_prefix(
            measurement,
            [
                ("detector", e.detector),
                ("metric", e.metric),
                ("model", e.model),
                ("operation", e.operation),
                ("provider", e.provider),
                ("service", e.service),
                ("severity", e.severity.value),
                ("type", e.type.value),
            ],
        )
        fields = [
            f"{name}={v}"
            for name, v in (
                ("value", format_float(e.value)),
                ("baseline", format_float(e.baseline)),
                ("score", format_float(e.score)),
            )
            if v is not None
        ]
        fields.append(f"count={int(e.count)}i")
        if string_fields:
            fields.append(f"id={quote_string(e.id)}")
            if e.trace_ids:
                fields.append(f"trace_ids={quote_string(','.join(e.trace_ids))}")
        lines.add(prefix, ",".join(fields), e.time_ns)
    return len(lines.lines) - n0


# ---------------------------------------------------------------- errors
class RejectedError(PermanentError):
    """The server refused a write for good (4xx other than 429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def classify(status: int, message: str, retry_after: str | None, where: str) -> Exception:
    """The exception for a non-2xx answer: retry 429 and 5xx, give up on the rest."""
    text = f"HTTP {status} from {where}" + (f": {message}" if message else "")
    if status == 429 or status >= 500:
        return RetryableError(text, retry_after=parse_retry_after(retry_after))
    return RejectedError(text, status)


def server_message(body: bytes, headers: Any) -> str:
    """InfluxDB's error text: the JSON body's error/message, else X-Influxdb-Error, else the body."""
    if body:
        try:
            doc = orjson.loads(body)
            if isinstance(doc, dict):
                msg = doc.get("error") or doc.get("message")
                if msg:
                    return str(msg)[:500]
        except orjson.JSONDecodeError:
            pass
    header = headers.get("X-Influxdb-Error") if headers is not None else None
    if header:
        return str(header)[:500]
    return body[:500].decode("utf-8", "replace").strip()


class _OncePerMessage(logging.Filter):
    """Lets the queued sender's "permanent error" line through once per distinct message."""

    MARK = "permanent error: "

    def __init__(self, limit: int = 1024) -> None:
        super().__init__()
        self.limit = limit
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        msg = record.getMessage()
        at = msg.find(self.MARK)
        if at < 0:
            return True
        key = msg[at + len(self.MARK) :]
        if key in self.seen:
            return False
        if len(self.seen) >= self.limit:
            self.seen.clear()
        self.seen.add(key)
        return True


# ---------------------------------------------------------------- config
class InfluxDBConfig(QueuedExporterConfig):
    url: str = Field(description="Server base URL, e.g. http://localhost:8086.")
    api: Literal["v2", "v1"] = Field(default="v2", description="v2: /api/v2/write; v1: InfluxDB 1.x /write.")
    # v2
    token: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    # v1
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    # both
    precision: Precision = "ns"
    gzip: bool = True
    max_lines: int = Field(default=5000, ge=1, description="Lines per write request.")
    max_bytes: int = Field(default=1 << 20, ge=1024, description="Uncompressed bytes per write request.")
    calls_measurement: str = "llm_calls"
    anomalies_measurement: str = "llm_anomalies"
    string_fields: bool = Field(default=True, description="Write finish_reason, trace_id, id, trace_ids.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or any(c.isspace() for c in v) or len(v) < 8:
            raise ValueError(f"invalid url {v!r}: expected http://host:port or https://host:port")
        return v.rstrip("/")

    @field_validator("calls_measurement", "anomalies_measurement")
    @classmethod
    def _measurement(cls, v: str) -> str:
        if not v or v.startswith(("#", "_")) or v != v.strip() or v.endswith("\\"):
            raise ValueError(f"invalid measurement name {v!r}")
        return v

    @model_validator(mode="after")
    def _api(self) -> InfluxDBConfig:
        if self.api == "v2":
            missing = [k for k in ("bucket", "org") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} required with api v2 (any org for servers without orgs)"
                )
            extra = [k for k in ("database", "retention_policy", "username", "password") if getattr(self, k)]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply with api v1")
        else:
            if not self.database:
                raise ValueError("database is required with api v1")
            extra = [k for k in ("token", "org", "bucket") if getattr(self, k)]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply with api v2")
            if self.password is not None and not self.username:
                raise ValueError("password needs username (api v1 basic auth)")
        return self


# ---------------------------------------------------------------- exporter
def _points_counter(tel: SelfTelemetry) -> Counter:
    return tel.singleton(
        "influxdb_points",
        lambda: Counter(
            "llm_sentinel_influxdb_points",
            "Line-protocol points written to InfluxDB, or rejected by it for good.",
            ["exporter", "outcome"],
            registry=tel.registry,
        ),
    )


class _Pending:
    __slots__ = ("bodies", "first_error", "next", "points", "rejected")

    def __init__(self, bodies: list[bytes], points: list[int]) -> None:
        self.bodies = bodies
        self.points = points
        self.next = 0
        self.rejected = 0
        self.first_error: RejectedError | None = None


class InfluxDBExporter(QueuedExporter):
    config: InfluxDBConfig

    def __init__(self, ctx: ComponentContext, config: InfluxDBConfig) -> None:
        super().__init__(ctx, config)
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None
        self._write_service: Any = None
        self._progress: SendProgress[_Pending] = SendProgress(2 * config.sending_queue.num_consumers + 4)
        counter = _points_counter(ctx.telemetry)
        self._m_written = counter.labels(exporter=str(ctx.id), outcome="written")
        self._m_rejected = counter.labels(exporter=str(ctx.id), outcome="rejected")
        self._log_filter = _OncePerMessage()
        self._v1_url = f"{config.url}/write"
        params = {"db": config.database or "", "precision": V1_PRECISION[config.precision]}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        self._v1_params = params

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        cfg = self.config
        self.logger.addFilter(self._log_filter)
        if cfg.api == "v2":
            from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
            from influxdb_client.service.write_service import WriteService

            options: dict[str, Any] = {
                "url": cfg.url,
                "token": cfg.token.get_secret_value() if cfg.token else None,
                "org": cfg.org,
                "timeout": int(cfg.timeout * 1000),
                "enable_gzip": False,  # compressed here: faster level, off the event loop
            }
            self._client = InfluxDBClientAsync(**options)
            self._write_service = WriteService(self._client.api_client)
        else:
            auth = None
            if cfg.username:
                pw = cfg.password.get_secret_value() if cfg.password else ""
                auth = aiohttp.BasicAuth(cfg.username, pw)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                headers={"User-Agent": USER_AGENT},
                auth=auth,
            )
        await super().start()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._write_service = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.logger.removeFilter(self._log_filter)

    # ---------------------------------------------------------------- encoding
    def encode(self, batch: Batch | AnomalyBatch) -> tuple[list[bytes], list[int]]:
        """Write bodies for `batch` and the number of points in each."""
        cfg = self.config
        lines = Lines(cfg.precision)
        if isinstance(batch, AnomalyBatch):
            encode_alerts(batch.events, lines, cfg.anomalies_measurement, cfg.string_fields)
        elif isinstance(batch, SpanBatch):
            encode_calls(batch, lines, cfg.calls_measurement, cfg.string_fields)
        else:
            raise PermanentError(f"influxdb exports traces and anomalies, not {batch.signal.value}")
        bodies = chunk_lines(lines.lines, cfg.max_lines, cfg.max_bytes)
        points = [body.count(b"\n") + 1 for body in bodies]
        return bodies, points

    # ---------------------------------------------------------------- sending
    async def send(self, batch: Batch) -> None:
        state = self._progress.find(batch)
        if state is None:
            # a big batch is encoded in a worker thread so the event loop keeps serving requests
            big = len(batch) > _ENCODE_INLINE_ROWS
            encoded = await asyncio.to_thread(self.encode, batch) if big else self.encode(batch)
            state = self._progress.get(batch, lambda: _Pending(*encoded))
        while state.next < len(state.bodies):
            i = state.next
            try:
                await self._write(state.bodies[i])
                self._m_written.inc(state.points[i])
            except RejectedError as exc:
                self._m_rejected.inc(state.points[i])
                state.rejected += state.points[i]
                state.first_error = state.first_error or exc
            state.next = i + 1
        self._progress.done(batch)
        if state.first_error is not None:
            total = sum(state.points)
            if state.rejected < total:
                self.logger.warning(
                    f"{state.rejected} of {total} point(s) rejected, the others were written",
                    extra={"fields": {"rejected": state.rejected, "points": total}},
                )
            raise state.first_error

    async def _write(self, body: bytes) -> None:
        if self.config.api == "v2":
            await self._write_v2(body)
        else:
            await self._write_v1(body)

    async def _write_v2(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException

        assert self._write_service is not None, "exporter not started"
        cfg = self.config
        where = f"{cfg.url}/api/v2/write"
        options: dict[str, Any] = {"content_type": "text/plain; charset=utf-8"}
        if cfg.gzip:
            body = await compress(body)
            options["content_encoding"] = "gzip"
        try:
            await self._write_service.post_write_async(
                org=cfg.org,
                bucket=cfg.bucket,
                body=body,
                precision=cfg.precision,
                async_req=False,
                _return_http_data_only=False,
                **options,
            )
        except ApiException as exc:
            if not exc.status:
                raise RetryableError(f"POST {where} failed: {exc.reason}") from None
            body = exc.body.encode() if isinstance(exc.body, str) else exc.body
            msg = server_message(body, exc.headers) if body else str(getattr(exc, "message", "") or "")
            raise classify(int(exc.status), msg, exc.retry_after, where) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryableError(f"POST {where} failed: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        except (ValueError, TypeError) as exc:  # influxdb-client refusing the request before sending it
            raise PermanentError(f"POST {where} not sent: {exc}") from None

    async def _write_v1(self, body: bytes) -> None:
        assert self._session is not None, "exporter not started"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.config.gzip:
            headers["Content-Encoding"] = "gzip"
            body = await compress(body)
        try:
            async with self._session.post(
                self._v1_url, params=self._v1_params, data=body, headers=headers
            ) as resp:
                status = resp.status
                payload = await resp.read()
                if 200 <= status < 300:
                    return
                msg = server_message(payload, resp.headers)
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(
                f"POST {self._v1_url} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from None
        raise classify(status, msg, retry_after, self._v1_url)


FACTORY = Factory(
    type="influxdb",
    kind=Kind.EXPORTER,
    config=InfluxDBConfig,
    create=InfluxDBExporter,
    signals=frozenset({Signal.TRACES, Signal.ANOMALIES}),
    description="Writes LLM calls and alerts as InfluxDB line protocol (v2 API or InfluxDB 1.x /write).",
)
