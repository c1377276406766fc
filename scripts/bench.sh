#!/usr/bin/env bash
# `make bench`: install what the benchmark needs (only when missing), then run it.
#   wrk and nginx from Debian's packages (apt-get update once, first); py-spy into the venv
#   only with BENCH_PROFILE set. Environment knobs: see tests/perf/bench.py (BENCH_DURATION,
#   BENCH_REPEATS, BENCH_CONNECTIONS, BENCH_CONFIGS, BENCH_PLAYER_AUTH, BENCH_PROFILE,
#   BENCH_CATALOG, ...); the catalog part starts its own redis-server (tests/perf/catalogbench.py).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "installing ${missing[*]} from apt" >&2
    $SUDO apt-get update -qq
    # The benchmark runs its own nginx instances (on a systemd host the package also starts
    # a system nginx on port 80, which the benchmark does not use).
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# BENCH_PROFILE: 1, or a comma list of the configs to profile (see tests/perf/bench.py).
if [ "${BENCH_PROFILE:-0}" != "0" ] && [ ! -x "$(dirname "$PYTHON")/py-spy" ]; then
    "$PYTHON" -m pip install --quiet py-spy
fi

exec "$PYTHON" -m tests.perf.bench
