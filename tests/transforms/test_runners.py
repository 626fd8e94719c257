"""The Beam job and EmbedText on real portable runners: Flink (batch) and Prism (streaming).

Both runners start Python workers in LOOPBACK mode, i.e. in this process,
so files written by the workers and the process's shared model are visible
to the test. Flink start-up is slow: keep these pipelines small.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from sutra_embedder.connectors.files import read_dead_letters
from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.pipelines import beam_embed
from sutra_embedder.transforms import EmbedText, EmbedTextConfig, TracedResult, acquire_model
from tests.transforms.helpers import AppendLines, read_lines, vectors_by_id


def _small_jsonl(path: Path, records: list[dict[str, str]]) -> int:
    lines = [json.dumps(r).encode() for r in records]
    lines += [b"{broken json", b'{"id": "no-text"}', b'{"id": "empty", "text": " "}', b"\xff\xfe"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


@pytest.mark.flink
def test_batch_job_on_flink(
    flink_args: list[str], tmp_path: Path, minilm_dir: Path, reference: Embedder,
    corpus_records: list[dict[str, str]],
) -> None:
    records = corpus_records[:12]
    src = tmp_path / "in.jsonl"
    n_lines = _small_jsonl(src, records)
    out = tmp_path / "out" / "emb"
    beam_embed.run([*flink_args, f"--input={src}", f"--output={out}", f"--model={minilm_dir}",
                    "--max_buffer_texts=5"])

    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.parent.glob("emb-*.parquet"))])
    dead = [d for f in sorted(out.parent.glob("emb.dead-*.jsonl")) for d in read_dead_letters(f)]
    assert table.num_rows + len(dead) == n_lines
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in records)
    assert sorted((d["id"], d["kind"]) for d in dead) == [
        ("13", "malformed_json"), ("16", "invalid_utf8"), ("empty", "empty"), ("no-text", "missing_text"),
    ]
    got = dict(zip(table.column("id").to_pylist(), np.asarray(table.column("vector").to_pylist())))
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in records]),
                               reference.embed([r["text"] for r in records]), atol=2e-5)


@pytest.mark.prism
def test_streaming_on_prism(
    prism_args: list[str], tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = acquire_model(embedder_config)  # the LOOPBACK worker shares this process's model
    flushes: list[int] = []
    original = shared.embed

    def slow_spy(texts: Sequence[object], prompt: str | None = None) -> TracedResult:
        # A slow model: buffering state must lose and repeat nothing meanwhile.
        flushes.append(len(texts))
        time.sleep(0.4)
        return original(texts, prompt)

    monkeypatch.setattr(shared, "embed", slow_spy)
    records = corpus_records[:10]
    stamped = [window.TimestampedValue(r, Timestamp(i * 2)) for i, r in enumerate(records)]
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements(stamped[:5])  # window [0, 10)
        .advance_watermark_to(10)
        .add_elements([*stamped[5:], None])  # window [10, 20)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(prism_args)
    options.view_as(StandardOptions).streaming = True
    config = EmbedTextConfig(embedder=embedder_config, max_buffer_texts=3, max_buffering_secs=1)
    emb_path, dead_path = tmp_path / "emb.jsonl", tmp_path / "dead.jsonl"
    p = beam.Pipeline(options=options)
    out = p | stream | beam.WindowInto(window.FixedWindows(10)) | EmbedText(config)
    out.embeddings | "SaveEmb" >> beam.ParDo(AppendLines(emb_path))
    out.dead_letters | "SaveDead" >> beam.ParDo(AppendLines(dead_path))
    p.run().wait_until_finish()

    emb, dead = read_lines(emb_path), read_lines(dead_path)
    assert sorted(r["id"] for r in emb) == sorted(r["id"] for r in records)
    assert [d["kind"] for d in dead] == ["none"]
    got = vectors_by_id(emb)
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in records]),
                               reference.embed([r["text"] for r in records]), atol=2e-5)
    windows = {r["id"]: r["_window"] for r in emb}
    assert [windows[r["id"]] for r in records] == [[0.0, 10.0]] * 5 + [[10.0, 20.0]] * 5
    assert sum(flushes) == 10 and max(flushes) <= 3


@pytest.mark.flink
def test_stateful_batching_on_flink_streaming(
    flink_args: list[str], tmp_path: Path, embedder_config: EmbedderConfig, reference: Embedder,
    corpus_records: list[dict[str, str]],
) -> None:
    records = corpus_records[:8]
    options = PipelineOptions(flink_args)
    options.view_as(StandardOptions).streaming = True
    config = EmbedTextConfig(embedder=embedder_config, batching="stateful", max_buffer_texts=3,
                             max_buffering_secs=0.5)
    emb_path, dead_path = tmp_path / "emb.jsonl", tmp_path / "dead.jsonl"
    p = beam.Pipeline(options=options)
    out = p | beam.Create([*records, {"id": "bad", "text": ""}]) | EmbedText(config)
    out.embeddings | "SaveEmb" >> beam.ParDo(AppendLines(emb_path))
    out.dead_letters | "SaveDead" >> beam.ParDo(AppendLines(dead_path))
    p.run().wait_until_finish()

    emb = read_lines(emb_path)
    assert sorted(r["id"] for r in emb) == sorted(r["id"] for r in records)
    assert [(d["id"], d["kind"]) for d in read_lines(dead_path)] == [("bad", "empty")]
    got = vectors_by_id(emb)
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in records]),
                               reference.embed([r["text"] for r in records]), atol=2e-5)
