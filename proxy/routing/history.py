"""The change log of the routing rules: every version accepted or refused, who asked, the diff.

Pure: entries are built from texts and kept in a bounded ring, newest first. The watcher
records into it (`proxy.routing.watcher`); `GET /admin/rules/history` reads it. A rules file
holds provider names and percentages, never a secret, so its diff may be shown and logged.

Who: the admin caller's name for POST /admin/rules/reload, "file" for a change the poll
found, "sighup" for SIGHUP, "start" for the file read at start-up.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

ChangeResult = Literal["accepted", "refused"]

DEFAULT_MAX_ENTRIES = 200
DIFF_MAX_LINES = 400
# Who a reload is attributed to when no caller is named, by trigger.
WHO_BY_TRIGGER = {"poll": "file", "sighup": "sighup", "start": "start"}


def who_for(trigger: str, who: str | None) -> str:
    """The caller to record: `who` if given, else the name the trigger stands for."""
    return who if who is not None else WHO_BY_TRIGGER.get(trigger, trigger)


@dataclass(frozen=True, slots=True)
class TextDiff:
    """A unified diff of two rules texts, cut at a line cap; `added`/`removed` count the
    whole diff's + and - lines, cut or not."""

    text: str
    added: int
    removed: int
    cut: bool

    def summary(self) -> str:
        """`+N/-M lines`, for a log line."""
        return f"+{self.added}/-{self.removed} lines"


def diff_texts(
    old: str, new: str, *, old_name: str, new_name: str, max_lines: int = DIFF_MAX_LINES
) -> TextDiff:
    """The unified diff from `old` to `new`, at most `max_lines` lines then a line that says
    how many were cut. A changed region too large for difflib to be quick (it runs on the
    event loop) is shown as replaced whole: still a valid diff, only not the smallest."""
    old_lines, new_lines = _lines(old), _lines(new)
    start, old_end, new_end = _changed_region(old_lines, new_lines)
    if (old_end - start) * (new_end - start) > _DIFFLIB_MAX_WORK:
        lines = [
            f"--- {old_name}\n",
            f"+++ {new_name}\n",
            f"@@ -{_hunk_range(start, old_end)} +{_hunk_range(start, new_end)} @@\n",
            *("-" + line for line in old_lines[start:old_end]),
            *("+" + line for line in new_lines[start:new_end]),
        ]
    else:
        lines = list(difflib.unified_diff(old_lines, new_lines, fromfile=old_name, tofile=new_name))
    body = [line for line in lines[2:] if not line.startswith("@@")]
    added = sum(line.startswith("+") for line in body)
    removed = sum(line.startswith("-") for line in body)
    cut = len(lines) > max_lines
    if cut:
        lines = [*lines[:max_lines], f"... diff cut: {len(lines) - max_lines} more lines\n"]
    return TextDiff("".join(lines), added, removed, cut)


# Above this (changed old lines x changed new lines) difflib can take a second.
_DIFFLIB_MAX_WORK = 250_000


def _lines(text: str) -> list[str]:
    """The lines of `text`, each ending in a newline (a last line without one gets one)."""
    lines = text.splitlines(keepends=True)
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def _changed_region(old: list[str], new: list[str]) -> tuple[int, int, int]:
    """(start, old end, new end): the lines between the common prefix and common suffix."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    old_end, new_end = len(old), len(new)
    while old_end > start and new_end > start and old[old_end - 1] == new[new_end - 1]:
        old_end, new_end = old_end - 1, new_end - 1
    return start, old_end, new_end


def _hunk_range(start: int, end: int) -> str:
    """A unified diff hunk's `start,length` (1-based; an empty range names the line before)."""
    length = end - start
    if length == 1:
        return str(start + 1)
    return f"{start + (1 if length else 0)},{length}"


def sha256_text(text: str) -> str:
    """The sha256 a RuleSet carries for `text` (its UTF-8 bytes)."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RulesChange:
    """One entry of the change log: a rules version accepted or refused.

    For a refused file `version` is None and `sha256` is that of the refused text (None if
    it could not be read); `previous_*` are the rules active before (still active when
    refused), and the diff is against their text."""

    at: float
    result: ChangeResult
    version: str | None
    sha256: str | None
    previous_version: str | None
    previous_sha256: str | None
    who: str
    trigger: str
    diff: TextDiff = field(repr=False)
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON of one `GET /admin/rules/history` entry."""
        return {
            "at": iso_timestamp(self.at),
            "result": self.result,
            "version": self.version,
            "sha256": self.sha256,
            "previous_version": self.previous_version,
            "previous_sha256": self.previous_sha256,
            "who": self.who,
            "trigger": self.trigger,
            "diff": self.diff.text,
            "diff_cut": self.diff.cut,
            "lines_added": self.diff.added,
            "lines_removed": self.diff.removed,
            "problems": list(self.problems),
        }


def iso_timestamp(seconds: float) -> str:
    """ISO 8601 in UTC to the millisecond, e.g. 2025-01-31T12:00:00.250Z."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Version:
    """A rules version as the change log names it: version, sha256 and text."""

    version: str | None
    sha256: str | None
    text: str

    def label(self) -> str:
        """The file name in a diff header, e.g. `rules@2025-01-31.1`."""
        if self.version is not None:
            return f"rules@{self.version}"
        return f"rules@sha256:{self.sha256[:12]}" if self.sha256 else "rules (none)"


NO_VERSION = Version(None, None, "")


def build_change(
    *,
    result: ChangeResult,
    new: Version,
    previous: Version,
    who: str,
    trigger: str,
    problems: Iterable[str] = (),
    at: float | None = None,
) -> RulesChange:
    """The entry for `new` replacing (or, refused, failing to replace) `previous`."""
    diff = diff_texts(previous.text, new.text, old_name=previous.label(), new_name=new.label())
    return RulesChange(
        at=time.time() if at is None else at,
        result=result,
        version=new.version,
        sha256=new.sha256,
        previous_version=previous.version,
        previous_sha256=previous.sha256,
        who=who,
        trigger=trigger,
        diff=diff,
        problems=tuple(problems),
    )


Listener = Callable[[RulesChange], None]


class FleetHistory(Protocol):
    """The change log every replica sharing one store writes to (Redis: history_redis)."""

    async def entries(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` entries of the fleet as JSON objects, newest first, each
        naming its `replica`; raises a GatewayError when the store cannot be read."""
        ...


class RulesHistory:
    """The last `max_entries` changes of this replica, newest first; `fleet` is the whole
    fleet's log when a shared store is configured (its entries are fed by `subscribe`)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: deque[RulesChange] = deque(maxlen=max_entries)
        self._listeners: list[Listener] = []
        self.fleet: FleetHistory | None = None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with each change recorded so far (oldest first), then with every
        new one as it is recorded."""
        for change in reversed(self._entries):
            listener(change)
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    @property
    def max_entries(self) -> int:
        return self._entries.maxlen or 0

    def record(self, change: RulesChange) -> None:
        """Add `change` as the newest entry (the oldest falls off when full)."""
        self._entries.appendleft(change)
        for listener in self._listeners:
            listener(change)

    def entries(self, limit: int | None = None) -> list[RulesChange]:
        """The newest `limit` entries (all without a limit), newest first."""
        items = list(self._entries)
        return items if limit is None else items[:limit]

    def __len__(self) -> int:
        return len(self._entries)
