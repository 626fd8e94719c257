"""``sutra search``: the query is embedded with the index's stored model; a document's own text finds it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sutra_embedder.connectors.sinks import SearchOptions, open_sink
from sutra_embedder.core.errors import ConfigError
from sutra_embedder.pipelines.search import register_cli, search
from tests.fixtures.postgres import PgServer, SinkCorpus

DOC = 42  # the document whose text is the query


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sutra")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _index(uri: str, corpus: SinkCorpus) -> None:
    sink = open_sink(uri, corpus.dim, corpus.model)
    assert sink.write(corpus.rows()) == []
    sink.close()


@pytest.fixture(scope="module")
def lance_uri(tmp_path_factory: pytest.TempPathFactory, sink_corpus: SinkCorpus) -> str:
    pytest.importorskip("lancedb")
    uri = f"lancedb://{tmp_path_factory.mktemp('search-lance')}?table=docs&index_min_rows=100"
    _index(uri, sink_corpus)
    return uri


def test_cli_finds_a_document_by_its_own_text(
    lance_uri: str, sink_corpus: SinkCorpus, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["search", "--index", lance_uri, sink_corpus.texts[DOC], "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == sink_corpus.model
    assert out["hits"][0]["id"] == sink_corpus.ids[DOC]
    assert out["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4) and len(out["hits"]) == 3

    assert _cli(["search", "--index", lance_uri, sink_corpus.texts[7], "--exact"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and lines[0].split("\t")[2] == sink_corpus.ids[7]


def test_search_function_on_parquet(tmp_path: Path, sink_corpus: SinkCorpus) -> None:
    uri = f"parquet://{tmp_path}?max_rows=64&fsync=false"
    _index(uri, sink_corpus)
    hits = search(uri, sink_corpus.texts[DOC], k=5)
    assert hits[0][0] == sink_corpus.ids[DOC] and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="no part-"):
        search(f"parquet://{tmp_path / 'empty'}", "x")


@pytest.mark.postgres
def test_cli_on_pgvector(
    pg_server: PgServer, pg_table: str, sink_corpus: SinkCorpus, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"{pg_server.uri}&table={pg_table}"
    _index(uri, sink_corpus)
    assert _cli(["search", "--index", uri, sink_corpus.texts[DOC], "-k", "5", "--ef-search", "100"]) == 0
    captured = capsys.readouterr()
    top = captured.out.strip().splitlines()[0].split("\t")
    assert top[0] == "1" and top[2] == sink_corpus.ids[DOC] and float(top[1]) == pytest.approx(1.0, abs=1e-4)
    assert f"model {sink_corpus.model}" in captured.err
    hits = search(uri, sink_corpus.texts[DOC], k=3, options=SearchOptions(exact=True))
    assert hits[0][0] == sink_corpus.ids[DOC]
