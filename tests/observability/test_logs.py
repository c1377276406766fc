"""Log hygiene: secret-looking fields, exception messages and third-party records' arguments
never reach a log line, and every line is one JSON object."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage

from proxy.observability.logs import (
    ACCESS_LOG,
    REDACTED,
    configure_logging,
    get_logger,
    redact_secrets,
)


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


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def _raise_parse_error() -> None:
    try:
        raise ValueError(f"inner quoting {JWT}")
    except ValueError as inner:
        raise BadHttpMessage(
            f"Invalid header value char:\n\n  b'Authorization: Bearer {JWT}\\x01'"
        ) from inner


def _log_lines(buffer: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_stdlib_records_are_our_json_lines_without_request_bytes() -> None:
    buffer = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buffer)
    configure_logging(level="info", fmt="json", stream=buffer)  # reconfiguring replaces, not adds
    try:
        try:
            _raise_parse_error()
        except BadHttpMessage as exc:
            logging.getLogger("aiohttp.server").exception("Error handling request from %s", JWT)
            logging.getLogger("aiohttp.web").error("x", exc_info=exc)
        logging.getLogger("asyncio").error(
            f"Exception in callback RequestHandler.data_received(b'{JWT}')\nhandle: <Handle {JWT}>"
        )
        logging.getLogger("aiohttp.access").warning(f"'{JWT}'")
        logging.getLogger("aiohttp.client").info(ValueError(JWT))
    finally:
        configure_logging(level="info", fmt="json")
    assert "eyJ" not in buffer.getvalue()  # no part of the token
    server, web, loop, access, client = _log_lines(buffer)
    assert server["event"] == "Error handling request from %s"
    assert server["component"] == "aiohttp.server" and server["level"] == "error"
    trace = str(server["exception"])
    assert "aiohttp.http_exceptions.BadHttpMessage" in trace and "builtins.ValueError" in trace
    assert "direct cause" in trace and "_raise_parse_error" in trace
    assert web["exception"] == server["exception"]
    assert loop["event"] == "Exception in callback RequestHandler.data_received"
    assert access["event"] == "(message withheld)" and client["event"] == "ValueError"


def test_our_tracebacks_name_types_not_messages() -> None:
    buffer = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buffer)
    try:
        try:
            try:
                raise KeyError(JWT)
            except KeyError:
                raise RuntimeError(JWT)  # noqa: B904 - an implicit context is what is tested
        except RuntimeError:
            get_logger("test").exception("unhandled_error")
    finally:
        configure_logging(level="info", fmt="json")
    (line,) = _log_lines(buffer)
    trace = str(line["exception"])
    assert "builtins.KeyError" in trace and trace.endswith("builtins.RuntimeError")
    assert "During handling of the above exception" in trace
    assert "eyJ" not in buffer.getvalue()


class _CountingStream(io.StringIO):
    """A stream that counts flushes (each one a write system call on a real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_lines_of_one_event_loop_turn_are_flushed_once() -> None:
    out = _CountingStream()
    configure_logging(level="info", fmt="json", stream=out)
    log = get_logger("test")

    async def turn() -> tuple[int, int]:
        for i in range(50):
            log.info("line", n=i)
        during = out.flushes
        await asyncio.sleep(0)  # the loop runs the scheduled flush
        return during, out.flushes

    during, after = asyncio.run(turn())
    assert (during, after) == (0, 1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(50))


def test_without_an_event_loop_each_line_is_flushed_at_once() -> None:
    out = _CountingStream()
    configure_logging(level="info", fmt="json", stream=out)
    log = get_logger("test")
    log.info("one")
    log.info("two")
    assert out.flushes == 2


def test_a_loop_that_stopped_before_its_flush_does_not_hold_later_lines() -> None:
    out = _CountingStream()
    configure_logging(level="info", fmt="json", stream=out)
    log = get_logger("test")

    async def log_and_stop() -> None:
        log.info("last line of the loop")  # its flush is scheduled, never run

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_and_stop())
    loop.close()
    before = out.flushes
    log.info("after the loop")
    assert out.flushes == before + 1

    async def next_loop() -> None:
        log.info("in a new loop")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert out.flushes == before + 2


def test_the_access_line_path_writes_what_structlog_would() -> None:
    out = io.StringIO()
    configure_logging(level="info", fmt="json", stream=out)
    structlog.contextvars.bind_contextvars(worker=3)
    try:
        ACCESS_LOG.info("request", status=200, asset_id="a1")
        get_logger("access").info("request", status=200, asset_id="a1")
    finally:
        structlog.contextvars.unbind_contextvars("worker")
    fast, slow = (json.loads(line) for line in out.getvalue().splitlines())
    assert fast.keys() == slow.keys()
    assert fast.pop("timestamp")[:4] == slow.pop("timestamp")[:4]
    assert (
        fast
        == slow
        == {
            "component": "access",
            "event": "request",
            "worker": 3,
            "status": 200,
            "asset_id": "a1",
            "level": "info",
        }
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
        json.loads(out.getvalue().splitlines()[0])["timestamp"],
    )


def test_the_access_line_path_redacts_and_filters_by_level() -> None:
    out = io.StringIO()
    configure_logging(level="info", fmt="json", stream=out)
    ACCESS_LOG.info("request", status=200)
    ACCESS_LOG.info("request", status=200, token="eyJ-secret")  # a new, secret-looking field
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[1]["token"] == REDACTED and "eyJ-secret" not in out.getvalue()
    configure_logging(level="warning", fmt="json", stream=out)
    ACCESS_LOG.info("request", status=200)
    assert len(out.getvalue().splitlines()) == 2


def test_the_access_line_goes_through_structlog_on_a_console() -> None:
    out = io.StringIO()
    configure_logging(level="info", fmt="console", stream=out)
    ACCESS_LOG.info("request", status=200)
    assert "request" in out.getvalue() and not out.getvalue().startswith("{")


def test_a_closed_stream_never_makes_a_log_call_raise() -> None:
    out = io.StringIO()
    configure_logging(level="info", fmt="json", stream=out)
    out.close()
    logging.getLogger("some.library").warning("still fine")  # dropped, not raised


def test_without_a_loop_printed_text_and_log_lines_keep_their_order(tmp_path: Path) -> None:
    with (tmp_path / "out.txt").open("w") as out:
        configure_logging(level="info", fmt="json", stream=out)
        print("printed first", file=out)
        get_logger("cli").info("logged second")
        print("printed third", file=out)
        out.flush()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines[0] == "printed first" and json.loads(lines[1])["event"] == "logged second"
    assert lines[2] == "printed third"


def test_a_closed_stream_drops_our_own_lines_too() -> None:
    out = io.StringIO()
    configure_logging(level="info", fmt="json", stream=out)
    out.close()
    get_logger("test").info("dropped, not raised")
    ACCESS_LOG.info("request", status=200)

    async def in_a_loop() -> None:
        ACCESS_LOG.info("request", status=200)
        await asyncio.sleep(0)  # the scheduled flush meets the closed stream too

    asyncio.run(in_a_loop())
