"""Apache Beam transforms: ``EmbedText``, a RunInference model handler, pipeline options.

Needs the ``beam`` extra: ``pip install 'sutra-embedder[beam]'``.

Example:
    >>> import apache_beam as beam                                        # doctest: +SKIP
    >>> from sutra_embedder.transforms import EmbedText, EmbedTextConfig
    >>> with beam.Pipeline() as p:
    ...     out = (p | beam.Create([{"id": "a", "text": "hello"}])
    ...              | EmbedText(EmbedTextConfig(text_field="text")))
    ...     out.embeddings | beam.Map(lambda row: print(row.id, len(row.vector)))
    ...     out.dead_letters | beam.Map(print)
"""

from typing import TYPE_CHECKING, Any

try:
    import apache_beam  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "sutra_embedder.transforms needs Apache Beam, which is not installed: "
        "pip install 'sutra-embedder[beam]'"
    ) from exc

from .config import BATCHING_MODES, MODEL_SHARINGS, BatchingMode, EmbedTextConfig, ModelSharing
from .elements import parse_element
from .embed_text import EmbedText, EmbedTextOutputs, embed_pending
from .metrics import NAMESPACE, EmbedMetrics
from .model import ModelIdentity, SharedEmbedder, TracedResult, acquire_model
from .options import EmbedderOptions
from .records import (
    DEAD_LETTERS,
    EMBEDDINGS,
    DeadLetterRow,
    EmbeddingRow,
    PendingText,
    content_id,
    dead_letter_json,
    from_dead_letter,
    metadata_dict,
    to_dead_letter,
    vector_array,
    vectors_matrix,
)

if TYPE_CHECKING:
    from .handler import EmbeddingModelHandler


def __getattr__(name: str) -> Any:
    # Imported on first use: Beam's RunInference module imports torch when it
    # is installed, which would add seconds to every worker's start-up.
    if name == "EmbeddingModelHandler":
        from .handler import EmbeddingModelHandler

        return EmbeddingModelHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCHING_MODES",
    "DEAD_LETTERS",
    "EMBEDDINGS",
    "MODEL_SHARINGS",
    "NAMESPACE",
    "BatchingMode",
    "DeadLetterRow",
    "EmbedMetrics",
    "EmbedText",
    "EmbedTextConfig",
    "EmbedTextOutputs",
    "EmbedderOptions",
    "EmbeddingModelHandler",
    "EmbeddingRow",
    "ModelIdentity",
    "ModelSharing",
    "PendingText",
    "SharedEmbedder",
    "TracedResult",
    "acquire_model",
    "content_id",
    "dead_letter_json",
    "embed_pending",
    "from_dead_letter",
    "metadata_dict",
    "parse_element",
    "to_dead_letter",
    "vector_array",
    "vectors_matrix",
]
