"""Typed config of the OTLP receiver, shaped like the Collector's `otlp` receiver."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.component import ComponentConfig

MIB = 1024 * 1024


def check_endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid endpoint {value!r}: expected host:port such as 127.0.0.1:4317")
    return value


def split_endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class TlsSettings(ComponentConfig):
    cert_file: str
    key_file: str
    client_ca_file: str | None = Field(
        default=None, description="Require client certificates signed by this CA."
    )

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"file not found: {v}")
        return v

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class AuthSettings(ComponentConfig):
    """Static bearer-token authentication (`Authorization: Bearer <token>`)."""

    bearer_token: str | None = None
    bearer_token_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AuthSettings:
        if bool(self.bearer_token) == bool(self.bearer_token_file):
            raise ValueError("set exactly one of bearer_token or bearer_token_file")
        if self.bearer_token_file and not Path(self.bearer_token_file).is_file():
            raise ValueError(f"bearer_token_file not found: {self.bearer_token_file}")
        return self

    def token(self) -> str:
        if self.bearer_token:
            return self.bearer_token
        assert self.bearer_token_file
        return Path(self.bearer_token_file).read_text(encoding="utf-8").strip()


class GrpcSettings(ComponentConfig):
    endpoint: str = "127.0.0.1:4317"
    max_recv_msg_size_mib: float = Field(default=64, gt=0, description="Limit after decompression.")
    max_concurrent_streams: int = Field(default=0, ge=0, description="0 = gRPC default.")
    reuse_port: bool = Field(default=False, description="Share the port with other processes (workers).")
    tls: TlsSettings | None = None
    auth: AuthSettings | None = None

    _ep = field_validator("endpoint")(lambda cls, v: check_endpoint(v))


class CorsSettings(ComponentConfig):
    allowed_origins: list[str] = Field(default_factory=list, description="Exact origins, '*' or wildcards.")
    allowed_headers: list[str] = Field(default_factory=list)
    max_age: int = Field(default=0, ge=0, description="Preflight cache time in seconds.")


class HttpSettings(ComponentConfig):
    endpoint: str = "127.0.0.1:4318"
    max_request_body_size_mib: float = Field(
        default=64, gt=0, description="Limit on the body, both as sent and after decompression."
    )
    traces_url_path: str = "/v1/traces"
    metrics_url_path: str = "/v1/metrics"
    logs_url_path: str = "/v1/logs"
    cors: CorsSettings | None = None
    reuse_port: bool = False
    tls: TlsSettings | None = None
    auth: AuthSettings | None = None

    _ep = field_validator("endpoint")(lambda cls, v: check_endpoint(v))

    @field_validator("traces_url_path", "metrics_url_path", "logs_url_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("a URL path must start with /")
        return v


class Protocols(ComponentConfig):
    grpc: GrpcSettings | None = None
    http: HttpSettings | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Protocols:
        if self.grpc is None and self.http is None:
            raise ValueError("enable at least one protocol: grpc and/or http")
        return self


class OtlpReceiverConfig(ComponentConfig):
    protocols: Protocols
    wire_decoder: Literal["fast", "reference"] = Field(
        default="fast",
        description="Protobuf traces: `fast` reads the wire bytes with a compiled decoder (falling back "
        "to the protobuf library for anything it cannot prove it decodes identically); `reference` "
        "always parses with the protobuf library.",
    )

    @field_validator("protocols", mode="before")
    @classmethod
    def _empty_protocol_means_defaults(cls, v: object) -> object:
        # `grpc:` with no body enables the protocol with defaults, as in the Collector.
        if isinstance(v, dict):
            return {k: ({} if body is None else body) for k, body in v.items()}
        return v
