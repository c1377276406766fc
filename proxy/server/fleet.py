"""The whole-fleet view: the replicas sharing one Redis catalog publish heartbeats, list one
another, and run fleet-wide admin calls over Redis pub/sub.

Layout (under the catalog's `key_prefix`):

- `{key_prefix}fleet:replica:{replica_id}`: the replica's last heartbeat (JSON: version,
  rules version and sha256, catalog state, circuit states, requests in flight), written every
  `fleet.heartbeat_seconds` and expiring after three intervals, so a replica that died leaves
  the list then; a replica that stops cleanly removes its own at once.
- `{key_prefix}fleet:replicas`: a sorted set naming them (score: when the heartbeat expires),
  so listing reads a few keys instead of scanning the catalog's; a member whose heartbeat is
  gone is skipped, and trimmed a minute later (a minute of clock skew between hosts is fine).
- `{key_prefix}fleet:commands`: the channel of fleet-wide admin commands, and
  `{key_prefix}fleet:replies:{replica_id}` each requester's channel for the answers.

Who may send: whoever reaches the private Redis, as for the catalog's own writes. A message
holds no token; it names the admin caller, so the rules change log says who asked. A message
that is not one of ours (bad JSON, a field missing or of the wrong kind, too large) is logged
and counted (`drm_gateway_fleet_messages_ignored_total`), then ignored.

Under `serve --workers N` each worker is a replica of its own (see `replica_id`): a command
reaches every worker, where a plain admin call reaches the one the kernel picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy import __version__
from proxy.catalog import CachedCatalog
from proxy.catalog.missing import MissingStore
from proxy.catalog.redis import create_client, follow_channels
from proxy.config import Config
from proxy.config.fleet import REPLICA_ID, FleetSettings
from proxy.domain import asset_id_or_none
from proxy.errors import CatalogUnavailable, GatewayError, InternalError
from proxy.gateway import Gateway
from proxy.observability import metrics
from proxy.observability.logs import FailureLog, get_logger
from proxy.routing.watcher import RulesWatcher
from proxy.server.admin import (
    FLEET_COMMAND,
    INVALIDATE_COMMAND,
    RELOAD_COMMAND,
    admin_caller,
    invalidate_here,
    reload_answer,
    require_admin,
)
from proxy.server.admission import Admission
from proxy.server.middleware import replica_name
from proxy.upstream.resilience import Resilience

log = get_logger("fleet")

COMMANDS = (RELOAD_COMMAND, INVALIDATE_COMMAND)
MAX_MESSAGE_BYTES = 16_384  # a command or reply is a few hundred bytes
PING_SECONDS = 1.0  # at least: a busy catalog is not yet one that does not answer
NO_REDIS = "no Redis configured: this gateway acts on one replica only"
REDIS_DOWN = "Redis does not answer: only this replica is shown"
NOTHING_DONE = "Redis does not answer: nothing was done on any replica."
_TRIM_AFTER_SECONDS = 60.0
_REQUEST_ID = re.compile(r"[0-9a-f]{16}")
_CALLER = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._:-]")
# workers.py names each worker process so; the index keeps a configured id stable on restart.
_WORKER_PROCESS = re.compile(r"drm-gateway-worker-(\d+)")


def replica_id(
    settings: FleetSettings, *, pid: int | None = None, process: str | None = None
) -> str:
    """This process's id in the fleet: the configured `fleet.replica_id` (with `-w<index>` in
    a worker of `serve --workers`), else the host name and the process id."""
    pid = os.getpid() if pid is None else pid
    process = multiprocessing.current_process().name if process is None else process
    if settings.replica_id is None:
        host = _NOT_IN_ID.sub("-", replica_name()).strip("-.:_")[:80] or "gateway"
        return f"{host}-{pid}"
    worker = _WORKER_PROCESS.fullmatch(process)
    return f"{settings.replica_id}-w{worker[1]}" if worker else settings.replica_id


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Replica:
    """This process as the fleet sees it: its heartbeat, and the admin commands it runs."""

    def __init__(
        self,
        replica_id: str,
        *,
        backend: str,
        catalog: CachedCatalog,
        rules: RulesWatcher,
        resilience: Resilience,
        missing: MissingStore | None,
        admission: Admission | None,
        ping_seconds: float,
    ) -> None:
        self.id = replica_id
        self._backend = backend
        self._catalog = catalog
        self._rules = rules
        self._resilience = resilience
        self._missing = missing
        self._admission = admission
        self._ping_seconds = ping_seconds

    async def heartbeat(self, clock: Callable[[], float] = time.time) -> dict[str, Any]:
        """What this replica publishes: its versions and health, stamped by `clock`."""
        catalog_ok = await self._catalog_answers()
        rules = self._rules.rules
        circuits = self._resilience.snapshot()["circuits"]
        return {
            "replica_id": self.id,
            "version": __version__,
            "rules_version": rules.version if rules is not None else None,
            "rules_sha256": rules.sha256 if rules is not None else None,
            "catalog": {"backend": self._backend, "ok": catalog_ok},
            "circuits": {f"{c['provider']}/{c['drm']}": c["state"] for c in circuits},
            "in_flight": self._admission.in_flight if self._admission is not None else 0,
            "sent_at": clock(),
        }

    async def _catalog_answers(self) -> bool:
        try:
            async with asyncio.timeout(self._ping_seconds):
                await self._catalog.ping()
        except (GatewayError, TimeoutError):
            return False
        return True

    async def run(self, command: str, args: Mapping[str, str], who: str) -> dict[str, Any]:
        """Run one fleet-wide command here; the answer an admin call here would give."""
        try:
            if command == RELOAD_COMMAND:
                return self._rules.reload("fleet", who=who).to_dict()
            return await invalidate_here(self._catalog, self._missing, args.get("asset"))
        except GatewayError as exc:
            return {"error": exc.code, "message": exc.message}
        except Exception:  # a bug must not stop the listener: logged, answered as a 500 is
            log.exception("fleet_command_failed", command=command)
            error = InternalError()
            return {"error": error.code, "message": error.message}


@dataclass(frozen=True, slots=True)
class Command:
    """A fleet-wide admin command as read from the channel."""

    id: str
    command: str
    sender: str
    who: str
    args: Mapping[str, str]


@dataclass
class _Waiting:
    """A fleet-wide call waiting for the replicas' answers."""

    expected: set[str]
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self, replica: str, body: dict[str, Any]) -> None:
        self.answers[replica] = body
        if self.expected <= self.answers.keys():
            self.done.set()


class _Ignored(Exception):
    """A message that is not one of ours; the text says why (never the message itself)."""


class Fleet:
    """This replica's part in the fleet: heartbeats, the listing, fleet-wide commands.
    Without a Redis `client` it knows itself only."""

    def __init__(
        self,
        replica: Replica,
        client: Redis | None,
        *,
        key_prefix: str = "drm-gateway:",
        settings: FleetSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica = replica
        self.settings = settings or FleetSettings()
        self._client = client
        self._clock = clock
        self._prefix = f"{key_prefix}fleet:"
        self._index = f"{self._prefix}replicas"
        self._commands = f"{self._prefix}commands"
        self._replies = self._reply_channel(replica.id)
        self._waiting: dict[str, _Waiting] = {}
        self._subscribed = asyncio.Event()
        self._beat_soon = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._failures = FailureLog(
            log, "fleet_heartbeat_failed", describe=lambda exc: type(exc).__name__
        )

    @property
    def linked(self) -> bool:
        """Whether a Redis links this replica to the others."""
        return self._client is not None

    def _key(self, replica: str) -> str:
        return f"{self._prefix}replica:{replica}"

    def _reply_channel(self, replica: str) -> str:
        return f"{self._prefix}replies:{replica}"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Publish the first heartbeat, then subscribe (waiting up to the reply timeout, so
        a fleet-wide call right after start-up reaches this replica), then keep at both."""
        if self._client is None:
            return
        await self.beat()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._beat_forever()), loop.create_task(self._listen())]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.reply_timeout_seconds):
                await self._subscribed.wait()
        log.info("fleet_joined", replica_id=self.replica.id, subscribed=self._subscribed.is_set())

    async def close(self) -> None:
        """Stop beating and listening; withdraw this replica's heartbeat; close the client."""
        self._closing = True
        pending = set(self._tasks)
        while pending:
            # Again until done: redis-py may turn a cancellation in a read into a connection
            # error, which the listener takes for an outage (the loops check `_closing` too).
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        if self._client is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(self._key(self.replica.id))
            pipe.zrem(self._index, self.replica.id)
            await pipe.execute()
        except (RedisError, OSError):
            pass  # it expires on its own
        await self._client.aclose()
        log.info("fleet_left", replica_id=self.replica.id)

    # --- heartbeats --------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await self._beat_soon.wait()
            self._beat_soon.clear()
            await self.beat()

    async def beat(self) -> None:
        """Publish this replica's heartbeat now (a failure is logged once per cause)."""
        assert self._client is not None
        beat = await self.replica.heartbeat(self._clock)
        now, ttl = float(beat["sent_at"]), self.settings.ttl_seconds
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._key(self.replica.id), orjson.dumps(beat), px=max(1, int(ttl * 1000)))
            pipe.zadd(self._index, {self.replica.id: now + ttl})
            pipe.zremrangebyscore(self._index, "-inf", now - _TRIM_AFTER_SECONDS)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failures.failed(exc)
            return
        self._failures.recovered()

    async def heartbeats(self) -> list[dict[str, Any]]:
        """Every live replica's last heartbeat, by replica id; CatalogUnavailable if Redis
        does not answer."""
        assert self._client is not None
        try:
            members = cast(list[bytes], await self._client.zrange(self._index, 0, -1))
            names = [member.decode() for member in members]
            keys = [self._key(name) for name in names]
            values = cast(list[bytes | None], await self._client.mget(keys) if keys else [])
        except (RedisError, OSError) as exc:
            raise CatalogUnavailable(REDIS_DOWN) from exc
        beats = []
        for value in values:
            if value is None:
                continue  # expired: the replica stopped beating
            try:
                beats.append(_heartbeat(value))
            except _Ignored as why:
                _ignore("heartbeat", str(why))
        return sorted(beats, key=lambda beat: str(beat["replica_id"]))

    async def view(self) -> dict[str, Any]:
        """GET /admin/fleet: the live replicas, and where they disagree."""
        note = None
        if self._client is None:
            beats, note = [await self.replica.heartbeat(self._clock)], NO_REDIS
        else:
            try:
                beats = await self.heartbeats()
            except CatalogUnavailable:
                beats, note = [await self.replica.heartbeat(self._clock)], REDIS_DOWN
            if all(beat["replica_id"] != self.replica.id for beat in beats):
                beats.append(await self.replica.heartbeat(self._clock))  # not written yet
        now = self._clock()
        replicas = [_listed(beat, now) for beat in beats]
        found = disagreements(replicas)
        if note == REDIS_DOWN:
            found.insert(0, "Redis does not answer: the other replicas cannot be seen")
        return {
            "scope": "fleet" if self._client is not None else "replica",
            "self": self.replica.id,
            "note": note,
            "replicas": sorted(replicas, key=lambda r: str(r["replica_id"])),
            "agree": not found,
            "disagreements": found,
        }

    # --- fleet-wide commands -----------------------------------------------------------

    async def ask(
        self, command: str, args: Mapping[str, str], who: str
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Run `command` here and on every live replica: (answers by replica id, the live
        replicas that did not answer within `fleet.reply_timeout_seconds`)."""
        if self._client is None or not self._subscribed.is_set():
            raise CatalogUnavailable(NOTHING_DONE)
        try:
            live = {str(beat["replica_id"]) for beat in await self.heartbeats()}
        except CatalogUnavailable:
            raise CatalogUnavailable(NOTHING_DONE) from None
        request_id = secrets.token_hex(8)
        waiting = _Waiting(live - {self.replica.id})
        self._waiting[request_id] = waiting
        try:
            message = {
                "id": request_id,
                "command": command,
                "from": self.replica.id,
                "who": who,
                "args": dict(args),
            }
            try:
                await self._client.publish(self._commands, orjson.dumps(message))
            except (RedisError, OSError) as exc:
                raise CatalogUnavailable(NOTHING_DONE) from exc
            own = await self._run(command, args, who, self.replica.id)
            if not waiting.expected:
                waiting.done.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.reply_timeout_seconds):
                    await waiting.done.wait()
        finally:
            del self._waiting[request_id]
        answers = {**waiting.answers, self.replica.id: own}
        return answers, sorted(waiting.expected - answers.keys())

    async def _run(
        self, command: str, args: Mapping[str, str], who: str, sender: str
    ) -> dict[str, Any]:
        answer = await self.replica.run(command, args, who)
        log.info(
            "fleet_command",
            replica_id=self.replica.id,
            command=command,
            who=who,
            requested_by=sender,
            result=answer.get("result", answer.get("error", "ok")),
        )
        if command == RELOAD_COMMAND:
            self._beat_soon.set()  # the fleet view shows the new rules without waiting
        return answer

    async def _listen(self) -> None:
        """Until closed: answer commands, collect replies; resubscribe with backoff."""
        assert self._client is not None
        commands, replies = self._commands.encode(), self._replies.encode()

        async def on_message(message: Mapping[str, Any]) -> None:
            if message["channel"] == commands:
                await self._on_command(message["data"])
            elif message["channel"] == replies:
                self._on_reply(message["data"])

        def lost(exc: BaseException) -> None:
            self._subscribed.clear()
            log.warning(
                "fleet_channel_lost",
                error=type(exc).__name__,
                detail="fleet-wide admin calls answer 503 until Redis is back",
            )

        def resumed(down_seconds: float) -> None:
            log.info("fleet_channel_resumed", down_seconds=down_seconds)

        await follow_channels(
            self._client,
            (self._commands, self._replies),
            on_message,
            on_subscribed=self._subscribed.set,
            on_lost=lost,
            on_resumed=resumed,
            running=lambda: not self._closing,
        )

    async def _on_command(self, data: bytes) -> None:
        try:
            command = parse_command(data)
        except _Ignored as why:
            _ignore("command", str(why))
            return
        if command.sender == self.replica.id:
            return  # the requester runs its own share directly
        answer = await self._run(command.command, command.args, command.who, command.sender)
        reply = {"id": command.id, "replica_id": self.replica.id, "body": answer}
        assert self._client is not None
        try:
            await self._client.publish(self._reply_channel(command.sender), orjson.dumps(reply))
        except (RedisError, OSError) as exc:
            log.warning("fleet_reply_failed", to=command.sender, error=type(exc).__name__)

    def _on_reply(self, data: bytes) -> None:
        try:
            request_id, replica, body = parse_reply(data)
        except _Ignored as why:
            _ignore("reply", str(why))
            return
        waiting = self._waiting.get(request_id)
        if waiting is not None:  # else it came after the call gave up on it
            waiting.answered(replica, body)


def _ignore(kind: str, why: str) -> None:
    metrics.FLEET_MESSAGES_IGNORED.inc()
    log.warning("fleet_message_ignored", kind=kind, why=why)


def _object(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise _Ignored(f"larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _Ignored("not JSON") from None
    if not isinstance(value, dict):
        raise _Ignored("not a JSON object")
    return value


def _text(value: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    text = value.get(name)
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise _Ignored(f"'{name}' is missing or malformed")
    return text


def parse_command(data: bytes) -> Command:
    """A command from the channel; _Ignored (saying why) unless it is well formed."""
    value = _object(data)
    request_id = _text(value, "id", _REQUEST_ID)
    sender = _text(value, "from", REPLICA_ID)
    who = _text(value, "who", _CALLER)
    command = value.get("command")
    if command not in COMMANDS:
        raise _Ignored("unknown command")
    args = value.get("args")
    if not isinstance(args, dict) or set(args) - {"asset"}:
        raise _Ignored("'args' is malformed")
    asset = args.get("asset")
    if asset is not None and (not isinstance(asset, str) or asset_id_or_none(asset) is None):
        raise _Ignored("'args.asset' is not an asset id")
    return Command(request_id, str(command), sender, who, {"asset": asset} if asset else {})


def parse_reply(data: bytes) -> tuple[str, str, dict[str, Any]]:
    """(request id, replica id, answer) of a reply; _Ignored unless it is well formed."""
    value = _object(data)
    body = value.get("body")
    if not isinstance(body, dict):
        raise _Ignored("'body' is missing or malformed")
    return _text(value, "id", _REQUEST_ID), _text(value, "replica_id", REPLICA_ID), body


_HEARTBEAT_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "replica_id": str,
    "version": str,
    "rules_version": (str, type(None)),
    "rules_sha256": (str, type(None)),
    "catalog": dict,
    "circuits": dict,
    "in_flight": int,
    "sent_at": (int, float),
}


def _heartbeat(data: bytes) -> dict[str, Any]:
    value = _object(data)
    for name, kind in _HEARTBEAT_FIELDS.items():
        if not isinstance(value.get(name), kind):
            raise _Ignored(f"'{name}' is missing or malformed")
    return value


def _listed(beat: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A heartbeat as GET /admin/fleet lists it: when it was sent, and how long ago."""
    sent_at = float(beat["sent_at"])
    listed = {name: value for name, value in beat.items() if name != "sent_at"}
    listed["seen_at"] = _timestamp(sent_at)
    listed["age_seconds"] = round(max(0.0, now - sent_at), 3)
    return listed


def disagreements(replicas: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the replicas disagree: rules, gateway version, a catalog that does not answer,
    a circuit open on some replicas only. Empty when they agree."""
    found = []
    rules = _grouped((r, _rules_label(r)) for r in replicas)
    if len(rules) > 1:
        found.append("rules differ: " + _groups(rules))
    versions = _grouped((r, r["version"]) for r in replicas)
    if len(versions) > 1:
        found.append("gateway versions differ: " + _groups(versions))
    found += [
        f"catalog does not answer on {r['replica_id']}"
        for r in replicas
        if not r["catalog"].get("ok")
    ]
    circuits = sorted({name for r in replicas for name in r["circuits"]})
    for name in circuits:
        states = _grouped((r, r["circuits"][name]) for r in replicas if name in r["circuits"])
        if "open" in states and len(states) > 1:
            found.append(f"circuit {name} open on some replicas only: " + _groups(states))
    return found


def _rules_label(replica: Mapping[str, Any]) -> str:
    sha256 = replica["rules_sha256"]
    return f"{replica['rules_version']} (sha256 {sha256[:12]})" if sha256 else "no rules active"


def _grouped(pairs: Iterable[tuple[Mapping[str, Any], object]]) -> dict[str, list[str]]:
    """Replica ids by value, from (replica, value) pairs."""
    groups: dict[str, list[str]] = {}
    for replica, value in pairs:
        groups.setdefault(str(value), []).append(str(replica["replica_id"]))
    return groups


def _groups(groups: Mapping[str, list[str]]) -> str:
    return "; ".join(
        f"{value} on {', '.join(sorted(ids))}" for value, ids in sorted(groups.items())
    )


# --- wiring --------------------------------------------------------------------------------

FLEET = web.AppKey("fleet", Fleet)


@asynccontextmanager
async def open_fleet(
    config: Config,
    catalog: CachedCatalog,
    rules: RulesWatcher,
    gateway: Gateway,
    admission: Admission | None,
) -> AsyncIterator[Fleet]:
    """This replica's Fleet, linked through the Redis catalog's Redis when there is one."""
    settings = config.fleet
    replica = Replica(
        replica_id(settings),
        backend=config.catalog.backend,
        catalog=catalog,
        rules=rules,
        resilience=gateway.resilience,
        missing=gateway.missing,
        admission=admission,
        ping_seconds=max(PING_SECONDS, settings.heartbeat_seconds),
    )
    redis = config.catalog.redis
    if config.catalog.backend != "redis" or redis is None:
        yield Fleet(replica, None, settings=settings)
        return
    fleet = Fleet(replica, create_client(redis), key_prefix=redis.key_prefix, settings=settings)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.close()


async def fleet_view(request: web.Request) -> web.Response:
    return web.json_response(await request.app[FLEET].view())


async def _fleet_command(
    request: web.Request, command: str, args: Mapping[str, str]
) -> web.Response:
    """A fleet-wide admin call: every live replica's answer, and who did not answer."""
    who = admin_caller(request)
    answers, missing = await request.app[FLEET].ask(command, args, who)
    log.info("fleet_call", command=command, who=who, answered=sorted(answers), missing=missing)
    refused = any(answer.get("result") == "refused" for answer in answers.values())
    answer = {"scope": "fleet", "replicas": answers, "missing": missing}
    return reload_answer(request, answer, "refused" if refused else "ok")


def add_fleet_routes(app: web.Application, fleet: Fleet) -> None:
    """GET /admin/fleet, and `?scope=fleet` for the admin calls (when Redis links us)."""
    app[FLEET] = fleet
    if fleet.linked:
        app[FLEET_COMMAND] = _fleet_command
    app.router.add_get("/admin/fleet", require_admin(fleet_view))
