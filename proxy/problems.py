"""One way to report what is wrong with a file: every problem at once, each with its place.

Config and rules files are both read by walking a YAML tree; each walker collects problems
in a `Problems` and raises a `ProblemsError` subclass naming them all, so one run of
`config check` or `rules check` shows everything to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class ProblemsError(ValueError):
    """A file was refused; `problems` lists every reason, `str()` one per line."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects problems as `where: message` lines."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)


def show(value: Any) -> str:
    """A value as a problem quotes it: its type and the start of its repr."""
    return f"{type(value).__name__} {repr(value)[:40]}"


def named_items(
    raw: Any, where: str, label: str, problem: Callable[[str, str], None]
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Each mapping of the list `raw` (at `where`) with its 1-based index and its place
    (`<label> 'name' (#3)`); a non-list, a non-mapping item and a repeated `name` are
    reported to `problem` (the item is still given when only its name repeats)."""
    if not isinstance(raw, list):
        problem(where, f"must be a list, not {show(raw)}")
        return
    first_index: dict[str, int] = {}
    for index, item in enumerate(raw, start=1):
        name = item.get("name") if isinstance(item, dict) else None
        place = f"{label} '{name}' (#{index})" if isinstance(name, str) else f"{label} #{index}"
        if isinstance(name, str) and name in first_index:
            problem(f"{place}: name", f"duplicate of {label} #{first_index[name]}")
        elif isinstance(name, str):
            first_index[name] = index
        if not isinstance(item, dict):
            problem(place, f"must be a mapping, not {show(item)}")
        else:
            yield index, place, item
