"""Turn a sentence-transformers / Hugging Face model directory into a ready ONNX model.

The source directory holds ``config.json``, ``tokenizer.json`` and weights
(``model.safetensors``), and usually ``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json`` and ``config_sentence_transformers.json``. The
result is a model directory with ``model.onnx`` (pooling and normalisation in
the graph), ``tokenizer.json`` and ``sutra_manifest.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sutra_embedder.core.errors import ModelNotFoundError
from sutra_embedder.core.manifest import ModelManifest, write_manifest

log = logging.getLogger(__name__)

# Bumped whenever the graph this module writes changes; cached models of an older
# version are rebuilt from their source when it is at hand.
CONVERTER_VERSION = 3


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_source_layout(src: Path) -> dict[str, Any]:
    """Pooling, normalisation, length and prompts declared by a sentence-transformers directory."""
    modules = _read_json(src / "modules.json") if (src / "modules.json").is_file() else []
    types = [m.get("type", "") for m in modules] if isinstance(modules, list) else []
    pooling_dir = next(
        (src / m["path"] for m in modules if isinstance(m, dict) and m.get("type", "").endswith("Pooling")),
        src / "1_Pooling",
    ) if isinstance(modules, list) else src / "1_Pooling"
    pool_cfg = _read_json(pooling_dir / "config.json")
    pooling = "mean"
    if pool_cfg.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pool_cfg.get("pooling_mode_max_tokens"):
        pooling = "max"
    elif pool_cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        pooling = "mean_sqrt_len"
    unsupported = [t for t in types if t.rsplit(".", 1)[-1] not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise ModelNotFoundError(
            f"{src}: sentence-transformers modules {unsupported} are not supported "
            "(supported: Transformer, Pooling, Normalize)"
        )
    normalize = any(t.endswith("Normalize") for t in types)
    st_cfg = _read_json(src / "sentence_bert_config.json")
    prompts = _read_json(src / "config_sentence_transformers.json").get("prompts", {}) or {}
    return {
        "pooling": pooling,
        "normalize": normalize,
        "max_seq_length": st_cfg.get("max_seq_length"),
        "prompts": {k: v for k, v in prompts.items() if v},
    }


def import_model(
    src: str | Path, dest: str | Path, name: str, source_label: str | None = None, fused: bool = True
) -> Path:
    """Convert ``src`` into a model directory at ``dest`` (written atomically).

    ``fused`` selects ONNX Runtime's fused operators (see :func:`build_encoder`).

    Raises:
        ModelNotFoundError: ``src`` lacks the files a conversion needs.
    """
    import onnx

    from .onnx_builder import EncoderSpec, build_encoder
    from .safetensors_io import file_sha256, load_safetensors

    src = Path(src).expanduser().resolve()
    dest = Path(dest)
    for required in ("config.json", "tokenizer.json"):
        if not (src / required).is_file():
            raise ModelNotFoundError(f"{src} lacks {required}: not a Hugging Face model directory")
    weights_file = src / "model.safetensors"
    if not weights_file.is_file():
        raise ModelNotFoundError(
            f"{src} has no model.safetensors; convert pytorch_model.bin to safetensors first"
        )
    hf_cfg = _read_json(src / "config.json")
    layout = read_source_layout(src)
    spec = EncoderSpec.from_hf_config(hf_cfg, layout["pooling"], layout["normalize"])
    max_pos = spec.max_positions - (spec.pad_id + 1 if spec.architecture == "mpnet" else 0)
    max_tokens = int(layout["max_seq_length"] or min(max_pos, 512))
    max_tokens = min(max_tokens, max_pos)

    log.info("building ONNX graph for %s (%s, %d layers)", src, spec.architecture, spec.layers)
    model = build_encoder(spec, load_safetensors(weights_file), fused=fused)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        onnx.save_model(model, str(tmp / "model.onnx"))
        shutil.copy2(src / "tokenizer.json", tmp / "tokenizer.json")
        manifest = ModelManifest(
            name=name,
            dim=spec.hidden,
            max_tokens=max_tokens,
            pooling=spec.pooling,
            normalize=spec.normalize,
            architecture=spec.architecture,
            files={"default": "model.onnx"},
            prompts=layout["prompts"],
            source=source_label or str(src),
            source_sha256=file_sha256(weights_file),
            extra={"onnx_opset": 17, "layers": spec.layers, "heads": spec.heads, "fused": fused,
                   "converter": CONVERTER_VERSION},
        )
        write_manifest(tmp, manifest)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.chmod(0o755)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
