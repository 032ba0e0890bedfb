# syntax=docker/dockerfile:1
# The wallaby image: ghcr.io/josephjohncox/wallaby:<version> (the Helm chart's default image, charts/wallaby).
#
#   docker build -t ghcr.io/josephjohncox/wallaby:0.1.0 .
#   docker run --rm -p 8080:8080 -e WALLABY_API_TOKEN=... ghcr.io/josephjohncox/wallaby:0.1.0          # API server
#   docker run --rm ghcr.io/josephjohncox/wallaby:0.1.0 wallaby-worker -flow-id orders                 # one flow
#   docker run --rm ghcr.io/josephjohncox/wallaby:0.1.0 python -m bytewax.run dataflows.flow:flow      # bytewax.run
#
# Two stages on the same pinned Python 3.11 image (bytewax 0.21.1 has wheels for CPython 3.11 only): the builder
# builds the project's wheel and installs it with its dependencies into a virtual env, the final stage copies only
# that env and runs as an unprivileged user with a fixed UID/GID (10001, the chart's runAsUser/fsGroup).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/wallaby \
 && /opt/wallaby/bin/pip install --upgrade pip setuptools wheel
WORKDIR /src
# Only what the wheel holds (pyproject's packages.find) and its metadata: code changes do not bust the layer above.
COPY pyproject.toml README.md ./
COPY wallaby ./wallaby
COPY sources ./sources
COPY operators ./operators
COPY sinks ./sinks
COPY dataflows ./dataflows
RUN /opt/wallaby/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/wallaby/bin/pip install /wheels/wallaby-*.whl \
 && /opt/wallaby/bin/wallaby --help >/dev/null \
 && /opt/wallaby/bin/wallaby-worker --help >/dev/null \
 && /opt/wallaby/bin/wallaby-admin --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="wallaby" \
      org.opencontainers.image.description="Postgres change data capture on bytewax" \
      org.opencontainers.image.source="https://github.com/josephjohncox/wallaby" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 wallaby \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/wallaby --create-home \
      --shell /usr/sbin/nologin wallaby \
 && mkdir -p /home/wallaby/.wallaby \
 && chown -R 10001:10001 /home/wallaby
COPY --from=builder /opt/wallaby /opt/wallaby
# The console scripts at /usr/local/bin too: USAGE.md's chart example runs /usr/local/bin/wallaby-worker.
RUN ln -s /opt/wallaby/bin/wallaby /usr/local/bin/wallaby \
 && ln -s /opt/wallaby/bin/wallaby-worker /usr/local/bin/wallaby-worker \
 && ln -s /opt/wallaby/bin/wallaby-admin /usr/local/bin/wallaby-admin
# HOME/.wallaby holds the SQLite flow store and the recovery stores when no Postgres is set (the chart mounts a
# volume there: the root filesystem is read-only in the chart's pods).
ENV PATH=/opt/wallaby/bin:${PATH} \
    HOME=/home/wallaby \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/wallaby
USER 10001:10001
# The gRPC API (WALLABY_GRPC_LISTEN, default :8080; grpc.health.v1.Health answers without a token).
EXPOSE 8080
CMD ["wallaby"]
