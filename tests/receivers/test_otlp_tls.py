"""TLS on both OTLP transports, with real SDK exporters trusting a throwaway CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config, spans_in_file

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_tls_receivers_accept_sdk_exports(transport, ports, tmp_path, monkeypatch):
    # requests lets these variables override an explicit CA file; some machines set them globally
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    cert, key = make_cert(tmp_path)
    tls = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
    out = tmp_path / "o.jsonl"
    with running_gateway(gateway_config(ports, out, grpc=tls, http=tls, signals=("traces",))):
        if transport == "grpc":
            exporter = GrpcSpanExporter(
                endpoint=f"https://localhost:{ports['grpc']}", credentials=_grpc_creds(cert)
            )
        else:
            exporter = HttpSpanExporter(
                endpoint=f"https://localhost:{ports['http']}/v1/traces", certificate_file=str(cert)
            )
        tp = TracerProvider(resource=Resource.create({"service.name": "tls"}))
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        with tp.get_tracer("t").start_as_current_span("secure"):
            pass
        tp.shutdown()
        (span,) = wait_until(lambda: spans_in_file(out))
        assert span.name == "secure"


def _grpc_creds(cert: Path):
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())


def test_plaintext_client_cannot_talk_to_tls_http(ports, tmp_path):
    import requests

    cert, key = make_cert(tmp_path)
    tls = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
    with running_gateway(gateway_config(ports, tmp_path / "o.jsonl", http=tls, signals=("traces",))):
        with pytest.raises(requests.ConnectionError):
            requests.post(f"http://127.0.0.1:{ports['http']}/v1/traces", data=b"", timeout=5)
        r = requests.post(
            f"https://localhost:{ports['http']}/v1/traces",
            data=b"",
            headers={"Content-Type": "application/x-protobuf"},
            verify=str(cert),
            timeout=5,
        )
        assert r.status_code == 200
