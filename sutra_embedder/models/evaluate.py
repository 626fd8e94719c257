"""Retrieval evaluation: dataset loading, exact search and ranking metrics.

The evaluation data format is JSON Lines:

* corpus files hold one document per line: ``{"id": str, "text": str}``;
* query files hold one query per line:
  ``{"id": str, "text": str, "relevant": [doc_id, ...]}``.

Additional fields on a line are ignored, and blank lines are skipped.

Metrics use binary relevance and are computed over the top ``k`` ranked
documents of each query:

* ``recall@k``: fraction of a query's relevant documents found in the top k;
* ``mrr@k``: reciprocal rank of the first relevant document in the top k
  (0 when none is found);
* ``ndcg@k``: DCG with a ``1 / log2(rank + 1)`` discount, divided by the DCG
  of an ideal ranking that places ``min(k, |relevant|)`` relevant documents
  first.

Rankings are deterministic: documents are ordered by descending score and
ties are broken by ascending document index.

Example:
    >>> import numpy as np
    >>> docs = ["a", "b", "c"]
    >>> queries = [Query(id="q1", text="...", relevant=("c",))]
    >>> scores = np.array([[0.9, 0.5, 0.1]])
    >>> retrieval_metrics(scores, docs, queries, k=10)["mrr@10"]
    0.3333333333333333
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "CorpusDoc",
    "EvalDataError",
    "Query",
    "evaluate_embeddings",
    "exact_top_k",
    "load_corpus",
    "load_queries",
    "metrics_from_rankings",
    "per_query_metrics",
    "retrieval_metrics",
]

PathLike = str | os.PathLike[str]

#: Upper bound on the number of score-matrix elements materialised at once
#: by :func:`exact_top_k` (about 256 MiB of float64).
_SCORE_BLOCK_ELEMENTS = 1 << 25


class EvalDataError(ValueError):
    """Raised when an evaluation data file contains a malformed line."""


@dataclass(frozen=True)
class CorpusDoc:
    """A document of a retrieval corpus.

    Attributes:
        id: Unique document identifier.
        text: Document text.
    """

    id: str
    text: str


@dataclass(frozen=True)
class Query:
    """A retrieval query with its relevance judgements.

    Attributes:
        id: Unique query identifier.
        text: Query text.
        relevant: Identifiers of the documents relevant to the query
            (binary relevance, no duplicates).
    """

    id: str
    text: str
    relevant: tuple[str, ...]


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _iter_json_objects(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSON Lines file into ``(line_number, object)`` pairs.

    Args:
        path: File to read (UTF-8).

    Returns:
        One pair per non-blank line, with 1-based line numbers.

    Raises:
        EvalDataError: If a line is not valid JSON or not a JSON object.
    """
    records: list[tuple[int, dict[str, Any]]] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise EvalDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            records.append((lineno, obj))
    return records


def _require_str(obj: Mapping[str, Any], field: str, path: Path, lineno: int) -> str:
    """Return ``obj[field]`` if it is a string, else raise.

    Args:
        obj: Parsed JSON object.
        field: Field name.
        path: Source file, for the error message.
        lineno: Source line number, for the error message.

    Returns:
        The field value.

    Raises:
        EvalDataError: If the field is missing or not a string.
    """
    if field not in obj:
        raise EvalDataError(f"{path}:{lineno}: missing required field {field!r}")
    value = obj[field]
    if not isinstance(value, str):
        raise EvalDataError(f"{path}:{lineno}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _require_id(obj: Mapping[str, Any], path: Path, lineno: int, seen: dict[str, int]) -> str:
    """Read and validate the ``id`` field, checking for duplicates.

    Args:
        obj: Parsed JSON object.
        path: Source file, for the error message.
        lineno: Source line number, for the error message.
        seen: Identifiers read so far, mapped to their line numbers; updated.

    Returns:
        The identifier.

    Raises:
        EvalDataError: If the identifier is missing, not a non-empty string,
            or already used on an earlier line.
    """
    ident = _require_str(obj, "id", path, lineno)
    if not ident:
        raise EvalDataError(f"{path}:{lineno}: field 'id' must not be empty")
    if ident in seen:
        raise EvalDataError(f"{path}:{lineno}: field 'id' value {ident!r} duplicates line {seen[ident]}")
    seen[ident] = lineno
    return ident


def load_corpus(path: PathLike) -> list[CorpusDoc]:
    """Load a retrieval corpus from a JSON Lines file.

    Args:
        path: File with one ``{"id": str, "text": str}`` object per line.

    Returns:
        The documents, in file order.

    Raises:
        EvalDataError: If a line is not a JSON object, lacks a field, has a
            field of the wrong type, or repeats an identifier. The message
            names the file, the line number and the field.
    """
    file = Path(path)
    seen: dict[str, int] = {}
    docs: list[CorpusDoc] = []
    for lineno, obj in _iter_json_objects(file):
        ident = _require_id(obj, file, lineno, seen)
        text = _require_str(obj, "text", file, lineno)
        docs.append(CorpusDoc(id=ident, text=text))
    return docs


def load_queries(path: PathLike) -> list[Query]:
    """Load retrieval queries with relevance judgements from a JSON Lines file.

    Args:
        path: File with one ``{"id": str, "text": str, "relevant": [str, ...]}``
            object per line. ``relevant`` must be a non-empty list of distinct
            document identifiers.

    Returns:
        The queries, in file order.

    Raises:
        EvalDataError: If a line is not a JSON object, lacks a field, has a
            field of the wrong type, repeats a query identifier, or has an
            empty or duplicated ``relevant`` list. The message names the
            file, the line number and the field.
    """
    file = Path(path)
    seen: dict[str, int] = {}
    queries: list[Query] = []
    for lineno, obj in _iter_json_objects(file):
        ident = _require_id(obj, file, lineno, seen)
        text = _require_str(obj, "text", file, lineno)
        if "relevant" not in obj:
            raise EvalDataError(f"{file}:{lineno}: missing required field 'relevant'")
        relevant = obj["relevant"]
        if not isinstance(relevant, list):
            raise EvalDataError(
                f"{file}:{lineno}: field 'relevant' must be a list of strings, got {type(relevant).__name__}"
            )
        if not relevant:
            raise EvalDataError(f"{file}:{lineno}: field 'relevant' must not be empty")
        for position, doc_id in enumerate(relevant):
            if not isinstance(doc_id, str):
                raise EvalDataError(
                    f"{file}:{lineno}: field 'relevant' item {position} "
                    "must be a string, "
                    f"got {type(doc_id).__name__}"
                )
        if len(set(relevant)) != len(relevant):
            raise EvalDataError(f"{file}:{lineno}: field 'relevant' contains duplicate ids")
        queries.append(Query(id=ident, text=text, relevant=tuple(relevant)))
    return queries


# --------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------


def _check_k(k: int) -> None:
    """Validate a cutoff.

    Args:
        k: Cutoff to check.

    Raises:
        ValueError: If ``k`` is not a positive integer.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _stable_top_k(scores: npt.NDArray[np.floating[Any]], k: int) -> npt.NDArray[np.int64]:
    """Return the indices of the ``k`` best columns of each row.

    Columns are ordered by descending score; equal scores are ordered by
    ascending column index, so the result does not depend on the sorting
    algorithm. Rows are processed with a partial sort when ``k`` is small.

    Args:
        scores: Finite score matrix of shape ``(n_rows, n_cols)``.
        k: Number of columns to keep; at most ``n_cols``.

    Returns:
        Integer array of shape ``(n_rows, k)``.
    """
    n_rows, n_cols = scores.shape
    out = np.empty((n_rows, k), dtype=np.int64)
    if k == 0 or n_rows == 0:
        return out
    if 4 * k >= n_cols:
        # Stable argsort of the negated scores keeps equal scores in index order.
        out[:] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return out
    # Value of the k-th largest score of each row; every column scoring at
    # least that much is a candidate, so ties at the boundary are all kept
    # and resolved by index below.
    kth = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    for row in range(n_rows):
        candidates = np.flatnonzero(scores[row] >= kth[row])
        order = np.argsort(-scores[row, candidates], kind="stable")
        out[row] = candidates[order[:k]]
    return out


def _as_2d_float(array: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """Convert an input to a finite 2-D float64 array.

    Args:
        array: Input array.
        name: Argument name, for error messages.

    Returns:
        The converted array.

    Raises:
        ValueError: If the array is not two-dimensional or has non-finite values.
    """
    result = np.asarray(array, dtype=np.float64)
    if result.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {result.shape}")
    if not np.all(np.isfinite(result)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return result


def _l2_normalize(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scale each row to unit L2 norm; all-zero rows stay zero.

    Args:
        vectors: Array of shape ``(n, dim)``.

    Returns:
        Normalised copy of ``vectors``.
    """
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0.0, norms, 1.0)


def exact_top_k(
    query_vecs: npt.ArrayLike,
    doc_vecs: npt.ArrayLike,
    k: int,
    *,
    metric: Literal["cosine", "dot"] = "cosine",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Find the top-``k`` documents of each query by brute-force search.

    Scores are computed in float64, in blocks of queries so memory use stays
    bounded for large corpora. Ties are broken by ascending document index.

    Args:
        query_vecs: Query embeddings, shape ``(n_queries, dim)``.
        doc_vecs: Document embeddings, shape ``(n_docs, dim)``.
        k: Number of documents to return per query. Values larger than
            ``n_docs`` are clipped to ``n_docs``.
        metric: ``"cosine"`` (vectors are L2-normalised first; zero vectors
            score 0 against everything) or ``"dot"`` (raw inner product).

    Returns:
        ``(indices, scores)``, both of shape ``(n_queries, min(k, n_docs))``:
        document indices in rank order and their scores.

    Raises:
        ValueError: If ``k`` is not positive, ``metric`` is unknown, or the
            inputs are not finite 2-D arrays of matching dimension.
    """
    _check_k(k)
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
    queries = _as_2d_float(query_vecs, "query_vecs")
    docs = _as_2d_float(doc_vecs, "doc_vecs")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(
            f"dimension mismatch: query_vecs has {queries.shape[1]} columns, doc_vecs has {docs.shape[1]}"
        )
    if metric == "cosine":
        queries = _l2_normalize(queries)
        docs = _l2_normalize(docs)
    n_queries, n_docs = queries.shape[0], docs.shape[0]
    k_eff = min(int(k), n_docs)
    indices = np.empty((n_queries, k_eff), dtype=np.int64)
    top_scores = np.empty((n_queries, k_eff), dtype=np.float64)
    block = max(1, _SCORE_BLOCK_ELEMENTS // max(1, n_docs))
    docs_t = docs.T
    for start in range(0, n_queries, block):
        stop = min(start + block, n_queries)
        scores = queries[start:stop] @ docs_t
        top = _stable_top_k(scores, k_eff)
        indices[start:stop] = top
        top_scores[start:stop] = np.take_along_axis(scores, top, axis=1)
    return indices, top_scores


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def _doc_index(doc_ids: Sequence[str]) -> dict[str, int]:
    """Map document identifiers to their positions.

    Args:
        doc_ids: Document identifiers in score-column order.

    Returns:
        Identifier to column index mapping.

    Raises:
        ValueError: If an identifier occurs twice.
    """
    index: dict[str, int] = {}
    for position, doc_id in enumerate(doc_ids):
        if doc_id in index:
            raise ValueError(f"duplicate document id {doc_id!r} at positions {index[doc_id]} and {position}")
        index[doc_id] = position
    return index


def _metric_names(k: int) -> tuple[str, str, str]:
    """Return the metric keys for cutoff ``k``.

    Args:
        k: Cutoff.

    Returns:
        ``("ndcg@k", "recall@k", "mrr@k")``.
    """
    return f"ndcg@{k}", f"recall@{k}", f"mrr@{k}"


def metrics_from_rankings(
    rankings: npt.ArrayLike,
    doc_ids: Sequence[str],
    queries: Sequence[Query],
    k: int = 10,
) -> dict[str, npt.NDArray[np.float64]]:
    """Compute per-query metrics from precomputed rankings.

    Args:
        rankings: Integer array of shape ``(n_queries, m)`` holding, for each
            query, document indices (into ``doc_ids``) in rank order. Only
            the first ``min(k, m)`` columns are used.
        doc_ids: Document identifiers; ``doc_ids[i]`` names document ``i``.
        queries: Queries, in the row order of ``rankings``.
        k: Metric cutoff.

    Returns:
        Mapping ``{"ndcg@k", "recall@k", "mrr@k"}`` to float64 arrays of
        shape ``(n_queries,)``.

    Raises:
        ValueError: If shapes disagree, ``k`` is invalid, a ranking index is
            out of range or repeated within a row's top ``k``, document
            identifiers repeat, or a query names a relevant document that is
            not in ``doc_ids``.
    """
    _check_k(k)
    ranked = np.asarray(rankings)
    if ranked.ndim != 2 or ranked.shape[0] != len(queries):
        raise ValueError(f"rankings must have shape (n_queries={len(queries)}, m), got {ranked.shape}")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"rankings must hold integer indices, got dtype {ranked.dtype}")
    n_docs = len(doc_ids)
    if ranked.size and (ranked.min() < 0 or ranked.max() >= n_docs):
        raise ValueError(f"rankings contain indices outside [0, {n_docs})")
    index = _doc_index(doc_ids)
    depth = min(k, ranked.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    ideal_prefix = np.concatenate(([0.0], np.cumsum(discounts)))

    n_queries = len(queries)
    ndcg = np.zeros(n_queries, dtype=np.float64)
    recall = np.zeros(n_queries, dtype=np.float64)
    mrr = np.zeros(n_queries, dtype=np.float64)
    for row, query in enumerate(queries):
        if not query.relevant:
            raise ValueError(f"query {query.id!r} has no relevant documents")
        relevant_idx: set[int] = set()
        for doc_id in query.relevant:
            if doc_id not in index:
                raise ValueError(
                    f"query {query.id!r} names relevant document {doc_id!r} which is not in doc_ids"
                )
            relevant_idx.add(index[doc_id])
        top = [int(doc) for doc in ranked[row, :depth]]
        if len(set(top)) != len(top):
            raise ValueError(f"ranking of query {query.id!r} lists a document twice")
        hits = np.fromiter(
            (doc in relevant_idx for doc in top),
            dtype=bool,
            count=depth,
        )
        n_hits = int(hits.sum())
        if n_hits == 0:
            continue
        recall[row] = n_hits / len(relevant_idx)
        mrr[row] = 1.0 / (int(np.argmax(hits)) + 1)
        dcg = float(discounts[:depth][hits].sum())
        ndcg[row] = dcg / ideal_prefix[min(k, len(relevant_idx))]
    ndcg_key, recall_key, mrr_key = _metric_names(k)
    return {ndcg_key: ndcg, recall_key: recall, mrr_key: mrr}


def per_query_metrics(
    scores: npt.ArrayLike,
    doc_ids: Sequence[str],
    queries: Sequence[Query],
    k: int = 10,
) -> dict[str, npt.NDArray[np.float64]]:
    """Compute nDCG, recall and MRR at ``k`` for every query.

    Args:
        scores: Finite score matrix of shape ``(n_queries, n_docs)``; higher
            is better.
        doc_ids: Document identifiers in column order.
        queries: Queries in row order.
        k: Metric cutoff.

    Returns:
        Mapping ``{"ndcg@k", "recall@k", "mrr@k"}`` to float64 arrays of
        shape ``(n_queries,)``.

    Raises:
        ValueError: If shapes disagree, scores are not finite, ``k`` is
            invalid, document identifiers repeat, or a query names an unknown
            relevant document.
    """
    _check_k(k)
    matrix = _as_2d_float(scores, "scores")
    expected = (len(queries), len(doc_ids))
    if matrix.shape != expected:
        raise ValueError(f"scores must have shape (n_queries, n_docs) = {expected}, got {matrix.shape}")
    rankings = _stable_top_k(matrix, min(k, matrix.shape[1]))
    return metrics_from_rankings(rankings, doc_ids, queries, k)


def _mean_metrics(per_query: Mapping[str, npt.NDArray[np.float64]]) -> dict[str, float]:
    """Average per-query metric arrays.

    Args:
        per_query: Metric name to per-query values.

    Returns:
        Metric name to mean value (0.0 for an empty query set).
    """
    return {name: float(values.mean()) if values.size else 0.0 for name, values in per_query.items()}


def retrieval_metrics(
    scores: npt.ArrayLike,
    doc_ids: Sequence[str],
    queries: Sequence[Query],
    k: int = 10,
) -> dict[str, float]:
    """Compute mean nDCG, recall and MRR at ``k`` over all queries.

    Args:
        scores: Finite score matrix of shape ``(n_queries, n_docs)``; higher
            is better.
        doc_ids: Document identifiers in column order.
        queries: Queries in row order.
        k: Metric cutoff.

    Returns:
        ``{"ndcg@k": float, "recall@k": float, "mrr@k": float}``, e.g. keys
        ``ndcg@10``, ``recall@10`` and ``mrr@10`` for the default cutoff.

    Raises:
        ValueError: See :func:`per_query_metrics`.
    """
    return _mean_metrics(per_query_metrics(scores, doc_ids, queries, k))


def evaluate_embeddings(
    query_vecs: npt.ArrayLike,
    doc_vecs: npt.ArrayLike,
    doc_ids: Sequence[str],
    queries: Sequence[Query],
    k: int = 10,
) -> dict[str, float]:
    """Evaluate embeddings by exact cosine-similarity retrieval.

    Both sets of vectors are L2-normalised and scored by dot product; the
    top ``k`` documents of each query are then scored against the relevance
    judgements.

    Args:
        query_vecs: Query embeddings, shape ``(n_queries, dim)``, in the
            order of ``queries``.
        doc_vecs: Document embeddings, shape ``(n_docs, dim)``, in the order
            of ``doc_ids``.
        doc_ids: Document identifiers.
        queries: Queries with relevance judgements.
        k: Metric cutoff.

    Returns:
        ``{"ndcg@k": float, "recall@k": float, "mrr@k": float}``.

    Raises:
        ValueError: If the number of vectors does not match ``queries`` or
            ``doc_ids``, or on any error listed by :func:`exact_top_k` and
            :func:`metrics_from_rankings`.
    """
    _check_k(k)
    q = np.asarray(query_vecs)
    d = np.asarray(doc_vecs)
    if q.ndim != 2 or q.shape[0] != len(queries):
        raise ValueError(f"query_vecs must have shape (n_queries={len(queries)}, dim), got {q.shape}")
    if d.ndim != 2 or d.shape[0] != len(doc_ids):
        raise ValueError(f"doc_vecs must have shape (n_docs={len(doc_ids)}, dim), got {d.shape}")
    if d.shape[0] == 0:
        raise ValueError("doc_vecs must contain at least one document")
    rankings, _ = exact_top_k(q, d, k, metric="cosine")
    return _mean_metrics(metrics_from_rankings(rankings, doc_ids, queries, k))
