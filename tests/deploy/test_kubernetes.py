"""The Kubernetes manifests in deploy/kubernetes, checked against the gateway they configure.

Each example directory is a kustomization. Every manifest is parsed; every gateway config they
mount is validated by the real config loader with the environment the pod would give it (the
image's ENV, then the container's env, secrets taken from the Secret examples); probes, ports,
memory, shutdown timing, writable paths and Service wiring are checked against that config.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.component import Kind
from gateway.config.model import GatewayConfig, build_config
from gateway.config.source import load_text
from tests.conftest import REPO_ROOT
from tests.deploy.test_image_recipe import image_env, image_uid

K8S = REPO_ROOT / "deploy" / "kubernetes"
EXAMPLES = sorted(p.parent.name for p in K8S.glob("*/kustomization.yaml"))
IMAGE = "llm-sentinel"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}

Obj = dict[str, Any]


# ---------------------------------------------------------------- loading an example
@dataclass
class Example:
    name: str
    root: Path
    kustomization: Obj
    objects: list[Obj] = field(default_factory=list)  # resources and *.example.yaml
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> text

    def kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    @property
    def secrets(self) -> dict[str, dict[str, str]]:
        return {
            s["metadata"]["name"]: {**s.get("stringData", {}), **s.get("data", {})}
            for s in self.kind("Secret")
        }

    @property
    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in WORKLOADS]


def load_docs(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), f"{path}: not a manifest"
        assert d.get("metadata", {}).get("name"), f"{path}: {d['kind']} without metadata.name"
    return docs


def load_example(name: str) -> Example:
    root = K8S / name
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    ex = Example(name, root, kustomization)
    used = {"kustomization.yaml"}
    for res in kustomization.get("resources", []):
        ex.objects.extend(load_docs(root / res))
        used.add(res)
    for path in sorted(root.glob("*.example.yaml")):
        ex.objects.extend(load_docs(path))
        used.add(path.name)
    for gen in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, file = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (root / file).read_text()
            used.add(file)
        ex.configmaps[gen["name"]] = data
    for cm in ex.kind("ConfigMap"):
        ex.configmaps[cm["metadata"]["name"]] = dict(cm.get("data", {}))
    stray = sorted(p.name for p in root.glob("*.yaml") if p.name not in used)
    assert not stray, f"{root}: files neither in kustomization.yaml nor *.example.yaml: {stray}"
    return ex


@pytest.fixture(scope="module", params=EXAMPLES)
def example(request: pytest.FixtureRequest) -> Example:
    return load_example(request.param)


def test_examples_exist() -> None:
    assert {"gateway", "sidecar"} <= set(EXAMPLES)


# ---------------------------------------------------------------- pod helpers
def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def all_containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def image_name(image: str) -> str:
    """`registry:5000/name:tag@sha256:...` -> `registry:5000/name`."""
    ref = image.split("@")[0]
    head, _, last = ref.rpartition("/")
    return (head + "/" if head else "") + last.split(":")[0]


def is_sentinel(c: Obj) -> bool:
    return image_name(c["image"]).endswith(IMAGE) and (c.get("args") or [None])[0] == "run"


@dataclass
class Sentinel:
    """One LLM-Sentinel container of a workload, with its parsed config."""

    example: Example
    workload: Obj
    container: Obj
    config: GatewayConfig
    env: dict[str, str]

    @property
    def spec(self) -> Obj:
        return pod_spec(self.workload)

    @property
    def id(self) -> str:
        return f"{self.example.name}/{self.workload['metadata']['name']}/{self.container['name']}"

    def port(self, ref: int | str) -> int:
        """A probe's or Service's port: a number or the name of a containerPort."""
        if isinstance(ref, int) or str(ref).isdigit():
            return int(ref)
        for p in self.container.get("ports", []):
            if p.get("name") == ref:
                return int(p["containerPort"])
        raise AssertionError(f"{self.id}: no containerPort named {ref!r}")

    def mounts(self) -> list[Obj]:
        return list(self.container.get("volumeMounts", []))

    def volume(self, name: str) -> Obj:
        return next(v for v in self.spec.get("volumes", []) if v["name"] == name)

    def mount_for(self, path: str) -> Obj | None:
        """The volumeMount a path lies in (the longest mountPath that contains it)."""
        best = None
        for m in self.mounts():
            mp = m["mountPath"].rstrip("/")
            if (path == mp or path.startswith(mp + "/")) and (
                best is None or len(mp) > len(best["mountPath"])
            ):
                best = m
        return best

    def security(self, key: str) -> Any:
        """A securityContext setting: the container's, else the pod's."""
        return self.container.get("securityContext", {}).get(
            key, self.spec.get("securityContext", {}).get(key)
        )


def resolve_env(ex: Example, container: Obj) -> dict[str, str]:
    """The image's ENV, then the container's env, as the kubelet would set it."""
    env = dict(image_env())
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item["value"]))
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            s = ref["secretKeyRef"]
            secret = ex.secrets.get(s["name"])
            assert secret is not None, (
                f"{container['name']}: env {name} reads Secret {s['name']}, not in the example"
            )
            assert s["key"] in secret, (
                f"{container['name']}: env {name} reads key {s['key']} absent from {s['name']}"
            )
            env[name] = str(secret[s["key"]])
        elif "configMapKeyRef" in ref:
            c = ref["configMapKeyRef"]
            env[name] = ex.configmaps[c["name"]][c["key"]]
        elif "fieldRef" in ref or "resourceFieldRef" in ref:
            env[name] = f"placeholder-{name.lower()}"
        else:
            raise AssertionError(f"{container['name']}: unsupported valueFrom for {name}: {ref}")
    return env


def config_text(ex: Example, spec: Obj, container: Obj) -> tuple[str, str]:
    args = container["args"]
    assert "--config" in args or "-c" in args, f"{container['name']}: run without --config"
    path = args[(args.index("--config") if "--config" in args else args.index("-c")) + 1]
    directory, key = posixpath.split(path)
    mount = next(
        (m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory), None
    )
    assert mount is not None, f"{container['name']}: nothing mounted at {directory} for --config {path}"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{container['name']}: {directory} is not a ConfigMap volume"
    cm = volume["configMap"]["name"]
    assert cm in ex.configmaps, f"ConfigMap {cm} is neither generated nor defined in {ex.name}"
    for item in volume["configMap"].get("items", []):
        if item["path"] == key:
            key = item["key"]
    assert key in ex.configmaps[cm], f"ConfigMap {cm} has no key {key} (for --config {path})"
    return ex.configmaps[cm][key], f"{cm}/{key}"


def sentinels(ex: Example) -> Iterator[Sentinel]:
    for w in ex.workloads:
        spec = pod_spec(w)
        for c in all_containers(spec):
            if is_sentinel(c):
                text, name = config_text(ex, spec, c)
                env = resolve_env(ex, c)
                raw, locs = load_text(text, name, env)  # an unset ${env:X} without default fails here
                yield Sentinel(ex, w, c, build_config(raw, locs), env)


@pytest.fixture(scope="module")
def gateways(example: Example) -> list[Sentinel]:
    found = list(sentinels(example))
    assert found, f"{example.name}: no LLM-Sentinel container (image {IMAGE}, args run ...)"
    return found


def endpoint_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def receiver_endpoints(config: GatewayConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in config.components[Kind.RECEIVER].values():
        protocols = getattr(spec.config, "protocols", None)
        for proto in ("grpc", "http"):
            settings = getattr(protocols, proto, None)
            if settings is not None:
                out[f"{spec.id}/{proto}"] = settings.endpoint
    return out


def mib(quantity: str) -> float:
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "Ti": 1024**2,
        "K": 1e3 / 2**20,
        "M": 1e6 / 2**20,
        "G": 1e9 / 2**20,
    }
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(quantity))
    assert m, f"unsupported quantity {quantity!r}"
    return float(m[1]) * (units[m[2]] if m[2] else 1 / 2**20)


def prestop_seconds(container: Obj) -> float:
    pre = container.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0.0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if cmd and cmd[0] in ("sleep", "/bin/sleep"):
        return float(cmd[1])
    return 0.0


# ---------------------------------------------------------------- config and container
def test_config_validates_with_the_pod_environment(gateways: list[Sentinel]) -> None:
    for gw in gateways:  # the fixture already loaded and validated each config
        assert gw.config.pipelines, gw.id


def test_probes_hit_the_admin_server(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        host, admin_port = endpoint_port(gw.config.service.telemetry.admin.endpoint)
        assert host not in LOOPBACK, f"{gw.id}: the kubelet probes the pod IP; admin on {host} is unreachable"
        expected = {
            "livenessProbe": {"/healthz"},
            "readinessProbe": {"/readyz"},
            "startupProbe": {"/healthz", "/readyz"},
        }
        for probe, paths in expected.items():
            if probe == "startupProbe" and probe not in gw.container:
                continue
            assert probe in gw.container, f"{gw.id}: no {probe}"
            get = gw.container[probe]["httpGet"]
            assert get["path"] in paths, f"{gw.id}: {probe} on {get['path']}"
            assert gw.port(get["port"]) == admin_port, f"{gw.id}: {probe} not on the admin port {admin_port}"


def test_container_ports_are_the_configured_listeners(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        listeners = {**receiver_endpoints(gw.config), "admin": gw.config.service.telemetry.admin.endpoint}
        reachable = {endpoint_port(e)[1] for e in listeners.values() if endpoint_port(e)[0] not in LOOPBACK}
        loopback = {endpoint_port(e)[1] for e in listeners.values() if endpoint_port(e)[0] in LOOPBACK}
        declared = {int(p["containerPort"]) for p in gw.container.get("ports", [])}
        assert declared == reachable, (
            f"{gw.id}: containerPorts {declared} != listeners on the pod IP {reachable}"
        )
        assert not declared & loopback, f"{gw.id}: loopback-only ports declared as containerPorts"
        names = [p.get("name") for p in gw.container.get("ports", [])]
        assert all(names) and len(set(names)) == len(names), f"{gw.id}: every port needs a unique name"


def test_memory_limiter_stays_below_the_container_limit(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        resources = gw.container.get("resources", {})
        limit = mib(resources["limits"]["memory"])
        request = mib(resources["requests"]["memory"])
        assert request <= limit, gw.id
        limiters = [s for s in gw.config.components[Kind.PROCESSOR].values() if s.id.type == "memory_limiter"]
        assert limiters, f"{gw.id}: no memory_limiter"
        for spec in limiters:
            hard = spec.config.limit_mib  # type: ignore[attr-defined]
            assert 0 < hard <= 0.9 * limit, (
                f"{gw.id}: memory_limiter {hard} MiB vs container limit {limit} MiB"
            )
            # the idle process alone is ~200 MiB: a soft limit below that refuses everything
            assert hard - spec.config.spike_limit_mib >= 256, gw.id  # type: ignore[attr-defined]
        for p in gw.config.pipelines:
            if p.processors:
                assert p.processors[0].type == "memory_limiter", (
                    f"{gw.id}: {p.name} must start with memory_limiter"
                )


def test_grace_period_covers_the_graceful_shutdown(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        grace = gw.spec.get("terminationGracePeriodSeconds", 30)
        needed = float(gw.config.service.shutdown_timeout) + prestop_seconds(gw.container)
        assert grace > needed, (
            f"{gw.id}: terminationGracePeriodSeconds {grace} <= shutdown + preStop {needed}"
        )


def test_security_context_and_writable_paths(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        assert gw.security("runAsNonRoot") is True, gw.id
        assert gw.security("runAsUser") == image_uid(), (
            f"{gw.id}: run as the image's user (uid {image_uid()})"
        )
        assert gw.security("allowPrivilegeEscalation") is False, gw.id
        assert gw.security("readOnlyRootFilesystem") is True, gw.id
        assert "ALL" in gw.security("capabilities").get("drop", []), gw.id
        assert gw.security("seccompProfile") == {"type": "RuntimeDefault"}, gw.id
        # everything the gateway writes must lie on a writable volume
        writes: list[tuple[str, float]] = [(gw.env["NUMBA_CACHE_DIR"], 0.0), ("/tmp/x", 0.0)]
        for spec in gw.config.components[Kind.EXPORTER].values():
            path = getattr(spec.config, "path", None)
            if path:
                writes.append((posixpath.dirname(path), 0.0))
            storage = getattr(getattr(spec.config, "sending_queue", None), "storage", None)
            if storage is not None:
                writes.append((storage.directory, storage.max_size_mib))
        needed: dict[str, float] = {}
        for path, size in writes:
            mount = gw.mount_for(path)
            assert mount is not None and not mount.get("readOnly"), (
                f"{gw.id}: {path} is not on a writable volume"
            )
            needed[mount["name"]] = needed.get(mount["name"], 0.0) + size
        for name, size in needed.items():
            limit = gw.volume(name).get("emptyDir", {}).get("sizeLimit")
            if limit is not None:
                assert size < mib(limit), (
                    f"{gw.id}: volume {name} ({limit}) smaller than its queues ({size} MiB)"
                )


def test_numba_cache_is_copied_from_the_image(gateways: list[Sentinel]) -> None:
    """With a read-only root, numba ignores the image's cache dir: an init container copies it."""
    for gw in gateways:
        numba_dir = gw.env["NUMBA_CACHE_DIR"]
        mount = gw.mount_for(numba_dir)
        assert mount is not None and mount["mountPath"].rstrip("/") == posixpath.dirname(numba_dir), (
            f"{gw.id}: mount a writable volume at {posixpath.dirname(numba_dir)}"
        )
        inits = gw.spec.get("initContainers", [])
        before = inits[: inits.index(gw.container)] if gw.container in inits else inits
        copier = [
            c
            for c in before
            if image_name(c["image"]) == image_name(gw.container["image"])
            and c.get("command", [])[:3] == ["cp", "-a", numba_dir]
        ]
        assert copier, f"{gw.id}: no init container copying {numba_dir} from the image"
        target = copier[0]["command"][3].rstrip("/")
        into = next(m for m in copier[0]["volumeMounts"] if m["mountPath"].rstrip("/") == target)
        assert into["name"] == mount["name"], f"{gw.id}: the cache is copied into another volume"


def test_native_sidecar_starts_first_and_stops_last(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        if gw.container in gw.spec.get("initContainers", []):
            assert gw.container.get("restartPolicy") == "Always", (
                f"{gw.id}: an init container must be a sidecar"
            )
            assert gw.container["startupProbe"]["httpGet"]["path"] == "/readyz", (
                f"{gw.id}: the app should start once the receivers listen"
            )


def test_prometheus_annotations_point_at_the_admin_server(gateways: list[Sentinel]) -> None:
    for gw in gateways:
        ann = gw.workload["spec"]["template"]["metadata"].get("annotations", {})
        _, admin_port = endpoint_port(gw.config.service.telemetry.admin.endpoint)
        assert ann.get("prometheus.io/scrape") == "true", gw.id
        assert ann.get("prometheus.io/port") == str(admin_port), gw.id
        assert ann.get("prometheus.io/path", "/metrics") == "/metrics", gw.id


def test_images_are_set_by_the_kustomization(example: Example, gateways: list[Sentinel]) -> None:
    names = {i["name"] for i in example.kustomization.get("images", [])}
    for gw in gateways:
        assert image_name(gw.container["image"]) in names, f"{gw.id}: image not overridable via kustomization"


# ---------------------------------------------------------------- workload, Service, PDB, Secret
def test_workload_selectors_match_their_pods(example: Example) -> None:
    for w in example.workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        for k, v in w["spec"]["selector"]["matchLabels"].items():
            assert labels.get(k) == v, f"{w['metadata']['name']}: selector {k}={v} does not match the pods"


def test_every_secret_reference_exists(example: Example) -> None:
    for w in example.workloads:
        for c in all_containers(pod_spec(w)):
            resolve_env(example, c)  # asserts each secretKeyRef
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in example.secrets


def test_services_route_to_container_ports(example: Example) -> None:
    for svc in example.kind("Service"):
        selector = svc["spec"]["selector"]
        pods = [
            w
            for w in example.workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no workload"
        for w in pods:
            containers = all_containers(pod_spec(w))
            by_name = {p["name"]: int(p["containerPort"]) for c in containers for p in c.get("ports", [])}
            numbers = set(by_name.values())
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                resolved = by_name.get(target) if isinstance(target, str) else int(target)
                assert resolved in numbers, f"Service port {port['name']} -> {target}: no such container port"
                assert port["port"] == resolved, f"Service port {port['name']}: keep the OTLP port numbers"
                assert port.get("appProtocol"), f"Service port {port['name']}: set appProtocol"
                if resolved == 4317:
                    assert port["appProtocol"] in ("grpc", "kubernetes.io/h2c"), port


def test_gateway_is_highly_available() -> None:
    example = load_example("gateway")
    (deploy,) = example.kind("Deployment")
    assert deploy["spec"]["replicas"] >= 2
    (pdb,) = example.kind("PodDisruptionBudget")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    allowed = pdb["spec"].get(
        "maxUnavailable", deploy["spec"]["replicas"] - pdb["spec"].get("minAvailable", 0)
    )
    assert 0 < allowed < deploy["spec"]["replicas"]
    ports = {p["port"] for s in example.kind("Service") for p in s["spec"]["ports"]}
    assert ports == {4317, 4318, 8888}
    (gw,) = list(sentinels(example))
    types = {s.id.type for k in Kind for s in gw.config.components[k].values()}
    assert {"otlp", "redact", "genai", "batch", "detect", "prometheusremotewrite", "influxdb"} <= types
    assert any(p.name.startswith("anomalies") for p in gw.config.pipelines)
    hosts = {endpoint_port(e)[0] for e in receiver_endpoints(gw.config).values()}
    assert hosts == {"0.0.0.0"}, "the gateway's receivers listen on the pod IP"


def test_app_sends_to_its_sidecar() -> None:
    example = load_example("sidecar")
    (deploy,) = example.workloads
    spec = pod_spec(deploy)
    (gw,) = [s for s in sentinels(example) if s.workload is deploy]
    receivers = receiver_endpoints(gw.config)
    apps = [c for c in spec["containers"] if not is_sentinel(c)]
    assert apps, "the sidecar example has an application container"
    for app in apps:
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        url = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        proto = "grpc" if protocol == "grpc" else "http"
        assert protocol in ("grpc", "http/protobuf", "http/json")
        endpoint = next(e for k, e in receivers.items() if k.endswith("/" + proto))
        host, port = endpoint_port(endpoint)
        assert url.hostname in LOOPBACK, f"{app['name']}: send over the pod's loopback, not {url.hostname}"
        assert url.port == port, f"{app['name']}: {url.geturl()} is not the sidecar's {proto} port {port}"
        assert host in LOOPBACK or host == "0.0.0.0"
        assert host in LOOPBACK, "the sidecar's receivers accept the pod's own containers only"


# ---------------------------------------------------------------- rendering
@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
def test_kustomize_renders(example: Example) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(example.root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    generated = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    for w in (d for d in rendered if d["kind"] in WORKLOADS):
        for v in pod_spec(w).get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in generated, "a hashed ConfigMap name must be rewritten"


def test_shutdown_timeout_is_in_seconds() -> None:
    """The grace-period check above compares shutdown_timeout with seconds."""
    assert build_config(*load_text(_MINIMAL, "t.yaml", {})).service.shutdown_timeout == 60


_MINIMAL = """
receivers: {otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}}
exporters: {debug: {}}
service:
  pipelines: {traces: {receivers: [otlp], exporters: [debug]}}
  shutdown_timeout: 1m
"""
