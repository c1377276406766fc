"""Structured logging: JSON lines in production, readable lines on a terminal.

A redaction processor drops any field named like a token, secret, key, authorization or body,
so a careless `log.info(..., token=t)` can never write one.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Field names that must never reach a log line. `key_id` (public, in every manifest) is allowed.
_SECRET_FIELD = re.compile(
    r"(token|secret|password|authorization|cookie|body|challenge|license|spc|ckc|"
    r"(^|_)key$|^key_(material|bytes|value)$|api_?key)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


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


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None, cache: bool = False
) -> None:
    """Set up structlog for the process (also used by tests to capture output).

    `cache=True` (serving processes) binds each logger once, which saves a rebind per line;
    tests leave it off so that they can reconfigure the output between cases.
    """
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # e.g. worker / worker_pid under --workers
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )


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
