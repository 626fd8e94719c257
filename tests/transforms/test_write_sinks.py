"""EmbedText -> WriteEmbeddings on the Direct runner, into real LanceDB and Postgres+pgvector."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from sutra_embedder.connectors.sinks import SearchOptions, open_index
from sutra_embedder.core import Embedder, EmbedderConfig
from sutra_embedder.transforms import EmbedText, EmbedTextConfig, dead_letter_json
from sutra_embedder.transforms.sinks import WriteEmbeddings
from tests.fixtures.models import REPO, read_jsonl

DOCS = [(str(r["id"]), r["text"][:600]) for r in read_jsonl(REPO / "examples/corpus.jsonl")[:60]]


def _index(uri: str, minilm_dir: Path, docs: list[tuple[str, str]], out: Path, truncate_dim: int | None = None,
           dim: int = 384) -> list[str]:
    cfg = EmbedTextConfig(embedder=EmbedderConfig(model=str(minilm_dir), truncate_dim=truncate_dim))
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        rows = p | beam.Create([{"id": i, "text": t, "n": k} for k, (i, t) in enumerate(docs)]) | EmbedText(cfg)
        refused = rows.embeddings | WriteEmbeddings(uri, dim, "minilm")
        _ = refused.dead_letters | beam.Map(dead_letter_json) | beam.io.WriteToText(str(out / "dead"))
    lines: list[str] = []
    for f in sorted(out.glob("dead*")):
        lines += [x for x in f.read_text().splitlines() if x]
    return lines


def _check_exact_search(uri: str, make_embedder: Callable[..., Embedder]) -> None:
    emb = make_embedder()
    vectors = emb.embed([t for _, t in DOCS])
    ids = [i for i, _ in DOCS]
    index = open_index(uri)
    for q in (0, 17, 42):
        query = vectors[q]
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:10]
        hits = index.search(query, 10, SearchOptions(exact=True))
        assert [h[0] for h in hits] == [ids[j] for j in order]
        np.testing.assert_allclose([h[1] for h in hits], scores[order], atol=1e-4)


def test_lancedb_index_search_and_replay(tmp_path: Path, minilm_dir: Path,
                                          make_embedder: Callable[..., Embedder]) -> None:
    pytest.importorskip("lancedb")
    uri = f"lancedb://{tmp_path / 'db'}?table=docs&index=none"
    assert _index(uri, minilm_dir, DOCS, tmp_path / "a") == []
    _check_exact_search(uri, make_embedder)
    # A replay (a retried job) upserts: still one row per id.
    assert _index(uri, minilm_dir, DOCS, tmp_path / "b") == []
    import lancedb

    assert lancedb.connect(str(tmp_path / "db")).open_table("docs").count_rows() == len(DOCS)


@pytest.mark.postgres
def test_pgvector_index_and_dimension_mismatch(tmp_path: Path, minilm_dir: Path, pg_uri: str, pg_table: str,
                                               make_embedder: Callable[..., Embedder]) -> None:
    sep = "&" if "?" in pg_uri else "?"
    uri = f"{pg_uri}{sep}table={pg_table}"
    assert _index(uri, minilm_dir, DOCS, tmp_path / "a") == []
    _check_exact_search(uri, make_embedder)
    # 128-d vectors into the 384-d table: every row is refused with its reason, none lost.
    dead = _index(uri, minilm_dir, DOCS[:5], tmp_path / "b", truncate_dim=128)
    assert len(dead) == 5
    assert all('"dimension_mismatch"' in d for d in dead)
