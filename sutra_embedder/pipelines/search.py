"""``sutra search``: embed a query with the index's own model and print the top-k ids.

The model id is read from the index (pgvector table comment, LanceDB schema
metadata, Parquet file metadata), so a query is always embedded by the model
that embedded the documents.

Example:
    >>> search("lancedb:///data/lance?table=docs", "how do I read a file?", k=5)  # doctest: +SKIP
    [('doc-17', 0.71), ('doc-3', 0.64), ...]

From a shell::

    sutra search --index 'postgresql://app@db/app?table=docs' "reading files" -k 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from sutra_embedder.connectors.sinks import Hit, IndexInfo, SearchOptions, VectorIndex, open_index, redact_uri
from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError

log = logging.getLogger(__name__)


def query_embedder(info: IndexInfo, model: str | None = None) -> Embedder:
    """The embedder that produces vectors comparable with the index's.

    Args:
        info: The index's description (its model id and dimension).
        model: Model to use instead of the stored id (a directory, say, when
            the stored name is not in this machine's cache). Its output must
            have the index's dimension.

    Raises:
        ConfigError: The model's vectors cannot match the index's dimension.
    """
    config = EmbedderConfig(model=model or info.model)
    emb = Embedder(config)
    if emb.dim > info.dim:
        # A Matryoshka-truncated index: truncate the query the same way.
        log.info("truncating query vectors from %d to the index's %d dimensions", emb.dim, info.dim)
        emb = Embedder(config.with_overrides(truncate_dim=info.dim))
    if emb.dim != info.dim:
        raise ConfigError(
            "model", f"model {emb.model_id!r} gives {emb.dim}-d vectors but the index holds {info.dim}-d vectors"
        )
    return emb


def search(
    uri: str,
    query: str,
    k: int = 10,
    *,
    options: SearchOptions | None = None,
    embedder: Embedder | None = None,
    prompt: str | None = None,
) -> list[Hit]:
    """Top-k ids and cosine scores of the documents nearest to ``query``.

    Args:
        uri: The index, as given to the sink that wrote it
            (``postgresql://...?table=..``, ``lancedb:///dir?table=..``, ``parquet:///dir``).
        query: The query text.
        k: Number of hits.
        options: Exact scan or ANN tuning (``ef_search``, ``nprobes``...).
        embedder: An embedder to reuse (its model must be the index's);
            default one built from the stored model id.
        prompt: Query prompt of asymmetric models (``"query: "``).

    Returns:
        ``(id, score)`` pairs, best first; scores are cosine similarities.
    """
    index = open_index(uri)
    try:
        emb = embedder if embedder is not None else query_embedder(index.info)
        if embedder is not None and emb.model_id != index.info.model:
            log.warning("embedder model %r differs from the index's %r", emb.model_id, index.info.model)
        vector = emb.embed([query], prompt=prompt)[0]
        return index.search(vector, k, options)
    finally:
        index.close()


def _run(args: argparse.Namespace) -> int:
    options = SearchOptions(exact=args.exact, ef_search=args.ef_search, nprobes=args.nprobes,
                            refine_factor=args.refine_factor)
    index: VectorIndex = open_index(args.index)
    try:
        emb = query_embedder(index.info, args.model)
        vector = emb.embed([args.query], prompt=args.prompt)[0]
        hits = index.search(vector, args.k, options)
    finally:
        index.close()
    if args.json:
        out: dict[str, Any] = {"index": redact_uri(args.index), "model": index.info.model, "query": args.query,
                               "hits": [{"id": i, "score": round(s, 6)} for i, s in hits]}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"# {index.info.location}: {index.info.rows} rows, model {index.info.model}", file=sys.stderr)
    for rank, (rid, score) in enumerate(hits, start=1):
        print(f"{rank}\t{score:.4f}\t{rid}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``search`` subcommand to the ``sutra`` command line."""
    p = subparsers.add_parser("search", help="top-k nearest documents of a query in a pgvector/LanceDB/Parquet index")
    p.add_argument("query", help="query text")
    p.add_argument("--index", required=True,
                   help="index URI: postgresql://...?table=T, lancedb:///DIR?table=T or parquet:///DIR")
    p.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--exact", action="store_true", help="scan every vector instead of using the ANN index")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW candidate list size (recall vs speed)")
    p.add_argument("--nprobes", type=int, default=None, help="IVF partitions to search (LanceDB)")
    p.add_argument("--refine-factor", type=int, default=None, help="re-rank k*N candidates exactly (LanceDB)")
    p.add_argument("--model", default=None, help="model to embed the query with (default: the index's)")
    p.add_argument("--prompt", default=None, help="query prompt of asymmetric models")
    p.add_argument("--json", action="store_true", help="print the hits as one JSON object")
    p.set_defaults(func=_run)


__all__ = ["query_embedder", "register_cli", "search"]
