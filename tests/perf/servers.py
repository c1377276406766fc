"""The benchmark's servers: each in its own process group, pinned to CPUs with `taskset`,
bounded in time with `timeout`, and stopped by process group on exit, Ctrl-C or failure.

Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

STOP_GRACE_SECONDS = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so a harness stopped by `timeout` or a CI job
    stops its servers (Servers.__exit__) as on Ctrl-C."""

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)


def remove_workdir(workdir: Path) -> None:
    """Delete a harness's work directory and everything in it."""
    for path in sorted(workdir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    workdir.rmdir()


def free_port() -> int:
    """An unused loopback port (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One started server: its process group (the `timeout` wrapper leads it) and log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.process.pid

    def members(self) -> list[tuple[int, str, int, float]]:
        """(pid, command, RSS in KiB, CPU seconds used) of each process in the group but the
        `timeout` wrapper."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                status = (stat.parent / "status").read_text()
            except OSError:
                continue  # exited meanwhile
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[2]) != self.pgid or comm == "timeout":
                continue
            rss = next(
                (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")),
                0,
            )
            cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
            found.append((int(stat.parent.name), comm, rss, cpu))
        return sorted(found)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the group's live processes."""
        return sum(member[3] for member in self.members())


@dataclass
class Servers:
    """Starts servers and guarantees they stop: `with Servers(budget) as servers: ...`."""

    budget_seconds: float
    running: list[Server] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run by stop_all

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> Server:
        """Run `argv` pinned to `cpus`, killed by `timeout` after the whole run's budget."""
        wrapped = [
            "timeout", "--kill-after=5", f"{self.budget_seconds:.0f}",
            "taskset", "-c", cpus, *argv,
        ]  # fmt: skip
        with log.open("ab") as out:
            process = subprocess.Popen(
                wrapped,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        server = Server(name, process, log)
        self.running.append(server)
        return server

    def stop(self, server: Server) -> None:
        """SIGTERM the group, SIGKILL it after the grace period. SIGCONT first: a stopped
        (SIGSTOPped, "hung") server must run again to act on SIGTERM."""
        if server in self.running:
            self.running.remove(server)
        try:
            os.killpg(server.pgid, signal.SIGCONT)
        except ProcessLookupError:
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(server.pgid, sig)
            except ProcessLookupError:
                break
            try:
                server.process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            if not server.members():
                break

    def on_stop(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` (e.g. stop a helper server started another way) in stop_all."""
        self.cleanups.append(cleanup)

    def stop_all(self) -> None:
        for server in reversed(list(self.running)):
            self.stop(server)
        while self.cleanups:
            self.cleanups.pop()()


def wait_http(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    server: Server,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    """POST until the server answers (any status); fail early if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited; see {server.log}:\n{tail(server.log)}")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{server.name} did not answer {url} in {timeout:.0f} s"
                ) from None
            time.sleep(0.1)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- nginx -------------------------------------------------------------------------------

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/{name}-tmp/body;
    proxy_temp_path {workdir}/{name}-tmp/proxy;
    fastcgi_temp_path {workdir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {workdir}/{name}-tmp/uwsgi;
    scgi_temp_path {workdir}/{name}-tmp/scgi;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /incoming/license/fairplay/ {{ return 200 "{ckc}"; }}
{routes}        location / {{ return 200 "{answer}"; }}
    }}"""

_ROUTE = """\
        location = {path} {{
            default_type {content_type};
{spec_conform}            return 200 '{body}';
        }}
"""
_SPEC_CONFORM = """\
            if ($arg_specConform = "true") {{ return 200 '{body}'; }}
"""


@dataclass(frozen=True)
class Route:
    """An exact path the origin answers 200 with `body`; with `spec_conform_body`, a request
    whose query has `specConform=true` gets that instead (DRMtoday's raw Widevine answer)."""

    path: str
    body: str
    content_type: str
    spec_conform_body: str | None = None


def _quoted(text: str) -> str:
    """`text` for a single-quoted nginx string (which still expands `$name`)."""
    if any(c in text for c in "'\\$\n"):
        raise ValueError("an nginx answer must not hold quotes, backslashes, $ or newlines")
    return text


def _route_block(route: Route) -> str:
    if any(c in route.path for c in " {};?"):
        raise ValueError(f"{route.path!r} is not a plain path")
    spec = route.spec_conform_body
    return _ROUTE.format(
        path=route.path,
        content_type=route.content_type,
        spec_conform="" if spec is None else _SPEC_CONFORM.format(body=_quoted(spec)),
        body=_quoted(route.body),
    )


_PROXY_SERVER = """\
    upstream origin {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def _nginx_conf(workdir: Path, name: str, body: str) -> Path:
    (workdir / f"{name}-tmp").mkdir(exist_ok=True)
    # As root, workers would switch to `nobody`, who cannot use the private work dir.
    user = "user root;" if os.geteuid() == 0 else ""
    path = workdir / f"{name}.conf"
    path.write_text(_NGINX_COMMON.format(workdir=workdir, name=name, user=user, body=body))
    return path


def nginx_upstream_conf(
    workdir: Path, name: str, port: int, answer: str, ckc: str, routes: Sequence[Route] = ()
) -> Path:
    """nginx `return 200`: `answer` everywhere, `ckc` for the incoming provider's FairPlay,
    and each of `routes` at its exact path."""
    server = _UPSTREAM_SERVER.format(
        port=port, answer=answer, ckc=ckc, routes="".join(_route_block(r) for r in routes)
    )
    return _nginx_conf(workdir, name, server)


def nginx_proxy_conf(workdir: Path, name: str, port: int, upstream_port: int) -> Path:
    """nginx `proxy_pass` with a keep-alive upstream pool: the reference any ops team knows."""
    return _nginx_conf(workdir, name, _PROXY_SERVER.format(port=port, upstream_port=upstream_port))


def nginx_argv(conf: Path) -> list[str]:
    # -e: nginx opens its error log before reading the config; keep it in the work dir.
    return ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.with_suffix(".err"))]
