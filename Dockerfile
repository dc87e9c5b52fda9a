# syntax=docker/dockerfile:1
# LLM-Sentinel container image.
#
#   docker build -t llm-sentinel .                      (make image)
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 8888:8888 llm-sentinel
#   own config: docker run ... -v "$PWD/gateway.yaml:/etc/sentinel/gateway.yaml:ro" \
#                   llm-sentinel run --config /etc/sentinel/gateway.yaml
#
# The install steps are not written here but in deploy/image/install-and-smoke.sh, which the
# test suite runs in a throwaway venv (tests/deploy/test_image_recipe.py): what this file builds is
# what the tests check. The build context is the allow-list in .dockerignore; the check copies the
# context by the same list.
#
# Build arguments:
#   PYTHON_IMAGE  base image of both stages; pinned to a patch release (add @sha256:... to pin the
#                 exact bytes). Both stages must use the same one: the venv links to its python.
#   SMOKE_TEST    1 (default) runs the smoke test as the last build step (~5 s): the image is
#                 started as it will run and must accept an LLM span and stop cleanly on SIGTERM.
#                 Set 0 for emulated cross-builds, where it is slow.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- build: wheel + venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Everything the image needs, and nothing else, is in the context (.dockerignore).
COPY . /src
# Builds the project wheel (pip wheel --no-deps), installs it with its dependencies into a fresh
# venv and removes pip from it. Every dependency ships binary wheels: no compiler is needed.
# pip's cache is a build cache mount: rebuilds do not download again, and it stays out of the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    bash /src/deploy/image/install-and-smoke.sh install /opt/sentinel /src

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="LLM-Sentinel" \
      org.opencontainers.image.description="OpenTelemetry gateway for LLM telemetry: OTLP in, LLM metrics and anomaly alerts out" \
      org.opencontainers.image.licenses="Apache-2.0"

# An unprivileged user with a fixed uid/gid (Kubernetes manifests set runAsUser 10001), its data
# dir and a numba cache dir it can write. The base image's own pip/setuptools/wheel go: nothing
# is installed at run time.
RUN python -m pip uninstall --quiet --yes pip setuptools wheel \
 && groupadd --system --gid 10001 sentinel \
 && useradd --system --uid 10001 --gid sentinel --home-dir /var/lib/sentinel --no-create-home \
        --shell /usr/sbin/nologin sentinel \
 && mkdir -p /var/lib/sentinel /var/cache/sentinel/numba \
 && chown -R sentinel:sentinel /var/lib/sentinel /var/cache/sentinel
COPY --from=builder /opt/sentinel /opt/sentinel
COPY --from=builder /src/deploy/image/install-and-smoke.sh /opt/sentinel/share/install-and-smoke.sh

# The embedded default config reads SENTINEL_*: in a container it listens on all interfaces so
# published ports reach it, and keeps its files under /var/lib/sentinel.
# NUMBA_CACHE_DIR must stay writable by the runtime user: numba uses a cache dir only if it can
# write there, and recompiles into it once on a CPU other than the build machine's (cache entries
# are per CPU model). An image built on one CPU type for others can add NUMBA_CPU_NAME=generic
# here: a cache valid on any x86-64 / arm64 CPU, for less specialised code.
ENV PATH=/opt/sentinel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    NUMBA_CACHE_DIR=/var/cache/sentinel/numba \
    SENTINEL_GRPC_ENDPOINT=0.0.0.0:4317 \
    SENTINEL_HTTP_ENDPOINT=0.0.0.0:4318 \
    SENTINEL_ADMIN_ENDPOINT=0.0.0.0:8888 \
    SENTINEL_DATA_DIR=/var/lib/sentinel

WORKDIR /var/lib/sentinel
USER 10001:10001

# Compile the detection kernels once, as the runtime user, at the path they run from: a start
# loads them in ~0.4 s instead of compiling for ~10 s.
RUN bash /opt/sentinel/share/install-and-smoke.sh warm /opt/sentinel

ARG SMOKE_TEST=1
RUN if [ "$SMOKE_TEST" = 1 ]; then bash /opt/sentinel/share/install-and-smoke.sh smoke /opt/sentinel; fi

EXPOSE 4317 4318 8888

# Liveness through the admin server, with the standard library only (the image has no curl).
# The port follows SENTINEL_ADMIN_ENDPOINT; a config of your own that moves the admin server
# elsewhere should set that variable too (or override the health check).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SENTINEL_ADMIN_ENDPOINT', ':8888').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# SIGTERM starts a graceful shutdown bounded by service.shutdown_timeout (30 s by default): give
# `docker stop -t` / terminationGracePeriodSeconds more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sentinel"]
CMD ["run"]
