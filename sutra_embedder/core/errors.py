"""Exceptions raised by the embedder core.

Every error says what was wrong and what to change. Per-text failures are not
raised from :meth:`Embedder.embed_records`; they come back as
:class:`~sutra_embedder.core.records.Failure` values so a pipeline can route them
to a dead-letter output instead of crashing.
"""

from __future__ import annotations


class SutraError(Exception):
    """Base class of every error raised by sutra_embedder."""


class ConfigError(SutraError, ValueError):
    """A configuration field holds an invalid value.

    Attributes:
        field: The dotted name of the offending field (``"chunking.overlap"``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelNotFoundError(SutraError, LookupError):
    """A model name, path or hub id could not be resolved to a usable model."""


class ProviderUnavailableError(SutraError, RuntimeError):
    """A required ONNX Runtime execution provider could not be initialised."""


class InputError(SutraError, ValueError):
    """One input text is unusable (None, wrong type, empty, too long...).

    Attributes:
        kind: A short, stable machine-readable reason (``"empty"``, ``"not_a_string"``...),
            used as a metric label and in dead-letter records.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
