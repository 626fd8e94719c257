"""EmbedText in batch pipelines on the Direct runner, with the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.transforms import EmbedText, EmbedTextConfig, content_id, model
from tests.transforms.helpers import AppendLines, counters, distributions, read_lines, vectors_by_id

DIRECT = ["--runner=DirectRunner"]
LONG = "Streaming systems buffer records before they call a model. " * 60  # ~600 tokens: chunked


def _run(elements: list[Any], config: EmbedTextConfig, tmp: Path, args: list[str] = DIRECT,
         timestamped: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    emb_path, dead_path = tmp / "emb.jsonl", tmp / "dead.jsonl"
    p = beam.Pipeline(options=PipelineOptions(args))
    pcoll = p | beam.Create(elements, reshuffle=False)
    if timestamped:
        pcoll = (pcoll | "Stamp" >> beam.Map(lambda kv: window.TimestampedValue(kv[1], kv[0]))
                 | beam.WindowInto(window.FixedWindows(10)))
    out = pcoll | EmbedText(config)
    out.embeddings | "SaveEmb" >> beam.ParDo(AppendLines(emb_path))
    out.dead_letters | "SaveDead" >> beam.ParDo(AppendLines(dead_path))
    result = p.run()
    result.wait_until_finish()
    return read_lines(emb_path), read_lines(dead_path), result


def test_batch_pipeline_embeds_good_elements_and_dead_letters_bad_ones(
    tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]],
) -> None:
    good: list[Any] = [dict(r, lang="en") for r in corpus_records[:24]]
    good += [beam.Row(id="row-1", text="A schema'd Beam row.", source="row"), "A bare string element.",
             {"id": "long-1", "text": LONG}]
    bad: list[Any] = [None, 7, "", b"\xff\xfe", {"id": "no-text", "body": "x"}, {"id": "null-text", "text": None},
                      beam.Row(id="row-bad", text="   ")]
    elements = good[:10] + bad[:3] + good[10:20] + bad[3:] + good[20:]
    config = EmbedTextConfig(embedder=embedder_config, max_buffer_texts=8)
    emb, dead, result = _run(elements, config, tmp_path)

    # Every input comes out exactly once: as an embedding or as a dead letter.
    assert len(emb) + len(dead) == len(elements)
    good_ids = [g["id"] if isinstance(g, dict) else getattr(g, "id", None) or content_id(g) for g in good]
    assert sorted(r["id"] for r in emb) == sorted(good_ids)
    assert sorted((d["id"] or "", d["kind"]) for d in dead) == sorted([
        ("", "none"), ("", "not_a_string"), ("", "empty"), ("", "invalid_utf8"),
        ("no-text", "missing_text"), ("null-text", "none"), ("row-bad", "empty"),
    ])
    assert all(d["stage"] == "validate" and d["model"] == reference.model_id and d["error"] for d in dead)

    # Vectors, token counts and chunk counts equal the core embedder's on the same texts.
    texts = [g["text"] if isinstance(g, dict) else getattr(g, "text", g) for g in good]
    expected = reference.embed_records(texts)
    got = vectors_by_id(emb)
    np.testing.assert_allclose(np.stack([got[i] for i in good_ids]), expected.vectors, atol=2e-5)
    by_id = {r["id"]: r for r in emb}
    assert [by_id[i]["n_tokens"] for i in good_ids] == expected.n_tokens.tolist()
    assert [by_id[i]["n_chunks"] for i in good_ids] == expected.n_chunks.tolist()
    assert by_id["long-1"]["n_chunks"] > 1 and by_id["doc-000"]["n_chunks"] == 1
    assert by_id["doc-000"]["metadata"] == '{"lang": "en"}'
    assert by_id["row-1"]["metadata"] == '{"source": "row"}'
    assert by_id[content_id("A bare string element.")]["metadata"] is None

    stats = counters(result)
    assert stats["inputs"] == len(elements) and stats["texts"] == len(good)
    assert stats["failures"] == len(bad) and stats["failures_none"] == 2 and stats["failures_missing_text"] == 1
    assert stats["tokens"] == int(expected.n_tokens.sum()) and stats["chunks"] == int(expected.n_chunks.sum())
    dists = distributions(result)
    assert dists["flush_texts"].max <= 8 and dists["flush_texts"].sum == len(good)
    assert dists["batch_size"].count >= 4 and dists["inference_ms"].count == dists["batch_size"].count
    assert dists["batch_tokens"].max <= 8192  # the documented CPU default of batching.max_batch_tokens


def test_bundle_outputs_keep_each_elements_window(
    tmp_path: Path, embedder_config: EmbedderConfig, corpus_records: list[dict[str, str]],
) -> None:
    # Elements of three windows, flushed both mid-bundle (buffer of 4) and at bundle end.
    elements = [(ts, r) for ts, r in zip([1, 12, 25, 3, 14, 27, 5, 16, 29, 7, 18], corpus_records)]
    config = EmbedTextConfig(embedder=embedder_config, max_buffer_texts=4)
    emb, dead, _ = _run(elements, config, tmp_path, timestamped=True)
    assert not dead and len(emb) == len(elements)
    expected = {r["id"]: [ts // 10 * 10.0, ts // 10 * 10.0 + 10] for ts, r in elements}
    assert {r["id"]: r["_window"] for r in emb} == expected


def test_model_is_loaded_once_per_process(
    tmp_path: Path, embedder_config: EmbedderConfig, corpus_records: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[int] = []
    original = model.SharedEmbedder.__init__

    def counting_init(self: model.SharedEmbedder, config: EmbedderConfig) -> None:
        loads.append(1)
        original(self, config)

    monkeypatch.setattr(model.SharedEmbedder, "__init__", counting_init)
    # Settings no other test uses, so nothing is cached yet.
    config = EmbedTextConfig(embedder=embedder_config.with_overrides(**{"batching.max_batch_tokens": 4000}),
                             max_buffer_texts=4)
    args = [*DIRECT, "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    p = beam.Pipeline(options=PipelineOptions(args))
    texts = p | beam.Create([r["text"] for r in corpus_records[:20]])
    first = texts | "First" >> EmbedText(config)
    second = texts | "Second" >> EmbedText(config)
    emb_path = tmp_path / "emb.jsonl"
    (first.embeddings, second.embeddings) | beam.Flatten() | beam.ParDo(AppendLines(emb_path))
    p.run().wait_until_finish()
    assert len(read_lines(emb_path)) == 40
    assert len(loads) == 1


def test_model_shared_across_processes(
    tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]],
) -> None:
    config = EmbedTextConfig(embedder=embedder_config, model_sharing="multi_process")
    records = corpus_records[:6]
    emb, dead, result = _run([*records, None], config, tmp_path)
    assert [d["kind"] for d in dead] == ["none"]
    got = vectors_by_id(emb)
    expected = reference.embed([r["text"] for r in records])
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in records]), expected, atol=2e-5)
    assert counters(result)["texts"] == 6
