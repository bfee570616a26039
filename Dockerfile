# otel-patter container image.
#
#   docker build -t otel-patter .
#   docker run -p 4317:4317 -p 4318:4318 -p 4319:4319 -v otel-patter-data:/var/lib/otel-patter otel-patter
#
# Stage 1 builds the wheel and installs it with its dependencies into /opt/venv (pinned by
# constraints.txt). Stage 2 is the same slim Python with that venv copied in: no compiler, no
# wheel cache, no sources, no tests. The process runs as an unprivileged user (uid 10001) and is
# PID 1 (exec-form ENTRYPOINT), so `docker stop` / Kubernetes deliver SIGTERM straight to
# `otel-patter serve`, which stops accepting, drains in-flight requests and flushes open calls
# within `shutdown_timeout` (container config: 10s; give the orchestrator a longer grace period).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY otel_patter ./otel_patter
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt /wheels/otel_patter-*.whl

FROM ${PYTHON_IMAGE}
ARG OTEL_PATTER_UID=10001
LABEL org.opencontainers.image.title="otel-patter" \
      org.opencontainers.image.description="OpenTelemetry companion for Patter voice agents: PII-safe per-call USD and latency envelopes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${OTEL_PATTER_UID} otel-patter \
 && useradd --system --uid ${OTEL_PATTER_UID} --gid otel-patter --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin otel-patter \
 && install -d -o otel-patter -g otel-patter -m 0700 /var/lib/otel-patter
COPY --from=builder /opt/venv /opt/venv
COPY deploy/config/container.yaml /etc/otel-patter/config.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OTEL_PATTER_CONFIG=/etc/otel-patter/config.yaml
# envelopes, write-ahead logs, the index and the hash key live here: keep it on a volume
VOLUME ["/var/lib/otel-patter"]
# OTLP/gRPC, OTLP/HTTP, admin (/healthz /readyz /metrics /api/v1/calls)
EXPOSE 4317 4318 4319
USER ${OTEL_PATTER_UID}:${OTEL_PATTER_UID}
# slim has no curl: ask /healthz with the interpreter that is already there
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4319/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["otel-patter"]
CMD ["serve"]
