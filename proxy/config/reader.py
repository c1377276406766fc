"""The config reader: walks a raw YAML tree and collects every problem with its key path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from proxy.problems import Problems, ProblemsError

T = TypeVar("T")
N = TypeVar("N", int, float)
C = TypeVar("C", bound=str)


class ConfigError(ProblemsError):
    """The configuration has problems; `problems` lists every one with its key path."""


class ConfigReader(Problems):
    """Walks the raw YAML tree, collecting problems with their key paths."""

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        super().__init__()
        self.base_dir = base_dir
        self.env = env

    def mapping(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping")
            return {}
        for key in sorted(set(raw) - allowed, key=str):
            self.problem(f"{path}.{key}" if path else str(key), "unknown field")
        return raw

    @overload
    def value(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[T], default: _Required | None
    ) -> T | None: ...

    @overload
    def value(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[T], default: T
    ) -> T: ...

    def value(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[T], default: object
    ) -> object:
        """`raw[key]` checked to be a `kind` (an int passes as a float), else `default` and a
        problem; a missing key is `default`, or a problem if that is REQUIRED (then None)."""
        full = f"{path}.{key}" if path else key
        if key not in raw:
            if default is REQUIRED:
                self.problem(full, "is missing, and has no default")
                return None
            return default
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(full, f"must be {_KIND_NAMES.get(kind, kind.__name__)}")
            return None if default is REQUIRED else default
        return value

    def choice(
        self, raw: Mapping[str, Any], key: str, path: str, choices: Sequence[C], default: C
    ) -> C:
        """`raw[key]`, one of `choices` (else `default` and a problem naming them)."""
        value = self.value(raw, key, path, str, str(default))
        for known in choices:
            if value == known:
                return known
        self.problem(f"{path}.{key}" if path else key, f"must be one of {', '.join(choices)}")
        return default

    @overload
    def positive(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[N], default: _Required | None
    ) -> N | None: ...

    @overload
    def positive(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[N], default: N
    ) -> N: ...

    def positive(
        self, raw: Mapping[str, Any], key: str, path: str, kind: type[N], default: object
    ) -> object:
        """`value`, and a problem unless it is greater than 0."""
        value = self.value(raw, key, path, kind, cast(Any, default))
        if value is not None and value <= 0:
            self.problem(f"{path}.{key}", "must be greater than 0")
            return default
        return value

    def secret(self, raw: Any, path: str) -> str | None:
        ref = self.mapping(raw, path, {"env", "file"})
        if len(ref.keys() & {"env", "file"}) != 1:
            self.problem(path, "must name exactly one of 'env' or 'file'")
            return None
        if "env" in ref:
            name = str(ref["env"])
            if name not in self.env or not self.env[name]:
                self.problem(f"{path}.env", f"environment variable {name} is not set")
                return None
            return self.env[name]
        file = self.path(ref["file"], f"{path}.file")
        if file is None:
            return None
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.problem(f"{path}.file", f"cannot read {file} ({exc.strerror})")
            return None

    def path(self, raw: Any, path: str) -> Path | None:
        if not isinstance(raw, str) or not raw:
            self.problem(path, "must be a file path")
            return None
        candidate = Path(raw)
        return candidate if candidate.is_absolute() else self.base_dir / candidate


class _Required:
    """The marker for a field that has no default."""


REQUIRED = _Required()
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
}
