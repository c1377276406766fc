"""The redaction processor: secret-looking fields never reach a log line."""

from __future__ import annotations

import io
import json

import pytest

from proxy.observability.logs import REDACTED, configure_logging, get_logger, redact_secrets


@pytest.mark.parametrize(
    "field",
    [
        "token",
        "player_token",
        "authorization",
        "api_key",
        "X-Api-Key".lower().replace("-", "_"),
        "secret",
        "hmac_secret",
        "password",
        "body",
        "challenge",
        "license",
        "spc",
        "ckc",
        "key",
        "content_key",
        "cookie",
    ],
)
def test_secret_fields_are_redacted(field: str) -> None:
    assert redact_secrets(None, "info", {field: "s3cr3t", "event": "x"})[field] == REDACTED


@pytest.mark.parametrize("field", ["key_id", "asset_id", "drm", "provider", "request_id"])
def test_ordinary_fields_are_kept(field: str) -> None:
    assert redact_secrets(None, "info", {field: "value"})[field] == "value"


def test_redaction_applies_to_real_log_output() -> None:
    buffer = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buffer)
    try:
        get_logger("test").info("careless", token="eyJhbGciOi.secret", key_id="00ff", body=b"\x00")
    finally:
        configure_logging(level="info", fmt="json")
    line = json.loads(buffer.getvalue())
    assert line["token"] == REDACTED and line["body"] == REDACTED and line["key_id"] == "00ff"
    assert "eyJ" not in buffer.getvalue()


def test_level_filter() -> None:
    buffer = io.StringIO()
    configure_logging(level="warning", fmt="json", stream=buffer)
    try:
        get_logger("test").info("hidden")
        get_logger("test").warning("shown")
    finally:
        configure_logging(level="info", fmt="json")
    assert "hidden" not in buffer.getvalue() and "shown" in buffer.getvalue()
