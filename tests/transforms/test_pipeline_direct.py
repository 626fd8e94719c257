"""The Beam file job (beam_embed) on the Direct runner: same output as ``sutra embed``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sutra_embedder.connectors.files import SourceSpec, embedding_schema, read_dead_letters
from sutra_embedder.core import ConfigError, Embedder, EmbedderConfig
from sutra_embedder.pipelines import beam_embed
from sutra_embedder.pipelines.embed_file import EmbedFileJob, run_embed_file
from tests.transforms.helpers import counters

LONG = "Beam bundles hold many records; the embedder sorts them by length. " * 50


def write_jsonl_with_bad_lines(path: Path, records: list[dict[str, str]]) -> int:
    lines = [json.dumps(dict(r, lang="en")).encode() for r in records]
    lines += [json.dumps({"id": "long", "text": LONG}).encode(), json.dumps({"text": "no id: line number"}).encode(),
              b'"a bare JSON string"']
    bad = [b'{"id": "empty", "text": ""}', b"{not json", b'{"id": "null", "text": null}', b'{"id": "num", "text": 5}',
           b'{"id": "notext"}', b'{"id": "utf", "text": "caf\xff"}', b"[1, 2]", b"\xff\xfe\x00"]
    mixed = lines[:5] + bad[:4] + lines[5:] + bad[4:]
    path.write_bytes(b"\n".join(mixed) + b"\n\n")  # the trailing blank line is no record
    return len(mixed)


def _read_parquet(prefix: Path) -> pa.Table:
    files = sorted(prefix.parent.glob(prefix.name + "-*.parquet"))
    assert files, f"no Parquet output under {prefix}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def _read_dead(prefix: Path) -> list[dict[str, Any]]:
    return [d for f in sorted(prefix.parent.glob(prefix.name + "-*.jsonl")) for d in read_dead_letters(f)]


def test_jsonl_job_matches_the_non_beam_job(
    tmp_path: Path, minilm_dir: Path, reference: Embedder, corpus_records: list[dict[str, str]],
) -> None:
    src = tmp_path / "in.jsonl"
    n_records = write_jsonl_with_bad_lines(src, corpus_records[:16])
    out = tmp_path / "beam" / "emb"
    result = beam_embed.run([
        "--runner=DirectRunner", f"--input={src}", f"--output={out}", f"--model={minilm_dir}",
        "--max_buffer_texts=8", "--num_shards=1",
    ])
    table = _read_parquet(out)
    dead = _read_dead(tmp_path / "beam" / "emb.dead")

    # Same columns and schema metadata as the non-Beam job.
    assert table.schema == embedding_schema(reference.dim, "float32", reference.model_id)
    assert table.schema.metadata == embedding_schema(reference.dim, "float32", reference.model_id).metadata
    assert table.num_rows + len(dead) == n_records

    job = EmbedFileJob(source=SourceSpec(str(src)), output=str(tmp_path / "plain.parquet"),
                       embedder=EmbedderConfig(model=str(minilm_dir)), progress=False)
    run_embed_file(job, embedder=reference)
    plain = pq.read_table(tmp_path / "plain.parquet")
    plain_dead = read_dead_letters(job.dead_letter_path)

    beam_rows = {r["id"]: r for r in table.to_pylist()}
    plain_rows = {r["id"]: r for r in plain.to_pylist()}
    assert sorted(beam_rows) == sorted(plain_rows)
    for rid, row in plain_rows.items():
        assert {k: v for k, v in beam_rows[rid].items() if k != "vector"} == {
            k: v for k, v in row.items() if k != "vector"
        }

    def key(d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["id"], d["stage"], d["kind"], d["source"], d["original"], d["original_encoding"])

    assert sorted(map(key, dead)) == sorted(map(key, plain_dead))
    assert {d["kind"] for d in dead} == {"empty", "malformed_json", "none", "not_a_string", "missing_text",
                                         "invalid_utf8"}

    # Vectors equal the core embedder's on the same texts.
    texts = {r["id"]: r["text"] for r in corpus_records[:16]} | {"long": LONG}
    expected = reference.embed(list(texts.values()))
    got = np.asarray([beam_rows[i]["vector"] for i in texts], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert beam_rows["long"]["n_chunks"] > 1

    stats = counters(result)
    assert stats["inputs"] == n_records and stats["texts"] == table.num_rows
    assert stats["failures"] == len(dead)


def test_parquet_input_with_other_field_names(tmp_path: Path, minilm_dir: Path, reference: Embedder) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": ["p1", "p2", "p3"], "body": ["first document", None, "third document"],
                             "year": [2020, 2021, 2022]}), src)
    out = tmp_path / "out" / "emb.parquet"
    beam_embed.run(["--runner=DirectRunner", f"--input={src}", f"--output={out}", f"--model={minilm_dir}",
                    "--id_field=key", "--text_field=body", "--num_shards=1", f"--dead_letters={tmp_path}/bad"])
    rows = {r["id"]: r for r in _read_parquet(tmp_path / "out" / "emb").to_pylist()}
    assert sorted(rows) == ["p1", "p3"] and json.loads(rows["p3"]["metadata"]) == {"year": 2022}
    np.testing.assert_allclose(np.asarray([rows["p1"]["vector"], rows["p3"]["vector"]], dtype=np.float32),
                               reference.embed(["first document", "third document"]), atol=2e-5)
    assert [(d["id"], d["kind"]) for d in _read_dead(tmp_path / "bad")] == [("p2", "none")]


def test_streaming_mode_on_files(tmp_path: Path, minilm_dir: Path, corpus_records: list[dict[str, str]]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in corpus_records[:5]) + "\n{oops\n", encoding="utf-8")
    out = tmp_path / "emb"
    beam_embed.run(["--runner=DirectRunner", "--streaming", f"--input={src}", f"--output={out}",
                    f"--model={minilm_dir}", "--num_shards=1"])
    assert sorted(_read_parquet(out).column("id").to_pylist()) == [r["id"] for r in corpus_records[:5]]
    assert [d["kind"] for d in _read_dead(tmp_path / "emb.dead")] == ["malformed_json"]


def test_missing_options_name_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert beam_embed.main(["--runner=DirectRunner", "--output=/tmp/x"]) == 2
    assert "--input: is required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--output"):
        beam_embed.run(["--runner=DirectRunner", "--input=/tmp/x.jsonl"])
    assert beam_embed.main(["--input=/nonexistent/*.jsonl", "--output=/tmp/x"]) == 2
    assert "--input: '/nonexistent/*.jsonl' matches no file" in capsys.readouterr().err
    assert beam_embed.main(["--help"]) == 0
    assert "--max_buffering_secs" in capsys.readouterr().out
