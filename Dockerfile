# Fleet Telemetry Bridge image.
#
#   docker build -t fleet-bridge:0.1.0 .
#   docker run --rm -e FLEET_BRIDGE_DB_DSN=... -e FLEET_BRIDGE_MQTT_HOST=... fleet-bridge:0.1.0
#
# The builder installs the pinned dependencies (requirements.lock) and the project
# into a virtualenv; the runtime stage copies only that virtualenv. Both stages use
# the same base image, so the virtualenv's interpreter path is valid in both.
# Pin the base by digest for byte-identical rebuilds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/fleet-bridge
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /opt/fleet-bridge/bin/pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY loadgen ./loadgen
# --no-deps: the project brings nothing the lock did not already pin; pip check
# fails the build if the lock is incomplete or inconsistent.
RUN /opt/fleet-bridge/bin/pip install --no-deps . \
    && /opt/fleet-bridge/bin/pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fleet-bridge" \
      org.opencontainers.image.description="MQTT fleet telemetry to PostgreSQL bridge" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric id, so Kubernetes can check runAsNonRoot and volumes can use fsGroup.
RUN groupadd --system --gid 10001 fleet-bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fleet-bridge
COPY --from=builder /opt/fleet-bridge /opt/fleet-bridge
ENV PATH=/opt/fleet-bridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEET_BRIDGE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9464
# Liveness only (the process answers /healthz); readiness, which needs the broker
# and the database, is /readyz and is for the orchestrator's readiness probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLEET_BRIDGE_METRICS_PORT', '9464'), timeout=4)"]
# SIGTERM (docker stop's default) drains: in-flight batches are committed and
# acknowledged, then the process exits 0. Give it time: docker stop -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fleet-bridge"]
CMD ["run"]
