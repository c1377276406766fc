"""The rehearsal's players: a paced open-loop load (request i is sent at i / rate whatever the
earlier ones are doing, as tests/perf/chaos_load.py does) over all DRM systems, skewed toward
popular titles, each with a valid player token; and what each request got, kept compactly
(typed arrays indexed by request number, about 30 bytes a request), plus the gateway's own
account of it read from its JSON access lines (joined by the X-Request-Id we send).

A request is `ok` only when it is answered 200 and, for ClearKey and AES-128, the key it
carries is the title's real content key (a provider handing out another key is a failed
playback even with a 200)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from proxy.access.cors import PROVIDER_HEADER
from tests.conftest import player_token
from tests.perf.chaos_load import player_sessions
from tests.perf.rehearse_stack import asset_id, expected_key, key_ids

DRMS = ("widevine", "playready", "fairplay", "clearkey", "aes128")
DRM_WEIGHTS = (35, 20, 15, 15, 15)
PROVIDERS = ("legacy", "incoming")  # provider codes 0 and 1; -1 unknown
ZIPF_S = 0.9
PLAYERS = 64  # distinct player tokens (users)
PLAYER_SOURCES = 8  # loopback source addresses (127.0.1.x), as chaos_load does
WIDEVINE_CHALLENGE = b"rehearsal-widevine-challenge-" * 20
PLAYREADY_CHALLENGE = b"<soap:Envelope>" + b"r" * 400 + b"</soap:Envelope>"
FAIRPLAY_SPC = b"\x00\x00\x00\x01" + b"s" * 600
OK, HTTP_ERROR, UNANSWERED, WRONG_KEY = 0, 1, 2, 3
VERDICTS = ("ok", "http_error", "unanswered", "wrong_key")


def request_id(run: str, number: int) -> str:
    return f"{run}-{number:09d}"


@dataclass
class Plan:
    """Who asks for what, when: request i is due at i / rate, for title titles[i], DRM drms[i]."""

    rate: float
    titles: array[int]
    drms: array[int]

    @property
    def total(self) -> int:
        return len(self.titles)

    @classmethod
    def make(cls, titles: int, rate: float, seconds: float, seed: int = 18) -> Plan:
        """Zipf-like popularity (s = ZIPF_S) over a fixed shuffle of the titles."""
        rng = random.Random(seed)
        order = list(range(titles))
        rng.shuffle(order)
        weights = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_S for rank in range(titles)))
        total = int(rate * seconds)
        ranks = rng.choices(range(titles), cum_weights=weights, k=total)
        drms = rng.choices(range(len(DRMS)), weights=DRM_WEIGHTS, k=total)
        return cls(rate, array("l", (order[r] for r in ranks)), array("b", drms))


@dataclass
class Records:
    """Per request number: what the player saw, and (from the access log) what the gateway
    decided. -1 where not known."""

    total: int
    sent: array[float] = field(init=False)  # due time, seconds from the load's start
    latency: array[float] = field(init=False)
    status: array[int] = field(init=False)  # HTTP status, 0: no answer
    verdict: array[int] = field(init=False)  # OK, HTTP_ERROR, UNANSWERED, WRONG_KEY
    answered: array[int] = field(init=False)  # provider code of the answer (header or log)
    routed: array[int] = field(init=False)  # provider code the rules chose (log)
    fallback: array[int] = field(init=False)  # 1: answered by the fallback (log)
    decided: array[float] = field(init=False)  # gateway-side start, seconds from load start
    issued: int = 0  # requests 0..issued-1 were sent
    done: int = 0

    def __post_init__(self) -> None:
        n = self.total
        self.sent = array("d", bytes(8 * n))
        self.latency = array("f", bytes(4 * n))
        self.status = array("H", bytes(2 * n))
        self.verdict = array("b", bytes(n))
        self.answered = array("b", [-1]) * n
        self.routed = array("b", [-1]) * n
        self.fallback = array("b", bytes(n))
        self.decided = array("d", [-1.0]) * n


def _provider_code(name: str | None) -> int:
    return PROVIDERS.index(name) if name in PROVIDERS else -1


def _clearkey_body(kid_hex: str) -> bytes:
    kid = base64.urlsafe_b64encode(bytes.fromhex(kid_hex)).rstrip(b"=").decode()
    return json.dumps({"kids": [kid], "type": "temporary"}).encode()


def _clearkey_key(body: bytes) -> bytes | None:
    try:
        k = json.loads(body)["keys"][0]["k"]
        return base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def run_load(
    public_url: str, plan: Plan, records: Records, run: str, start: float, counters: Counters
) -> None:
    """Send plan's requests from monotonic `start` on (CLOCK_MONOTONIC is system-wide, so
    `start` may come from another process), counting them in `counters` as they go."""
    tokens = [player_token(user=f"viewer-{n:03d}", ttl=4 * 3600) for n in range(PLAYERS)]
    sessions = player_sessions(PLAYER_SOURCES)
    pending: set[asyncio.Task[None]] = set()

    async def one(number: int, due: float) -> None:
        index, drm = plan.titles[number], DRMS[plan.drms[number]]
        asset = asset_id(index)
        kid = key_ids(index)[number % 2]
        headers = {
            "Authorization": f"Bearer {tokens[number % PLAYERS]}",
            "X-Request-Id": request_id(run, number),
        }
        session = sessions[number % PLAYER_SOURCES]
        status, verdict, provider = 0, UNANSWERED, -1
        try:
            if drm == "aes128":
                request = session.get(f"{public_url}/v1/keys/{asset}/{kid}", headers=headers)
            else:
                body, content_type = {
                    "widevine": (WIDEVINE_CHALLENGE, "application/octet-stream"),
                    "playready": (PLAYREADY_CHALLENGE, "text/xml"),
                    "fairplay": (FAIRPLAY_SPC, "application/octet-stream"),
                    "clearkey": (_clearkey_body(kid), "application/json"),
                }[drm]
                headers["Content-Type"] = content_type
                request = session.post(
                    f"{public_url}/v1/license/{drm}/{asset}", data=body, headers=headers
                )
            async with request as resp:
                answer = await resp.read()
                status = resp.status
                provider = _provider_code(resp.headers.get(PROVIDER_HEADER))
            verdict = OK if status == 200 and answer else HTTP_ERROR
            if verdict == OK and drm in ("aes128", "clearkey"):
                key = answer if drm == "aes128" else _clearkey_key(answer)
                if key != expected_key(index, kid):
                    verdict = WRONG_KEY
        except (TimeoutError, aiohttp.ClientError, OSError):
            verdict = UNANSWERED
        records.latency[number] = time.monotonic() - due
        records.status[number] = status
        records.verdict[number] = verdict
        if provider >= 0:
            records.answered[number] = provider
        records.done += 1
        if verdict != OK:
            counters.failed.value += 1

    try:
        for number in range(plan.total):
            due = start + number / plan.rate
            # Behind schedule, still let the answers in between sends (sleep 0).
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            records.sent[number] = due - start
            records.issued = number + 1
            counters.issued.value = number + 1
            task = asyncio.create_task(one(number, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    finally:
        for session in sessions:
            await session.close()


class Counters(Protocol):
    """Shared counters the parent reads while the load runs (multiprocessing RawValues)."""

    issued: Any
    failed: Any


PLAYER_COLUMNS = ("sent", "latency", "status", "verdict", "answered")


def load_process(
    public_url: str,
    titles: int,
    rate: float,
    seconds: float,
    run: str,
    conn: Any,
    counters: Counters,
) -> None:
    """The load in its own process (spawned: its own CPU share and event loop): build the
    plan, say "ready", receive the monotonic start time, run, send back the player's columns
    of Records as bytes."""
    plan = Plan.make(titles, rate, seconds)
    records = Records(plan.total)
    conn.send("ready")
    start = float(conn.recv())
    asyncio.run(run_load(public_url, plan, records, run, start, counters))
    conn.send((records.issued, {name: getattr(records, name).tobytes() for name in PLAYER_COLUMNS}))
    conn.close()


def merge_player_columns(records: Records, issued: int, columns: dict[str, bytes]) -> None:
    """Take the load process's columns into `records` (the access log's columns stay; the
    answering provider from the header wins where the player saw one)."""
    records.issued = issued
    for name in ("sent", "latency", "status", "verdict"):
        column = getattr(records, name)
        fresh = array(column.typecode)
        fresh.frombytes(columns[name])
        column[: len(fresh)] = fresh
    answered = array("b")
    answered.frombytes(columns["answered"])
    for number, provider in enumerate(answered):
        if provider >= 0:
            records.answered[number] = provider


class AccessLog:
    """Reads the gateway's JSON access lines as they are written (call `read` now and then)
    and fills the gateway's side of `records`: who answered, who the rules chose, whether the
    fallback answered, and when the gateway started the request."""

    def __init__(self, path: Path, records: Records, run: str, wall_start: float) -> None:
        self.path, self.records, self.prefix = path, records, f"{run}-"
        self.wall_start = wall_start  # time.time() at the load's start
        self.offset = 0
        self.lines = 0
        self.joined = 0

    def read(self) -> int:
        """Parse the lines written since the last call; how many joined a request."""
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except OSError:
            return 0
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        joined = 0
        for line in chunk[:end].splitlines():
            if self.prefix.encode() not in line:
                continue
            self.lines += 1
            joined += self._join(line)
        self.joined += joined
        return joined

    def _join(self, line: bytes) -> int:
        try:
            entry = json.loads(line)
        except ValueError:
            return 0
        rid = entry.get("request_id")
        if entry.get("event") != "request" or not isinstance(rid, str):
            return 0
        try:
            number = int(rid[len(self.prefix) :])
        except ValueError:
            return 0
        if not 0 <= number < self.records.total:
            return 0
        r = self.records
        provider = _provider_code(entry.get("provider"))
        fell_back = _provider_code(entry.get("fallback_from"))
        if provider >= 0:
            r.answered[number] = provider
        r.routed[number] = fell_back if fell_back >= 0 else provider
        r.fallback[number] = 1 if fell_back >= 0 else 0
        r.decided[number] = self._started(entry)
        return 1

    def _started(self, entry: dict[str, object]) -> float:
        stamp, duration = entry.get("timestamp"), entry.get("duration_ms")
        if not isinstance(stamp, str) or not isinstance(duration, int | float):
            return -1.0
        try:
            wall = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return -1.0
        return wall - duration / 1000 - self.wall_start
