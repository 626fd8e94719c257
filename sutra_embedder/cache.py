"""Where Sutra-Embedder keeps what it fetches and builds: models, jars, runner binaries."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Root of the cache: ``$SUTRA_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/sutra-embedder``
    (``~/.cache/sutra-embedder``). The directory is not created."""
    configured = os.environ.get("SUTRA_CACHE_DIR", "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sutra-embedder"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (where the platform supports it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX platforms
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def find_java() -> str | None:
    """The ``java`` launcher: ``$JAVA_HOME/bin/java`` first (as Beam does), else ``java`` on PATH."""
    import shutil

    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")
