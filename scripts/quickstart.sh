#!/usr/bin/env bash
# The main job on the embedded default: embed the example corpus into Parquet, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
mkdir -p out
.venv/bin/sutra embed examples/corpus.jsonl -o out/corpus.parquet
.venv/bin/python - <<'PY'
import pyarrow.parquet as pq
t = pq.read_table("out/corpus.parquet")
print(f"out/corpus.parquet: {t.num_rows} rows, vector {t.schema.field('vector').type}")
PY
