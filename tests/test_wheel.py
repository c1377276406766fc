"""The built wheel in a fresh virtualenv: `drm-gateway demo` works without the source tree.

The wheel is built from exactly what the Dockerfile's build stage copies, so it is the
image's wheel too. The venv gets the runtime dependencies from the configured package
index (pip, as a user's install would); every command runs from a temporary folder, with
no PYTHONPATH, so nothing can come from this checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.dev.demo import DEMO_FILES
from proxy.dev.media import INSTALL_COMMAND, PACKAGER_SPEC, WEB_PLAYERS
from tests.dev.test_demo import DEMO_SECRETS, check_printed_examples, demo_env, fetch, run_demo

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 600  # the dependencies come from the package index

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    """The wheel, the venv it is installed in, and a folder outside the source tree."""

    wheel: Path
    venv: Path
    outside: Path

    @property
    def command(self) -> Path:
        """The installed `drm-gateway` entry point."""
        return self.venv / "bin" / "drm-gateway"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`drm-gateway ARGS` from the outside folder, with the demo's secrets set."""
        return subprocess.run(
            [str(self.command), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.outside,
            env=outside_env() | DEMO_SECRETS,
        )


def outside_env() -> dict[str, str]:
    """The demo's environment without a path into this checkout."""
    env = demo_env()
    env.pop("PYTHONPATH", None)
    return env


def copy_build_context(stage: Path) -> None:
    """Copy what the Dockerfile's build stage COPYs (into WORKDIR /src) to `stage`."""
    build_stage = (ROOT / "Dockerfile").read_text().split(" AS final", 1)[0]
    for line in re.findall(r"^COPY (.+)$", build_stage, re.M):
        *sources, dest = (word for word in line.split() if not word.startswith("--"))
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                shutil.copytree(origin, stage / dest, ignore=ignore, dirs_exist_ok=True)
            else:
                (stage / dest).mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, stage / dest / origin.name)


def pip(python: Path | str, *args: str) -> None:
    """Run pip with `python`; fail with its output."""
    done = subprocess.run(
        [str(python), "-m", "pip", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        env=outside_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel and install it, with its dependencies, into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    stage, wheels, venv, outside = (base / name for name in ("src", "wheels", "venv", "run"))
    copy_build_context(stage)
    pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(stage))
    [wheel] = wheels.glob("drm_gateway-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv / "bin" / "python", "install", str(wheel))
    outside.mkdir()
    return Installed(wheel, venv, outside)


def test_the_wheel_carries_the_demo_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = {f"proxy/dev/demo_data/{name}" for name in DEMO_FILES} | {
        "proxy/dev/static/player.html"
    }
    assert shipped <= names
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "rules/"))]


def test_installed_demo_help_names_a_shipped_config_that_checks(installed: Installed) -> None:
    help_text = installed.run("demo", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--ports BASE" in help_text.stdout
    config = Path(help_text.stdout.rstrip().splitlines()[-1].strip())
    assert config.is_relative_to(installed.venv), config  # the installed copy, not this tree
    checked = installed.run("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: providers incoming, legacy; rules ")


def test_installed_demo_serves_outside_the_source_tree(installed: Installed) -> None:
    workdir = installed.outside / ".demo"
    for demo in run_demo(
        workdir, command=(str(installed.command),), cwd=installed.outside, env=outside_env()
    ):
        # No installer script outside a checkout: one command per missing tool instead
        # (the fresh venv has no Shaka Packager, and no node_modules holds the web players:
        # one npm command installs all three).
        assert INSTALL_COMMAND not in demo.banner
        assert f"-m pip install {PACKAGER_SPEC}\n" in demo.banner
        players = " ".join(player.spec for player in WEB_PLAYERS)
        assert f"npm install --prefix {workdir} {players}\n" in demo.banner
        public = re.search(r"gateway, public\s+(\S+)", demo.banner)
        assert public is not None
        status, _, certificate = fetch(f"{public.group(1)}/v1/certificate/fairplay")
        assert (status, certificate) == (200, (workdir / "fairplay-cert.der").read_bytes())
        if shutil.which("curl") is not None:
            check_printed_examples(demo.banner)
    assert {*DEMO_FILES, "catalog.db"} <= set(os.listdir(workdir))  # the copies it served
