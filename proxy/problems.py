"""One way to report what is wrong with a file: every problem at once, each with its place.

Config and rules files are both read by walking a YAML tree; each walker collects problems
in a `Problems` and raises a `ProblemsError` subclass naming them all, so one run of
`config check` or `rules check` shows everything to fix.
"""

from __future__ import annotations

from collections.abc import Iterable


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
