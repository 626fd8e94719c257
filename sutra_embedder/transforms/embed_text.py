"""``EmbedText``: a PCollection of texts or records in, embeddings and dead letters out.

Two ways of gathering elements into large calls of the core embedder (which
then sorts them by length and cuts token-budget batches):

* **bundle** (bounded inputs): the DoFn buffers validated texts within a
  bundle and embeds them when the buffer is full or the bundle finishes. Each
  output keeps the window, timestamp and pane of its own input element.
* **stateful** (unbounded inputs): ``GroupIntoBatches.WithShardedKey``
  buffers texts per key shard in Beam state and emits a batch when it is full
  or ``max_buffering_secs`` after its first text, so a quiet stream is never
  held back for long and a busy one fills large batches. The batches are then
  embedded in a stage of their own (after a ``Reshuffle``).

Every element ends up in exactly one of the two outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import BoundedWindow
from apache_beam.typehints import List, Tuple
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfo, WindowedValue

from sutra_embedder.core.config import EmbedderConfig
from sutra_embedder.core.pool import pinned_if_several_gpus

from .config import EmbedTextConfig
from .elements import parse_element
from .metrics import EmbedMetrics
from .model import EmbeddingModel, acquire_model
from .records import DEAD_LETTERS, EMBEDDINGS, DeadLetterRow, EmbeddingRow, PendingText, make_dead_letter

_BATCH_KEY = "sutra"


class EmbedTextOutputs(NamedTuple):
    """The two outputs of :class:`EmbedText`.

    Attributes:
        embeddings: PCollection of :class:`EmbeddingRow`.
        dead_letters: PCollection of :class:`DeadLetterRow`, one per element
            that was not embedded.
    """

    embeddings: beam.PCollection
    dead_letters: beam.PCollection


def embed_pending(
    model: EmbeddingModel,
    items: Sequence[PendingText],
    prompt: str | None,
    model_id: str,
    metrics: EmbedMetrics | None,
) -> list[EmbeddingRow | DeadLetterRow]:
    """Embed validated texts in one call of the core; one output per item, in order.

    Texts the core cannot embed (too long under policy ``reject``, a failing
    model call isolated by bisection) become dead letters.
    """
    if not items:
        return []
    traced = model.embed([item.text for item in items], prompt)
    result = traced.result
    if metrics is not None:
        metrics.embedded(traced)
    out: list[EmbeddingRow | DeadLetterRow | None] = [None] * len(items)
    for row, (index, n_tokens, n_chunks, truncated) in enumerate(
        zip(result.ok.tolist(), result.n_tokens.tolist(), result.n_chunks.tolist(), result.truncated.tolist())
    ):
        item = items[index]
        out[index] = EmbeddingRow(
            item.id, result.vectors[row].tolist(), n_tokens, n_chunks, truncated, item.metadata
        )
    for failure in result.failures:
        item = items[failure.index]
        out[failure.index] = make_dead_letter(
            id=item.id,
            stage="embed" if failure.kind == "inference_error" else "validate",
            kind=failure.kind,
            error=failure.message,
            model=model_id,
            source=item.source,
            original=item.text,
        )
    missing = [i for i, value in enumerate(out) if value is None]
    if missing:  # the core promises one outcome per input; fail loudly if not
        raise RuntimeError(f"the embedder returned no outcome for inputs {missing[:10]}")
    return out  # type: ignore[return-value]


def _validate(
    element: object, config: EmbedTextConfig, model_id: str, metrics: EmbedMetrics | None
) -> PendingText | DeadLetterRow:
    parsed = parse_element(element, config, model_id)
    if metrics is not None:
        metrics.inputs.inc()
        if isinstance(parsed, DeadLetterRow):
            metrics.failure(parsed.kind)
    return parsed


class _ModelDoFn(beam.DoFn):  # type: ignore[misc]
    """Holds the shared model and the metric cells."""

    def __init__(self, config: EmbedTextConfig) -> None:
        super().__init__()
        self._config = config
        self._model: EmbeddingModel | None = None
        self._model_id = ""
        self._metrics: EmbedMetrics | None = None

    def setup(self) -> None:
        # Several GPUs: each SDK worker process takes its own (worker i -> cuda:i % n).
        self._model = acquire_model(pinned_if_several_gpus(self._config.embedder), self._config.model_sharing)
        self._model_id = self._model.identity().model_id
        self._metrics = EmbedMetrics()

    def teardown(self) -> None:
        self._model = None

    def _embed(self, items: Sequence[PendingText]) -> list[EmbeddingRow | DeadLetterRow]:
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__} used before setup(), which loads the model")
        return embed_pending(self._model, items, self._config.prompt, self._model_id, self._metrics)

    def _parse(self, element: object) -> PendingText | DeadLetterRow:
        return _validate(element, self._config, self._model_id, self._metrics)


class _Pending(NamedTuple):
    item: PendingText
    window: BoundedWindow
    timestamp: Timestamp
    pane: PaneInfo


class _BundleEmbedDoFn(_ModelDoFn):
    """Validates elements, buffers them within a bundle, embeds at the limits or at bundle end."""

    def start_bundle(self) -> None:
        self._buffer: list[_Pending] = []
        self._chars = 0

    def process(
        self,
        element: Any,
        window: Any = beam.DoFn.WindowParam,
        timestamp: Any = beam.DoFn.TimestampParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[Any]:
        parsed = self._parse(element)
        if isinstance(parsed, DeadLetterRow):
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, parsed)
            return
        self._buffer.append(_Pending(parsed, window, timestamp, pane))
        self._chars += len(parsed.text)
        if len(self._buffer) >= self._config.max_buffer_texts or self._chars >= self._config.max_buffer_chars:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        pending, self._buffer, self._chars = self._buffer, [], 0
        outputs = self._embed([p.item for p in pending])
        for p, out in zip(pending, outputs):
            value = WindowedValue(out, p.timestamp, (p.window,), p.pane)
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, value) if isinstance(out, DeadLetterRow) else value


class _ValidateDoFn(beam.DoFn):  # type: ignore[misc]
    """Stateful mode, first step: validate and key the texts; no model needed."""

    def __init__(self, config: EmbedTextConfig) -> None:
        super().__init__()
        self._config = config
        self._model_id = ""
        self._metrics: EmbedMetrics | None = None

    def setup(self) -> None:
        self._model_id = _manifest_model_id(self._config.embedder)
        self._metrics = EmbedMetrics()

    def process(self, element: Any) -> Iterator[Any]:
        parsed = _validate(element, self._config, self._model_id, self._metrics)
        if isinstance(parsed, DeadLetterRow):
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, parsed)
        else:
            yield (_BATCH_KEY, parsed)


def _batch_texts(keyed_batch: tuple[Any, Iterable[PendingText]]) -> list[PendingText]:
    return list(keyed_batch[1])


class _BatchEmbedDoFn(_ModelDoFn):
    """Stateful mode, last step: embed one batch from GroupIntoBatches."""

    def process(self, items: list[PendingText]) -> Iterator[Any]:
        for out in self._embed(items):
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, out) if isinstance(out, DeadLetterRow) else out


def _manifest_model_id(config: EmbedderConfig) -> str:
    """The model's id from its manifest, without loading the model."""
    from sutra_embedder.core.embedder import resolve_model_dir
    from sutra_embedder.core.manifest import load_manifest

    return load_manifest(resolve_model_dir(config.model)).name


class EmbedText(beam.PTransform):  # type: ignore[misc]
    """Embed texts or records; bad elements go to a dead-letter output.

    Input elements may be ``str`` (or UTF-8 ``bytes``), dicts, ``beam.Row``
    or NamedTuple rows, dataclasses, or the connectors' ``InputRecord`` and
    ``DeadLetter`` (passed through). The model is loaded once per worker process
    in ``DoFn.setup()`` and shared by its threads.

    Args:
        config: Transform settings; an :class:`EmbedderConfig` alone uses the
            default field names and batching; ``None`` uses the default model.
        label: Optional transform label.
        buffering_clock: Stateful mode: the clock (seconds) that starts a
            batch's buffering deadline, ``time.time`` by default. Tests on a
            ``TestStream`` pass a clock that agrees with the runner's test
            clock, as with ``GroupIntoBatches``.

    Returns (from ``pcoll | EmbedText(...)``):
        :class:`EmbedTextOutputs` with ``.embeddings`` (:class:`EmbeddingRow`)
        and ``.dead_letters`` (:class:`DeadLetterRow`).

    Example:
        >>> outputs = texts | EmbedText(EmbedTextConfig(                   # doctest: +SKIP
        ...     embedder=EmbedderConfig(model="minilm"), text_field="body"))
        >>> outputs.embeddings | beam.Map(print)                             # doctest: +SKIP
    """

    def __init__(
        self,
        config: EmbedTextConfig | EmbedderConfig | None = None,
        label: str | None = None,
        *,
        buffering_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(label)
        self.buffering_clock = buffering_clock
        if config is None:
            config = EmbedTextConfig()
        elif isinstance(config, EmbedderConfig):
            config = EmbedTextConfig(embedder=config)
        elif not isinstance(config, EmbedTextConfig):
            raise TypeError(
                f"EmbedText takes an EmbedTextConfig or EmbedderConfig, got {type(config).__name__}"
            )
        self.config = config

    def batching_mode(self, pcoll: beam.PCollection) -> str:
        """The batching this transform uses on ``pcoll`` (``"bundle"`` or ``"stateful"``)."""
        if self.config.batching != "auto":
            return self.config.batching
        return "stateful" if getattr(pcoll, "is_bounded", True) is False else "bundle"

    def expand(self, pcoll: beam.PCollection) -> EmbedTextOutputs:
        cfg = self.config
        if self.batching_mode(pcoll) == "bundle":
            out = pcoll | "EmbedBundles" >> beam.ParDo(_BundleEmbedDoFn(cfg)).with_output_types(
                EmbeddingRow, **{DEAD_LETTERS: DeadLetterRow}
            ).with_outputs(DEAD_LETTERS, main=EMBEDDINGS)
            return EmbedTextOutputs(out[EMBEDDINGS], out[DEAD_LETTERS])

        validated = pcoll | "Validate" >> beam.ParDo(_ValidateDoFn(cfg)).with_output_types(
            Tuple[str, PendingText], **{DEAD_LETTERS: DeadLetterRow}
        ).with_outputs(DEAD_LETTERS, main="texts")
        batches = (
            validated["texts"]
            | "Buffer" >> beam.GroupIntoBatches.WithShardedKey(
                cfg.max_buffer_texts, cfg.max_buffering_secs, self.buffering_clock
            )
            | "DropKeys" >> beam.Map(_batch_texts).with_output_types(List[PendingText])
            # Embed in a stage of its own: the stateful step then commits its
            # state quickly whatever the model's latency, and embedding scales
            # apart from the buffering. (Fused with a slow step, Prism 2.77 was
            # seen to drop and duplicate GroupIntoBatches elements.)
            | "Decouple" >> beam.Reshuffle()
        )
        out = batches | "EmbedBatches" >> beam.ParDo(_BatchEmbedDoFn(cfg)).with_output_types(
            EmbeddingRow, **{DEAD_LETTERS: DeadLetterRow}
        ).with_outputs(DEAD_LETTERS, main=EMBEDDINGS)
        dead = (validated[DEAD_LETTERS], out[DEAD_LETTERS]) | "DeadLetters" >> beam.Flatten()
        return EmbedTextOutputs(out[EMBEDDINGS], dead)

