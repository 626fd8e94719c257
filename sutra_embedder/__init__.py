"""Sutra-Embedder: text to embeddings inside the data pipelines you already run."""

from sutra_embedder.core import Embedder, EmbedderConfig

__version__ = "0.1.0"
__all__ = ["Embedder", "EmbedderConfig", "__version__"]
