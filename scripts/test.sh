#!/usr/bin/env bash
# The whole test suite, installing everything it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check sutra_embedder tests benchmarks scripts
.venv/bin/mypy sutra_embedder
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
