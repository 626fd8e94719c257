"""Streaming embedding: the asyncio streaming embedder and the Faust agent built on it.

:mod:`.streaming` needs only the core; :mod:`.faust_agent` needs
``pip install 'sutra-embedder[faust]'`` (faust-streaming), imported when used.
"""

from __future__ import annotations

from typing import Any

from .streaming import (
    StreamChunker,
    StreamingConfig,
    StreamingEmbedder,
    StreamingError,
    StreamingStats,
    StreamResult,
    TextWindow,
    chunk_text,
)

_FAUST_NAMES = ("AgentConfig", "EmbeddingAgent", "embedding_agent")


def __getattr__(name: str) -> Any:
    # The Faust agent module imports no Faust at import time, but keep it out of
    # the way of programs that only stream.
    if name in _FAUST_NAMES:
        from . import faust_agent

        return getattr(faust_agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AgentConfig",
    "EmbeddingAgent",
    "StreamChunker",
    "StreamResult",
    "StreamingConfig",
    "StreamingEmbedder",
    "StreamingError",
    "StreamingStats",
    "TextWindow",
    "chunk_text",
    "embedding_agent",
]
