"""Beam overhead: EmbedText on the Direct runner vs the core embedder alone vs Beam's MLTransform.

All three embed the same texts with all-MiniLM-L6-v2 on the same CPU threads,
in one process, one after the other (alternating over ``--repeats`` rounds):

* **core**: ``Embedder.embed(texts)`` with the model already loaded;
* **EmbedText**: ``Create(texts) | EmbedText(...)`` on the Direct runner, with
  the model already loaded in the process (it is shared per process), so the
  time is the pipeline's own cost plus embedding;
* **MLTransform**: ``MLTransform`` with ``SentenceTransformerEmbeddings`` on
  the Direct runner. It loads its model inside the pipeline; that load is
  timed separately and reported both ways.

Long texts are truncated at 256 tokens everywhere (what sentence-transformers
does), so every contender does the same work. Writes
``benchmarks/results/beam.json`` and ``beam.png``.

    python benchmarks/bench_beam.py [--limit 1000] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bar_plot, load_texts, machine, write_results
from sutra_embedder.core import ChunkingConfig, Embedder, EmbedderConfig, RuntimeConfig
from sutra_embedder.models.registry import PROFILES, ensure_model, locate_source


def _direct_options() -> Any:
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1",
                            "--direct_running_mode=in_memory"])


def run_embed_text(texts: list[str], config: EmbedderConfig, save_to: Path | None = None) -> float:
    """Seconds for one EmbedText pipeline over ``texts``; optionally save the vectors (JSON lines)."""
    import apache_beam as beam

    from sutra_embedder.transforms import EmbedText, EmbedTextConfig

    start = time.perf_counter()
    with beam.Pipeline(options=_direct_options()) as p:
        records = p | beam.Create([{"id": str(i), "text": t} for i, t in enumerate(texts)], reshuffle=False)
        out = records | EmbedText(EmbedTextConfig(embedder=config))
        if save_to is None:
            out.embeddings | beam.Map(lambda row: None)
        else:
            rows = out.embeddings | beam.Map(lambda row: json.dumps([row.id, list(row.vector)]))
            rows | beam.io.WriteToText(str(save_to), shard_name_template="")
    return time.perf_counter() - start


def check_embed_text(texts: list[str], config: EmbedderConfig, core: Embedder) -> float:
    """Largest absolute difference between EmbedText's vectors and the core's."""
    with tempfile.TemporaryDirectory(prefix="bench-embedtext-") as tmp:
        path = Path(tmp) / "vectors.jsonl"
        run_embed_text(texts, config, save_to=path)
        pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    got = np.zeros((len(texts), core.dim), dtype=np.float32)
    for rid, vector in pairs:
        got[int(rid)] = vector
    return float(np.abs(got - core.embed(texts)).max()) if len(pairs) == len(texts) else float("inf")


def run_mltransform(texts: list[str], model_path: str) -> float:
    """Seconds for one MLTransform pipeline (SentenceTransformerEmbeddings) over ``texts``."""
    import apache_beam as beam
    from apache_beam.ml.transforms.base import MLTransform
    from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings

    start = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-mltransform-") as artifacts,
        beam.Pipeline(options=_direct_options()) as p,
    ):
        (
            p
            | beam.Create([{"text": t} for t in texts], reshuffle=False)
            | MLTransform(write_artifact_location=artifacts).with_transform(
                SentenceTransformerEmbeddings(model_name=model_path, columns=["text"])
            )
            | beam.Map(lambda row: None)
        )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=1000, help="texts from benchmarks/data/mixed_corpus.jsonl")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of ONNX Runtime and torch")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the fastest run of each contender counts")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--skip-mltransform", action="store_true", help="only core vs EmbedText")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = load_texts(args.limit)
    source = locate_source(PROFILES[args.model])
    if source is None:
        sys.exit(f"the {args.model} source weights are missing: run `sutra models fetch {args.model}`")
    config = EmbedderConfig(
        model=str(ensure_model(args.model)),
        chunking=ChunkingConfig(policy="truncate"),  # the same work as sentence-transformers
        runtime=RuntimeConfig(device="cpu", intra_op_threads=args.threads),
    )

    # The core alone, with its model load timed.
    start = time.perf_counter()
    core = Embedder(config)
    core_load_s = time.perf_counter() - start
    core.embed(texts[:64])

    # EmbedText: hold the process's shared model so every pipeline reuses it.
    from sutra_embedder.transforms import acquire_model

    start = time.perf_counter()
    shared = acquire_model(config)
    embedtext_load_s = time.perf_counter() - start
    run_embed_text(texts[:32], config)  # warm-up: imports, pipeline machinery

    # MLTransform loads its own model inside each pipeline: time a load alone.
    st_load_s = 0.0
    if not args.skip_mltransform:
        from sentence_transformers import SentenceTransformer

        start = time.perf_counter()
        SentenceTransformer(str(source), device="cpu")
        st_load_s = time.perf_counter() - start
        run_mltransform(texts[:32], str(source))  # warm-up

    t_core: list[float] = []
    t_beam: list[float] = []
    t_ml: list[float] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        core.embed(texts)
        t_core.append(time.perf_counter() - start)
        t_beam.append(run_embed_text(texts, config))
        if not args.skip_mltransform:
            t_ml.append(run_mltransform(texts, str(source)))
    # Untimed: EmbedText gives the core's vectors.
    max_diff = check_embed_text(texts[:200], config, core)
    del shared

    n = len(texts)
    core_tps = n / min(t_core)
    beam_tps = n / min(t_beam)
    data: dict[str, Any] = {
        "benchmark": "beam",
        "machine": machine(),
        "model": args.model,
        "texts": n,
        "threads": args.threads,
        "runner": "DirectRunner (in-process, 1 worker)",
        "core_texts_per_s": round(core_tps, 1),
        "embedtext_texts_per_s": round(beam_tps, 1),
        "embedtext_vs_core": round(beam_tps / core_tps, 3),
        "model_load_s": {"core": round(core_load_s, 3), "embedtext_shared": round(embedtext_load_s, 3),
                         "sentence_transformers": round(st_load_s, 3)},
        "runs_s": {"core": [round(t, 3) for t in t_core], "embedtext": [round(t, 3) for t in t_beam]},
        "embedtext_max_abs_diff_to_core_200_texts": max_diff,
        "targets": {"embedtext_vs_core": ">= 0.9", "embedtext_vs_mltransform": ">= 2"},
    }
    labels = ["core Embedder", "EmbedText (Beam)"]
    values = [core_tps, beam_tps]
    if t_ml:
        ml_tps = n / min(t_ml)
        ml_tps_no_load = n / max(min(t_ml) - st_load_s, 1e-9)
        data.update({
            "mltransform_texts_per_s": round(ml_tps, 1),
            "mltransform_texts_per_s_excluding_model_load": round(ml_tps_no_load, 1),
            "embedtext_vs_mltransform": round(beam_tps / ml_tps, 3),
            "embedtext_vs_mltransform_excluding_model_load": round(beam_tps / ml_tps_no_load, 3),
        })
        data["runs_s"]["mltransform"] = [round(t, 3) for t in t_ml]
        labels.append("MLTransform (ST)")
        values.append(ml_tps_no_load)
    print(write_results("beam", data))
    title = (f"all-MiniLM-L6-v2, {n} mixed texts, {args.threads} CPU threads, Direct runner\n"
             f"EmbedText/core {data['embedtext_vs_core']}x"
             + (f", EmbedText/MLTransform {data['embedtext_vs_mltransform_excluding_model_load']}x"
                " (model loads excluded)" if t_ml else ""))
    print(bar_plot("beam", title, labels, values, "texts / second"))
    print({k: v for k, v in data.items() if k.endswith(("per_s", "_vs_core", "mltransform", "load"))})


if __name__ == "__main__":
    main()
