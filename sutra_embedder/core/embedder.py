"""The embedder: texts in, float32 vectors out, in input order.

Pipeline of one call::

    validate -> tokenize (content tokens) -> truncate | chunk | reject
             -> token-budget batches (windows of long texts share batches
                with short texts) -> ONNX Runtime (pooling + L2 inside the graph)
             -> aggregate windows -> Matryoshka truncation -> vectors

On a GPU the model is faster than the host can feed it, so the host side is
built to be cheap and to overlap:

* Token ids stay in one flat buffer per block (no array per text); batches are
  framed and padded from it with whole-matrix numpy operations, and the
  per-text bookkeeping is done on arrays. Per-text Python work runs under the
  GIL, which no number of cores parallelises, so it is kept to a few
  microseconds per text.
* ``batching.prepare_workers`` threads validate and tokenize blocks ahead of
  the model (tokenization itself runs in the tokenizer's own thread pool,
  outside the GIL), and ``runtime.inference_streams`` threads run batches on
  the one session at once, so that one batch's padding and host/device copies
  overlap another's compute. Results are reassembled in input order.
* With ``batching.tokenize_processes`` the blocks of large calls are tokenized
  in worker processes (:mod:`.tokenize_procs`), whose GILs are their own; the
  prepare threads only validate texts and wait for ids.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batching import pad_flat, plan_batches
from .chunking import aggregate, count_windows, window_spans
from .config import EmbedderConfig
from .errors import ConfigError, InputError
from .manifest import ModelManifest, load_manifest
from .records import ChunkInfo, EmbedResult, Failure, validate_text
from .runtime import SessionInfo, create_session, wants_varlen_mask
from .tokenization import FlatTokens, TextTokenizer
from .tokenize_procs import TokenizerProcessError, TokenizerProcesses

log = logging.getLogger(__name__)

_RAMP_START = 1024  # texts in the first block of a multi-block call
_REMOTE_MIN_TEXTS = 1024  # a one-block call this large tokenizes in the worker processes too


def usable_cores() -> int:
    """CPUs this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class EmbedStats:
    """Counters accumulated over the embedder's life (thread-safe updates).

    Times are summed over threads: with several prepare workers or inference
    streams they overlap, and their sum can exceed the wall time.

    Attributes:
        texts: Texts embedded successfully.
        failures: Failed inputs by kind.
        tokens: Real tokens fed to the model (windows counted separately).
        padded_tokens: Tokens fed including padding.
        chunks: Windows embedded (one per short text).
        batches: Model calls.
        tokenize_s: Seconds spent tokenizing.
        pad_s: Seconds spent framing and padding batches.
        inference_s: Seconds spent in ONNX Runtime.
    """

    texts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    padded_tokens: int = 0
    chunks: int = 0
    batches: int = 0
    tokenize_s: float = 0.0
    pad_s: float = 0.0
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
            "pad_s": round(self.pad_s, 4),
            "inference_s": round(self.inference_s, 4),
        }


@dataclass
class _Prepared:
    """Model inputs of one block of texts, before the model runs.

    Arrays are indexed by *item* (one model row: a whole text or one window of
    a long one) or by *owner* (a text that passed validation and the length
    policy, in input order). An owner's items are consecutive rows starting at
    ``owner_row``.
    """

    failures: list[Failure]
    tokens: FlatTokens
    item_start: np.ndarray  # start of each item's content in tokens.ids
    item_len: np.ndarray  # content tokens of each item (special tokens excluded)
    owner_pos: np.ndarray  # input position of each owner
    owner_row: np.ndarray  # first item of each owner (ascending)
    owner_windows: np.ndarray  # items of each owner
    owner_tokens: np.ndarray  # tokens of the whole text incl. special, before any cut
    owner_cut: np.ndarray  # truncated at the model's length
    spans: dict[int, list[tuple[int, int]]]  # owner -> windows, for chunked owners only
    tokenize_s: float = 0.0

    @property
    def n_items(self) -> int:
        return len(self.item_len)


@dataclass
class _Running:
    """A block whose batches are running (or ran); finished in input order."""

    prep: _Prepared
    out: np.ndarray  # (items, model dim), rows written by the batches
    failed: dict[int, str] = field(default_factory=dict)  # item row -> error
    traces: list[list[BatchTrace]] = field(default_factory=list)  # per batch, in plan order
    futures: list[Future[None]] = field(default_factory=list)


@dataclass
class _Done:
    """The per-text results of one finished block (vectors are already in place)."""

    ok: np.ndarray
    n_tokens: np.ndarray
    n_chunks: np.ndarray
    truncated: np.ndarray
    failures: list[Failure]
    chunks: list[ChunkInfo] | None


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

    Safe to share between threads: concurrent calls share the session and the
    embedder's worker threads.

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
        self.tokenizer = TextTokenizer(self.model_dir / "tokenizer.json", self.config.batching.ascii_fast_path)
        variant = "default"
        if self.config.runtime.device in ("cuda", "tensorrt", "auto") and self.config.runtime.fp16:
            variant = "fp16" if "fp16" in self.manifest.files else "default"
        model_file = self.model_dir / self.manifest.files[variant]
        varlen = variant == "fp16" and wants_varlen_mask(self.config.runtime)
        self.session, self.session_info = create_session(model_file, self.config.runtime, varlen)
        if variant == "fp16" and not self.session_info.on_gpu:
            # fp16 graphs are for GPUs; on CPU load the default graph instead.
            model_file = self.model_dir / self.manifest.files["default"]
            self.session, self.session_info = create_session(model_file, self.config.runtime)
        self.batching = self.config.batching.for_device(self.session_info.on_gpu)
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._output_name = self.manifest.output
        self._check_config()
        self.stats = EmbedStats()
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pools: dict[str, tuple[int, int, ThreadPoolExecutor]] = {}
        self._token_procs: TokenizerProcesses | None = None
        self.observer: Any = None  # callable(BatchTrace) for metrics, set by adapters
        if self.session_info.on_gpu and self.tokenizer.threads() == 1 and usable_cores() > 1:
            log.warning(
                "tokenization runs on one core (TOKENIZERS_PARALLELISM=%s): the GPU will wait for it",
                os.environ.get("TOKENIZERS_PARALLELISM"),
            )
        if self.config.runtime.warmup:
            if self.tokenize_processes:  # start them now (in the background), not in the first large call
                self._tokenizer_processes()
            self._run(np.ones((1, 8), np.int64) * self.tokenizer.pad_id, np.ones((1, 8), np.int64))

    # ------------------------------------------------------------------ setup
    def _check_config(self) -> None:
        dim = self.manifest.dim
        if self.config.truncate_dim is not None and self.config.truncate_dim > dim:
            raise ConfigError("truncate_dim", f"{self.config.truncate_dim} exceeds the model's dimension {dim}")
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

    @property
    def prepare_workers(self) -> int:
        """Threads tokenizing ahead of the model (``batching.prepare_workers`` resolved)."""
        configured = self.config.batching.prepare_workers
        if configured is not None:
            return configured
        base = min(4, usable_cores()) if self.session_info.on_gpu else 1
        procs = self.tokenize_processes
        return max(base, procs + 1) if procs else base

    @property
    def tokenize_processes(self) -> int:
        """Tokenizer worker processes for large calls (``batching.tokenize_processes`` resolved)."""
        configured = self.config.batching.tokenize_processes
        if configured is not None:
            return configured
        return 2 if self.session_info.on_gpu and usable_cores() >= 8 else 0

    @property
    def inference_streams(self) -> int:
        """Threads running batches at once (``runtime.inference_streams`` resolved)."""
        configured = self.config.runtime.inference_streams
        if configured is not None:
            return configured
        return 2 if self.session_info.on_gpu else 1

    def _pool(self, kind: str, size: int) -> ThreadPoolExecutor:
        """The embedder's thread pool of ``kind``, created on first use.

        Pools live as long as the embedder, so small calls do not pay for
        starting threads. A pool inherited through ``fork`` has no threads in
        the child and is replaced (not shut down: its lock may be held).
        """
        pid = os.getpid()
        with self._pool_lock:
            held = self._pools.get(kind)
            if held is not None and held[0] == pid and held[1] == size:
                return held[2]
            if held is not None and held[0] == pid:
                held[2].shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"sutra-{kind}")
            self._pools[kind] = (pid, size, pool)
            return pool

    def _tokenizer_processes(self) -> TokenizerProcesses:
        """The tokenizer worker processes, started on first use (again in a forked child)."""
        with self._pool_lock:
            held = self._token_procs
            if held is not None and held.pid == os.getpid():
                return held
            procs = self.tokenize_processes
            # The cores not driving the model, shared out between the workers.
            spare = max(1, usable_cores() - self.inference_streams - 1)
            self._token_procs = TokenizerProcesses(
                self.tokenizer.path,
                procs,
                max(1, spare // procs),
                self.config.batching.ascii_fast_path,
            )
            return self._token_procs

    def _tokenize(self, texts: list[str], remote: bool) -> FlatTokens:
        """Content ids of ``texts``: in a worker process when ``remote``, else here."""
        if not texts:
            return FlatTokens(np.zeros(0, np.int64), np.zeros(1, np.int64))
        if remote:
            try:
                return self._tokenizer_processes().encode_flat(texts)
            except TokenizerProcessError as exc:
                log.warning("tokenizing %d texts in-process instead: %s", len(texts), exc)
        return self.tokenizer.encode_flat(texts)

    def close(self) -> None:
        """Stop the embedder's threads and tokenizer processes (they restart if it is used again)."""
        with self._pool_lock:
            pools, self._pools = self._pools, {}
            procs, self._token_procs = self._token_procs, None
        for pid, _, pool in pools.values():
            if pid == os.getpid():
                pool.shutdown(wait=True)
        if procs is not None and procs.pid == os.getpid():
            procs.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- inference
    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One model call on a padded batch; may be called from several threads at once."""
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
            # (batch, dim) output comes back. One binding per call, so concurrent
            # calls (inference streams) never share one.
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(self._output_name)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self._output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def _dispatch(self, prep: _Prepared, pool: ThreadPoolExecutor | None, alone: bool) -> _Running:
        """Plan a block's batches and start them: on ``pool``'s streams, or here and now.

        Without a pool, or for a call of one block that needs one batch (a
        small, latency-bound call), the batches run on the calling thread.
        """
        dim = self.manifest.dim
        if not prep.n_items:
            return _Running(prep, np.zeros((0, dim), np.float32))
        sizes = self.batching
        plan = plan_batches(
            prep.item_len + self.tokenizer.n_special,
            sizes.max_batch_tokens,
            sizes.max_batch_size,
            self.config.batching.sort_by_length,
            sizes.batch_overhead_tokens,
        )
        # Rows of failed items are never read, so the output need not be zeroed.
        run = _Running(prep, np.empty((prep.n_items, dim), np.float32))
        run.traces = [[] for _ in plan.batches]
        if pool is None or (alone and len(plan.batches) == 1):
            for slot, batch in enumerate(plan.batches):
                self._run_batch(run, slot, batch)
        else:
            run.futures = [pool.submit(self._run_batch, run, slot, batch) for slot, batch in enumerate(plan.batches)]
        return run

    def _run_batch(self, run: _Running, slot: int, batch: np.ndarray) -> None:
        """Pad and run one batch; a failing batch is bisected to isolate the bad rows.

        Runs on an inference-stream thread: it writes only its own rows of
        ``run.out``, its own keys of ``run.failed`` and its own trace list, and
        updates the shared stats under the lock.
        """
        prep, tok = run.prep, self.tokenizer
        t0 = time.perf_counter()
        lengths = prep.item_len[batch]
        ids, mask = pad_flat(prep.tokens.ids, prep.item_start[batch], lengths, tok.prefix, tok.suffix, tok.pad_id)
        start = time.perf_counter()
        try:
            vecs = self._run(ids, mask)
        except Exception as exc:  # bisect to isolate the failing row
            with self._lock:
                self.stats.pad_s += start - t0
            if len(batch) == 1:
                run.failed[int(batch[0])] = f"{type(exc).__name__}: {exc}"
                return
            half = len(batch) // 2
            self._run_batch(run, slot, batch[:half])
            self._run_batch(run, slot, batch[half:])
            return
        elapsed = time.perf_counter() - start
        run.out[batch] = vecs
        real = int(lengths.sum()) + tok.n_special * len(batch)
        with self._lock:
            self.stats.batches += 1
            self.stats.tokens += real
            self.stats.padded_tokens += int(ids.size)
            self.stats.pad_s += start - t0
            self.stats.inference_s += elapsed
        run.traces[slot].append(BatchTrace(len(batch), real, int(ids.size), elapsed))

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
        into blocks of up to ``batching.pipeline_block`` texts (smaller at the
        start and the end, see :meth:`_blocks`); ``prepare_workers`` threads
        tokenize the next blocks while the model runs the current one, and with
        several ``inference_streams`` the batches of a block run concurrently
        and the next block starts before the current one is reassembled.
        Observers are called from the calling thread, in batch order.
        """
        prefix = self._prompt_prefix(prompt)
        n = len(items)
        bounds = self._blocks(n)
        streams = self.inference_streams
        workers = self.prepare_workers
        prep_pool = self._pool("prepare", workers) if len(bounds) > 1 else None
        run_pool = self._pool("infer", streams) if streams > 1 else None
        lag = 1 if run_pool is not None else 0  # blocks left running while the next is dispatched
        final = np.empty((n, self.dim), np.float32)
        done: list[_Done] = []
        cursor = 0
        ahead: deque[Future[_Prepared]] = deque()
        running: deque[_Running] = deque()
        todo = iter(bounds)

        # Worker processes for large calls; small ones (streaming micro-batches) stay in-process.
        remote = self.tokenize_processes > 0 and (prep_pool is not None or n >= _REMOTE_MIN_TEXTS)

        def submit_next() -> None:
            nxt = next(todo, None)
            if nxt is not None and prep_pool is not None:
                lo, hi = nxt
                ahead.append(prep_pool.submit(self._prepare, items[lo:hi], lo, prefix, remote))

        try:
            if prep_pool is None:
                for lo, hi in bounds:  # zero or one block
                    running.append(self._dispatch(self._prepare(items[lo:hi], lo, prefix, remote), run_pool, True))
            else:
                for _ in range(workers):
                    submit_next()
            while ahead:
                prep = ahead.popleft().result()
                submit_next()
                running.append(self._dispatch(prep, run_pool, False))
                while len(running) > lag:
                    cursor = self._finish(running.popleft(), final, cursor, done)
            while running:
                cursor = self._finish(running.popleft(), final, cursor, done)
        except BaseException:
            for fut in ahead:
                fut.cancel()
            for run in running:
                for f in run.futures:
                    f.cancel()
            raise
        return self._assemble(final, cursor, done)

    def _blocks(self, n: int) -> list[tuple[int, int]]:
        """Block bounds of a call of ``n`` texts: one block, or a ramp up and down.

        A call that fits one block stays one block. Larger calls start with
        small blocks (1024, 2048, ... texts, up to ``pipeline_block``) so that
        the model gets its first batches after a fraction of a block's
        tokenization, and end with blocks shrinking in the same way, so that
        little model work is left once the last text is tokenized (on a GPU
        the two otherwise each cost a whole block of idle device or host).
        """
        block = self.batching.pipeline_block
        if n <= block:
            return [(0, n)] if n else []
        front: list[int] = []
        back: list[int] = []
        size, left = min(block, _RAMP_START), n
        while left > 2 * size:
            front.append(size)
            back.append(size)
            left -= 2 * size
            size = min(block, size * 2)
        while True:  # the middle, cut evenly; it takes in ramp blocks larger than its pieces
            pieces = -(-left // block)
            base, extra = divmod(left, pieces)
            if not front or base >= front[-1]:
                break
            left += front.pop() + back.pop()
        middle = [base + 1] * extra + [base] * (pieces - extra)
        bounds: list[tuple[int, int]] = []
        lo = 0
        for width in front + middle + back[::-1]:
            bounds.append((lo, lo + width))
            lo += width
        return bounds

    def _prepare(self, items: Sequence[object], offset: int, prefix: str, remote: bool) -> _Prepared:
        """Validate, tokenize and cut texts into model inputs (no model call).

        ``remote``: tokenize in a worker process (see :meth:`_tokenize`).

        Everything per text is done on arrays except validation and the
        windows of texts longer than the model's window.
        """
        cfg = self.config
        max_chars = cfg.max_text_chars
        failures: list[Failure] = []
        texts: list[str] = []
        positions: list[int] = []
        add_text, add_pos = texts.append, positions.append
        for i, item in enumerate(items, start=offset):
            try:
                text = validate_text(item, max_chars)
            except InputError as exc:
                failures.append(Failure(i, exc.kind, str(exc)))
                continue
            add_text(prefix + text if prefix else text)
            add_pos(i)

        t0 = time.perf_counter()
        tokens = self._tokenize(texts, remote)
        tokenize_s = time.perf_counter() - t0

        lengths = tokens.lengths
        max_content = self.max_content_tokens
        ccfg = cfg.chunking
        windows = np.ones(len(texts), dtype=np.int64)
        keep = np.ones(len(texts), dtype=bool)
        slot_spans: dict[int, list[tuple[int, int]]] = {}
        if ccfg.policy != "truncate":
            for slot in np.flatnonzero(lengths > max_content).tolist():
                n = int(lengths[slot])
                if ccfg.policy == "reject":
                    failures.append(
                        Failure(
                            positions[slot],
                            "too_long",
                            f"text has {n} tokens, over the model's {max_content} (chunking.policy='reject')",
                        )
                    )
                    keep[slot] = False
                    continue
                count = count_windows(n, max_content, ccfg.overlap)
                if count > ccfg.max_chunks:
                    failures.append(
                        Failure(
                            positions[slot],
                            "too_long",
                            f"text has {n} tokens and needs {count} windows, over "
                            f"chunking.max_chunks={ccfg.max_chunks}",
                        )
                    )
                    keep[slot] = False
                    continue
                slot_spans[slot] = window_spans(n, max_content, ccfg.overlap)
                windows[slot] = count

        owners = np.flatnonzero(keep)
        owner_windows = windows[owners]
        owner_row = np.cumsum(owner_windows) - owner_windows
        owner_len = lengths[owners]
        item_start = np.repeat(tokens.offsets[owners], owner_windows)
        item_len = np.repeat(np.minimum(owner_len, max_content), owner_windows)
        spans: dict[int, list[tuple[int, int]]] = {}
        for slot, slot_windows in slot_spans.items():
            owner = int(np.searchsorted(owners, slot))
            r0 = int(owner_row[owner])
            rows = slice(r0, r0 + len(slot_windows))
            item_start[rows] = [int(tokens.offsets[slot]) + s for s, _ in slot_windows]
            item_len[rows] = [e - s for s, e in slot_windows]
            spans[owner] = slot_windows
        return _Prepared(
            failures=failures,
            tokens=tokens,
            item_start=item_start,
            item_len=item_len,
            owner_pos=np.asarray(positions, dtype=np.int64)[owners],
            owner_row=owner_row,
            owner_windows=owner_windows,
            owner_tokens=owner_len + self.tokenizer.n_special,
            owner_cut=(owner_len > max_content) if ccfg.policy == "truncate" else np.zeros(len(owners), bool),
            spans=spans,
            tokenize_s=tokenize_s,
        )

    def _finish(self, run: _Running, final: np.ndarray, cursor: int, done: list[_Done]) -> int:
        """Wait for a block's batches, then write its vectors into ``final`` from ``cursor``.

        Runs on the calling thread, one block at a time in input order, so the
        observer sees every batch in order and from the caller's thread.
        Returns the new cursor.
        """
        for fut in run.futures:
            fut.result()
        if self.observer is not None:
            for traces in run.traces:
                for trace in traces:
                    self.observer(trace)
        prep = run.prep
        ccfg = self.config.chunking
        failures = list(prep.failures)
        ok = np.ones(len(prep.owner_pos), dtype=bool)
        if run.failed:
            rows = sorted(run.failed)
            owners = np.searchsorted(prep.owner_row, rows, side="right") - 1
            for row, owner in zip(rows, owners.tolist()):
                if ok[owner]:  # the owner's first failing window names the error
                    ok[owner] = False
                    failures.append(Failure(int(prep.owner_pos[owner]), "inference_error", run.failed[row]))
        keep = np.flatnonzero(ok)
        count = len(keep)
        model_dim = self.manifest.dim
        direct = self.dim == model_dim  # no Matryoshka truncation: gather straight into final
        vecs = final[cursor : cursor + count] if direct else np.empty((count, model_dim), np.float32)
        np.take(run.out, prep.owner_row[keep], axis=0, out=vecs)
        normalize = self.manifest.normalize
        n_special = self.tokenizer.n_special
        for owner, spans in prep.spans.items():
            if ok[owner]:  # chunked: aggregate its windows (single windows come pooled and normalised)
                r0 = int(prep.owner_row[owner])
                vecs[int(np.searchsorted(keep, owner))] = aggregate(
                    run.out[r0 : r0 + len(spans)],
                    spans,
                    int(prep.owner_tokens[owner]) - n_special,
                    ccfg.aggregation,
                    normalize,
                )
        if not direct:
            final[cursor : cursor + count] = self._truncate(vecs)
        chunk_infos: list[ChunkInfo] | None = None
        if ccfg.return_chunks:
            chunk_infos = []
            for owner in keep.tolist():
                r0 = int(prep.owner_row[owner])
                owner_spans = prep.spans.get(owner) or [(0, int(prep.item_len[r0]))]
                win = run.out[r0 : r0 + len(owner_spans)]
                chunk_infos.append(ChunkInfo(owner_spans, self._truncate(win.copy())))
        failures.sort(key=lambda f: f.index)
        with self._lock:
            self.stats.texts += count
            self.stats.chunks += prep.n_items
            self.stats.tokenize_s += prep.tokenize_s
            for f in failures:
                self.stats.failures[f.kind] = self.stats.failures.get(f.kind, 0) + 1
        done.append(
            _Done(
                ok=prep.owner_pos[keep],
                n_tokens=prep.owner_tokens[keep],
                n_chunks=prep.owner_windows[keep],
                truncated=prep.owner_cut[keep],
                failures=failures,
                chunks=chunk_infos,
            )
        )
        return cursor + count

    def _assemble(self, final: np.ndarray, count: int, done: list[_Done]) -> EmbedResult:
        """One result from the finished blocks (vectors already sit in ``final``)."""

        def join(name: str, dtype: type) -> np.ndarray:
            parts = [getattr(d, name) for d in done]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        return EmbedResult(
            # A result with failures does not keep the rows they left unused alive.
            vectors=final if count == len(final) else final[:count].copy(),
            ok=join("ok", np.int64),
            n_tokens=join("n_tokens", np.int64),
            n_chunks=join("n_chunks", np.int64),
            truncated=join("truncated", np.bool_),
            failures=[f for d in done for f in d.failures],
            chunks=[c for d in done for c in d.chunks or []] if self.config.chunking.return_chunks else None,
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
            "attention_mask": info.attention_mask,
            "prepare_workers": self.prepare_workers,
            "tokenize_processes": self.tokenize_processes,
            "ascii_fast_path": self.tokenizer.ascii_road,
            "inference_streams": self.inference_streams,
            "tokenizer_threads": self.tokenizer.threads(),
        }
