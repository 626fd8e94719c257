"""Transform settings and pipeline options: validated, with errors naming what to fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from sutra_embedder.core import ConfigError
from sutra_embedder.transforms import EmbedderOptions, EmbedTextConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batching": "eager"}, "batching"),
        ({"model_sharing": "gpu"}, "model_sharing"),
        ({"max_buffer_texts": 0}, "max_buffer_texts"),
        ({"max_buffer_chars": -1}, "max_buffer_chars"),
        ({"max_buffering_secs": 0}, "max_buffering_secs"),
        ({"max_buffering_secs": float("nan")}, "max_buffering_secs"),
        ({"id_field": ""}, "id_field"),
        ({"id_field": "text"}, "id_field"),
        ({"metadata_fields": "lang"}, "metadata_fields"),
        ({"embedder": {"model": "minilm"}}, "embedder"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        EmbedTextConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_choices_are_listed() -> None:
    with pytest.raises(ConfigError, match="auto, bundle, stateful"):
        EmbedTextConfig(batching="eager")  # type: ignore[arg-type]


def test_options_build_the_config() -> None:
    opts = PipelineOptions([
        "--model=/models/x", "--device=cpu", "--max_batch_tokens=4096", "--long_texts=truncate",
        "--id_field=key", "--text_field=body", "--max_buffer_texts=64", "--max_buffering_secs=0.5",
        "--model_sharing=multi_process", "--truncate_dim=128",
    ]).view_as(EmbedderOptions)
    cfg = opts.embed_text_config()
    assert cfg.embedder.model == "/models/x" and cfg.embedder.runtime.device == "cpu"
    assert cfg.embedder.batching.max_batch_tokens == 4096 and cfg.embedder.chunking.policy == "truncate"
    assert cfg.embedder.truncate_dim == 128
    assert (cfg.id_field, cfg.text_field, cfg.max_buffer_texts) == ("key", "body", 64)
    assert cfg.max_buffering_secs == 0.5 and cfg.model_sharing == "multi_process"
    assert cfg.batching == "auto"
    default = PipelineOptions([]).view_as(EmbedderOptions).embed_text_config()
    assert default == EmbedTextConfig()
    assert PipelineOptions(["--batching=stateful"]).view_as(EmbedderOptions).embed_text_config().batching == (
        "stateful"
    )


def test_bad_option_names_the_option() -> None:
    opts = PipelineOptions(["--max_batch_tokens=0"]).view_as(EmbedderOptions)
    with pytest.raises(ConfigError) as info:
        opts.embedder_config()
    assert info.value.field == "--max_batch_tokens"
    assert str(info.value) == "--max_batch_tokens: must be >= 1, got 0"
    with pytest.raises(ConfigError) as info2:
        PipelineOptions(["--max_buffer_texts=0"]).view_as(EmbedderOptions).embed_text_config()
    assert info2.value.field == "--max_buffer_texts"


def test_missing_beam_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "apache_beam":
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        try:
            import sutra_embedder.transforms
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "pip install 'sutra-embedder[beam]'" in out.stdout, out.stderr
