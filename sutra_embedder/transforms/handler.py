"""A RunInference model handler for the embedder.

Use it when a pipeline already standardises on
``apache_beam.ml.inference.base.RunInference`` (its batching, model refresh
from side inputs, ``with_exception_handling``). :class:`EmbedText` remains the
richer choice: ids, metadata, token-aware buffering and dead letters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.records import Failure

from .metrics import EmbedMetrics
from .model import EmbeddingModel, SharedEmbedder

_INFERENCE_ARGS = ("prompt",)


class EmbeddingModelHandler(ModelHandler[Any, PredictionResult, EmbeddingModel]):  # type: ignore[misc]
    """Embeds texts inside ``RunInference``; one ``PredictionResult`` per element.

    ``PredictionResult.inference`` is the element's float32 vector of shape
    ``(dim,)``, or, for an element the embedder rejected (``None``, not a
    string, empty, too long under policy ``reject``...), a
    :class:`~sutra_embedder.core.records.Failure` whose ``index`` is the
    element's position in its batch. A bad element therefore never fails the
    other elements of its batch. ``PredictionResult.model_id`` is the model id.

    The batch RunInference hands over is embedded in one call of the core,
    which sorts it by length and cuts token-budget batches: large
    ``max_batch_size`` values pay off.

    Args:
        config: Embedder settings, or a model name or path.
        min_batch_size: Smallest batch RunInference's ``BatchElements`` forms.
        max_batch_size: Largest batch it forms.
        max_batch_duration_secs: Streaming: the longest an element waits for
            its batch to fill.
        share_model_across_processes: Load one model per machine and serve
            every SDK worker process from it (RunInference's ``large_model``).
        model_copies: With sharing, how many copies to load per machine.

    Example:
        >>> from apache_beam.ml.inference.base import RunInference      # doctest: +SKIP
        >>> handler = EmbeddingModelHandler("minilm", max_batch_size=512)
        >>> predictions = texts | RunInference(handler)
    """

    def __init__(
        self,
        config: EmbedderConfig | str | None = None,
        *,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        max_batch_duration_secs: int | None = None,
        share_model_across_processes: bool = False,
        model_copies: int | None = None,
    ) -> None:
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=share_model_across_processes,
            model_copies=model_copies,
        )
        if config is None:
            config = EmbedderConfig()
        elif isinstance(config, str):
            config = EmbedderConfig(model=config)
        elif not isinstance(config, EmbedderConfig):
            raise TypeError(
                f"EmbeddingModelHandler takes an EmbedderConfig or a model name, got {type(config).__name__}"
            )
        self.config = config
        self._metrics: EmbedMetrics | None = None

    def load_model(self) -> EmbeddingModel:
        """Load the ONNX model; RunInference calls this once per process (or machine)."""
        return SharedEmbedder(self.config)

    def run_inference(
        self,
        batch: Sequence[Any],
        model: EmbeddingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Embed one batch; never raises for a bad element.

        Args:
            batch: Texts (``str`` or UTF-8 ``bytes``).
            model: What :meth:`load_model` returned (or a proxy to it).
            inference_args: Optional ``{"prompt": name_or_prefix}``.

        Returns:
            One ``PredictionResult`` per element, in batch order.
        """
        args = inference_args or {}
        traced = model.embed(list(batch), args.get("prompt"))
        if self._metrics is None:
            self._metrics = EmbedMetrics()
        self._metrics.inputs.inc(len(batch))
        self._metrics.embedded(traced)
        model_id = model.identity().model_id
        result = traced.result
        inferences: list[np.ndarray | Failure | None] = [None] * len(batch)
        for row, index in enumerate(result.ok.tolist()):
            inferences[index] = result.vectors[row]
        for failure in result.failures:
            inferences[failure.index] = failure
        return [
            PredictionResult(example, inference, model_id)
            for example, inference in zip(batch, inferences)
        ]

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Accept only ``prompt``; anything else is a mistake worth failing early."""
        unknown = sorted(set(inference_args or {}) - set(_INFERENCE_ARGS))
        if unknown:
            raise ValueError(
                f"EmbeddingModelHandler got unknown inference_args {unknown}; "
                f"valid keys: {', '.join(_INFERENCE_ARGS)}"
            )

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of text in the batch (cheaper than pickling it)."""
        total = 0
        for item in batch:
            if isinstance(item, str):
                total += len(item.encode("utf-8", "surrogatepass"))
            elif isinstance(item, (bytes, bytearray)):
                total += len(item)
        return total

    def update_model_path(self, model_path: str | None = None) -> None:
        """Switch to another model directory (RunInference's model refresh)."""
        if model_path:
            self.config = dataclasses.replace(self.config, model=model_path)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_metrics"] = None  # metric cells belong to the worker that made them
        return state
