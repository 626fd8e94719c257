.PHONY: quickstart test setup bench lint

quickstart:  ## Embed examples/corpus.jsonl into out/corpus.parquet with the default model
	bash scripts/quickstart.sh

test:  ## Install everything and run the whole test suite
	bash scripts/test.sh

setup:
	bash scripts/setup.sh dev

lint:
	.venv/bin/ruff check sutra_embedder tests benchmarks scripts
	.venv/bin/mypy sutra_embedder

bench:  ## Core CPU benchmark vs sentence-transformers (JSON + PNG in benchmarks/results)
	.venv/bin/python benchmarks/bench_core.py
