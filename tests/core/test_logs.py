"""Worker logs: JSON lines, and no password ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from sutra_embedder.logs import logging_config, redact


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("connecting to postgresql://indexer:s3cr3t-pw@db:5432/app?table=docs", "s3cr3t-pw"),
        ("dsn host=db user=indexer password=hunter2 dbname=app", "hunter2"),
        ("lancedb://u:p%40ss@host/x and kafka sasl_password: Zq9-secret", "p%40ss"),
        ("kafka sasl_password: Zq9-secret", "Zq9-secret"),
    ],
)
def test_redact_hides_passwords(text: str, hidden: str) -> None:
    out = redact(text)
    assert hidden not in out and "***" in out
    # What is not a secret stays readable.
    assert out.split("***")[0] == text.split(hidden)[0]


def _log_through(fmt: str, secrets: list[str], emit: object) -> str:
    stream = io.StringIO()
    config = logging_config("info", fmt, secrets)  # type: ignore[arg-type]
    config["handlers"]["main"]["stream"] = stream
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        emit(logging.getLogger("sutra.test"))  # type: ignore[operator]
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    return stream.getvalue()


def test_json_lines_with_secrets_redacted() -> None:
    def emit(log: logging.Logger) -> None:
        log.info("sink %s ready", "postgresql://indexer:pw-123@db/app")
        log.warning("sasl login with %s", "env-secret-77")
        try:
            raise RuntimeError("could not connect with password=pw-123")
        except RuntimeError:
            log.exception("store failed")

    out = _log_through("json", ["env-secret-77"], emit)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["level"] for r in lines] == ["info", "warning", "error"]
    assert lines[0]["msg"] == "sink postgresql://indexer:***@db/app ready" and lines[0]["logger"] == "sutra.test"
    assert lines[1]["msg"] == "sasl login with ***"
    assert "RuntimeError" in lines[2]["exc"] and "password=***" in lines[2]["exc"]
    assert "pw-123" not in out and "env-secret-77" not in out


def test_text_format_redacts_too() -> None:
    out = _log_through("text", [], lambda log: log.info("dsn %s", "postgres://a:b-pass@h/d"))
    assert "b-pass" not in out and "postgres://a:***@h/d" in out and "[INFO] sutra.test:" in out


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        logging_config("info", "xml")  # type: ignore[arg-type]
