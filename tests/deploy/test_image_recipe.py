"""The container image recipe: the Dockerfile, its build context, and the install script both use.

No Docker engine is needed. The Dockerfile is parsed and checked (pinned base, non-root user,
ports, health check, the install steps delegated to deploy/image/install-and-smoke.sh), and the
script's `check` performs the image's install steps in a throwaway venv and smoke-tests the result.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.component import Kind
from gateway.config.model import build_config, default_config_text
from gateway.config.source import load_text
from tests.conftest import REPO_ROOT, free_port, running_gateway

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SCRIPT = REPO_ROOT / "deploy" / "image" / "install-and-smoke.sh"
SCRIPT_IN_CONTEXT = "deploy/image/install-and-smoke.sh"
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


# ---------------------------------------------------------------- a small Dockerfile parser
@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, ...
    args: str  # the rest, continuation lines joined
    line: int


@dataclass
class Stage:
    base: str  # as written, ARGs not substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        """Substitute global ARG defaults (`${NAME}` / `$NAME`), as FROM lines see them."""
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args.get(m[1] or m[2], m[0]), text)


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(b for b in buf if b)
        cmd, _, args = joined.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = []
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(text):
        if ins.cmd == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            lowered = [w.lower() for w in words]
            name = words[lowered.index("as") + 1] if "as" in lowered else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins.cmd == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def env_of(stage: Stage) -> dict[str, str]:
    """ENV of a stage (`K=V ...` form), later settings winning; `$VAR` left as written."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            assert sep, f"line {ins.line}: use ENV KEY=VALUE"
            env[key] = value
    return env


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), ins.args
    return value


def image_env() -> dict[str, str]:
    """The environment the runtime image gives the gateway (final stage's ENV)."""
    return env_of(parse_dockerfile(DOCKERFILE.read_text()).final)


def image_uid() -> int:
    user = parse_dockerfile(DOCKERFILE.read_text()).final.all("USER")[-1].args
    return int(user.split(":")[0])


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


# ---------------------------------------------------------------- the Dockerfile
def test_base_image_is_pinned_to_a_python_patch_release(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "expected a multi-stage build (builder + runtime)"
    bases = {
        dockerfile.resolve(s.base)
        for s in dockerfile.stages
        if s.base not in {t.name for t in dockerfile.stages}
    }
    assert len(bases) == 1, f"builder and runtime must share one base (the venv links to its python): {bases}"
    (base,) = bases
    assert PINNED_PYTHON.match(base), f"base image {base!r} is not python:3.11.<patch>-slim-bookworm"


def test_install_steps_are_the_scripts(dockerfile: Dockerfile) -> None:
    """The Dockerfile installs only through the script the tests run, so the two cannot drift."""
    builder, final = dockerfile.stages[0], dockerfile.final
    assert any(re.fullmatch(r"\.\s+/src", c.args) for c in builder.all("COPY")), (
        "the builder copies the whole (allow-listed) context to /src"
    )
    runs = " ".join(r.args for r in builder.all("RUN"))
    assert f"/src/{SCRIPT_IN_CONTEXT} install /opt/sentinel /src" in runs
    assert "pip install" not in runs and "pip wheel" not in runs, "install steps belong in the script"

    final_runs = [r.args for r in final.all("RUN")]
    assert any(re.search(r"install-and-smoke\.sh warm /opt/sentinel\b", r) for r in final_runs)
    assert any(re.search(r"install-and-smoke\.sh smoke /opt/sentinel\b", r) for r in final_runs)
    assert not any("pip install" in r or "apt-get install" in r for r in final_runs), (
        "nothing is installed (and no build tool) in the runtime stage"
    )
    copies = [c.args for c in final.all("COPY")]
    assert any(c.startswith(f"--from={builder.name} /opt/sentinel /opt/sentinel") for c in copies), (
        "the runtime stage takes the venv built in the builder stage"
    )
    # The steps the Dockerfile names exist in the script.
    text = SCRIPT.read_text()
    for step in ("install", "warm", "smoke", "check"):
        assert f"cmd_{step}()" in text
    assert os.access(SCRIPT, os.X_OK)


def test_runtime_runs_as_an_unprivileged_user_with_a_writable_numba_cache(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    users = final.all("USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), "numeric, non-root user"
    setup = " ".join(r.args for r in final.instructions if r.cmd == "RUN" and r.line < users[-1].line)
    assert f"--uid {uid}" in setup, "the user is created with the uid USER names"
    numba_dir = env_of(final)["NUMBA_CACHE_DIR"]
    assert numba_dir.startswith("/") and "chown" in setup and numba_dir.rpartition("/")[0] in setup, (
        "NUMBA_CACHE_DIR is created and handed to the runtime user before USER"
    )
    warm = next(r for r in final.all("RUN") if "install-and-smoke.sh warm" in r.args)
    assert warm.line > users[-1].line, "the cache is warmed as the runtime user, so it can write it later"


def test_ports_healthcheck_entrypoint(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    exposed = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.args.split()}
    assert exposed == {4317, 4318, 8888}
    (health,) = final.all("HEALTHCHECK")
    assert "CMD" in health.args and "/healthz" in health.args
    assert exec_form(final.all("ENTRYPOINT")[-1]) == ["sentinel"]
    assert exec_form(final.all("CMD")[-1]) == ["run"]


def test_image_env_makes_the_default_config_listen_on_all_interfaces(dockerfile: Dockerfile) -> None:
    env = env_of(dockerfile.final)
    raw, locs = load_text(default_config_text(), "<embedded default>", env)
    config = build_config(raw, locs)
    otlp = config.components[Kind.RECEIVER]
    (receiver,) = otlp.values()
    endpoints = {
        receiver.config.protocols.grpc.endpoint,  # type: ignore[attr-defined]
        receiver.config.protocols.http.endpoint,  # type: ignore[attr-defined]
        config.service.telemetry.admin.endpoint,
    }
    assert endpoints == {"0.0.0.0:4317", "0.0.0.0:4318", "0.0.0.0:8888"}
    exposed = {int(p) for e in dockerfile.final.all("EXPOSE") for p in e.args.split()}
    assert exposed == {int(e.rpartition(":")[2]) for e in endpoints}
    data_dir = env["SENTINEL_DATA_DIR"]
    for spec in config.components[Kind.EXPORTER].values():
        path = getattr(spec.config, "path", None)
        if path is not None:
            assert path.startswith(data_dir + "/"), f"{spec.id} writes outside SENTINEL_DATA_DIR: {path}"
    workdir = dockerfile.final.all("WORKDIR")[-1].args
    assert workdir == data_dir, "WORKDIR is the runtime user's writable data dir"


def _healthcheck_argv(dockerfile: Dockerfile) -> list[str]:
    health = dockerfile.final.all("HEALTHCHECK")[-1].args
    argv = json.loads(health[health.index("CMD") + len("CMD") :].strip())
    assert argv[0] == "python", "the image's python (the venv's, first on PATH) runs the check"
    return [sys.executable, *argv[1:]]


def test_healthcheck_command_passes_on_a_live_gateway_and_fails_without_one(dockerfile: Dockerfile) -> None:
    argv = _healthcheck_argv(dockerfile)
    admin = free_port()
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{free_port()}"}}}},
        "exporters": {"debug": {}},
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}},
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{admin}"}},
        },
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    with running_gateway(config):
        ok = subprocess.run(
            argv, env={**env, "SENTINEL_ADMIN_ENDPOINT": f"0.0.0.0:{admin}"}, capture_output=True, timeout=30
        )
        assert ok.returncode == 0, ok.stderr.decode()
    down = subprocess.run(
        argv, env={**env, "SENTINEL_ADMIN_ENDPOINT": f"0.0.0.0:{admin}"}, capture_output=True, timeout=30
    )
    assert down.returncode != 0, "the health check must fail when nothing answers"


# ---------------------------------------------------------------- the build context
def allow_list() -> list[str]:
    lines = [ln.split("#", 1)[0].strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines[0] == "*", ".dockerignore is an allow-list (starts with *)"
    return [ln[1:].lstrip("/") for ln in lines if ln.startswith("!")]


def test_build_context_holds_everything_the_wheel_needs() -> None:
    allowed = allow_list()
    assert SCRIPT_IN_CONTEXT in allowed, "the install script must be in the build context"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["readme"] in allowed
    assert "pyproject.toml" in allowed
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*").split(".")[0]
        assert top in allowed, f"package {pattern!r} (pyproject) is left out of the build context"
    for package, files in project["tool"]["setuptools"].get("package-data", {}).items():
        for name in files:
            path = REPO_ROOT / package.replace(".", "/") / name
            assert path.exists(), f"package data {path} missing"
    for entry in allowed:
        assert (REPO_ROOT / entry).exists(), f".dockerignore allows {entry}, which does not exist"


# ---------------------------------------------------------------- the recipe, run for real
@pytest.mark.timeout(600)
def test_install_and_smoke_in_a_throwaway_venv(tmp_path: Path) -> None:
    """The image's install steps in a fresh venv (wheel, non-editable), then the smoke test.

    ~1.5 min: pip resolves and installs the dependencies (numba, numpy, grpcio, ...) and
    byte-compiles them, and the numba kernels compile once (~10 s).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.pop("NUMBA_CACHE_DIR", None)
    env.update(PYTHON=getattr(sys, "_base_executable", sys.executable), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "check", str(REPO_ROOT)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=570,
    )
    log = "\n".join(
        ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("WARNING: Location")
    )
    assert proc.returncode == 0, log[-8000:]
    for evidence in (
        "pip wheel --no-deps",
        "POST /v1/traces: 200",
        "/metrics: llm_sentinel_requests_total{",
        "numba kernels loaded from NUMBA_CACHE_DIR without compiling",
        "SIGTERM: exit 0",
        "check passed",
    ):
        assert evidence in log, f"{evidence!r} missing from the script's output:\n{log[-4000:]}"
