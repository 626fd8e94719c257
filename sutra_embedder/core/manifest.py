"""The manifest that describes a ready-to-run model directory.

A model directory holds ``model.onnx`` (input ids and attention mask in, the
pooled and, where the model says so, L2-normalised sentence vector out),
``tokenizer.json`` and ``sutra_manifest.json`` (this file's schema).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

MANIFEST_NAME = "sutra_manifest.json"
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True)
class ModelManifest:
    """What the runtime must know about a model directory.

    Attributes:
        name: Registered name of the model.
        dim: Output vector dimension.
        max_tokens: Longest sequence the model accepts, special tokens included.
        pooling: Pooling done inside the graph (informational).
        normalize: Whether the graph L2-normalises its output.
        inputs: Graph input names, in the order the graph declares them.
        output: Name of the graph's sentence-vector output.
        architecture: Source architecture (``bert``, ``mpnet``...).
        files: Variant -> ONNX file: ``default`` (any device) and optionally ``fp16`` (GPU).
        prompts: Named prompt prefixes (``{"query": "query: "}``) from the source.
        source: Where the model came from (path or package).
        source_sha256: Hash of the source weights, to detect a changed source.
        calibration: Optional per-dimension ranges for int8/uint8 output.
        extra: Free-form facts (conversion tool versions, quality reports).
    """

    name: str
    dim: int
    max_tokens: int
    pooling: str = "mean"
    normalize: bool = True
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "sentence_embedding"
    architecture: str = "bert"
    files: dict[str, str] = field(default_factory=lambda: {"default": "model.onnx"})
    prompts: dict[str, str] = field(default_factory=dict)
    source: str = ""
    source_sha256: str = ""
    calibration: dict[str, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        data = dict(data)
        data["inputs"] = tuple(data.get("inputs", ("input_ids", "attention_mask")))

        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_manifest(model_dir: str | Path) -> ModelManifest:
    """Read ``sutra_manifest.json`` from a model directory.

    Raises:
        ModelNotFoundError: The directory or one of its required files is missing.
    """
    root = Path(model_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(
            f"{root} is not a model directory: {MANIFEST_NAME} is missing. "
            "Import a sentence-transformers directory with `sutra models import SRC --name NAME`."
        )
    manifest = ModelManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    for required in ("tokenizer.json", manifest.files.get("default", "model.onnx")):
        if not (root / required).is_file():
            raise ModelNotFoundError(f"model directory {root} lacks {required}; re-import the model")
    return manifest


def write_manifest(model_dir: str | Path, manifest: ModelManifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path
