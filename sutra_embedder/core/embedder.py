"""The embedder: texts in, float32 vectors out, in input order.

Pipeline of one call::

    validate -> tokenize (content tokens) -> truncate | chunk | reject
             -> token-budget batches (windows of long texts share batches
                with short texts) -> ONNX Runtime (pooling + L2 inside the graph)
             -> aggregate windows -> Matryoshka truncation -> vectors
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batching import pad_batch, plan_batches
from .chunking import aggregate, count_windows, window_spans
from .config import EmbedderConfig
from .errors import ConfigError, InputError
from .manifest import ModelManifest, load_manifest
from .records import ChunkInfo, EmbedResult, Failure, validate_text
from .runtime import SessionInfo, create_session
from .tokenization import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """Counters accumulated over the embedder's life (thread-safe updates).

    Attributes:
        texts: Texts embedded successfully.
        failures: Failed inputs by kind.
        tokens: Real tokens fed to the model (windows counted separately).
        padded_tokens: Tokens fed including padding.
        chunks: Windows embedded (one per short text).
        batches: Model calls.
        tokenize_s: Seconds spent tokenizing.
        inference_s: Seconds spent in ONNX Runtime.
    """

    texts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    padded_tokens: int = 0
    chunks: int = 0
    batches: int = 0
    tokenize_s: float = 0.0
    inference_s: float = 0.0

    @property
    def padding_efficiency(self) -> float:
        return self.tokens / self.padded_tokens if self.padded_tokens else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "failures": dict(self.failures),
            "tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "chunks": self.chunks,
            "batches": self.batches,
            "tokenize_s": round(self.tokenize_s, 4),
            "inference_s": round(self.inference_s, 4),
        }


@dataclass
class _Prepared:
    """Model inputs of one block of texts, before the model runs."""

    failures: list[Failure] = field(default_factory=list)
    run_items: list[np.ndarray] = field(default_factory=list)
    # (input position, window spans, tokens incl. special, truncated), in input order
    owners: list[tuple[int, list[tuple[int, int]], int, bool]] = field(default_factory=list)
    tokenize_s: float = 0.0


@dataclass(frozen=True)
class BatchTrace:
    """One model call, reported to an optional observer (metrics)."""

    rows: int
    tokens: int
    padded_tokens: int
    inference_s: float


def resolve_model_dir(model: str) -> Path:
    """Turn a model name or path into a ready model directory.

    Directories are used as they are; names go through the model registry
    (imported lazily, since it may need the conversion tooling).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from sutra_embedder.models.registry import ensure_model

    return ensure_model(model)


class Embedder:
    """Embeds texts with an ONNX sentence-embedding model.

    Args:
        config: Settings; defaults to the ``minilm`` profile on the best device.

    Example:
        >>> emb = Embedder(EmbedderConfig(model="minilm"))   # doctest: +SKIP
        >>> emb.embed(["hello world"]).shape                   # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        self.model_dir = resolve_model_dir(self.config.model)
        self.manifest: ModelManifest = load_manifest(self.model_dir)
        self.tokenizer = TextTokenizer(self.model_dir / "tokenizer.json")
        variant = "default"
        if self.config.runtime.device in ("cuda", "tensorrt", "auto") and self.config.runtime.fp16:
            variant = "fp16" if "fp16" in self.manifest.files else "default"
        model_file = self.model_dir / self.manifest.files[variant]
        self.session, self.session_info = create_session(model_file, self.config.runtime)
        if variant == "fp16" and not self.session_info.on_gpu:
            # fp16 graphs are for GPUs; on CPU load the default graph instead.
            model_file = self.model_dir / self.manifest.files["default"]
            self.session, self.session_info = create_session(model_file, self.config.runtime)
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_name = self.manifest.output
        self._check_config()
        self.stats = EmbedStats()
        self._lock = threading.Lock()
        self.observer: Any = None  # callable(BatchTrace) for metrics, set by adapters
        if self.config.runtime.warmup:
            self._run(np.ones((1, 8), np.int64) * self.tokenizer.pad_id, np.ones((1, 8), np.int64))

    # ------------------------------------------------------------------ setup
    def _check_config(self) -> None:
        dim = self.manifest.dim
        if self.config.truncate_dim is not None and self.config.truncate_dim > dim:
            raise ConfigError(
                "truncate_dim", f"{self.config.truncate_dim} exceeds the model's dimension {dim}"
            )
        window = self.config.chunking.window or self.manifest.max_tokens
        if window > self.manifest.max_tokens:
            raise ConfigError(
                "chunking.window",
                f"{window} exceeds the model's maximum of {self.manifest.max_tokens} tokens",
            )
        if self.config.chunking.overlap >= window - self.tokenizer.n_special:
            raise ConfigError(
                "chunking.overlap",
                f"{self.config.chunking.overlap} must be below the window's "
                f"{window - self.tokenizer.n_special} content tokens",
            )

    @property
    def dim(self) -> int:
        """Dimension of the returned vectors (after Matryoshka truncation)."""
        return self.config.truncate_dim or self.manifest.dim

    @property
    def model_id(self) -> str:
        return self.manifest.name

    @property
    def max_content_tokens(self) -> int:
        window = self.config.chunking.window or self.manifest.max_tokens
        return window - self.tokenizer.n_special

    # -------------------------------------------------------------- inference
    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {}
        for name in self._input_names:
            if name == "input_ids":
                feeds[name] = ids
            elif name == "attention_mask":
                feeds[name] = mask
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(ids)
            else:
                raise ConfigError("model", f"the ONNX graph has an unexpected input {name!r}")
        if self.session_info.on_gpu:
            # IOBinding: inputs are copied to the device once, and only the pooled
            # (batch, dim) output comes back.
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(self._output_name)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self._output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def _run_items(
        self, items: list[np.ndarray], failed: dict[int, str]
    ) -> np.ndarray:
        """Embed framed id arrays in token-budget batches; failing rows go to ``failed``."""
        out = np.zeros((len(items), self.manifest.dim), dtype=np.float32)
        bcfg = self.config.batching
        overhead = bcfg.batch_overhead_tokens
        if overhead is None:  # a GPU call costs far more than a CPU call relative to a token
            overhead = 4096 if self.session_info.on_gpu else 64
        plan = plan_batches([len(x) for x in items], bcfg.max_batch_tokens, bcfg.max_batch_size,
                            bcfg.sort_by_length, overhead)
        for batch in plan.batches:
            self._run_batch(items, batch, out, failed)
        return out

    def _run_batch(
        self, items: list[np.ndarray], batch: np.ndarray, out: np.ndarray, failed: dict[int, str]
    ) -> None:
        seqs = [items[i] for i in batch]
        ids, mask = pad_batch(seqs, self.tokenizer.pad_id)
        start = time.perf_counter()
        try:
            vecs = self._run(ids, mask)
        except Exception as exc:  # bisect to isolate the failing row
            if len(batch) == 1:
                failed[int(batch[0])] = f"{type(exc).__name__}: {exc}"
                return
            half = len(batch) // 2
            self._run_batch(items, batch[:half], out, failed)
            self._run_batch(items, batch[half:], out, failed)
            return
        elapsed = time.perf_counter() - start
        out[batch] = vecs
        real = int(mask.sum())
        with self._lock:
            self.stats.batches += 1
            self.stats.tokens += real
            self.stats.padded_tokens += int(ids.size)
            self.stats.inference_s += elapsed
        if self.observer is not None:
            self.observer(BatchTrace(len(batch), real, int(ids.size), elapsed))

    # ------------------------------------------------------------------ API
    def embed(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
        """Embed texts; raise on the first unusable one.

        Args:
            texts: The texts.
            prompt: A prompt name from the model's manifest (``"query"``) or a
                literal prefix prepended to every text.

        Returns:
            ``(len(texts), dim)`` float32 array in input order.

        Raises:
            InputError: A text is None, not a string, empty, too large or (with
                policy ``reject``) too long. Its position is in the message.
        """
        result = self.embed_records(texts, prompt=prompt)
        if result.failures:
            f = result.failures[0]
            raise InputError(f.kind, f"text #{f.index}: {f.message}")
        return result.vectors

    def embed_records(self, items: Sequence[object], prompt: str | None = None) -> EmbedResult:
        """Embed a list of possibly bad inputs; failures come back, never raise.

        Every input ends either in ``result.ok`` (with its vector) or in
        ``result.failures`` (with its kind and message). Large calls are cut
        into blocks of ``batching.pipeline_block`` texts, and the next block is
        tokenized in a background thread while the model runs the current one
        (both release the GIL), so tokenization does not starve a fast device.
        """
        block = self.config.batching.pipeline_block
        prefix = self._prompt_prefix(prompt)
        if len(items) <= block:
            return self._execute(self._prepare(items, 0, prefix))
        parts: list[EmbedResult] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sutra-tokenize") as pool:
            pending = pool.submit(self._prepare, items[0:block], 0, prefix)
            for start in range(0, len(items), block):
                prepared = pending.result()
                nxt = start + block
                if nxt < len(items):
                    pending = pool.submit(self._prepare, items[nxt : nxt + block], nxt, prefix)
                parts.append(self._execute(prepared))
        return EmbedResult.concat(parts, self.dim)

    def _prepare(self, items: Sequence[object], offset: int, prefix: str) -> _Prepared:
        """Validate, tokenize and cut texts into model inputs (no model call)."""
        cfg = self.config
        prep = _Prepared()
        texts: list[str] = []
        positions: list[int] = []
        for i, item in enumerate(items, start=offset):
            try:
                text = validate_text(item, cfg.max_text_chars)
            except InputError as exc:
                prep.failures.append(Failure(i, exc.kind, str(exc)))
                continue
            texts.append(prefix + text if prefix else text)
            positions.append(i)

        t0 = time.perf_counter()
        contents = self.tokenizer.encode_content(texts) if texts else []
        prep.tokenize_s = time.perf_counter() - t0

        max_content = self.max_content_tokens
        ccfg = cfg.chunking
        frame = self.tokenizer.frame
        n_special = self.tokenizer.n_special
        for slot, content in enumerate(contents):
            n = len(content)
            spans: list[tuple[int, int]]
            cut = False
            if n <= max_content:
                spans = [(0, n)]
            elif ccfg.policy == "truncate":
                spans, cut = [(0, max_content)], True
            elif ccfg.policy == "reject":
                prep.failures.append(Failure(positions[slot], "too_long",
                                             f"text has {n} tokens, over the model's {max_content} "
                                             "(chunking.policy='reject')"))
                continue
            else:
                windows = count_windows(n, max_content, ccfg.overlap)
                if windows > ccfg.max_chunks:
                    prep.failures.append(Failure(
                        positions[slot], "too_long",
                        f"text has {n} tokens and needs {windows} windows, over "
                        f"chunking.max_chunks={ccfg.max_chunks}"))
                    continue
                spans = window_spans(n, max_content, ccfg.overlap)
            prep.owners.append((positions[slot], spans, n + n_special, cut))
            for s, e in spans:
                prep.run_items.append(frame(content[s:e]))
        return prep

    def _execute(self, prep: _Prepared) -> EmbedResult:
        """Run the model on prepared inputs and aggregate windows into one vector per text."""
        ccfg = self.config.chunking
        failures = list(prep.failures)
        failed_rows: dict[int, str] = {}
        item_vecs = self._run_items(prep.run_items, failed_rows) if prep.run_items else np.zeros(
            (0, self.manifest.dim), np.float32)

        vectors: list[np.ndarray] = []
        ok: list[int] = []
        ok_tokens: list[int] = []
        ok_chunks: list[int] = []
        ok_trunc: list[bool] = []
        chunk_infos: list[ChunkInfo] = []
        row = 0
        normalize = self.manifest.normalize
        n_special = self.tokenizer.n_special
        for position, spans, ntok, cut in prep.owners:
            rows = range(row, row + len(spans))
            row += len(spans)
            if failed_rows:
                bad = [failed_rows[r] for r in rows if r in failed_rows]
                if bad:
                    failures.append(Failure(position, "inference_error", bad[0]))
                    continue
            win = item_vecs[rows.start : rows.stop]
            if len(spans) == 1:  # the graph already pooled and normalised it
                vectors.append(win[0])
            else:
                vectors.append(aggregate(win, spans, ntok - n_special, ccfg.aggregation, normalize))
            ok.append(position)
            ok_tokens.append(ntok)
            ok_chunks.append(len(spans))
            ok_trunc.append(cut)
            if ccfg.return_chunks:
                chunk_infos.append(ChunkInfo(spans, self._truncate(win.copy())))

        mat = np.stack(vectors) if vectors else np.zeros((0, self.manifest.dim), np.float32)
        failures.sort(key=lambda f: f.index)
        with self._lock:
            self.stats.texts += len(ok)
            self.stats.chunks += len(prep.run_items)
            self.stats.tokenize_s += prep.tokenize_s
            for f in failures:
                self.stats.failures[f.kind] = self.stats.failures.get(f.kind, 0) + 1
        return EmbedResult(
            vectors=self._truncate(mat),
            ok=np.asarray(ok, dtype=np.int64),
            n_tokens=np.asarray(ok_tokens, dtype=np.int64),
            n_chunks=np.asarray(ok_chunks, dtype=np.int64),
            truncated=np.asarray(ok_trunc, dtype=bool),
            failures=failures,
            chunks=chunk_infos if ccfg.return_chunks else None,
        )

    def _prompt_prefix(self, prompt: str | None) -> str:
        if not prompt:
            return ""
        return self.manifest.prompts.get(prompt, prompt)

    def _truncate(self, mat: np.ndarray) -> np.ndarray:
        dim = self.config.truncate_dim
        if dim is None or dim >= mat.shape[-1]:
            return mat
        out = np.ascontiguousarray(mat[..., :dim])
        if self.manifest.normalize:
            norms = np.linalg.norm(out, axis=-1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out.astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded model and session (for logs and reports)."""
        info: SessionInfo = self.session_info
        return {
            "model": self.manifest.name,
            "model_dir": str(self.model_dir),
            "dim": self.dim,
            "max_tokens": self.manifest.max_tokens,
            "providers": list(info.providers),
            "active_provider": info.active,
            "fallback": info.fallback,
            "model_file": Path(info.model_path).name,
        }
