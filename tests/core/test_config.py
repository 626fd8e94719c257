"""Configuration validation errors name the field."""

from __future__ import annotations

from typing import Any

import pytest

from sutra_embedder.core import (
    BatchingConfig,
    ChunkingConfig,
    ConfigError,
    Embedder,
    EmbedderConfig,
    RuntimeConfig,
    config_from_dict,
)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: BatchingConfig(max_batch_tokens=0), "batching.max_batch_tokens"),
        (lambda: BatchingConfig(max_batch_size=-1), "batching.max_batch_size"),
        (lambda: BatchingConfig(pipeline_block=0), "batching.pipeline_block"),
        (lambda: BatchingConfig(tokenize_processes=-1), "batching.tokenize_processes"),
        (lambda: ChunkingConfig(policy="drop"), "chunking.policy"),
        (lambda: ChunkingConfig(aggregation="median"), "chunking.aggregation"),
        (lambda: ChunkingConfig(window=64, overlap=62), "chunking.overlap"),
        (lambda: ChunkingConfig(max_chunks=0), "chunking.max_chunks"),
        (lambda: RuntimeConfig(device="tpu"), "runtime.device"),
        (lambda: RuntimeConfig(intra_op_threads=1.5), "runtime.intra_op_threads"),
        (lambda: EmbedderConfig(model=""), "model"),
        (lambda: EmbedderConfig(truncate_dim=0), "truncate_dim"),
        (lambda: config_from_dict({"chunking": {"windw": 3}}), "chunking.windw"),
        (lambda: config_from_dict({"batching": {"max_batch_tokens": "many"}}), "batching.max_batch_tokens"),
    ],
)
def test_errors_name_the_field(make: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_choices_are_listed() -> None:
    with pytest.raises(ConfigError, match=r"truncate, chunk, reject"):
        ChunkingConfig(policy="drop")  # type: ignore[arg-type]


def test_configs_are_frozen() -> None:
    cfg = EmbedderConfig()
    with pytest.raises(AttributeError):
        cfg.model = "other"  # type: ignore[misc]


def test_model_dependent_checks(minilm_dir: Any) -> None:
    with pytest.raises(ConfigError, match=r"truncate_dim"):
        Embedder(EmbedderConfig(model=str(minilm_dir), truncate_dim=1000))
    with pytest.raises(ConfigError, match=r"chunking\.window"):
        Embedder(EmbedderConfig(model=str(minilm_dir), chunking=ChunkingConfig(window=1024)))


def test_overrides_round_trip() -> None:
    cfg = EmbedderConfig().with_overrides(**{"chunking.policy": "truncate", "batching__max_batch_size": 8})
    assert cfg.chunking.policy == "truncate" and cfg.batching.max_batch_size == 8
    assert cfg.runtime == RuntimeConfig()


def test_batch_sizes_left_unset_follow_the_device_and_set_ones_win(minilm_dir: Any) -> None:
    # The documented defaults (BatchingConfig's docstring and the README).
    cpu, gpu = BatchingConfig().for_device(on_gpu=False), BatchingConfig().for_device(on_gpu=True)
    assert (cpu.max_batch_tokens, cpu.max_batch_size, cpu.pipeline_block, cpu.batch_overhead_tokens) == (
        8192, 256, 4096, 64
    )
    assert (gpu.max_batch_tokens, gpu.max_batch_size, gpu.pipeline_block, gpu.batch_overhead_tokens) == (
        65536, 1024, 16384, 4096
    )
    set_ = BatchingConfig(max_batch_tokens=1000, max_batch_size=7, pipeline_block=9, batch_overhead_tokens=0)
    for on_gpu in (False, True):
        sized = set_.for_device(on_gpu)
        assert (sized.max_batch_tokens, sized.max_batch_size, sized.pipeline_block) == (1000, 7, 9)
        assert sized.batch_overhead_tokens == 0
    emb = Embedder(EmbedderConfig(model=str(minilm_dir), runtime=RuntimeConfig(device="cpu")))
    assert emb.batching.max_batch_tokens == 8192 and emb.batching.pipeline_block == 4096  # a CPU session: CPU sizes
