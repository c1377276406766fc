# drm-gateway: the two commands users need are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools e2e-tools demo test check lint typecheck unit e2e bench chaos rehearse deploy-check clean

install: $(STAMP)

# Re-install only when the package metadata changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Test tools outside the package: promtool (Debian's prometheus), hadolint, manifest validators.
tools: install
	bash scripts/install-tools.sh

# The demo's five ports are 8080-8084: `make demo PORTS=18080` moves them all (18080-18084),
# DEMO_PUBLIC_PORT, DEMO_LEGACY_PORT, DEMO_INCOMING_PORT, DEMO_INTERNAL_PORT and
# DEMO_PLAYER_PORT move one each (`drm-gateway demo --help` lists the flags).
# LEGACY_KIND / INCOMING_KIND pick the providers' kinds, e.g. `make demo INCOMING_KIND=doverunner`.
DEMO_FLAGS = $(if $(PORTS),--ports $(PORTS)) \
	$(if $(DEMO_PUBLIC_PORT),--public-port $(DEMO_PUBLIC_PORT)) \
	$(if $(DEMO_LEGACY_PORT),--legacy-port $(DEMO_LEGACY_PORT)) \
	$(if $(DEMO_INCOMING_PORT),--incoming-port $(DEMO_INCOMING_PORT)) \
	$(if $(DEMO_INTERNAL_PORT),--internal-port $(DEMO_INTERNAL_PORT)) \
	$(if $(DEMO_PLAYER_PORT),--player-port $(DEMO_PLAYER_PORT)) \
	$(if $(LEGACY_KIND),--legacy-kind $(LEGACY_KIND)) \
	$(if $(INCOMING_KIND),--incoming-kind $(INCOMING_KIND))

demo: install
	$(BIN)/drm-gateway demo $(strip $(DEMO_FLAGS))

lint: install
	$(BIN)/ruff check proxy tests scripts
	$(BIN)/ruff format --check proxy tests scripts

typecheck: install
	$(BIN)/mypy --strict proxy tests
	$(BIN)/mypy --strict scripts/deploy_checks.py

deploy-check: tools
	bash scripts/check-deploy.sh

unit: install tools e2e-tools
	bash .ci/pytest.sh $(BIN)/pytest --ignore=tests/e2e

# Real players (ffmpeg, headless Chromium + Shaka Player, Shaka Packager), installed if missing;
# the demo's tests use them too, so `unit` needs them.
e2e-tools: install
	bash scripts/install-e2e.sh

e2e: e2e-tools
	bash .ci/pytest.sh $(BIN)/pytest -q tests/e2e

# Benchmark (issue 8): installs wrk/nginx when missing; BENCH_DURATION=3 BENCH_REPEATS=1 is quick.
bench: install
	bash scripts/bench.sh

# Resilience under faults (issue 17): gateway + both emulators on loopback, one bounded run per
# scenario (~6 min in all); CHAOS_RATE (200 req/s), CHAOS_SECONDS (30), CHAOS_SCENARIOS (a,b).
chaos: install
	$(BIN)/python -m tests.perf.chaos

# Migration rehearsal (issue 18): Redis catalog of 100,000 titles, both emulators, the gateway,
# player load while the backfill, id filling, ramp 0->10->50->100% and a 10 s outage run (~8 min).
# REHEARSE_SCALE=small (~1 min), REHEARSE_OUT (results dir, default .).
rehearse: install
	$(BIN)/python -m tests.perf.rehearse

check: lint typecheck

test: check unit e2e

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
