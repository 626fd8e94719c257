"""From one core call to per-item outputs: vectors in order, failures as dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.transforms import (
    DeadLetterRow,
    EmbeddingRow,
    EmbedText,
    EmbedTextConfig,
    PendingText,
    SharedEmbedder,
    embed_pending,
)
from tests.transforms.helpers import AppendLines, read_lines, vectors_by_id

LONG = "A long text for the reject policy. " * 60


def test_core_failures_become_dead_letters_in_their_places(
    embedder_config: EmbedderConfig, reference: Embedder, monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = SharedEmbedder(embedder_config.with_overrides(**{"chunking.policy": "reject"}))
    poison = model.embedder.tokenizer.encode_content(["xylophone"])[0][0]
    run = model.embedder._run

    def failing_run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if (ids == poison).any():
            raise RuntimeError("device lost")
        return run(ids, mask)

    monkeypatch.setattr(model.embedder, "_run", failing_run)
    texts = ["first text", LONG, "a xylophone solo", "last text"]
    items = [PendingText(f"id{i}", t, None, f"src:{i}") for i, t in enumerate(texts)]
    out = embed_pending(model, items, None, "minilm", None)

    assert [type(o).__name__ for o in out] == ["EmbeddingRow", "DeadLetterRow", "DeadLetterRow", "EmbeddingRow"]
    too_long, broken = out[1], out[2]
    assert isinstance(too_long, DeadLetterRow) and isinstance(broken, DeadLetterRow)
    assert (too_long.id, too_long.stage, too_long.kind, too_long.source) == ("id1", "validate", "too_long", "src:1")
    assert (broken.id, broken.stage, broken.kind) == ("id2", "embed", "inference_error")
    assert "device lost" in broken.error and broken.original == "a xylophone solo" and broken.model == "minilm"
    good = [o for o in out if isinstance(o, EmbeddingRow)]
    np.testing.assert_allclose(np.asarray([g.vector for g in good], dtype=np.float32),
                               reference.embed(["first text", "last text"]), atol=2e-5)


def test_prompt_and_truncation_reach_the_core(
    tmp_path: Path, embedder_config: EmbedderConfig, make_embedder: Any,
) -> None:
    truncating = embedder_config.with_overrides(**{"chunking.policy": "truncate"})
    config = EmbedTextConfig(embedder=truncating, prompt="query: ")
    texts = ["short question", LONG]
    emb_path = tmp_path / "emb.jsonl"
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    out = p | beam.Create([{"id": str(i), "text": t} for i, t in enumerate(texts)]) | EmbedText(config)
    out.embeddings | beam.ParDo(AppendLines(emb_path))
    p.run().wait_until_finish()
    rows = {r["id"]: r for r in read_lines(emb_path)}
    expected = make_embedder(**{"chunking.policy": "truncate"}).embed(texts, prompt="query: ")
    got = vectors_by_id(list(rows.values()))
    np.testing.assert_allclose(np.stack([got["0"], got["1"]]), expected, atol=2e-5)
    assert (rows["0"]["truncated"], rows["1"]["truncated"]) == (False, True)
    assert rows["1"]["n_chunks"] == 1 and rows["1"]["n_tokens"] > 256
