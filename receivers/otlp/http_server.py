"""OTLP/HTTP server on aiohttp's low-level server, following the OTLP/HTTP spec.

One handler does its own routing so every status code is ours: 404 unknown
path, 405 non-POST, 415 media type or encoding, 413 body (as sent or after
decompression) over the limit, 400 + google.rpc.Status for undecodable bodies,
429/503 + Retry-After under pressure, 200 + Export*ServiceResponse otherwise.
Responses use the request's encoding (protobuf or JSON). Bodies are read and
decompressed incrementally with a cap, so a gzip bomb cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import math
import zlib

from aiohttp import web
from google.rpc import code_pb2, status_pb2

from gateway import otlpjson
from gateway.batch import Signal
from gateway.component import ConsumeError, RefusedError, ThrottledError
from gateway.pressure import Admission
from receivers.otlp.config import MIB, HttpSettings, split_endpoint
from receivers.otlp.export import ExportHandler, InvalidRequestError, SignalNotEnabledError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    pass


class BadEncoding(Exception):
    pass


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """Read the body, decompressing gzip/deflate on the fly; never hold more than `limit` bytes."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        decomp = None
    elif encoding in ("gzip", "x-gzip"):
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decomp = zlib.decompressobj()  # zlib-wrapped, as HTTP's "deflate" means
    else:
        raise BadEncoding(f"unsupported Content-Encoding {encoding!r}; supported: gzip, deflate, identity")
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit}")
    if decomp is None:
        return await _read_plain(request, limit)
    raw_seen = 0
    out = bytearray()
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            break
        raw_seen += len(chunk)
        if raw_seen > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        data = chunk
        while data:
            try:
                piece = decomp.decompress(data, limit - len(out) + 1)
            except zlib.error as exc:
                raise BadEncoding(f"invalid {encoding} body: {exc}") from None
            out += piece
            if len(out) > limit:
                raise BodyTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
            data = decomp.unconsumed_tail
            if decomp.eof:
                break
    try:
        out += decomp.flush()
    except zlib.error as exc:
        raise BadEncoding(f"invalid {encoding} body: {exc}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"decompressed request body exceeds the limit of {limit} bytes")
    if not decomp.eof and raw_seen:
        raise BadEncoding(f"truncated {encoding} body")
    return bytes(out)


async def _read_plain(request: web.BaseRequest, limit: int) -> bytes:
    """An uncompressed body as it arrived: whatever the connection buffered at each step, joined
    once (no copy at all when it came in one piece)."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body if type(body) is bytes else bytes(body)


def media_type(request: web.BaseRequest) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class HttpServer:
    def __init__(
        self, settings: HttpSettings, handler: ExportHandler, admission: Admission, logger: logging.Logger
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.admission = admission
        self.logger = logger
        self.limit = int(settings.max_request_body_size_mib * MIB)
        self.routes = {
            settings.traces_url_path: Signal.TRACES,
            settings.metrics_url_path: Signal.METRICS,
            settings.logs_url_path: Signal.LOGS,
        }
        self._token = settings.auth.token().encode() if settings.auth else None
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self.bound = settings.endpoint

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        s = self.settings
        self._web = web.Server(self._handle, auto_decompress=False, handler_cancellation=True)
        host, port = split_endpoint(s.endpoint)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._web,
            host,
            port,
            ssl=s.tls.server_context() if s.tls else None,
            reuse_address=True,
            reuse_port=s.reuse_port or None,
            backlog=1024,
        )
        sock = self._server.sockets[0].getsockname()
        self.bound = f"{s.endpoint.rpartition(':')[0]}:{sock[1]}"

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._web is not None:
            self._web.pre_shutdown()  # idle keep-alive connections close now; in-flight requests finish
            await self._web.shutdown(grace)
        await self._server.wait_closed()
        self._server = None

    # ---------------------------------------------------------------- responses
    def _status(
        self, req_json: bool, http_status: int, code: int, message: str, **headers: str
    ) -> web.Response:
        st = status_pb2.Status(code=code, message=message)
        if req_json:
            body, ctype = otlpjson.encode(st), JSON
        else:
            body, ctype = st.SerializeToString(), PROTOBUF
        return web.Response(status=http_status, body=body, headers={"Content-Type": ctype, **headers})

    def _cors_headers(self, request: web.BaseRequest) -> dict[str, str]:
        cors = self.settings.cors
        origin = request.headers.get("Origin")
        if cors is None or not origin:
            return {}
        for allowed in cors.allowed_origins:
            if allowed == "*" or allowed == origin or fnmatch.fnmatchcase(origin, allowed):
                return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    # ---------------------------------------------------------------- handler
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        cors = self._cors_headers(request)
        resp = await self._dispatch(request, cors)
        if cors:
            resp.headers.update(cors)
        return resp

    async def _dispatch(self, request: web.BaseRequest, cors: dict[str, str]) -> web.StreamResponse:
        ctype = media_type(request)
        as_json = ctype == JSON
        signal = self.routes.get(request.path)
        if signal is None:
            return self._status(as_json, 404, code_pb2.NOT_FOUND, f"unknown path {request.path}")
        if request.method == "OPTIONS" and self.settings.cors is not None:
            return self._preflight(request, cors)
        if request.method != "POST":
            return self._status(
                as_json, 405, code_pb2.UNIMPLEMENTED, f"method {request.method} not allowed", Allow="POST"
            )
        if self._token is not None and not self._authorized(request):
            return self._status(
                as_json,
                401,
                code_pb2.UNAUTHENTICATED,
                "missing or invalid bearer token",
                **{"WWW-Authenticate": 'Bearer realm="otlp"'},
            )
        if ctype not in (PROTOBUF, JSON):
            return self._status(
                False,
                415,
                code_pb2.INVALID_ARGUMENT,
                f"unsupported Content-Type {ctype or '(none)'!r}; use {PROTOBUF} or {JSON}",
            )
        try:
            with self.admission.admit(request.content_length or 0, signal) as reservation:
                body = await read_body(request, self.limit)
                reservation.resize(len(body))
                result = await self.handler.handle(signal, body, json=as_json, transport="http")
        except BodyTooLarge as exc:
            return self._status(as_json, 413, code_pb2.RESOURCE_EXHAUSTED, str(exc), Connection="close")
        except BadEncoding as exc:
            status = 415 if "unsupported" in str(exc) else 400
            return self._status(as_json, status, code_pb2.INVALID_ARGUMENT, str(exc))
        except InvalidRequestError as exc:
            return self._status(as_json, 400, code_pb2.INVALID_ARGUMENT, str(exc))
        except SignalNotEnabledError as exc:
            return self._status(as_json, 404, code_pb2.NOT_FOUND, str(exc))
        except RefusedError as exc:
            retry_after = str(max(1, math.ceil(exc.retry_after or 1.0)))
            status = 429 if isinstance(exc, ThrottledError) else 503
            return self._status(
                as_json,
                status,
                code_pb2.UNAVAILABLE,
                f"refused, retry later: {exc}",
                **{"Retry-After": retry_after},
            )
        except ConsumeError as exc:
            if exc.retryable:
                return self._status(as_json, 503, code_pb2.UNAVAILABLE, str(exc), **{"Retry-After": "1"})
            return self._status(as_json, 400, code_pb2.INVALID_ARGUMENT, str(exc))
        except Exception:
            self.logger.exception("unexpected error handling an OTLP/HTTP export")
            return self._status(as_json, 500, code_pb2.INTERNAL, "internal error")
        return web.Response(
            status=200,
            body=result.body(signal, as_json),
            headers={"Content-Type": JSON if as_json else PROTOBUF},
        )

    def _preflight(self, request: web.BaseRequest, cors: dict[str, str]) -> web.Response:
        if not cors:
            return web.Response(status=403, text="origin not allowed")
        settings = self.settings.cors
        assert settings is not None
        allow_headers = {
            "content-type",
            "content-encoding",
            "authorization",
            *map(str.lower, settings.allowed_headers),
        }
        headers = {
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": ", ".join(sorted(allow_headers)),
        }
        if settings.max_age:
            headers["Access-Control-Max-Age"] = str(settings.max_age)
        return web.Response(status=204, headers=headers)

    def _authorized(self, request: web.BaseRequest) -> bool:
        assert self._token is not None
        scheme, _, token = request.headers.get("Authorization", "").encode().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)
