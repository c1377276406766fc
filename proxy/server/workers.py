"""Multi-worker serving: N gateway processes sharing the public and internal ports (and the
SPEKE endpoint's, when it has a listener of its own).

Each worker is a whole gateway (its own event loop, catalog cache, rules watcher and upstream
pools) that binds both listeners with SO_REUSEPORT, so the kernel spreads new connections
across the workers and one replica uses every core. The parent only supervises: it reserves
the ports, starts the workers, forwards SIGTERM, SIGINT and SIGHUP to them, restarts a worker
that dies after it was serving, and returns once they have all stopped.

Metrics add up across workers through prometheus-client's multiprocess mode: each worker writes
its samples to files in `PROMETHEUS_MULTIPROC_DIR`, and /metrics merges them all. The variable
must be set before a worker creates its first metric, and `proxy.observability.metrics`
creates them at import, so workers start with the "spawn" method: a fresh interpreter that
inherits the environment the parent set and imports the metrics module only then (a fork
would inherit metrics already built for single-process mode, and a forked event loop).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import multiprocess

from proxy.config import Config, Listener
from proxy.config.speke import SpekeSettings
from proxy.observability.logs import configure_logging, get_logger
from proxy.server.app import (
    install_signal_handlers,
    run_event_loop,
    settle_heap,
    start_gateway,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_RESTART_DELAY_SECONDS = 1.0  # a worker that keeps crashing is restarted at most once a second
_KILL_AFTER_GRACE_SECONDS = 5.0  # on top of server.shutdown_grace_seconds
_PARENT_CHECK_SECONDS = 1.0

log = get_logger("workers")


class WorkersFailed(RuntimeError):
    """A worker exited before it was serving (e.g. a catalog it cannot open)."""


def run_workers(config: Config, workers: int) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT.

    Port 0 in the config is resolved once here, so every worker binds the same port. Raises
    OSError if a port is taken by another program, WorkersFailed if a worker cannot start.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    with _reserved(config.server.public) as public, _reserved(config.server.internal) as internal:
        server = replace(config.server, public=public, internal=internal)
        with _reserved_speke(config) as speke, _metrics_dir() as directory:
            shared = replace(config, server=server, speke=speke)
            _Supervisor(shared, workers, directory).run()


@contextmanager
def _reserved(listener: Listener) -> Iterator[Listener]:
    """Hold the listener's port (bound, never listening) while the workers share it.

    A socket that does not listen gets no connections; it resolves port 0 and makes a port
    already taken by another program fail here, with one clear error, before any worker starts.
    """
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((listener.host, listener.port))
        yield Listener(listener.host, sock.getsockname()[1])


@contextmanager
def _reserved_speke(config: Config) -> Iterator[SpekeSettings | None]:
    """The SPEKE settings, with its own listener's port held like the others (if it has one)."""
    speke = config.speke
    if speke is None or speke.listener != "own":
        yield speke
        return
    with _reserved(Listener(speke.host, speke.port)) as listener:
        yield replace(speke, port=listener.port)


@contextmanager
def _metrics_dir() -> Iterator[Path]:
    """The multiprocess metrics directory: the operator's (emptied) or a temporary one."""
    previous = os.environ.get(MULTIPROC_ENV)
    if previous:
        directory = Path(previous)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # samples of an earlier run would add up too
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="drm-gateway-metrics-"))
        os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        if not previous:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Worker:
    """One worker process as the parent sees it."""

    index: int
    process: SpawnProcess
    pid: int
    ready: Connection | None  # the worker writes its pid here once it serves; None after
    started_at: float = field(default_factory=time.monotonic)
    serving: bool = False


class _Supervisor:
    """Starts the workers, forwards signals, restarts crashed workers, waits for the end."""

    def __init__(self, config: Config, count: int, directory: Path) -> None:
        self._config = config
        self._count = count
        self._directory = directory
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._kill_at = float("inf")
        self._failure: str | None = None
        self._announced = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        try:
            for index in range(self._count):
                self._start(index)
            while self._workers:
                self._step()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stopping = True  # nothing is restarted from here on
            self._kill_all()
        if self._failure is not None:
            raise WorkersFailed(self._failure)
        log.info("workers_stopped", workers=self._count)

    def _start(self, index: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self._config, index, os.getpid(), writer),
            name=f"drm-gateway-worker-{index}",
        )
        process.start()
        writer.close()  # the worker holds the only writer: EOF here means it died
        assert process.pid is not None  # set by start()
        self._workers[index] = _Worker(index, process, process.pid, reader)

    def _step(self) -> None:
        """Wait briefly for a worker to report ready or exit, then act on it."""
        waitables: list[Connection | int] = [w.process.sentinel for w in self._workers.values()]
        waitables += [w.ready for w in self._workers.values() if w.ready is not None]
        wait(waitables, timeout=0.5)  # a timeout also lets the stop deadline be checked
        for worker in list(self._workers.values()):
            self._poll_ready(worker)
            if not worker.process.is_alive():
                self._on_exit(worker)
        if self._stopping and time.monotonic() >= self._kill_at:
            self._kill_all()

    def _poll_ready(self, worker: _Worker) -> None:
        if worker.ready is None or not worker.ready.poll():
            return
        with suppress(EOFError):
            worker.ready.recv()
            worker.serving = True
        worker.ready.close()
        worker.ready = None
        if not self._announced and all(w.serving for w in self._workers.values()):
            self._announced = True
            server = self._config.server
            log.info(
                "workers_ready",
                workers=self._count,
                pids=sorted(w.pid for w in self._workers.values()),
                public=f"http://{server.public.host}:{server.public.port}",
                internal=f"http://{server.internal.host}:{server.internal.port}",
                metrics_dir=str(self._directory),
            )

    def _on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        del self._workers[worker.index]
        if worker.ready is not None:
            worker.ready.close()
        # Drops the dead worker's live-gauge samples (e.g. in-flight requests).
        multiprocess.mark_process_dead(worker.pid, str(self._directory))  # type: ignore[no-untyped-call]
        if self._stopping:
            return
        code = worker.process.exitcode
        if not worker.serving:
            self._failure = f"worker {worker.index} exited with code {code} before serving"
            log.error("worker_failed", worker=worker.index, exit_code=code)
            self._stop(signal.SIGTERM)
            return
        log.error("worker_died", worker=worker.index, pid=worker.pid, exit_code=code)
        # Let a worker that crashes on every request not spin the machine.
        time.sleep(max(0.0, worker.started_at + _RESTART_DELAY_SECONDS - time.monotonic()))
        self._start(worker.index)
        # A replacement that cannot start fails the whole replica (above): the config or the
        # machine is broken, and the orchestrator should hear of it rather than a crash loop.
        log.info("worker_restarted", worker=worker.index, pid=self._workers[worker.index].pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._forward(signal.SIGHUP)
        else:
            self._stop(signal.SIGTERM)

    def _stop(self, sig: signal.Signals) -> None:
        """Ask every worker to finish; the ones still running after the grace are killed."""
        if not self._stopping:
            self._stopping = True
            grace = self._config.server.shutdown_grace_seconds + _KILL_AFTER_GRACE_SECONDS
            self._kill_at = time.monotonic() + grace
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._workers.values():
            if worker.process.is_alive():
                with suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            if worker.process.is_alive():
                log.warning("worker_killed", worker=worker.index, pid=worker.pid)
                worker.process.kill()
            worker.process.join()
            self._on_exit(worker)


# --- inside a worker process ------------------------------------------------------------


def _worker_main(config: Config, index: int, parent_pid: int, ready: Connection) -> None:
    """A worker's entry point (in a fresh interpreter): serve until SIGTERM."""
    # Ctrl-C reaches the whole process group; the parent turns it into a SIGTERM for each
    # worker. Ignored here so a Ctrl-C during start-up prints no KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(level=config.log.level, fmt=config.log.format, cache=True)
    # Every line this worker logs (access lines too) says which worker wrote it.
    structlog.contextvars.bind_contextvars(worker=index, worker_pid=os.getpid())
    run_event_loop(_serve(config, parent_pid, ready))


async def _serve(config: Config, parent_pid: int, ready: Connection) -> None:
    gateway = await start_gateway(config, reuse_port=True)
    settle_heap()
    stop = asyncio.Event()
    install_signal_handlers(gateway, stop)
    watchdog = asyncio.get_running_loop().create_task(_stop_when_orphaned(parent_pid, stop))
    ready.send(os.getpid())
    ready.close()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        watchdog.cancel()
        await gateway.stop()


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop if the parent is gone (killed with SIGKILL): no worker outlives its supervisor."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(_PARENT_CHECK_SECONDS)
    log.warning("parent_gone", parent_pid=parent_pid)
    stop.set()
