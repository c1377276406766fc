"""Structured logging: JSON lines in production, readable lines on a terminal.

A redaction processor drops any field named like a token, secret, key, authorization or body,
so a careless `log.info(..., token=t)` can never write one. Tracebacks name each exception's
type and frames but never its message: a library's message may quote request bytes (aiohttp's
parse errors quote the offending header line, an Authorization header among them).

Records of the standard `logging` module (aiohttp, asyncio, ...) go through the same
processors and renderer on the same stream, reduced to their constant text: a record's
arguments, and anything from the first quote or bracket of its message on, are dropped,
since that is where libraries interpolate values.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# Field names that must never reach a log line. `key_id` (public, in every manifest) is allowed.
_SECRET_FIELD = re.compile(
    r"(token|secret|password|authorization|cookie|body|challenge|license|spc|ckc|"
    r"(^|_)key$|^key_(material|bytes|value)$|api_?key)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# A third-party message is kept up to its first line break, quote or bracket: what follows is
# an interpolated repr (asyncio's "Exception in callback Handle(<...>, (b'...'))").
_CONSTANT_TEXT = re.compile(r"[^\n'\"<(\[{]*")
_MAX_FOREIGN_EVENT = 200
_HANDLER_NAME = "drm-gateway"
_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"


@functools.lru_cache(maxsize=1024)
def _is_secret_field(name: str) -> bool:
    # Field names are few and fixed; the verdict is cached so each line costs dict lookups.
    return _SECRET_FIELD.search(name) is not None


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every secret-looking field."""
    for name in [k for k in event if _is_secret_field(k)]:
        event[name] = REDACTED
    return event


def describe_exception(exc: BaseException) -> str:
    """A traceback of `exc` and its causes with frames and type names only, no messages."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        parts.append(
            f"Traceback (most recent call last):\n{frames}{kind.__module__}.{kind.__qualname__}"
        )
        if current.__cause__ is not None:
            parts.append(_CAUSE)
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            parts.append(_CONTEXT)
            current = current.__context__
        else:
            current = None
    return "".join(reversed(parts))


def format_exc_info(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: `exc_info` becomes `exception`, a traceback without messages."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, tuple):
        exc_info = exc_info[1]
    if isinstance(exc_info, BaseException):
        event["exception"] = describe_exception(exc_info)
    return event


def _constant_text(record: logging.LogRecord) -> str:
    if not isinstance(record.msg, str):
        return type(record.msg).__name__
    match = _CONSTANT_TEXT.match(record.msg)
    text = match.group(0) if match else ""
    return text.rstrip(" :=")[:_MAX_FOREIGN_EVENT] or "(message withheld)"


def reduce_foreign_record(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """ProcessorFormatter pre-chain step: a stdlib record keeps only its constant text."""
    record: logging.LogRecord = event["_record"]
    event["event"] = _constant_text(record)
    event["component"] = record.name
    return event


class _ForeignHandler(logging.StreamHandler[TextIO]):
    """Writes stdlib records as our log lines; a record that cannot be rendered is dropped
    with a fixed line, since logging's own fallback prints the record's arguments to stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write('{"event": "log_record_unrenderable", "level": "error"}\n')
        except _STREAM_GONE:
            pass


class LineWriter:
    """structlog's logger: writes each rendered line to `out` and flushes once per turn of
    the event loop, not once per line (structlog's PrintLogger flushes every line: a write
    system call per request for the access log). Every line of a turn reaches the stream
    before the loop waits again; without a running loop (the CLI, a thread) each line is
    flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        # Lines go to the binary buffer beneath a text stream when it has one (stdout, a
        # file): the access line is rendered to UTF-8 bytes and needs no re-encoding.
        self._binary: Any = getattr(out, "buffer", None)
        self._lock = threading.Lock()
        # The loop a flush is scheduled on (a loop that stopped first never runs it: the
        # next loop, or a line logged without one, flushes instead).
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def msg(self, message: str) -> None:
        if self._binary is not None:
            self.write_line((message + "\n").encode())
            return
        with self._lock:
            try:
                self._out.write(message + "\n")
                self._flushed_in_turn(_running_loop())
            except _STREAM_GONE:
                pass

    def write_line(self, line: bytes) -> None:
        """Write one rendered line, newline included."""
        loop = _running_loop()
        with self._lock:
            try:
                if self._binary is None:
                    self._out.write(line.decode())
                else:
                    # Straight to the buffer. Serving, the text layer holds nothing (the
                    # stdlib handler flushes after each record); a CLI may have print()ed
                    # just before, so without a running loop the text layer goes first.
                    if loop is None:
                        self._out.flush()
                    self._binary.write(line)
                self._flushed_in_turn(loop)
            except _STREAM_GONE:
                pass

    def _flushed_in_turn(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Under the lock: flush now without a running loop, else once at the loop's turn."""
        if loop is None:
            self._out.flush()
        elif self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._flush_on = None
            try:
                self._out.flush()
            except _STREAM_GONE:
                pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _Clock:
    """UTC ISO 8601 timestamps as structlog's TimeStamper writes them (microseconds, "Z"),
    with the date and time of day formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


class AccessLog:
    """The access line's own path: one line per request, so it skips structlog's bound
    logger and processor chain (11 us a line, against about 2 here) and writes the same
    JSON: component, event, the bound context variables, the fields, level and timestamp.

    Redaction still applies: a field named like a secret is replaced, as `redact_secrets`
    does; the field names found safe are remembered, so a line with only known names costs
    one set comparison. With console output (a terminal), or before `configure_logging`,
    lines go through structlog as any other."""

    def __init__(self, component: str) -> None:
        self._component = component
        self._fallback = get_logger(component)
        self._writer: LineWriter | None = None
        self._enabled = True
        self._safe_fields: frozenset[str] = frozenset()
        self._clock = _Clock()

    def configure(self, writer: LineWriter | None, *, enabled: bool) -> None:
        """JSON lines to `writer`, or (None) through structlog; `enabled` False drops them."""
        self._writer = writer
        self._enabled = enabled
        self._fallback = get_logger(self._component)

    def info(self, event: str, **fields: Any) -> None:
        writer = self._writer
        if writer is None:
            self._fallback.info(event, **fields)
            return
        if not self._enabled:
            return
        if not fields.keys() <= self._safe_fields:
            redact_secrets(None, "info", fields)
            self._safe_fields |= {name for name in fields if not _is_secret_field(name)}
        line = structlog.contextvars.merge_contextvars(
            None, "info", {"component": self._component, "event": event}
        )
        line.update(fields)
        line["level"] = "info"
        line["timestamp"] = self._clock.now()
        writer.write_line(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))


# What writing to a stream that is gone (closed) raises: the line is dropped, since a log
# call must never raise. (try/except, free when nothing is raised, on the access line's path.)
_STREAM_GONE = (ValueError, OSError)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _common_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,  # e.g. worker / worker_pid under --workers
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _route_stdlib_logging(out: TextIO, level: int, renderer: Any) -> None:
    """Send every stdlib logger (aiohttp, asyncio, ...) to `out` through our processors."""
    handler = _ForeignHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *_common_processors(),
                reduce_foreign_record,
                redact_secrets,
                format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            use_get_message=False,  # the template, never the record's arguments
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level)


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None, cache: bool = False
) -> None:
    """Set up structlog and stdlib logging for the process (tests use it to capture output).

    `cache=True` (serving processes) binds each logger once, which saves a rebind per line;
    tests leave it off so that they can reconfigure the output between cases.
    """
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    writer = LineWriter(out)
    structlog.configure(
        processors=[*_common_processors(), redact_secrets, format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=cache,
    )
    _route_stdlib_logging(out, threshold, renderer)
    ACCESS_LOG.configure(writer if use_json else None, enabled=threshold <= logging.INFO)


def _json_line(event: Any, *, default: Any = None, **_: Any) -> str:
    """One log line's JSON: orjson writes the access line in a tenth of json.dumps's time
    (0.4 vs 5.3 us for its 28 fields), paid on every request."""
    return orjson.dumps(event, default=default).decode()


def _structlog_context_var(name: str) -> contextvars.ContextVar[Any]:
    """The context variable `bind_contextvars(name=...)` sets, fetched once (in a throwaway
    context): setting it directly costs a tenth of a bind_contextvars/reset_contextvars pair."""
    tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars, **{name: None})
    return tokens[name].var


# Set per request by the middleware: every line logged while serving it carries its id.
REQUEST_ID = _structlog_context_var("request_id")


def get_logger(name: str) -> Any:
    """A structlog logger with the component name bound."""
    return structlog.get_logger(component=name)


# The access log of every request (proxy.server.middleware writes it).
ACCESS_LOG = AccessLog("access")


def describe_failure(exc: BaseException) -> str:
    """An exception's type and its message (the type alone when it has none), for a log."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class FailureLog:
    """Logs one resource's failures as warnings, each distinct one once until it works again,
    so an outage says why without a line per request."""

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        describe: Callable[[BaseException], str] = describe_failure,
        **where: str,
    ) -> None:
        self._logger = logger
        self._event = event
        self._describe = describe
        self._where = where
        self._last: str | None = None

    def failed(self, exc: BaseException) -> None:
        """Log `exc`, unless it is the failure logged last."""
        why = self._describe(exc)
        if why != self._last:
            self._last = why
            self._logger.warning(self._event, error=why, **self._where)

    def recovered(self) -> None:
        """The resource works again: its next failure is logged."""
        self._last = None
