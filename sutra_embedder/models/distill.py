"""Distillation of sentence encoders, and linear maps from a student's space to a teacher's.

Two ways to get a cheaper model that stands in for a teacher:

* **Distillation** trains a student encoder to reproduce the teacher's sentence
  vectors on a corpus. The student is another model (MiniLM for an MPNet
  teacher) or a copy of a model with some of its layers dropped. Where the
  dimensions differ, a bias-free linear head maps the student's vector into the
  teacher's space; it starts as a Johnson-Lindenstrauss random projection (or a
  ridge fit) and is trained with the encoder. The loss of a batch is::

      alpha * MSE(s, t) + (1 - alpha) * (1 - cos(s, t))
        + relational_weight * KL(softmax(T T' / temperature) || softmax(S S' / temperature))

  ``MSE`` is the mean over elements. For normalised models both vectors are
  unit length, so ``MSE = 2 (1 - cos) / dim``: the first two terms then measure
  the same thing at different scales and ``alpha`` mostly sets the weight of
  the cosine term. The third, relational, term compares each text's
  similarity distribution over the other texts of the batch (the diagonal left
  out) under the teacher and the student; ``temperature`` sharpens those
  softmaxes, so a low temperature makes the student preserve which neighbours
  rank first, which is what retrieval quality depends on.

  Training needs torch and transformers (the ``convert`` extra), imported only
  when a student is trained. The trained student is written as a
  sentence-transformers directory (``model.safetensors``, ``config.json`` with
  the new ``num_hidden_layers``, ``tokenizer.json``, ``modules.json``,
  ``1_Pooling``, and ``2_Dense`` for a head), converted to ONNX by the
  built-in importer (the head is appended to that graph as a ``MatMul`` and a
  re-normalisation), evaluated against the teacher with the shared quality
  report, and registered only if it passes the nDCG gate.

* **Projection** fits only a linear map ``W`` (ridge regression, numpy) from an
  existing student model's vectors to the teacher's on a corpus. Queries
  embedded with the cheap student and multiplied by ``W`` then search an
  index built with the teacher. ``W`` is stored as ``.npy`` plus a JSON
  description in the student's model directory, under ``projections/``.

Why the head is bias-free: the student's graph L2-normalises its pooled
vector, and ``normalize(W @ normalize(x)) == normalize(W @ x)`` holds only for
a linear map without bias, so the ONNX graph (head after normalisation) and
the sentence-transformers directory (``Dense`` between pooling and
normalisation) compute the same vector.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from sutra_embedder.core.config import ChunkingConfig, EmbedderConfig, RuntimeConfig
from sutra_embedder.core.embedder import Embedder
from sutra_embedder.core.errors import ConfigError, ModelNotFoundError
from sutra_embedder.core.manifest import MANIFEST_NAME, load_manifest, write_manifest
from sutra_embedder.core.tokenization import TextTokenizer

from .evaluate import evaluate_embeddings
from .quality import EvalSet, ModelScore, QualityReport, compare, score_model
from .quantize import QualityGateError
from .registry import PROFILES, locate_source, model_path

log = logging.getLogger(__name__)

HeadInit = Literal["jl", "ridge"]
LayerSelection = Literal["spread", "first"]
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)
LAYER_SELECTIONS: tuple[str, ...] = get_args(LayerSelection)

CONVERT_EXTRA = "pip install 'sutra-embedder[convert]'"
PROJECTIONS_DIR = "projections"
TRAINING_LOG = "distill_log.json"


# --------------------------------------------------------------------------- configuration
def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _number(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        x = float(value)  # type: ignore[arg-type]
        ok = (x > lo if lo_open else x >= lo) and x <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(name, f"must be a number in {bracket}{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a student is trained.

    Attributes:
        steps: Optimizer steps.
        batch_size: Texts per step.
        lr: Learning rate of the encoder (AdamW).
        head_lr: Learning rate of the linear head, when there is one.
        alpha: Weight of the MSE term; ``1 - alpha`` weighs the cosine term.
        temperature: Softmax temperature of the relational term (the in-batch
            similarity distributions); lower is sharper.
        relational_weight: Weight of the relational term (0 turns it off).
        weight_decay: AdamW weight decay.
        warmup_ratio: Fraction of the steps over which the learning rate rises
            linearly from 0; it then falls linearly to 0 at the last step.
        max_grad_norm: Gradient clipping norm.
        max_length: Tokens per training text, special tokens included (longer
            texts are cut, as the runtime's ``truncate`` policy does).
        seed: Seeds the data order, the held-out batch, the head and torch.
        eval_batch_size: Texts held out as a fixed batch on which the loss is
            measured before training and every ``eval_every`` steps.
        eval_every: Steps between measurements of the held-out loss (0: about
            20 measurements per run).
        head_init: ``jl``: a Gaussian Johnson-Lindenstrauss projection;
            ``ridge``: the least-squares map from the untrained student's
            vectors to the teacher's on the training texts.
        threads: torch CPU threads during training (0: torch's default).
        progress: Show a progress bar.
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    alpha: float = 0.5
    temperature: float = 0.05
    relational_weight: float = 0.1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    eval_batch_size: int = 32
    eval_every: int = 0
    head_init: HeadInit = "jl"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size"):
            _positive_int(name, getattr(self, name))
        _number("lr", self.lr, 0.0, 1.0, lo_open=True)
        _number("head_lr", self.head_lr, 0.0, 1.0, lo_open=True)
        _number("alpha", self.alpha, 0.0, 1.0)
        _number("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        _number("relational_weight", self.relational_weight, 0.0, 1000.0)
        _number("weight_decay", self.weight_decay, 0.0, 10.0)
        _number("warmup_ratio", self.warmup_ratio, 0.0, 0.99)
        _number("max_grad_norm", self.max_grad_norm, 0.0, 1e6, lo_open=True)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 4:
            raise ConfigError("max_length", f"must be an integer of at least 4 tokens, got {self.max_length!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed!r}")
        for name in ("eval_every", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {value!r}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError("head_init", f"got {self.head_init!r}; choose one of {', '.join(HEAD_INITS)}")


@dataclass(frozen=True)
class StudentSpec:
    """Which encoder is trained.

    Attributes:
        source: A sentence-transformers directory with ``model.safetensors``.
        keep_layers: Indices of the source's layers to keep, in order; ``None``
            keeps them all.
    """

    source: Path
    keep_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.keep_layers is not None:
            if not self.keep_layers or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.keep_layers
            ):
                raise ConfigError("keep_layers", f"must be non-negative layer indices, got {self.keep_layers!r}")
            if len(set(self.keep_layers)) != len(self.keep_layers):
                raise ConfigError("keep_layers", f"lists a layer twice: {self.keep_layers!r}")


# --------------------------------------------------------------------------- numpy helpers
def select_layers(n_layers: int, keep: int, how: LayerSelection = "spread") -> tuple[int, ...]:
    """The layers a pruned copy of an ``n_layers`` encoder keeps.

    ``spread`` keeps the first and the last layer and spaces the others evenly
    between them (6 -> 3 keeps 0, 2, 5): the first layer adapts the token
    embeddings and the last one produces the vectors the pooling was trained
    on. ``first`` keeps layers ``0 .. keep - 1``.

    Raises:
        ConfigError: ``keep`` is not in ``1 .. n_layers`` or ``how`` is unknown.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n_layers:
        raise ConfigError("prune_layers", f"must be between 1 and the model's {n_layers} layers, got {keep!r}")
    if how == "first":
        return tuple(range(keep))
    if how != "spread":
        raise ConfigError("layer_selection", f"got {how!r}; choose one of {', '.join(LAYER_SELECTIONS)}")
    if keep == 1:
        return (n_layers - 1,)
    return tuple(round(i * (n_layers - 1) / (keep - 1)) for i in range(keep))


def jl_head(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A Johnson-Lindenstrauss random projection from ``in_dim`` to ``out_dim`` dimensions.

    Entries are drawn from ``N(0, 1 / out_dim)``, so ``E ||W x||^2 = ||x||^2``
    and pairwise distances are preserved up to a factor ``1 +- eps`` with
    ``eps`` of order ``sqrt(log(n) / out_dim)`` for ``n`` points.

    Returns:
        ``(out_dim, in_dim)`` float32 matrix, applied as ``W @ x``.
    """
    _positive_int("in_dim", in_dim)
    _positive_int("out_dim", out_dim)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((out_dim, in_dim)) / math.sqrt(out_dim)).astype(np.float32)


def fit_projection(
    student_vecs: np.ndarray, teacher_vecs: np.ndarray, ridge: float, prior: np.ndarray | None = None
) -> np.ndarray:
    """The ridge-regression map from a student's vectors to a teacher's.

    Minimises ``||S W - T||^2 + ridge * ||W - prior||^2`` (Frobenius norms),
    solved as one least-squares problem on ``[S; sqrt(ridge) I]``. With
    ``ridge = 0`` and fewer texts than dimensions it returns the minimum-norm
    solution (that of ``numpy.linalg.lstsq``).

    Args:
        student_vecs: ``(n, d_s)`` student vectors.
        teacher_vecs: ``(n, d_t)`` teacher vectors of the same texts.
        ridge: Regularisation strength (absolute; ``S'S`` of ``n`` unit
            vectors has mean eigenvalue ``n / d_s``).
        prior: ``(d_s, d_t)`` map the solution is shrunk towards (default 0;
            the identity suits two models of one space).

    Returns:
        ``(d_s, d_t)`` float32 matrix, applied as ``student_vecs @ W``.

    Raises:
        ConfigError: Shapes disagree or ``ridge`` is negative.
    """
    S = np.asarray(student_vecs, dtype=np.float64)
    T = np.asarray(teacher_vecs, dtype=np.float64)
    if S.ndim != 2 or T.ndim != 2 or S.shape[0] != T.shape[0] or S.shape[0] == 0:
        raise ConfigError("student_vecs", f"need (n, d) matrices of the same n > 0, got {S.shape} and {T.shape}")
    _number("ridge", ridge, 0.0, 1e12)
    d_s, d_t = S.shape[1], T.shape[1]
    P = np.zeros((d_s, d_t)) if prior is None else np.asarray(prior, dtype=np.float64)
    if P.shape != (d_s, d_t):
        raise ConfigError("prior", f"must have shape {(d_s, d_t)}, got {P.shape}")
    # Solve for the offset from the prior: ||S D - (T - S P)||^2 + ridge ||D||^2.
    target = T - S @ P
    if ridge > 0:
        A = np.vstack([S, math.sqrt(ridge) * np.eye(d_s)])
        B = np.vstack([target, np.zeros((d_s, d_t))])
    else:
        A, B = S, target
    delta = np.linalg.lstsq(A, B, rcond=None)[0]
    return (P + delta).astype(np.float32)


def apply_projection(vecs: np.ndarray, matrix: np.ndarray, normalize: bool = True) -> np.ndarray:
    """``vecs @ matrix``, L2-normalised row by row when ``normalize``."""
    out = np.asarray(vecs, dtype=np.float32) @ np.asarray(matrix, dtype=np.float32)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    num = (a * b).sum(1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


# --------------------------------------------------------------------------- sources
def resolve_source(model: str) -> Path:
    """The sentence-transformers directory (with ``model.safetensors``) behind a model name.

    Accepts such a directory, a built-in profile whose weights are present, or
    a cached model whose manifest records its source directory (distilled
    models record theirs).

    Raises:
        ModelNotFoundError: No source weights for ``model`` on this machine.
    """
    path = Path(model).expanduser()
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path.resolve()
    if model in PROFILES:
        found = locate_source(PROFILES[model])
        if found is None:
            raise ModelNotFoundError(
                f"the source weights of {model!r} are not on this machine; fetch them with "
                f"`sutra models fetch {model}`"
            )
        return found
    for candidate in (path, model_path(model)):
        if (candidate / MANIFEST_NAME).is_file():
            src = Path(load_manifest(candidate).source)
            if (src / "config.json").is_file() and (src / "model.safetensors").is_file():
                return src
    raise ModelNotFoundError(
        f"{model!r} has no source weights to train: give a sentence-transformers directory with "
        f"model.safetensors, a profile ({', '.join(PROFILES)}) or a model distilled here"
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _source_layout(src: Path) -> dict[str, Any]:
    from .importer import read_source_layout

    return read_source_layout(src)


def _require_training_stack() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"training a student needs torch and transformers ({exc.name} is missing): {CONVERT_EXTRA}"
        ) from exc
    return torch, transformers


# --------------------------------------------------------------------------- training
@dataclass
class TrainedStudent:
    """A trained student, ready to be saved.

    Attributes:
        spec: What was trained.
        weights: Encoder tensors by their Hugging Face names (float32).
        hf_config: The student's ``config.json`` (with its new layer count).
        head: ``(teacher_dim, student_dim)`` head, or ``None``.
        pooling: Pooling mode of the student.
        normalize: Whether the student's output is L2-normalised.
        history: One entry per step: ``step``, ``loss`` and its terms, and
            ``eval_loss`` on the held-out batch where measured (step 0 is
            before any update).
        n_train: Texts trained on (the held-out batch excluded).
        seconds: Training time.
    """

    spec: StudentSpec
    weights: dict[str, np.ndarray]
    hf_config: dict[str, Any]
    head: np.ndarray | None
    pooling: str
    normalize: bool
    history: list[dict[str, float]] = field(default_factory=list)
    n_train: int = 0
    seconds: float = 0.0

    @property
    def eval_losses(self) -> list[tuple[int, float]]:
        """``(step, held-out loss)`` pairs, in order."""
        return [(int(h["step"]), h["eval_loss"]) for h in self.history if "eval_loss" in h]

    def save(self, dest: str | Path) -> Path:
        """Write the student as a sentence-transformers directory (replacing ``dest``).

        Returns:
            ``dest``.
        """
        from .safetensors_io import save_safetensors

        dest = Path(dest)
        src = self.spec.source
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            save_safetensors(tmp / "model.safetensors", self.weights)
            (tmp / "config.json").write_text(json.dumps(self.hf_config, indent=2) + "\n", encoding="utf-8")
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                         "sentence_bert_config.json", "config_sentence_transformers.json"):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            pool_src = _pooling_dir(src)
            (tmp / "1_Pooling").mkdir()
            shutil.copy2(pool_src / "config.json", tmp / "1_Pooling" / "config.json")
            modules: list[dict[str, Any]] = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
            if self.head is not None:
                (tmp / "2_Dense").mkdir()
                dense_cfg = {"in_features": int(self.head.shape[1]), "out_features": int(self.head.shape[0]),
                             "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}
                (tmp / "2_Dense" / "config.json").write_text(json.dumps(dense_cfg, indent=2) + "\n",
                                                             encoding="utf-8")
                save_safetensors(tmp / "2_Dense" / "model.safetensors", {"linear.weight": self.head})
                modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                                "type": "sentence_transformers.models.Dense"})
            if self.normalize:
                idx = len(modules)
                modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _pooling_dir(src: Path) -> Path:
    modules = _read_json(src / "modules.json") if (src / "modules.json").is_file() else []
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            return src / m["path"]
    return src / "1_Pooling"


def _pool(torch: Any, hidden: Any, mask: Any, pooling: str) -> Any:
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return (hidden + (1.0 - m) * -1e9).max(dim=1).values
    summed = (hidden * m).sum(dim=1)
    count = m.sum(dim=1)
    if pooling == "mean_sqrt_len":
        return summed / count.sqrt()
    return summed / count.clamp(min=1e-9)


def distill_loss(
    torch: Any, student: Any, teacher: Any, alpha: float, relational_weight: float, temperature: float
) -> tuple[Any, dict[str, float]]:
    """The distillation loss of a batch and its terms (see the module docstring)."""
    F = torch.nn.functional
    mse = F.mse_loss(student, teacher)
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()
    loss = alpha * mse + (1.0 - alpha) * cos
    terms = {"mse": float(mse.detach()), "cos": float(cos.detach())}
    n = student.shape[0]
    if relational_weight > 0 and n > 2:
        off = ~torch.eye(n, dtype=torch.bool, device=student.device)
        s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
        s_logits = (s @ s.T)[off].view(n, n - 1) / temperature
        t_logits = (t @ t.T)[off].view(n, n - 1) / temperature
        rel = F.kl_div(F.log_softmax(s_logits, dim=-1), F.log_softmax(t_logits, dim=-1),
                       log_target=True, reduction="batchmean")
        loss = loss + relational_weight * rel
        terms["relational"] = float(rel.detach())
    return loss, terms


class _Batcher:
    """Token ids of the texts, framed and cut the way the runtime's ``truncate`` policy does."""

    def __init__(self, tokenizer_file: Path, texts: Sequence[str], max_length: int) -> None:
        tok = TextTokenizer(tokenizer_file)
        keep = max_length - tok.n_special
        self.pad_id = tok.pad_id
        self.ids = [tok.frame(c[:keep]) for c in tok.encode_content(list(texts))]

    def batch(self, torch: Any, rows: Sequence[int]) -> tuple[Any, Any]:
        width = max(len(self.ids[r]) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            seq = self.ids[r]
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)


def _load_encoder(torch: Any, transformers: Any, spec: StudentSpec) -> tuple[Any, dict[str, Any]]:
    """The student as a transformers model, with only ``keep_layers`` left."""
    hf_config = _read_json(spec.source / "config.json")
    model = transformers.AutoModel.from_pretrained(str(spec.source))
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if encoder is None or layers is None:
        raise ConfigError("student", f"{spec.source}: no encoder.layer stack to train (BERT and MPNet supported)")
    if spec.keep_layers is not None:
        bad = [i for i in spec.keep_layers if i >= len(layers)]
        if bad:
            raise ConfigError("keep_layers", f"layers {bad} do not exist; the model has {len(layers)}")
        encoder.layer = torch.nn.ModuleList([layers[i] for i in spec.keep_layers])
        model.config.num_hidden_layers = len(spec.keep_layers)
        hf_config["num_hidden_layers"] = len(spec.keep_layers)
    return model, hf_config


def _max_length_of(hf_config: dict[str, Any]) -> int:
    max_pos = int(hf_config.get("max_position_embeddings", 512))
    if hf_config.get("model_type") == "mpnet":  # positions start after the padding index
        max_pos -= int(hf_config.get("pad_token_id", 1) or 0) + 1
    return max_pos


def train_student(
    spec: StudentSpec, texts: Sequence[str], teacher_vecs: np.ndarray, config: TrainConfig
) -> TrainedStudent:
    """Train ``spec`` to reproduce ``teacher_vecs`` (one row per text).

    A fixed batch of ``config.eval_batch_size`` texts (chosen with the seed) is
    held out; the loss on it is recorded before training and every
    ``eval_every`` steps. Dropout is off: the targets are deterministic and
    runs are short.

    Raises:
        ImportError: torch or transformers is missing (the ``convert`` extra).
        ConfigError: Too few texts, or ``max_length`` beyond the student's positions.
    """
    import time

    torch, transformers = _require_training_stack()
    targets_np = np.ascontiguousarray(teacher_vecs, dtype=np.float32)
    n = len(texts)
    if targets_np.shape[0] != n:
        raise ConfigError("teacher_vecs", f"has {targets_np.shape[0]} rows for {n} texts")
    if n < config.eval_batch_size + 2:
        raise ConfigError("corpus", f"has {n} texts; need more than eval_batch_size + 1 "
                                    f"({config.eval_batch_size + 1}) to train")
    start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(n)
        eval_rows, train_rows = order[: config.eval_batch_size], order[config.eval_batch_size :]
        model, hf_config = _load_encoder(torch, transformers, spec)
        if config.max_length > _max_length_of(hf_config):
            raise ConfigError("max_length", f"{config.max_length} exceeds the student's "
                                            f"{_max_length_of(hf_config)} positions")
        layout = _source_layout(spec.source)
        pooling, normalize = str(layout["pooling"]), bool(layout["normalize"])
        batcher = _Batcher(spec.source / "tokenizer.json", texts, config.max_length)
        targets = torch.from_numpy(targets_np)
        model.eval()  # no dropout

        def encode(rows: Sequence[int]) -> Any:
            ids, mask = batcher.batch(torch, rows)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = _pool(torch, hidden, mask, pooling)
            return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled

        student_dim = int(hf_config["hidden_size"])
        teacher_dim = targets_np.shape[1]
        head = None
        if student_dim != teacher_dim:
            init = _init_head(torch, encode, train_rows, targets_np, student_dim, teacher_dim, config)
            head = torch.nn.Parameter(torch.from_numpy(init))

        def forward(rows: Sequence[int]) -> Any:
            out = encode(rows)
            if head is not None:
                out = out @ head.T
                if normalize:
                    out = torch.nn.functional.normalize(out, dim=-1)
            return out

        def loss_of(rows: Sequence[int]) -> tuple[Any, dict[str, float]]:
            return distill_loss(torch, forward(rows), targets[list(rows)], config.alpha,
                                config.relational_weight, config.temperature)

        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
        if head is not None:
            groups.append({"params": [head], "lr": config.head_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        warmup = int(config.steps * config.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (config.steps - step) / max(1, config.steps - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        eval_every = config.eval_every or max(1, config.steps // 20)
        batch = min(config.batch_size, len(train_rows))
        stream = _BatchStream(train_rows, batch, rng)

        def held_out() -> float:
            with torch.no_grad():
                return float(loss_of(eval_rows.tolist())[0])

        history: list[dict[str, float]] = [{"step": 0.0, "eval_loss": held_out()}]
        bar = _progress(config)
        try:
            for step in range(1, config.steps + 1):
                loss, terms = loss_of(stream.next())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                entry: dict[str, float] = {"step": float(step), "loss": float(loss.detach()), **terms}
                if step % eval_every == 0 or step == config.steps:
                    entry["eval_loss"] = held_out()
                history.append(entry)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", eval=f"{history_eval(history):.4f}")
        finally:
            if bar is not None:
                bar.close()
        weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        head_np = None if head is None else head.detach().cpu().numpy().astype(np.float32)
        return TrainedStudent(spec, weights, hf_config, head_np, pooling, normalize, history,
                              n_train=len(train_rows), seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(prev_threads)


_LAYER_KEY = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")


def prune_weights(weights: dict[str, np.ndarray], keep: Sequence[int]) -> dict[str, np.ndarray]:
    """The tensors of an encoder with only the layers ``keep`` left, renumbered ``0 .. len(keep) - 1``."""
    new_index = {old: new for new, old in enumerate(keep)}
    out: dict[str, np.ndarray] = {}
    for key, value in weights.items():
        m = _LAYER_KEY.search(key)
        if m is None:
            out[key] = value
            continue
        old = int(m.group(2))
        if old in new_index:
            renamed = f"{key[: m.start()]}{m.group(1)}encoder.layer.{new_index[old]}.{key[m.end():]}"
            out[renamed] = value
    return out


def pruned_student(spec: StudentSpec) -> TrainedStudent:
    """The student of ``spec`` without any training: its source with layers dropped (numpy only)."""
    from .safetensors_io import load_safetensors

    hf_config = _read_json(spec.source / "config.json")
    weights = {k: np.asarray(v, np.float32) for k, v in load_safetensors(spec.source / "model.safetensors").items()
               if not k.endswith("position_ids")}
    if spec.keep_layers is not None:
        n = int(hf_config["num_hidden_layers"])
        bad = [i for i in spec.keep_layers if i >= n]
        if bad:
            raise ConfigError("keep_layers", f"layers {bad} do not exist; the model has {n}")
        weights = prune_weights(weights, spec.keep_layers)
        hf_config["num_hidden_layers"] = len(spec.keep_layers)
    layout = _source_layout(spec.source)
    return TrainedStudent(spec, weights, hf_config, None, str(layout["pooling"]), bool(layout["normalize"]))


def history_eval(history: Sequence[dict[str, float]]) -> float:
    """The latest held-out loss of a training history."""
    for entry in reversed(history):
        if "eval_loss" in entry:
            return entry["eval_loss"]
    return float("nan")


class _BatchStream:
    """Batches of training rows: seeded reshuffles of the whole set, one after another."""

    def __init__(self, rows: np.ndarray, batch: int, rng: np.random.Generator) -> None:
        self._rows, self._batch, self._rng = rows, batch, rng
        self._queue: list[int] = []

    def next(self) -> list[int]:
        while len(self._queue) < self._batch:
            self._queue.extend(self._rng.permutation(self._rows).tolist())
        out, self._queue = self._queue[: self._batch], self._queue[self._batch :]
        return out


def _progress(config: TrainConfig) -> Any:
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, desc="distilling", unit="step", dynamic_ncols=True)


def _init_head(torch: Any, encode: Any, rows: np.ndarray, targets: np.ndarray, student_dim: int,
               teacher_dim: int, config: TrainConfig) -> np.ndarray:
    if config.head_init == "jl":
        return jl_head(student_dim, teacher_dim, config.seed)
    chunks = []
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            chunks.append(encode(rows[i : i + 64].tolist()).numpy())
    S = np.concatenate(chunks)
    return fit_projection(S, targets[rows], ridge=1.0).T.copy()


# --------------------------------------------------------------------------- export
def append_linear_head(model_dir: str | Path, head: np.ndarray, normalize: bool) -> None:
    """Append ``head`` (``(out, in)``, no bias) to a model directory's graph and manifest.

    The graph's sentence vector goes through ``MatMul`` with ``head.T`` and, if
    ``normalize``, an L2 normalisation; the manifest's ``dim`` becomes ``out``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    path = model_dir / manifest.files["default"]
    model = onnx.load(str(path))
    graph = model.graph
    out_name = manifest.output
    producers = [n for n in graph.node if out_name in n.output]
    if len(producers) != 1:
        raise ModelNotFoundError(f"{path}: cannot find the node producing {out_name!r}")
    inner = "distill_student_embedding"
    outputs = list(producers[0].output)
    producers[0].output[outputs.index(out_name)] = inner
    out_dim, in_dim = head.shape
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(head.T, np.float32),
                                                     "distill_head.weight_t"))
    nodes = [helper.make_node("MatMul", [inner, "distill_head.weight_t"], ["distill_head_out"],
                              name="distill_head")]
    last = "distill_head_out"
    if normalize:
        graph.initializer.append(numpy_helper.from_array(np.asarray([1], np.int64), "distill_axes"))
        graph.initializer.append(numpy_helper.from_array(np.asarray(1e-12, np.float32), "distill_eps"))
        nodes += [
            helper.make_node("Mul", [last, last], ["distill_sq"], name="distill_sq"),
            helper.make_node("ReduceSum", ["distill_sq", "distill_axes"], ["distill_sumsq"], keepdims=1,
                             name="distill_sumsq"),
            helper.make_node("Sqrt", ["distill_sumsq"], ["distill_norm"], name="distill_norm"),
            helper.make_node("Max", ["distill_norm", "distill_eps"], ["distill_norm_eps"], name="distill_clip"),
            helper.make_node("Div", [last, "distill_norm_eps"], ["distill_normalized"], name="distill_div"),
        ]
        last = "distill_normalized"
    nodes.append(helper.make_node("Identity", [last], [out_name], name="distill_output"))
    graph.node.extend(nodes)
    for i, value in enumerate(graph.output):
        if value.name == out_name:
            graph.output[i].CopyFrom(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", out_dim]))
    onnx.save_model(model, str(path))
    extra = dict(manifest.extra, head={"in": int(in_dim), "out": int(out_dim), "bias": False})
    write_manifest(model_dir, replace(manifest, dim=int(out_dim), extra=extra))


def export_student(student_dir: str | Path, dest: str | Path, name: str, source_label: str | None = None) -> Path:
    """Convert a saved student directory to a model directory at ``dest``.

    The built-in importer reads Transformer, Pooling and Normalize modules; a
    ``Dense`` head is converted from a view of the directory without it and
    then appended to the graph with :func:`append_linear_head`.

    Args:
        student_dir: A directory written by :meth:`TrainedStudent.save`.
        dest: Model directory to create.
        name: Model name in the manifest.
        source_label: Source recorded in the manifest (default ``student_dir``).
    """
    from .importer import import_model
    from .safetensors_io import load_safetensors

    student_dir = Path(student_dir).resolve()
    dest = Path(dest)
    label = source_label or str(student_dir)
    modules = _read_json(student_dir / "modules.json")
    dense = [m for m in modules if str(m.get("type", "")).endswith("Dense")]
    if not dense:
        return import_model(student_dir, dest, name, source_label=label)
    if len(dense) > 1:
        raise ModelNotFoundError(f"{student_dir}: more than one Dense module")
    dense_dir = student_dir / dense[0]["path"]
    dense_cfg = _read_json(dense_dir / "config.json")
    if dense_cfg.get("bias", True) or not str(dense_cfg.get("activation_function", "")).endswith("Identity"):
        raise ModelNotFoundError(f"{dense_dir}: only a bias-free linear Dense head can be exported")
    head = load_safetensors(dense_dir / "model.safetensors")["linear.weight"]
    with tempfile.TemporaryDirectory(prefix="sutra-student-view-") as tmp:
        view = Path(tmp)
        for item in student_dir.iterdir():
            if item.name not in ("modules.json", dense[0]["path"]):
                (view / item.name).symlink_to(item)
        kept = [m for m in modules if m is not dense[0]]
        (view / "modules.json").write_text(json.dumps(kept), encoding="utf-8")
        import_model(view, dest, name, source_label=label)
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    append_linear_head(dest, np.asarray(head, np.float32), normalize)
    return dest


# --------------------------------------------------------------------------- evaluation and registration
def cpu_embedder(model: str, threads: int = 0) -> Embedder:
    """An embedder that truncates long texts, as the quality report expects, on CPU."""
    return Embedder(EmbedderConfig(model=model, chunking=ChunkingConfig(policy="truncate"),
                                   runtime=RuntimeConfig(device="cpu", intra_op_threads=threads)))


def check_gate(report: QualityReport, name: str, min_ndcg_ratio: float, hint: str) -> None:
    """Raise :class:`QualityGateError` when ``report``'s nDCG@10 ratio is below the gate."""
    if report.ndcg_ratio < min_ndcg_ratio:
        raise QualityGateError(
            f"refusing to register {name!r}: its nDCG@10 is {report.candidate.metrics['ndcg@10']:.4f}, "
            f"{report.ndcg_ratio:.2%} of {report.reference.name!r} ({report.reference.metrics['ndcg@10']:.4f}), "
            f"below --min-ndcg-ratio {min_ndcg_ratio}. {hint}",
            report,
        )


def register_student(
    student_dir: str | Path,
    name: str,
    teacher: Embedder,
    eval_set: EvalSet,
    min_ndcg_ratio: float,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    threads: int = 0,
    source_label: str | None = None,
) -> tuple[Path, QualityReport]:
    """Export, evaluate against the teacher and (if it passes the gate) register a student.

    The model is built in a temporary directory beside the cache entry and
    renamed into place only after it passed, so a refused or failed student
    leaves no model behind. The quality report (JSON, Markdown, PNG) is
    written into the registered model's directory. ``source_label`` is the
    source recorded in the manifest (default: ``student_dir``).

    Raises:
        QualityGateError: The student's nDCG@10 is below ``min_ndcg_ratio`` of the teacher's.
        ConfigError: ``name`` exists and ``force`` is not set.
    """
    dest = model_path(name)
    if dest.exists() and not force:
        raise ConfigError("name", f"model {name!r} exists at {dest}; pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        built = export_student(student_dir, work / "model", name, source_label)
        manifest = load_manifest(built)
        write_manifest(built, replace(manifest, extra=dict(manifest.extra, distillation=extra or {})))
        candidate = cpu_embedder(str(built), threads)
        report = compare(teacher, candidate, eval_set, names=(teacher.model_id, name),
                         candidate_vectors_comparable=True)
        report.extra.update(min_ndcg_ratio=min_ndcg_ratio, **(extra or {}))
        check_gate(report, name, min_ndcg_ratio,
                   "Train longer (--steps), keep more layers, or lower the gate.")
        report.write(built)
        if dest.exists():
            shutil.rmtree(dest)
        built.chmod(0o755)
        built.rename(dest)
        return dest, report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_training_log(student: TrainedStudent, directory: str | Path) -> dict[str, Path]:
    """Write the loss history as JSON and, with matplotlib, a PNG curve."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / TRAINING_LOG}
    data = {"n_train": student.n_train, "seconds": round(student.seconds, 2), "history": student.history}
    paths["json"].write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(h["step"], h["loss"]) for h in student.history if "loss" in h]
    if train:
        ax.plot(*zip(*train), label="training batch", alpha=0.5)
    ax.plot(*zip(*student.eval_losses), marker="o", label="held-out batch")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("distillation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["png"] = out / "distill_log.png"
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- projections
@dataclass(frozen=True)
class Projection:
    """A linear map from a student model's space to a teacher's.

    Attributes:
        matrix: ``(student_dim, teacher_dim)`` map, applied as ``vecs @ matrix``.
        student: Student model id.
        teacher: Teacher model id.
        ridge: Regularisation used in the fit.
        normalize: Whether projected vectors are L2-normalised.
        metrics: Evaluation numbers recorded when it was fitted.
    """

    matrix: np.ndarray
    student: str
    teacher: str
    ridge: float
    normalize: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)

    def apply(self, vecs: np.ndarray) -> np.ndarray:
        """Student vectors mapped into the teacher's space."""
        return apply_projection(vecs, self.matrix, self.normalize)

    def save(self, directory: str | Path, name: str) -> dict[str, Path]:
        """Write ``<name>.npy`` and ``<name>.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"npy": out / f"{name}.npy", "json": out / f"{name}.json"}
        np.save(paths["npy"], self.matrix.astype(np.float32))
        meta = {"name": name, "student": self.student, "teacher": self.teacher, "ridge": self.ridge,
                "normalize": self.normalize, "student_dim": int(self.matrix.shape[0]),
                "teacher_dim": int(self.matrix.shape[1]), "matrix": paths["npy"].name, "metrics": self.metrics}
        paths["json"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return paths

    @classmethod
    def load(cls, model_dir: str | Path, name: str) -> Projection:
        """The projection ``name`` stored in a student model directory.

        Raises:
            ModelNotFoundError: It does not exist.
        """
        base = Path(model_dir) / PROJECTIONS_DIR
        meta_path = base / f"{name}.json"
        if not meta_path.is_file():
            raise ModelNotFoundError(f"no projection {name!r} in {base}")
        meta = _read_json(meta_path)
        return cls(np.load(base / meta["matrix"]), meta["student"], meta["teacher"], float(meta["ridge"]),
                   bool(meta.get("normalize", True)), dict(meta.get("metrics", {})))


def evaluate_projection(
    teacher: Embedder, student: Embedder, matrix: np.ndarray, eval_set: EvalSet, name: str
) -> QualityReport:
    """Retrieval with a teacher-built index queried by projected student vectors.

    The report's reference is the teacher (its documents and queries); its
    candidate is the teacher's documents searched with ``normalize(student(q) @ matrix)``.
    ``extra`` also holds the student's own nDCG and, when the dimensions
    match, that of unprojected student queries against the teacher's index.
    Its size is the student's model plus the matrix; its speed is the student's.
    """
    texts = [d.text for d in eval_set.corpus[:512]]
    ref_score, teacher_docs = score_model(teacher, eval_set, teacher.model_id, texts)
    student_score, _ = score_model(student, eval_set, student.model_id, texts)
    ids = [d.id for d in eval_set.corpus]
    s_queries = student.embed([q.text for q in eval_set.queries])
    cross = evaluate_embeddings(apply_projection(s_queries, matrix), teacher_docs, ids, eval_set.queries)
    size = student_score.size_mb + matrix.astype(np.float32).nbytes / 1e6
    cand = ModelScore(name, cross, size, student_score.texts_per_s, int(matrix.shape[1]))
    extra: dict[str, Any] = {"student_native": student_score.metrics, "student_model": student.model_id}
    if s_queries.shape[1] == teacher_docs.shape[1]:
        extra["unprojected"] = evaluate_embeddings(s_queries, teacher_docs, ids, eval_set.queries)
    return QualityReport(
        eval_set=eval_set.name,
        reference=ref_score,
        candidate=cand,
        cosine_mean=float("nan"),
        cosine_p1=float("nan"),
        ndcg_ratio=cross["ndcg@10"] / max(ref_score.metrics["ndcg@10"], 1e-12),
        speedup=cand.texts_per_s / max(ref_score.texts_per_s, 1e-12),
        compression=ref_score.size_mb / max(size, 1e-12),
        extra=extra,
    )


def projection_cosines(matrix: np.ndarray, student_vecs: np.ndarray, teacher_vecs: np.ndarray) -> dict[str, float]:
    """Teacher-space cosine of projected (and, for equal dims, raw) student vectors."""
    cos = row_cosines(apply_projection(student_vecs, matrix), teacher_vecs)
    out = {"cosine_mean": float(cos.mean()), "cosine_p1": float(np.percentile(cos, 1))}
    if student_vecs.shape[1] == teacher_vecs.shape[1]:
        raw = row_cosines(student_vecs, teacher_vecs)
        out.update(unprojected_cosine_mean=float(raw.mean()), unprojected_cosine_p1=float(np.percentile(raw, 1)))
    return out


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """The training settings worth recording with a model (no display options)."""
    data = asdict(config)
    data.pop("progress", None)
    return data


__all__ = [
    "HEAD_INITS",
    "LAYER_SELECTIONS",
    "Projection",
    "StudentSpec",
    "TrainConfig",
    "TrainedStudent",
    "append_linear_head",
    "apply_projection",
    "check_gate",
    "cpu_embedder",
    "distill_loss",
    "evaluate_projection",
    "export_student",
    "fit_projection",
    "jl_head",
    "projection_cosines",
    "prune_weights",
    "pruned_student",
    "register_student",
    "resolve_source",
    "row_cosines",
    "select_layers",
    "train_config_dict",
    "train_student",
    "write_training_log",
]
