"""Shared pytest configuration."""

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.kafka", "tests.fixtures.beam", "tests.fixtures.postgres"]
