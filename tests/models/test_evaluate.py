"""Tests for retrieval evaluation loading, search and metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sutra_embedder.models.evaluate import (
    CorpusDoc,
    EvalDataError,
    Query,
    evaluate_embeddings,
    exact_top_k,
    load_corpus,
    load_queries,
    metrics_from_rankings,
    per_query_metrics,
    retrieval_metrics,
)

DOCS = ["d0", "d1", "d2", "d3", "d4"]


def q(qid: str, *relevant: str) -> Query:
    """Build a query with the given relevant document ids."""
    return Query(id=qid, text=f"text of {qid}", relevant=tuple(relevant))


# --------------------------------------------------------------------------
# Metrics on hand-worked examples
# --------------------------------------------------------------------------


def test_single_relevant_at_rank_three() -> None:
    # Ranking: d0, d1, d2, d3, d4 -> the relevant d2 is at rank 3.
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d2")], k=10)
    assert set(result) == {"ndcg@10", "recall@10", "mrr@10"}
    assert result["mrr@10"] == pytest.approx(1 / 3)
    assert result["recall@10"] == pytest.approx(1.0)
    # DCG = 1/log2(3 + 1) = 1/2; ideal DCG = 1/log2(2) = 1.
    assert result["ndcg@10"] == pytest.approx(0.5)


def test_relevant_at_rank_one_is_perfect() -> None:
    scores = np.array([[0.1, 0.2, 0.9, 0.3, 0.0]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d2")])
    assert result == {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}


def test_two_relevant_at_ranks_two_and_four() -> None:
    # Ranking: d1, d0, d2, d3, d4; relevant d0 (rank 2) and d3 (rank 4).
    scores = np.array([[0.8, 0.9, 0.5, 0.4, 0.1]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d0", "d3")], k=10)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert result["ndcg@10"] == pytest.approx(dcg / idcg)
    assert result["mrr@10"] == pytest.approx(1 / 2)
    assert result["recall@10"] == pytest.approx(1.0)


def test_cutoff_drops_documents_below_k() -> None:
    # Same ranking, k = 3: only d0 (rank 2) is retrieved.
    scores = np.array([[0.8, 0.9, 0.5, 0.4, 0.1]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d0", "d3")], k=3)
    assert set(result) == {"ndcg@3", "recall@3", "mrr@3"}
    # Ideal DCG uses min(k, |relevant|) = 2 relevant documents.
    expected_ndcg = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert result["ndcg@3"] == pytest.approx(expected_ndcg)
    assert result["recall@3"] == pytest.approx(1 / 2)
    assert result["mrr@3"] == pytest.approx(1 / 2)


def test_no_relevant_in_top_k_scores_zero() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d2")], k=2)
    assert result == {"ndcg@2": 0.0, "recall@2": 0.0, "mrr@2": 0.0}


def test_more_relevant_than_k() -> None:
    # Ranking: d0, d4, d1, d2, d3; relevant d0, d1, d2; k = 2.
    scores = np.array([[1.0, 0.6, 0.5, 0.0, 0.7]])
    result = retrieval_metrics(scores, DOCS, [q("q", "d0", "d1", "d2")], k=2)
    # DCG = 1 (d0 at rank 1); ideal DCG over min(2, 3) = 2 slots = 1 + 1/log2(3).
    assert result["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert result["recall@2"] == pytest.approx(1 / 3)
    assert result["mrr@2"] == pytest.approx(1.0)


def test_metrics_are_averaged_over_queries() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1, 0.0],  # d2 at rank 3
            [0.1, 0.2, 0.3, 0.4, 0.5],  # ranking d4, d3, d2, d1, d0; d4 at rank 1
        ]
    )
    queries = [q("a", "d2"), q("b", "d4")]
    per_query = per_query_metrics(scores, DOCS, queries, k=10)
    np.testing.assert_allclose(per_query["mrr@10"], [1 / 3, 1.0])
    np.testing.assert_allclose(per_query["ndcg@10"], [0.5, 1.0])
    np.testing.assert_allclose(per_query["recall@10"], [1.0, 1.0])
    result = retrieval_metrics(scores, DOCS, queries, k=10)
    assert result["mrr@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["ndcg@10"] == pytest.approx(0.75)
    assert result["recall@10"] == pytest.approx(1.0)


def test_ties_break_by_document_index() -> None:
    # All scores equal: ranking is d0, d1, d2, d3, d4.
    scores = np.full((2, 5), 0.25)
    per_query = per_query_metrics(scores, DOCS, [q("a", "d1"), q("b", "d4")], k=10)
    np.testing.assert_allclose(per_query["mrr@10"], [1 / 2, 1 / 5])
    # d4 at rank 5 is beyond k = 4.
    cut = per_query_metrics(scores, DOCS, [q("a", "d1"), q("b", "d4")], k=4)
    np.testing.assert_allclose(cut["mrr@4"], [1 / 2, 0.0])


def test_ties_at_cutoff_boundary_with_partial_sort() -> None:
    # Many documents, so the partial-sort path is used. Documents 0..99 all
    # tie at 0.0 except doc 50 (score 2.0) and doc 70 (score 1.0).
    n = 100
    doc_ids = [f"doc{i}" for i in range(n)]
    scores = np.zeros((1, n))
    scores[0, 50] = 2.0
    scores[0, 70] = 1.0
    # Ranking: doc50, doc70, doc0, doc1, ... ; doc1 is at rank 4.
    result = retrieval_metrics(scores, doc_ids, [q("q", "doc1")], k=5)
    assert result["mrr@5"] == pytest.approx(1 / 4)
    assert result["ndcg@5"] == pytest.approx(1 / math.log2(5))
    # With k = 3 doc1 is just outside the cutoff.
    assert retrieval_metrics(scores, doc_ids, [q("q", "doc1")], k=3)["mrr@3"] == 0.0


def test_partial_and_full_sort_agree_on_tied_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 200)).astype(np.float64)
    doc_vecs = np.eye(200)
    idx, top = exact_top_k(scores, doc_vecs, 10, metric="dot")
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(top, np.take_along_axis(scores, expected, axis=1))


def test_metrics_from_rankings_matches_scores() -> None:
    ranking = np.array([[1, 0, 2, 3, 4]])
    result = metrics_from_rankings(ranking, DOCS, [q("q", "d0", "d3")], k=10)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    np.testing.assert_allclose(result["ndcg@10"], [dcg / idcg])
    np.testing.assert_allclose(result["mrr@10"], [0.5])


def test_metrics_from_rankings_rejects_repeated_documents() -> None:
    with pytest.raises(ValueError, match="twice"):
        metrics_from_rankings(np.array([[0, 0, 1]]), DOCS, [q("q", "d0")], k=3)
    with pytest.raises(ValueError, match="outside"):
        metrics_from_rankings(np.array([[0, 5]]), DOCS, [q("q", "d0")], k=2)


def test_metric_input_validation() -> None:
    scores = np.zeros((1, 5))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(np.zeros((2, 5)), DOCS, [q("q", "d0")])
    with pytest.raises(ValueError, match="not in doc_ids"):
        retrieval_metrics(scores, DOCS, [q("q", "missing")])
    with pytest.raises(ValueError, match="positive integer"):
        retrieval_metrics(scores, DOCS, [q("q", "d0")], k=0)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0, 0, 0, 0]]), DOCS, [q("q", "d0")])
    with pytest.raises(ValueError, match="duplicate document id"):
        retrieval_metrics(scores, ["a", "b", "a", "c", "d"], [q("q", "a")])


# --------------------------------------------------------------------------
# Exact search and embedding evaluation
# --------------------------------------------------------------------------


def test_exact_top_k_cosine_differs_from_dot() -> None:
    docs = np.array([[10.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    query = np.array([[1.0, 0.9]])
    dot_idx, dot_scores = exact_top_k(query, docs, 2, metric="dot")
    np.testing.assert_array_equal(dot_idx, [[0, 1]])
    np.testing.assert_allclose(dot_scores, [[10.0, 1.9]])
    cos_idx, cos_scores = exact_top_k(query, docs, 2, metric="cosine")
    np.testing.assert_array_equal(cos_idx, [[1, 0]])
    qn = math.sqrt(1.0 + 0.81)
    np.testing.assert_allclose(cos_scores, [[1.9 / (math.sqrt(2) * qn), 1.0 / qn]])


def test_exact_top_k_clips_k_and_handles_zero_vectors() -> None:
    docs = np.array([[0.0, 0.0], [0.0, 2.0]])
    idx, scores = exact_top_k(np.array([[0.0, 1.0], [0.0, 0.0]]), docs, 5)
    assert idx.shape == (2, 2)
    np.testing.assert_array_equal(idx, [[1, 0], [0, 1]])
    np.testing.assert_allclose(scores, [[1.0, 0.0], [0.0, 0.0]])


def test_exact_top_k_validation() -> None:
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_top_k(np.zeros((1, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="metric"):
        exact_top_k(np.zeros((1, 3)), np.zeros((2, 3)), 1, metric="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        exact_top_k(np.zeros(3), np.zeros((2, 3)), 1)


def test_evaluate_embeddings_uses_normalized_vectors() -> None:
    # Raw dot product would rank d0 (long vector) first for both queries;
    # after normalisation each query is closest to its own direction.
    doc_vecs = np.array([[5.0, 5.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    query_vecs = np.array([[0.0, 1.0, 0.1], [0.0, 0.3, 1.0]])
    ids = ["x", "y", "z"]
    queries = [q("a", "y"), q("b", "z")]
    result = evaluate_embeddings(query_vecs, doc_vecs, ids, queries, k=10)
    assert result == {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}
    # Same vectors scored as raw dot products put "x" first -> rank 2 each.
    raw = retrieval_metrics(query_vecs @ doc_vecs.T, ids, queries, k=10)
    assert raw["mrr@10"] == pytest.approx(0.5)


def test_evaluate_embeddings_matches_retrieval_metrics() -> None:
    rng = np.random.default_rng(1)
    doc_vecs = rng.normal(size=(60, 8))
    query_vecs = rng.normal(size=(12, 8))
    ids = [f"d{i}" for i in range(60)]
    queries = [q(f"q{i}", f"d{(7 * i) % 60}", f"d{(11 * i + 3) % 60}") for i in range(12)]
    dn = doc_vecs / np.linalg.norm(doc_vecs, axis=1, keepdims=True)
    qn = query_vecs / np.linalg.norm(query_vecs, axis=1, keepdims=True)
    expected = retrieval_metrics(qn @ dn.T, ids, queries, k=5)
    assert evaluate_embeddings(query_vecs, doc_vecs, ids, queries, k=5) == pytest.approx(expected)


def test_evaluate_embeddings_shape_checks() -> None:
    with pytest.raises(ValueError, match="query_vecs"):
        evaluate_embeddings(np.zeros((2, 3)), np.zeros((5, 3)), DOCS, [q("q", "d0")])
    with pytest.raises(ValueError, match="doc_vecs"):
        evaluate_embeddings(np.zeros((1, 3)), np.zeros((4, 3)), DOCS, [q("q", "d0")])


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path`` as a UTF-8 text file and return the path."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_corpus_and_queries(tmp_path: Path) -> None:
    corpus = write_lines(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"id": "a", "text": "alpha", "extra": 1}),
            "",
            json.dumps({"id": "b", "text": "béta ✓"}, ensure_ascii=False),
        ],
    )
    assert load_corpus(corpus) == [CorpusDoc("a", "alpha"), CorpusDoc("b", "béta ✓")]
    queries = write_lines(
        tmp_path / "queries.jsonl",
        [json.dumps({"id": "q1", "text": "find a", "relevant": ["a", "b"]})],
    )
    loaded = load_queries(str(queries))
    assert loaded == [Query("q1", "find a", ("a", "b"))]
    with pytest.raises(AttributeError):
        loaded[0].text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"text": "no id"}), "'id'"),
        (json.dumps({"id": 3, "text": "x"}), "field 'id' must be a string"),
        (json.dumps({"id": "", "text": "x"}), "field 'id' must not be empty"),
        (json.dumps({"id": "z"}), "missing required field 'text'"),
        (json.dumps({"id": "z", "text": None}), "field 'text' must be a string"),
        (json.dumps({"id": "a", "text": "dup"}), "duplicates line 1"),
    ],
)
def test_load_corpus_malformed_line(tmp_path: Path, line: str, needle: str) -> None:
    path = write_lines(
        tmp_path / "bad_corpus.jsonl",
        [json.dumps({"id": "a", "text": "ok"}), "", line],
    )
    with pytest.raises(EvalDataError) as info:
        load_corpus(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:")
    assert needle in message


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"id": "q2", "text": "t"}, "missing required field 'relevant'"),
        ({"id": "q2", "text": "t", "relevant": "a"}, "field 'relevant' must be a list"),
        (
            {"id": "q2", "text": "t", "relevant": []},
            "field 'relevant' must not be empty",
        ),
        ({"id": "q2", "text": "t", "relevant": ["a", 5]}, "field 'relevant' item 1"),
        ({"id": "q2", "text": "t", "relevant": ["a", "a"]}, "duplicate ids"),
        ({"id": "q2", "relevant": ["a"]}, "missing required field 'text'"),
        (
            {"id": "q1", "text": "t", "relevant": ["a"]},
            "field 'id' value 'q1' duplicates",
        ),
    ],
)
def test_load_queries_malformed_line(tmp_path: Path, record: dict[str, object], needle: str) -> None:
    path = write_lines(
        tmp_path / "bad_queries.jsonl",
        [json.dumps({"id": "q1", "text": "ok", "relevant": ["a"]}), json.dumps(record)],
    )
    with pytest.raises(EvalDataError) as info:
        load_queries(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2:")
    assert needle in message
    assert "bad_queries.jsonl" in message
