"""The chaos test's traffic: a paced open-loop generator (a request is sent at its scheduled
time whatever the earlier ones are doing; its latency counts from that time, so a stalled
gateway cannot hide behind a waiting client), slow-header connections, and probes of the
internal port."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from tests.perf.chaos_stack import asset

CLIENT_TIMEOUT_SECONDS = 15.0
CHALLENGE = b"chaos-widevine-challenge-" * 40  # 1 KB
PLAYER_SOURCES = 16
HEADERS = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due (seconds from the run's start), how long it took to be
    answered from then, and the status (0: no answer)."""

    sent: float
    latency: float
    status: int


def player_sessions(count: int) -> list[aiohttp.ClientSession]:
    """`count` client sessions, each from its own loopback source address (127.0.1.1...),
    so the gateway's per-client connection cap sees a fleet of players, not one peer."""
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_SECONDS)
    return [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.1.{n + 1}", 0)),
            timeout=timeout,
        )
        for n in range(count)
    ]


async def paced_load(
    url: str, rate: float, seconds: float, start: float, errors: dict[str, int] | None = None
) -> list[Sample]:
    """Send `rate` Widevine license requests per second for `seconds` from monotonic `start`.

    Players come from many addresses: requests take turns over PLAYER_SOURCES loopback
    source addresses (127.0.1.1...), so the gateway's per-client connection cap sees a
    fleet, not one peer. `errors` counts the exception names of unanswered requests."""
    samples: list[Sample] = []
    sessions = player_sessions(PLAYER_SOURCES)
    try:

        async def one(index: int, due: float) -> None:
            status = 0
            session = sessions[index % PLAYER_SOURCES]
            try:
                target = f"{url}/v1/license/widevine/{asset(index)}"
                async with session.post(target, data=CHALLENGE, headers=HEADERS) as resp:
                    await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                status = 0
                if errors is not None:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            samples.append(Sample(due - start, time.monotonic() - due, status))

        tasks: list[asyncio.Task[None]] = []
        total = int(rate * seconds)
        for index in range(total):
            due = start + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, due)))
        await asyncio.gather(*tasks)
    finally:
        for session in sessions:
            await session.close()
    samples.sort(key=lambda s: s.sent)
    return samples


@dataclass
class ProbeResult:
    sent: int = 0
    answered: int = 0  # 200 within the probe timeout
    failures: list[str] = field(default_factory=list)


async def probe_internal(
    internal_url: str, until: float, interval: float = 0.25, timeout: float = 2.0
) -> ProbeResult:
    """GET /healthz and /metrics on the internal port every `interval` until `until`."""
    result = ProbeResult()
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        while time.monotonic() < until:
            for path in ("/healthz", "/metrics"):
                result.sent += 1
                try:
                    async with session.get(internal_url + path) as resp:
                        await resp.read()
                        if resp.status == 200:
                            result.answered += 1
                        else:
                            result.failures.append(f"{path}: {resp.status}")
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    result.failures.append(f"{path}: {type(exc).__name__}")
            await asyncio.sleep(interval)
    return result


@dataclass
class SlowStats:
    opened: int = 0  # connections established (reconnects included)
    closed_by_server: int = 0
    refused: int = 0  # connect failed
    peak_open: int = 0
    open_now: int = 0


async def slow_headers(
    host: str,
    port: int,
    connections: int,
    until: float,
    *,
    sources: int = 8,
    gap_seconds: float = 2.0,
) -> SlowStats:
    """Hold `connections` connections that send a request head one header line every
    `gap_seconds` and never finish it, reconnecting when the server closes one, until
    `until`. They come from `sources` loopback addresses (127.0.0.2...), so a per-client cap
    alone does not turn them away: the header timeout and the overall cap must."""
    stats = SlowStats()

    async def hold(number: int) -> None:
        source = f"127.0.0.{2 + number % sources}"
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(source, 0)), 5.0
                )
            except (TimeoutError, OSError):
                stats.refused += 1
                await asyncio.sleep(0.5)
                continue
            stats.opened += 1
            stats.open_now += 1
            stats.peak_open = max(stats.peak_open, stats.open_now)
            try:
                writer.write(
                    f"POST /v1/license/widevine/{asset(number)} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\n".encode()
                )
                line = 0
                while time.monotonic() < until:
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1024), gap_seconds)
                    except TimeoutError:
                        data = None
                    if data is not None:  # b"" (closed) or an answer: the server ended it
                        stats.closed_by_server += 1
                        break
                    line += 1
                    writer.write(f"X-Slow-{line}: {'a' * 20}\r\n".encode())
            except OSError:
                stats.closed_by_server += 1
            finally:
                stats.open_now -= 1
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass

    tasks = []
    for number in range(connections):
        tasks.append(asyncio.create_task(hold(number)))
        if number % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return stats
