"""`sutra embed` and `sutra eval` end to end on real files and the real model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sutra_embedder.cli import main
from sutra_embedder.connectors.files import read_dead_letters
from sutra_embedder.core import CalibrationRanges
from tests.fixtures.models import REPO, cosine_rows, read_jsonl

GOOD = {"a": "Kafka topics carry text events.", "b": "Beam pipelines embed documents in batches.",
        "c": "东京的天气很好 ☀️", "d": "Long text " + "with many words " * 300}


def _args(tmp: Path, src: Path, minilm_dir: Path, *extra: str) -> list[str]:
    return ["embed", str(src), "-o", str(tmp / "out.parquet"), "--model", str(minilm_dir),
            "--no-progress", *extra]


def _check_good(table: pa.Table, st_minilm: Any, ids: list[str]) -> None:
    got = dict(zip(table.column("id").to_pylist(), np.asarray(table.column("vector").to_pylist())))
    assert sorted(got) == sorted(ids)
    short = [i for i in ids if i != "d"]
    ref = st_minilm.encode([GOOD[i] for i in short], convert_to_numpy=True)
    assert cosine_rows(np.stack([got[i] for i in short]), ref).min() >= 0.9999


def test_jsonl_with_every_kind_of_bad_row(tmp_path: Path, minilm_dir: Path, st_minilm: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": k, "text": v, "lang": "x"}).encode() for k, v in GOOD.items()]
    lines += [b'{"id": "e", "text": ""}', b"{not json", b'{"id": "g", "text": null}', b'{"id": "h", "text": 5}',
              b'{"id": "i"}', b'{"id": "j", "text": "caf\xff"}', b"[1, 2]", b'"a bare json string"']
    src.write_bytes(b"\n".join(lines) + b"\n")
    rc = main(_args(tmp_path, src, minilm_dir, "--summary-json"))
    assert rc == 1  # something failed
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == 12 and summary["embedded"] == 5 and summary["failed"] == 7
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)
    _check_good(table.filter(pa.compute.not_equal(table.column("id"), "12")), st_minilm, list(GOOD))
    row_d = table.filter(pa.compute.equal(table.column("id"), "d")).to_pylist()[0]
    assert row_d["n_chunks"] > 1 and row_d["n_tokens"] > 600
    assert json.loads(table.to_pylist()[0]["metadata"]) == {"lang": "x"}
    dead = read_dead_letters(tmp_path / "out.parquet.dead.jsonl")
    kinds = sorted(d["kind"] for d in dead)
    assert kinds == sorted(["empty", "malformed_json", "none", "not_a_string", "missing_text",
                            "invalid_utf8", "malformed_json"])
    assert all(d["error"] and d["source"] for d in dead)
    # Inputs = outputs + dead letters.
    assert table.num_rows + len(dead) == 12


@pytest.mark.parametrize("fmt", ["txt", "csv", "parquet"])
def test_other_formats(tmp_path: Path, minilm_dir: Path, st_minilm: Any, fmt: str) -> None:
    ids = ["a", "b", "c"]
    if fmt == "txt":
        src = tmp_path / "in.txt"
        src.write_text("\n".join(GOOD[i] for i in ids) + "\n", encoding="utf-8")
        ids_expected = ["1", "2", "3"]
    elif fmt == "csv":
        src = tmp_path / "in.csv"
        with open(src, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["doc", "body", "tag"])
            for i in ids:
                w.writerow([i, GOOD[i], "t"])
        ids_expected = ids
    else:
        src = tmp_path / "in.parquet"
        pq.write_table(pa.table({"doc": ids, "body": [GOOD[i] for i in ids], "tag": ["t"] * 3}), src)
        ids_expected = ids
    extra = [] if fmt == "txt" else ["--id-field", "doc", "--text-field", "body"]
    assert main(_args(tmp_path, src, minilm_dir, *extra)) == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == ids_expected
    ref = st_minilm.encode([GOOD[i] for i in ids], convert_to_numpy=True)
    assert cosine_rows(np.asarray(table.column("vector").to_pylist()), ref).min() >= 0.9999
    assert not (tmp_path / "out.parquet.dead.jsonl").exists()


def test_precisions(tmp_path: Path, minilm_dir: Path, st_minilm: Any) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in GOOD.items()), encoding="utf-8")
    assert main(_args(tmp_path, src, minilm_dir, "--precision", "ubinary", "--truncate-dim", "256")) == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.uint8(), 32)
    ref = st_minilm.encode(list(GOOD.values())[:1], convert_to_numpy=True)[0, :256]
    bits = np.unpackbits(np.asarray(table.column("vector").to_pylist()[0], dtype=np.uint8))
    np.testing.assert_array_equal(bits, (ref > 0).astype(np.uint8))

    calib = tmp_path / "ranges.json"
    sample = st_minilm.encode([f"calibration text {i}" for i in range(50)], convert_to_numpy=True)
    CalibrationRanges.from_embeddings(sample).save(calib)
    out = tmp_path / "int8.parquet"
    args = ["embed", str(src), "-o", str(out), "--model", str(minilm_dir), "--no-progress",
            "--precision", "int8", "--calibration", str(calib)]
    assert main(args) == 0
    assert pq.read_table(out).schema.field("vector").type == pa.list_(pa.int8(), 384)
    rc = main(["embed", str(src), "-o", str(out), "--model", str(minilm_dir), "--no-progress",
               "--precision", "int8"])
    assert rc == 2  # no calibration ranges: a clear error, not a crash


def _ndcg10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(10, len(relevant))))
    return dcg / ideal


def test_eval_matches_brute_force_reference(tmp_path: Path, minilm_dir: Path, st_minilm: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    queries = read_jsonl(REPO / "examples/eval/stdlib_queries.jsonl")[:40]
    docs = read_jsonl(REPO / "examples/eval/stdlib_corpus.jsonl")
    wanted = {r for q in queries for r in q["relevant"]}
    docs = [d for d in docs if d["id"] in wanted] + [d for d in docs if d["id"] not in wanted][:120]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(d) for d in docs), encoding="utf-8")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in queries), encoding="utf-8")
    rc = main(["eval", "--model", str(minilm_dir), "--corpus", str(tmp_path / "c.jsonl"),
               "--queries", str(tmp_path / "q.jsonl"), "--long-texts", "truncate"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    dv = st_minilm.encode([d["text"] for d in docs], convert_to_numpy=True)
    qv = st_minilm.encode([q["text"] for q in queries], convert_to_numpy=True)
    scores = qv @ dv.T
    ndcgs = [_ndcg10([docs[j]["id"] for j in np.argsort(-scores[i], kind="stable")], set(q["relevant"]))
             for i, q in enumerate(queries)]
    assert report["ndcg@10"] == pytest.approx(float(np.mean(ndcgs)), abs=0.01)
    assert 0.0 < report["mrr@10"] <= 1.0 and 0.0 < report["recall@10"] <= 1.0
