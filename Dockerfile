# syntax=docker/dockerfile:1
# LLM-Sentinel container image.
#   docker build -t llm-sentinel .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 8888:8888 llm-sentinel
# Own config:  docker run ... -v "$PWD/gateway.yaml:/etc/sentinel/gateway.yaml:ro" \
#                  llm-sentinel run --config /etc/sentinel/gateway.yaml
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- build: wheel + venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY receivers ./receivers
COPY processors ./processors
COPY exporters ./exporters
# Build the project wheel (plus wheels of its dependencies), then install it,
# and nothing else, into a self-contained venv that the runtime stage copies.
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/sentinel \
 && /opt/sentinel/bin/pip install --no-index --find-links /wheels llm-sentinel \
 && /opt/sentinel/bin/python -m pip uninstall --yes pip \
 && /opt/sentinel/bin/sentinel --version

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 sentinel \
 && useradd --system --uid 10001 --gid sentinel --home-dir /var/lib/sentinel --no-create-home \
        --shell /usr/sbin/nologin sentinel \
 && mkdir -p /var/lib/sentinel /var/cache/sentinel/numba \
 && chown -R sentinel:sentinel /var/lib/sentinel /var/cache/sentinel
COPY --from=builder /opt/sentinel /opt/sentinel

# The embedded default config reads SENTINEL_*: inside a container it must
# listen on all interfaces to be reachable through published ports.
ENV PATH=/opt/sentinel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/cache/sentinel/numba \
    SENTINEL_GRPC_ENDPOINT=0.0.0.0:4317 \
    SENTINEL_HTTP_ENDPOINT=0.0.0.0:4318 \
    SENTINEL_ADMIN_ENDPOINT=0.0.0.0:8888 \
    SENTINEL_DATA_DIR=/var/lib/sentinel

WORKDIR /var/lib/sentinel
USER 10001:10001
EXPOSE 4317 4318 8888

# Liveness via the admin server (stdlib only: the image has no curl).
# Assumes the admin endpoint stays on port 8888.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=4)"]

# SIGTERM starts a graceful shutdown bounded by service.shutdown_timeout (30s by
# default): give `docker stop` / Kubernetes a grace period longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sentinel"]
CMD ["run"]
