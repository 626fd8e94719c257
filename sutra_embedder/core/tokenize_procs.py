"""Tokenization in worker processes, for hosts that feed a GPU.

In one process, tokenizing is not only the tokenizer's Rust encode (which runs
outside the GIL on the tokenizer's own thread pool): turning its encodings into
numpy ids and freeing them (a Python object and a string per token) holds the
GIL for several microseconds per text, in one piece per block. Meanwhile the
threads that drive the GPU wait for the GIL to launch the next batch, and the
device idles. Worker processes have GILs of their own: the parent only pickles
the texts and unpickles two arrays per block.

The workers are plain child processes (``python -m sutra_embedder.core._tokenize_worker``) speaking
length-prefixed pickle frames over their stdin and stdout, not
``multiprocessing``: they never re-import the caller's ``__main__`` (a script
without a ``__main__`` guard still works), and a worker whose parent dies sees
the end of its input and exits. A broken worker raises
:class:`TokenizerProcessError`; the embedder then tokenizes that block itself
and starts a new worker for the next one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from .tokenization import FlatTokens, TextTokenizer

_HEADER = struct.Struct("<Q")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class TokenizerProcessError(RuntimeError):
    """A tokenizer worker process failed (died, or answered with an error)."""


def _write_frame(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=5)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-frame")
    return pickle.loads(data)


class _Worker:
    """One child process and its pipes; used by one thread at a time."""

    def __init__(self, path: Path, threads: int, ascii_road: bool) -> None:
        env = dict(os.environ)
        env["RAYON_NUM_THREADS"] = str(threads)
        env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "sutra_embedder.core._tokenize_worker", str(path), "1" if ascii_road else "0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def encode(self, texts: list[str]) -> FlatTokens:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _write_frame(self.proc.stdin, texts)
            reply = _read_frame(self.proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            code = self.proc.poll()
            raise TokenizerProcessError(f"tokenizer worker {self.proc.pid} failed (exit code {code}): {exc}") from exc
        if isinstance(reply, str):
            raise TokenizerProcessError(f"tokenizer worker {self.proc.pid}: {reply}")
        ids, offsets = reply
        return FlatTokens(ids.astype(np.int64), offsets)

    def stop(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stop_all(workers: list[_Worker], owner: int) -> None:
    if os.getpid() != owner:  # a forked copy: the workers belong to the parent
        return
    for worker in workers:
        worker.stop()


class TokenizerProcesses:
    """A fixed set of tokenizer worker processes shared by the calling threads.

    Args:
        path: The ``tokenizer.json`` every worker loads.
        processes: Worker processes (at least 1).
        threads: Threads of each worker's tokenizer pool.
        ascii_road: Passed to each worker's :class:`TextTokenizer`.
    """

    def __init__(self, path: str | Path, processes: int, threads: int, ascii_road: bool = True) -> None:
        if processes < 1 or threads < 1:
            raise ValueError("processes and threads must be at least 1")
        self.path = Path(path)
        self.threads = threads
        self.ascii_road = ascii_road
        self.pid = os.getpid()
        self.restarts = 0
        self._lock = threading.Lock()
        self._all: list[_Worker] = [self._spawn() for _ in range(processes)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._all:
            self._idle.put(worker)
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_all, self._all, self.pid)

    def _spawn(self) -> _Worker:
        return _Worker(self.path, self.threads, self.ascii_road)

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._all]

    def encode_flat(self, texts: list[str]) -> FlatTokens:
        """Content ids of ``texts``, as :meth:`TextTokenizer.encode_flat` returns them.

        Blocks until a worker is free. A worker that fails is replaced by a new
        one and the error is raised (the caller decides how to recover).
        """
        if self._closed:
            raise TokenizerProcessError("the tokenizer processes were closed")
        worker = self._idle.get()
        try:
            flat = worker.encode(texts)
        except TokenizerProcessError:
            worker.stop()
            with self._lock:
                fresh = self._spawn()
                self._all[self._all.index(worker)] = fresh
                self.restarts += 1
            self._idle.put(fresh)
            raise
        self._idle.put(worker)
        return flat

    def close(self) -> None:
        """Stop the workers (they also stop when this object is collected or the parent exits)."""
        self._closed = True
        self._finalizer()


def serve(path: str, ascii_road: bool) -> None:
    """The worker's loop: a list of texts in, ``(int32 ids, int64 offsets)`` out, until EOF."""
    tok = TextTokenizer(path, ascii_road=ascii_road)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply stream
    while True:
        try:
            texts = _read_frame(stdin)
        except EOFError:
            return
        try:
            flat = tok.encode_flat(texts)
            reply: object = (flat.ids.astype(np.int32), flat.offsets)
        except Exception as exc:  # answered, not fatal: the parent falls back
            reply = f"{type(exc).__name__}: {exc}"
        _write_frame(stdout, reply)
