"""EmbedText in streaming pipelines on the Direct runner (TestStream), with the real model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.transforms import EmbedText, EmbedTextConfig, TracedResult, acquire_model
from tests.transforms.helpers import AppendLines, read_lines, vectors_by_id


class FixedClock:
    """The buffering clock of a TestStream run: the runner's test clock starts at 0."""

    def __call__(self) -> float:
        return 0.0


@pytest.fixture
def flush_sizes(embedder_config: EmbedderConfig, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Texts per call of the core embedder, seen on the process's shared model.

    The Direct runner runs the DoFns in this process, so they acquire the very
    model this fixture holds and spies on.
    """
    shared = acquire_model(embedder_config)
    sizes: list[int] = []
    original = shared.embed

    def spy(texts: Sequence[object], prompt: str | None = None) -> TracedResult:
        sizes.append(len(texts))
        return original(texts, prompt)

    monkeypatch.setattr(shared, "embed", spy)
    return sizes


def _stream(records: list[dict[str, str]]) -> test_stream.TestStream:
    r = [window.TimestampedValue(rec, Timestamp(i)) for i, rec in enumerate(records)]
    return (
        test_stream.TestStream()
        .advance_watermark_to(0)
        # Window [0, 10): five texts with a batch size of 4: one full batch, one left over.
        .add_elements(r[0:5])
        # The leftover text waits at most 5 s: processing time passes, the batch flushes.
        .advance_processing_time(6)
        .add_elements([None, *r[5:7]])
        .advance_watermark_to(10)  # window end flushes the two texts of the second batch
        .add_elements(r[10:13])  # window [10, 20)
        .advance_watermark_to_infinity()
    )


def test_stream_embeds_everything_and_flushes_by_size_time_and_window(
    tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]], flush_sizes: list[int],
) -> None:
    records = corpus_records[:13]
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    config = EmbedTextConfig(embedder=embedder_config, max_buffer_texts=4, max_buffering_secs=5)
    emb_path, dead_path = tmp_path / "emb.jsonl", tmp_path / "dead.jsonl"
    p = beam.Pipeline(options=options)
    out = (p | _stream(records) | beam.WindowInto(window.FixedWindows(10))
           | EmbedText(config, buffering_clock=FixedClock()))
    out.embeddings | "SaveEmb" >> beam.ParDo(AppendLines(emb_path))
    out.dead_letters | "SaveDead" >> beam.ParDo(AppendLines(dead_path))
    p.run().wait_until_finish()

    emb, dead = read_lines(emb_path), read_lines(dead_path)
    sent = records[0:7] + records[10:13]
    assert sorted(r["id"] for r in emb) == sorted(r["id"] for r in sent)
    assert [d["kind"] for d in dead] == ["none"]
    got = vectors_by_id(emb)
    expected = reference.embed([r["text"] for r in sent])
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in sent]), expected, atol=2e-5)
    windows = {r["id"]: r["_window"] for r in emb}
    assert all(windows[r["id"]] == [0.0, 10.0] for r in records[0:7])
    assert all(windows[r["id"]] == [10.0, 20.0] for r in records[10:13])
    # Full batch (size), the leftover (buffering time), the rest of window 1 and window 2 (window end).
    assert flush_sizes == [4, 1, 2, 3]


def test_unbounded_input_picks_stateful_batching(embedder_config: EmbedderConfig) -> None:
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    transform = EmbedText(EmbedTextConfig(embedder=embedder_config))
    pcoll = p | test_stream.TestStream().add_elements(["x"]).advance_watermark_to_infinity()
    assert transform.batching_mode(pcoll) == "stateful"
    # A bounded input keeps per-bundle buffering, also in a streaming pipeline.
    assert transform.batching_mode(p | beam.Create(["x"])) == "bundle"
    forced = EmbedText(EmbedTextConfig(embedder=embedder_config, batching="stateful"))
    assert forced.batching_mode(p | "Bounded" >> beam.Create(["x"])) == "stateful"


def test_stateful_batching_in_a_batch_pipeline(
    tmp_path: Path, embedder_config: EmbedderConfig, corpus_records: list[dict[str, str]],
    flush_sizes: list[int],
) -> None:
    config = EmbedTextConfig(embedder=embedder_config, batching="stateful", max_buffer_texts=5)
    records: list[Any] = corpus_records[:12]
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    out = p | beam.Create([*records, {"id": "x"}]) | EmbedText(config)
    emb_path, dead_path = tmp_path / "emb.jsonl", tmp_path / "dead.jsonl"
    out.embeddings | "SaveEmb" >> beam.ParDo(AppendLines(emb_path))
    out.dead_letters | "SaveDead" >> beam.ParDo(AppendLines(dead_path))
    p.run().wait_until_finish()
    assert sorted(r["id"] for r in read_lines(emb_path)) == sorted(r["id"] for r in records)
    assert [(d["id"], d["kind"]) for d in read_lines(dead_path)] == [("x", "missing_text")]
    assert sum(flush_sizes) == 12 and max(flush_sizes) <= 5
