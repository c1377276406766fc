#!/usr/bin/env bash
# Offline checks of every deployment artifact: Dockerfile, Prometheus rules and config,
# Grafana dashboard queries, Kubernetes manifests, compose file. Needs the tools of
# scripts/install-tools.sh. Prints a summary; exits non-zero if any check fails.
#   scripts/check-deploy.sh               run every check
#   scripts/check-deploy.sh --sync-rules  regenerate deploy/k8s/base/prometheusrule.yaml
set -uo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
HELPER="scripts/deploy_checks.py"
export PATH="$PWD/$VENV/bin:$PATH"

if [ "${1:-}" = "--sync-rules" ]; then
    exec "$PY" "$HELPER" rules-sync --write
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
declare -a RESULTS=()
FAILED=0

# step NAME COMMAND...: run, keep the output, show it only on failure (or with VERBOSE=1).
step() {
    local name="$1"
    shift
    local log="$WORK/step.log"
    if "$@" >"$log" 2>&1; then
        RESULTS+=("PASS  $name")
        [ "${VERBOSE:-0}" = 1 ] && sed 's/^/      /' "$log"
    else
        RESULTS+=("FAIL  $name")
        FAILED=1
        echo "---- FAIL: $name ($*)"
        sed 's/^/      /' "$log"
    fi
    return 0
}

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    RESULTS+=("FAIL  $1 not installed (run scripts/install-tools.sh)")
    FAILED=1
    return 1
}

kustomize_build() {
    # kubectl's built-in kustomize, a standalone kustomize, else our Python renderer.
    if command -v kubectl >/dev/null 2>&1; then
        kubectl kustomize "$1"
    elif command -v kustomize >/dev/null 2>&1; then
        kustomize build "$1"
    else
        "$PY" "$HELPER" render "$1"
    fi
}

render_all() {
    kustomize_build deploy/k8s/base >"$WORK/base.yaml" &&
        kustomize_build deploy/k8s/overlays/staging >"$WORK/staging.yaml"
}

validate_manifests() {
    # --strict: unknown fields are errors. The CRDs (ServiceMonitor, PrometheusRule) have no
    # schema there; the `manifests` step checks them instead.
    local out
    out="$(kubernetes-validate --strict --quiet "$WORK/base.yaml" "$WORK/staging.yaml" 2>&1)"
    local rc=$?
    echo "$out"
    # kubernetes-validate exits 0 on some errors it prints; fail on any ERROR line.
    [ "$rc" -eq 0 ] && ! grep -q "ERROR" <<<"$out"
}

if need hadolint; then
    step "hadolint Dockerfile" hadolint --no-color --failure-threshold info Dockerfile
fi
if need promtool; then
    step "promtool check rules alerts.yml" promtool check rules deploy/prometheus/alerts.yml
    step "promtool test rules alerts_test.yml" \
        promtool test rules deploy/prometheus/alerts_test.yml
    step "promtool check config prometheus.yml" \
        promtool check config deploy/prometheus/prometheus.yml
    step "dashboard queries are valid PromQL" \
        bash -c "'$PY' '$HELPER' dashboard-rules '$WORK/dashboard-rules.yml' &&
                 promtool check rules '$WORK/dashboard-rules.yml'"
fi
step "PrometheusRule in sync with alerts.yml" "$PY" "$HELPER" rules-sync
step "kustomize build base + overlays/staging" render_all
if [ -s "$WORK/staging.yaml" ] && need kubernetes-validate; then
    step "kubernetes-validate --strict (k8s 1.37 schemas)" validate_manifests
    step "manifests cross-checks (Services, ServiceMonitor, PrometheusRule)" \
        "$PY" "$HELPER" manifests "$WORK/base.yaml" "$WORK/staging.yaml"
fi
if need check-jsonschema; then
    step "compose.yaml against the compose-spec schema" \
        check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
fi
step "compose.yaml references" "$PY" "$HELPER" compose deploy/compose.yaml
step "Grafana dashboard and provisioning parse" "$PY" -c '
import json, sys, yaml
json.load(open("deploy/grafana/drm-gateway.json"))
for f in sys.argv[1:]:
    yaml.safe_load(open(f))
' deploy/grafana/provisioning/*/*.yaml

echo "check-deploy summary:"
printf '  %s\n' "${RESULTS[@]}"
passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
# Worded so CI's test-count parser never mistakes it for a test runner's closing line.
if [ "$failed" -eq 0 ]; then
    echo "check-deploy: all $passed checks OK"
else
    echo "check-deploy: $failed of $((passed + failed)) checks FAILED"
fi
exit "$FAILED"
