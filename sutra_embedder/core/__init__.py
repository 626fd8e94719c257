"""Framework-free embedder core: numpy, onnxruntime and tokenizers only."""

from .batching import BatchPlan, plan_batches, plan_fixed_count
from .chunking import aggregate, aggregation_weights, window_spans
from .config import (
    BatchingConfig,
    ChunkingConfig,
    EmbedderConfig,
    RuntimeConfig,
    config_from_dict,
)
from .embedder import BatchTrace, Embedder, EmbedStats
from .errors import (
    ConfigError,
    InputError,
    ModelNotFoundError,
    ProviderUnavailableError,
    SutraError,
)
from .manifest import ModelManifest, load_manifest
from .quantization import CalibrationRanges, bytes_per_vector, quantize_embeddings
from .records import FAILURE_KINDS, ChunkInfo, EmbedResult, Failure, validate_text

__all__ = [
    "FAILURE_KINDS",
    "BatchPlan",
    "BatchTrace",
    "BatchingConfig",
    "CalibrationRanges",
    "ChunkInfo",
    "ChunkingConfig",
    "ConfigError",
    "EmbedResult",
    "EmbedStats",
    "Embedder",
    "EmbedderConfig",
    "Failure",
    "InputError",
    "ModelManifest",
    "ModelNotFoundError",
    "ProviderUnavailableError",
    "RuntimeConfig",
    "SutraError",
    "aggregate",
    "aggregation_weights",
    "bytes_per_vector",
    "config_from_dict",
    "load_manifest",
    "plan_batches",
    "plan_fixed_count",
    "quantize_embeddings",
    "validate_text",
    "window_spans",
]
