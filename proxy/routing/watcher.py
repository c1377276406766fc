"""Hot reload of the routing rules: poll, SIGHUP and admin reload, with an atomic swap.

The active RuleSet is one attribute; a request reads it once, so it sees the old rules or the
new ones, never a mix. A file that fails validation is refused and the last good rules stay.
Every version accepted or refused goes to `history` (proxy.routing.history) with who asked
and its diff, and to one `rules_loaded` or `rules_refused` log line.

A file refused at start-up leaves no rules active: the gateway starts anyway, not ready
(/readyz lists the problems), and answers 503 until a reload finds the file valid. We start
unready rather than from a persisted last-known-good copy: the mounted file stays the one
truth (no replica serves rules nobody can see in the ConfigMap), a fresh pod has no copy to
fall back on anyway, and a rollout of a bad file stalls on readiness instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from proxy.config import Config, ProviderSettings
from proxy.errors import RulesUnavailable
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.routing.file import load_rules_file, parse_rules, read_rules_text
from proxy.routing.history import (
    NO_VERSION,
    ChangeResult,
    RulesChange,
    RulesHistory,
    Version,
    build_change,
    sha256_text,
    who_for,
)
from proxy.routing.rules import ProviderTraits, RequestContext, RulesError, RuleSet, explain

log = get_logger("rules")

ReloadOutcome = Literal["ok", "unchanged", "refused"]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """A reload attempt: its outcome and the rules active after it (None: none are)."""

    result: ReloadOutcome
    version: str | None
    sha256: str | None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "result": self.result,
            "version": self.version,
            "sha256": self.sha256,
            "problems": self.problems,
        }


def provider_traits(providers: Mapping[str, ProviderSettings]) -> dict[str, ProviderTraits]:
    """What the rules engine needs to know of each configured provider (and, for the
    `keys:` section, whether it has a key API, and one that can take keys in)."""
    return {
        name: replace(
            p.traits,
            key_api=p.key_api is not None,
            key_generate_only=p.key_api is not None and not p.key_api.transfers,
        )
        for name, p in providers.items()
    }


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


def _version_of(rules: RuleSet) -> Version:
    return Version(rules.version, rules.sha256, rules.text)


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
        history: RulesHistory | None = None,
    ) -> None:
        self.path = path
        self.default = default
        self.providers = providers
        self.poll_seconds = poll_seconds
        self.history = history if history is not None else RulesHistory()
        self.rules: RuleSet | None = None  # None until the file validates: not ready
        self.problems: list[str] = []  # why the file was refused at the last attempt
        self.loaded_at: float | None = None
        self._stamp: tuple[int, int] | None = None
        candidate, seen = self._attempt()
        if candidate is None:
            self._refuse("start", "start", seen)
        else:
            self._accept("start", "start", candidate)

    @classmethod
    def from_config(cls, config: Config) -> RulesWatcher:
        """The watcher for the config's rules file (or its default provider without one)."""
        return cls(
            config.routing.rules_file,
            default=config.routing.default_provider,
            providers=provider_traits(config.providers),
            poll_seconds=config.routing.poll_seconds,
        )

    def active(self) -> RuleSet:
        """The rules to decide with (read once per request); RulesUnavailable if none."""
        rules = self.rules
        if rules is None:
            raise RulesUnavailable()
        return rules

    def explain(self, context: RequestContext) -> dict[str, object]:
        """The decision for `context` with every rule's verdict, and the rules version."""
        return explain_answer(self.active(), context, self.providers)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()  # follows symlinks: a Kubernetes ConfigMap swap is seen
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _attempt(self) -> tuple[RuleSet | None, Version]:
        """Load the file and record whether it validates (problems, gauge): the rules (None
        if refused) and the text read, for the change log."""
        self._stamp = self._file_stamp()
        text: str | None = None
        try:
            if self.path is None:
                candidate = rules_without_file(self.default, self.providers)
            else:
                text = read_rules_text(self.path)
                candidate = parse_rules(text, source=str(self.path), providers=self.providers)
        except RulesError as exc:
            self.problems = exc.problems
            metrics.RULES_FILE_VALID.set(0)
            return None, Version(None, None if text is None else sha256_text(text), text or "")
        self.problems = []
        metrics.RULES_FILE_VALID.set(1)
        return candidate, _version_of(candidate)

    def reload(self, trigger: str, *, who: str | None = None) -> ReloadResult:
        """Load the file now; swap in the new rules only if they validate and differ.
        `who` asked for it (an admin caller's name); by default the trigger says."""
        current = self.rules
        if self.path is None:
            return self._result("unchanged")
        candidate, seen = self._attempt()
        if candidate is None:
            metrics.RULES_RELOADS.labels("refused").inc()
            self._refuse(trigger, who_for(trigger, who), seen)
            return self._result("refused")
        if current is not None and candidate.sha256 == current.sha256:
            metrics.RULES_RELOADS.labels("unchanged").inc()
            return self._result("unchanged")
        self._accept(trigger, who_for(trigger, who), candidate)
        metrics.RULES_RELOADS.labels("ok").inc()
        return self._result("ok")

    def _record(self, result: ChangeResult, trigger: str, who: str, new: Version) -> RulesChange:
        previous = self.rules
        change = build_change(
            result=result,
            new=new,
            previous=NO_VERSION if previous is None else _version_of(previous),
            who=who,
            trigger=trigger,
            problems=self.problems if result == "refused" else (),
        )
        self.history.record(change)
        return change

    def _accept(self, trigger: str, who: str, candidate: RuleSet) -> None:
        """Swap `candidate` in, record it and log one line."""
        change = self._record("accepted", trigger, who, _version_of(candidate))
        self._activate(candidate)
        log.info(
            "rules_loaded",
            trigger=trigger,
            who=who,
            version=candidate.version,
            sha256=candidate.sha256,
            previous_version=change.previous_version,
            diff=change.diff.summary(),
        )

    def _refuse(self, trigger: str, who: str, seen: Version) -> None:
        """Record the refused file and log one line: every problem, what is served meanwhile."""
        change = self._record("refused", trigger, who, seen)
        self._log_refused(trigger, who, change.diff.summary())

    def _result(self, outcome: ReloadOutcome) -> ReloadResult:
        rules = self.rules
        if rules is None:
            return ReloadResult(outcome, None, None, self.problems)
        return ReloadResult(outcome, rules.version, rules.sha256, self.problems)

    def _log_refused(self, trigger: str, who: str, diff: str) -> None:
        """One line: every problem, and what is served meanwhile."""
        current = self.rules
        log.error(
            "rules_refused",
            trigger=trigger,
            who=who,
            diff=diff,
            path=str(self.path),
            problems=self.problems,
            serving=(
                f"the previous rules, version {current.version}"
                if current is not None
                else "nothing: not ready until the file validates "
                "(reloaded on change, SIGHUP or POST /admin/rules/reload)"
            ),
        )

    def _activate(self, new: RuleSet) -> None:
        old, self.rules, self.loaded_at = self.rules, new, time.time()
        if old is not None:
            metrics.forget(metrics.RULES_INFO, old.version, old.sha256)
        metrics.RULES_INFO.labels(new.version, new.sha256).set(1)
        metrics.RULES_LOADED_TIMESTAMP.set(self.loaded_at)
        metrics.initialise_decisions(new)

    def close(self) -> None:
        """Withdraw the active rules from the metrics: a stopped gateway runs none."""
        if self.rules is not None:
            metrics.forget(metrics.RULES_INFO, self.rules.version, self.rules.sha256)

    def readiness(self) -> tuple[list[str], list[str]]:
        """(problems, warnings) for /readyz: no rules active makes the gateway unready; a
        refused file while earlier rules serve is only a warning (the replica still routes)."""
        listed = [f"rules: {problem}" for problem in self.problems]
        if self.rules is None:
            return [f"no routing rules active: {self.path} is refused", *listed], []
        if self.problems:
            refused = f"{self.path} is refused; serving version {self.rules.version}"
            return [], [refused, *listed]
        return [], []

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
        rules = self.rules
        identity = (
            rules.to_dict()
            if rules is not None
            else {"version": None, "sha256": None, "source": str(self.path), "rules": []}
        )
        loaded = self.loaded_at
        return {
            **identity,
            "loaded_at": None
            if loaded is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded)),
            "poll_seconds": self.poll_seconds,
            "file_valid": not self.problems,
            "problems": self.problems,
        }
