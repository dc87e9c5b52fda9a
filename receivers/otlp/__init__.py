"""OTLP receiver: gRPC (:4317) and HTTP (:4318) front ends feeding the pipelines."""

from __future__ import annotations

from typing import Any

from gateway.component import ComponentContext, Factory, Kind, Receiver
from receivers.otlp.config import OtlpReceiverConfig
from receivers.otlp.export import ExportHandler


class OtlpReceiver(Receiver):
    config: OtlpReceiverConfig

    def __init__(self, ctx: ComponentContext, config: OtlpReceiverConfig) -> None:
        super().__init__(ctx, config)
        self._servers: dict[str, Any] = {}
        self._handler: ExportHandler | None = None

    async def start(self) -> None:
        # Imported here so a config using only HTTP never loads grpc (and vice versa).
        handler = self._handler = ExportHandler(self.ctx, self.consumers, self.config.wire_decoder)
        handler.start_warm_up()
        protocols = self.config.protocols
        try:
            if protocols.grpc is not None:
                from receivers.otlp.grpc_server import GrpcServer

                grpc_server = GrpcServer(protocols.grpc, handler, self.ctx.admission, self.logger)
                await grpc_server.start()
                self._servers["grpc"] = grpc_server
            if protocols.http is not None:
                from receivers.otlp.http_server import HttpServer

                http_server = HttpServer(protocols.http, handler, self.ctx.admission, self.logger)
                await http_server.start()
                self._servers["http"] = http_server
        except OSError as exc:
            await self.shutdown()
            raise OSError(f"receiver {self.id}: cannot listen: {exc}") from exc
        self.logger.info("listening", extra={"fields": self.endpoints()})

    async def shutdown(self) -> None:
        servers, self._servers = self._servers, {}
        for server in servers.values():
            await server.stop()

    def listening(self) -> bool:
        p = self.config.protocols
        wanted = {name for name in ("grpc", "http") if getattr(p, name) is not None}
        warm = self._handler is not None and self._handler.ready()  # decoder compiled before /readyz
        return wanted == set(self._servers) and warm

    def endpoints(self) -> dict[str, str]:
        return {name: s.bound for name, s in self._servers.items()}


FACTORY = Factory(
    type="otlp",
    kind=Kind.RECEIVER,
    config=OtlpReceiverConfig,
    create=OtlpReceiver,
    description="OTLP over gRPC and HTTP (protobuf and JSON), as the OTLP specification defines it.",
)
