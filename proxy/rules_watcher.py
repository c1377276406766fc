"""Hot reload of the routing rules: poll, SIGHUP and admin reload, with an atomic swap.

The active RuleSet is one attribute; a request reads it once, so it sees the old rules or the
new ones, never a mix. A file that fails validation is refused and the last good rules stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy import metrics
from proxy.config import Config, ProviderSettings
from proxy.logs import get_logger
from proxy.rules import ProviderTraits, RequestContext, RulesError, RuleSet, explain
from proxy.rules_file import load_rules_file, parse_rules

log = get_logger("rules")

ReloadOutcome = Literal["ok", "unchanged", "refused"]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    result: ReloadOutcome
    version: str
    sha256: str
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "result": self.result,
            "version": self.version,
            "sha256": self.sha256,
            "problems": self.problems,
        }


def provider_traits(providers: Mapping[str, ProviderSettings]) -> dict[str, ProviderTraits]:
    """What the rules engine needs to know of each configured provider."""
    return {name: p.traits for name, p in providers.items()}


def rules_without_file(default: str, providers: Mapping[str, ProviderTraits]) -> RuleSet:
    """No rules file configured: every request goes to the default provider (guards apply)."""
    return parse_rules(
        f'version: "config"\ndefault: {default}\nrules: []\n',
        source="config",
        providers=providers,
    )


def load_rules(
    path: Path | None, *, default: str, providers: Mapping[str, ProviderTraits]
) -> RuleSet:
    """The rules file at `path`, or without one the default provider's; raise RulesError."""
    if path is None:
        return rules_without_file(default, providers)
    return load_rules_file(path, providers=providers)


def explain_answer(
    rules: RuleSet, context: RequestContext, providers: Mapping[str, ProviderTraits]
) -> dict[str, object]:
    """The decision for `context` with every rule's verdict, and the rules version."""
    result = explain(rules, context, providers).to_dict()
    result["rules_version"] = rules.version
    return result


class RulesWatcher:
    """Holds the active RuleSet and replaces it when the file changes and validates."""

    def __init__(
        self,
        path: Path | None,
        *,
        default: str,
        providers: Mapping[str, ProviderTraits],
        poll_seconds: float = 2.0,
    ) -> None:
        self.path = path
        self.providers = providers
        self.poll_seconds = poll_seconds
        # Raises RulesError at start-up: the gateway refuses to start on invalid rules.
        self.rules = load_rules(path, default=default, providers=providers)
        self.loaded_at = time.time()
        self._stamp = self._file_stamp()
        self._publish(None, self.rules)

    @classmethod
    def from_config(cls, config: Config) -> RulesWatcher:
        """The watcher for the config's rules file (or its default provider without one)."""
        return cls(
            config.routing.rules_file,
            default=config.routing.default_provider,
            providers=provider_traits(config.providers),
            poll_seconds=config.routing.poll_seconds,
        )

    def explain(self, context: RequestContext) -> dict[str, object]:
        """The decision for `context` with every rule's verdict, and the rules version."""
        return explain_answer(self.rules, context, self.providers)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()  # follows symlinks: a Kubernetes ConfigMap swap is seen
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def reload(self, trigger: str) -> ReloadResult:
        """Load the file now; swap in the new rules only if they validate and differ."""
        current = self.rules
        if self.path is None:
            return ReloadResult("unchanged", current.version, current.sha256)
        self._stamp = self._file_stamp()
        try:
            candidate = load_rules_file(self.path, providers=self.providers)
        except RulesError as exc:
            metrics.RULES_RELOADS.labels("refused").inc()
            log.error("rules_refused", trigger=trigger, problems=exc.problems)
            return ReloadResult("refused", current.version, current.sha256, exc.problems)
        if candidate.sha256 == current.sha256:
            metrics.RULES_RELOADS.labels("unchanged").inc()
            return ReloadResult("unchanged", current.version, current.sha256)
        self.rules, self.loaded_at = candidate, time.time()
        self._publish(current, candidate)
        metrics.RULES_RELOADS.labels("ok").inc()
        log.info(
            "rules_loaded",
            trigger=trigger,
            version=candidate.version,
            sha256=candidate.sha256,
            previous_version=current.version,
        )
        return ReloadResult("ok", candidate.version, candidate.sha256)

    def _publish(self, old: RuleSet | None, new: RuleSet) -> None:
        if old is not None:
            # Set to 0 rather than removed: multiprocess mode cannot remove a series.
            metrics.RULES_INFO.labels(old.version, old.sha256).set(0)
        metrics.RULES_INFO.labels(new.version, new.sha256).set(1)
        metrics.RULES_LOADED_TIMESTAMP.set(self.loaded_at)

    def changed_on_disk(self) -> bool:
        return self._file_stamp() != self._stamp

    async def poll_forever(self) -> None:
        """Reload whenever the file's mtime or size changes (content hash decides the swap)."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            if self.changed_on_disk():
                self.reload("poll")

    def to_dict(self) -> dict[str, object]:
        """What GET /admin/rules shows."""
        return {
            **self.rules.to_dict(),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "poll_seconds": self.poll_seconds,
        }
