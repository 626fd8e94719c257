"""Tests for :mod:`sutra_embedder.models`."""
