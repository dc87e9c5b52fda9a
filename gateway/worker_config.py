"""What one worker of `sentinel run --workers N` is, and how its config differs from the user's.

Workers run the user's config with three changes, because some resources cannot
be shared between processes:

* OTLP receivers bind with `reuse_port`, so every worker listens on the same
  ports and the kernel spreads connections over them (SO_REUSEPORT).
* A `file` exporter writes `<stem>.worker-<i><suffix>` (`otlp.jsonl` →
  `otlp.worker-0.jsonl`): two writers on one file would interleave lines.
* A persistent sending queue (`sending_queue.storage.directory`) uses
  `<directory>/worker-<i>`: each queue directory is locked by one process, and
  worker i recovers its own backlog after a restart.
* `prometheusremotewrite` labels the gateway's own series `instance=<host or
  instance>/worker-<i>`: each worker pushes its own counts, and two writers of
  one series would overwrite each other's samples (as two replicas would).

The admin server of a worker listens on a unix socket in the supervisor's
private run directory; the supervisor serves the configured admin endpoint.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from gateway.component import Kind
from gateway.config.model import GatewayConfig

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class WorkerSpec:
    """Worker `index` of `count`; `run_dir` holds the sockets the processes talk over."""

    index: int
    count: int
    run_dir: Path

    @property
    def admin_socket(self) -> Path:
        return admin_socket(self.run_dir, self.index)

    def peer_socket(self, channel: str, index: int) -> Path:
        """Socket on which worker `index` accepts rows for `channel` (e.g. one detect connector)."""
        return self.run_dir / f"{channel}-{index}.sock"

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


def admin_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"admin-{index}.sock"


def worker_file(path: str, index: int) -> str:
    """`data/otlp.jsonl` → `data/otlp.worker-<index>.jsonl`."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.worker-{index}{p.suffix}"))


def for_worker(config: GatewayConfig, index: int) -> GatewayConfig:
    """`config` as worker `index` runs it (see the module docstring)."""
    components = {
        kind: {
            cid: dataclasses.replace(spec, config=_rewrite(spec.config, index)) for cid, spec in specs.items()
        }
        for kind, specs in config.components.items()
    }
    return dataclasses.replace(config, components=components)


def _rewrite(model: M, index: int) -> M:
    from exporters.file import FileConfig
    from exporters.prometheusremotewrite import PrometheusRemoteWriteConfig
    from gateway.persistent_queue import StorageSettings
    from receivers.otlp.config import GrpcSettings, HttpSettings

    updates: dict[str, object] = {}
    for name, value in model:
        if isinstance(value, BaseModel):
            new = _rewrite(value, index)
            if new is not value:
                updates[name] = new
    if isinstance(model, GrpcSettings | HttpSettings):
        updates["reuse_port"] = True
    elif isinstance(model, StorageSettings):
        updates["directory"] = str(Path(model.directory) / f"worker-{index}")
    elif isinstance(model, FileConfig):
        updates["path"] = worker_file(model.path, index)
    elif isinstance(model, PrometheusRemoteWriteConfig) and model.instance != "":  # "" omits the label
        updates["instance"] = f"{model.instance or socket.gethostname()}/worker-{index}"
    return model.model_copy(update=updates) if updates else model


def multi_worker_issues(config: GatewayConfig) -> list[str]:
    """What stops `config` from running as several workers (empty when nothing does)."""
    from receivers.otlp.config import GrpcSettings, HttpSettings

    issues = []
    for cid, spec in config.components[Kind.RECEIVER].items():
        for settings in _models(spec.config):
            if isinstance(settings, GrpcSettings | HttpSettings) and settings.endpoint.endswith(":0"):
                issues.append(
                    f"receivers.{cid}: endpoint {settings.endpoint} asks for a random port; workers "
                    "share one port, so give a fixed port when workers > 1"
                )
    return issues


def _models(model: BaseModel) -> list[BaseModel]:
    out = [model]
    for _, value in model:
        if isinstance(value, BaseModel):
            out += _models(value)
    return out
