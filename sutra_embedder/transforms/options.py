"""Pipeline options of the embedding pipelines (``--model``, ``--input``...)."""

from __future__ import annotations

import argparse
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from sutra_embedder.core.config import (
    DEVICES,
    LENGTH_POLICIES,
    BatchingConfig,
    ChunkingConfig,
    EmbedderConfig,
    RuntimeConfig,
)
from sutra_embedder.core.errors import ConfigError

from .config import BATCHING_MODES, MODEL_SHARINGS, EmbedTextConfig


class EmbedderOptions(PipelineOptions):  # type: ignore[misc]
    """Options of :mod:`sutra_embedder.pipelines.beam_embed`, usable by any pipeline.

    Example:
        >>> opts = PipelineOptions(["--model=minilm", "--long_texts=truncate"])  # doctest: +SKIP
        >>> config = opts.view_as(EmbedderOptions).embed_text_config()
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("sutra embedder")
        group.add_argument("--model", default="minilm",
                           help="Model profile name (minilm, mpnet) or model directory.")
        group.add_argument("--device", default="auto", choices=DEVICES,
                           help="auto uses a GPU when one works; cuda/tensorrt require it.")
        group.add_argument("--max_batch_tokens", type=int, default=BatchingConfig.max_batch_tokens,
                           help="Padded tokens per model call.")
        group.add_argument("--max_batch_size", type=int, default=BatchingConfig.max_batch_size,
                           help="Rows per model call.")
        group.add_argument("--long_texts", default=ChunkingConfig.policy, choices=LENGTH_POLICIES,
                           help="Texts over the model's length: chunk and aggregate, truncate, or reject.")
        group.add_argument("--truncate_dim", type=int, default=None,
                           help="Keep only the first N dimensions (Matryoshka models).")
        group.add_argument("--intra_op_threads", type=int, default=0,
                           help="ONNX Runtime threads per operator (0: ONNX Runtime decides).")
        group.add_argument("--prompt", default=None,
                           help="Prompt name from the model manifest, or a literal prefix.")
        group.add_argument("--input", default=None,
                           help="Input file or glob (txt, jsonl or parquet; any Beam filesystem).")
        group.add_argument("--input_format", default=None, choices=("txt", "jsonl", "csv", "parquet"),
                           help="Input format (default: from the file extension).")
        group.add_argument("--output", default=None,
                           help="Output path prefix of the Parquet embedding files.")
        group.add_argument("--dead_letters", default=None,
                           help="Output path prefix of the dead-letter JSONL files "
                                "(default: <output>.dead).")
        group.add_argument("--num_shards", type=int, default=0,
                           help="Output files per sink (0: the runner decides).")
        group.add_argument("--id_field", default="id", help="Field holding the record id.")
        group.add_argument("--text_field", default="text", help="Field holding the text.")
        group.add_argument("--max_buffer_texts", type=int, default=EmbedTextConfig.max_buffer_texts,
                           help="Texts embedded per call of the core embedder.")
        group.add_argument("--batching", default="auto", choices=BATCHING_MODES,
                           help="auto: stateful buffering for unbounded (streaming) inputs, "
                                "per-bundle buffering for bounded ones.")
        group.add_argument("--max_buffering_secs", type=float, default=EmbedTextConfig.max_buffering_secs,
                           help="Stateful buffering: the longest a text waits for its batch to fill.")
        group.add_argument("--model_sharing", default="process", choices=MODEL_SHARINGS,
                           help="process: one model per worker process; multi_process: one per machine.")

    def embedder_config(self) -> EmbedderConfig:
        """The :class:`EmbedderConfig` these options describe.

        Raises:
            ConfigError: A value is out of range; the message names the option.
        """
        opts: dict[str, Any] = self.get_all_options()
        try:
            return EmbedderConfig(
                model=opts["model"],
                truncate_dim=opts["truncate_dim"],
                batching=BatchingConfig(
                    max_batch_tokens=opts["max_batch_tokens"], max_batch_size=opts["max_batch_size"]
                ),
                chunking=ChunkingConfig(policy=opts["long_texts"]),
                runtime=RuntimeConfig(device=opts["device"], intra_op_threads=opts["intra_op_threads"]),
            )
        except ConfigError as exc:
            raise _as_option_error(exc) from None

    def embed_text_config(self) -> EmbedTextConfig:
        """The :class:`EmbedTextConfig` these options describe.

        With ``--batching=auto`` an unbounded (streaming) input is buffered in
        Beam state for at most ``--max_buffering_secs``; a bounded one per bundle.
        """
        opts: dict[str, Any] = self.get_all_options()
        try:
            return EmbedTextConfig(
                embedder=self.embedder_config(),
                id_field=opts["id_field"],
                text_field=opts["text_field"],
                prompt=opts["prompt"],
                batching=opts["batching"],
                max_buffer_texts=opts["max_buffer_texts"],
                max_buffering_secs=opts["max_buffering_secs"],
                model_sharing=opts["model_sharing"],
            )
        except ConfigError as exc:
            if exc.field.startswith("--"):
                raise
            raise _as_option_error(exc) from None


_OPTION_OF = {
    "batching.max_batch_tokens": "max_batch_tokens",
    "batching.max_batch_size": "max_batch_size",
    "chunking.policy": "long_texts",
    "runtime.device": "device",
    "runtime.intra_op_threads": "intra_op_threads",
}


def _as_option_error(exc: ConfigError) -> ConfigError:
    """The same error, naming the command-line option rather than the config field."""
    message = str(exc).removeprefix(f"{exc.field}: ")
    return ConfigError(f"--{_OPTION_OF.get(exc.field, exc.field)}", message)
