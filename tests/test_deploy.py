"""Deployment artifacts: the dashboard and alerts query only metrics and labels that exist,
the dashboard is importable, alerts are complete and unit-tested, the Kubernetes, compose and
container files keep their contract, and scripts/check-deploy.sh passes (promtool, hadolint,
kubernetes-validate, check-jsonschema)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import load_config
from proxy.observability import metrics
from proxy.routing.file import load_rules_file
from proxy.routing.watcher import provider_traits
from tests.conftest import free_ports
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "drm-gateway.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
K8S = DEPLOY / "k8s"
# Labels Prometheus (static config or ServiceMonitor) adds to every scraped series.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "service", "container", "endpoint"}
# Series Prometheus makes itself, not the gateway.
BUILTIN_SERIES = {"up"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
EQUALS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _load_helper() -> ModuleType:
    """scripts/deploy_checks.py (not a package), the renderer check-deploy.sh falls back to."""
    spec = importlib.util.spec_from_file_location(
        "deploy_checks", ROOT / "scripts/deploy_checks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_checks = _load_helper()


# --- what metrics.py defines -----------------------------------------------------------------


def defined_series() -> dict[str, frozenset[str] | None]:
    """Every series name the registry exposes -> its label names (None: not known statically,
    an Info's labels are set at run time)."""
    wrappers = {
        w._name: w  # the base name prometheus-client keeps (counters without `_total`)
        for w in vars(metrics).values()
        if isinstance(w, MetricWrapperBase)
    }
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
    }
    series: dict[str, frozenset[str] | None] = {}
    for family in metrics.REGISTRY.collect():
        wrapper = wrappers.get(family.name)
        labels = frozenset(wrapper._labelnames) if wrapper and family.type != "info" else None
        for suffix in suffixes[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[family.name + suffix] = None if labels is None else labels | extra
    return series


def _strip_strings(expr: str) -> str:
    return re.sub(r'"[^"]*"', '""', expr)


def series_used(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers before a selector or range, and any
    drm_gateway_* identifier wherever it stands."""
    bare = _strip_strings(expr)
    names = {m.group(0) for m in IDENT.finditer(bare) if m.group(0).startswith("drm_gateway_")}
    names |= set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", bare))
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard target and alert rule."""
    found = [(f"panel {t!r}", e) for t, e in deploy_checks.dashboard_expressions(dashboard())]
    found += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return found


Samples = dict[str, list[dict[str, str]]]


def parse_scrape(text: str) -> Samples:
    """Sample name -> the label sets it has, from a /metrics answer."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def missing_series(samples: Samples) -> list[str]:
    """Every drm_gateway_* series the dashboard and alerts query, and every exact label
    matcher they use, that a scrape lacks (a histogram needs its _bucket, _sum and _count).
    The gateway tests run this on a fresh gateway's first scrape: "No data" means missing."""
    missing = []
    for where, expr in all_expressions():
        for name in sorted(n for n in series_used(expr) if n.startswith("drm_gateway_")):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = [f"{base}_{s}" for s in ("bucket", "sum", "count")] if base != name else []
            missing += [f"{where}: {n}" for n in [name, *family] if n not in samples]
        for name, body in SELECTOR.findall(expr):
            wanted = {
                label: value
                for label, op, value in EQUALS.findall(body)
                if op == "=" and label not in TARGET_LABELS
            }
            if wanted and not any(wanted.items() <= x.items() for x in samples.get(name, [])):
                missing.append(f"{where}: {name} with {wanted}")
    return sorted(set(missing))


def test_missing_series_sees_names_histogram_parts_and_exact_matchers() -> None:
    scrape = parse_scrape(
        "# TYPE drm_gateway_rules_reloads_total counter\n"
        'drm_gateway_rules_reloads_total{result="ok"} 0\n'
    )
    missing = missing_series(scrape)
    assert "alert DrmGatewayRulesReloadFailed: drm_gateway_rules_reloads_total" not in missing
    assert (
        "alert DrmGatewayRulesReloadFailed: drm_gateway_rules_reloads_total with "
        "{'result': 'refused'}" in missing
    )
    assert "alert DrmGatewayHighLatencyP99: drm_gateway_request_duration_seconds_count" in missing


def test_series_extraction_sees_selectors_ranges_and_bare_names() -> None:
    expr = 'sum(rate(drm_gateway_x_total{a="up{"}[5m])) / on() up{job="j"} + drm_gateway_y'
    assert series_used(expr) == {"drm_gateway_x_total", "up", "drm_gateway_y"}


def test_every_series_queried_is_defined_in_metrics_py() -> None:
    defined = defined_series()
    assert "drm_gateway_requests_total" in defined  # the collection itself works
    assert "drm_gateway_request_duration_seconds_bucket" in defined
    unknown = [
        f"{where}: {name}"
        for where, expr in all_expressions()
        for name in sorted(series_used(expr))
        if name not in defined and name not in BUILTIN_SERIES
    ]
    assert not unknown, "queried but not defined in proxy/observability/metrics.py:\n" + "\n".join(
        unknown
    )


def test_every_label_matched_exists_on_its_series() -> None:
    defined = defined_series()
    wrong = []
    for where, expr in all_expressions():
        for name, body in SELECTOR.findall(expr):
            labels = defined.get(name)
            if labels is None:
                continue  # Info labels, or `up`
            for label in MATCHER.findall(body):
                if label not in labels | TARGET_LABELS:
                    wrong.append(f"{where}: {name} has no label {label!r}")
    assert not wrong, "\n".join(wrong)


# --- dashboard -------------------------------------------------------------------------------


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "drm-gateway" and dash["title"]
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip()
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the dashboard"


def test_dashboard_queries_use_only_known_grafana_variables() -> None:
    for _, expr in deploy_checks.dashboard_expressions(dashboard()):
        deploy_checks.substitute_variables(expr)  # raises on an unknown $variable
        if "drm_gateway_" in expr and "rules_info" not in expr:
            assert 'job=~"$job"' in expr, expr


# (title fragment, series every query set must use, text the queries must contain)
REQUIRED_PANELS = [
    ("Migration progress", "drm_gateway_requests_total", "sum by (drm, provider)"),
    ("Success rate by provider", "drm_gateway_requests_total", "by (provider)"),
    ("Errors by provider", "drm_gateway_requests_total", "provider, status_class"),
    ("Refused requests by reason", "drm_gateway_refused_requests_total", "by (reason)"),
    ("Upstream failures", "drm_gateway_upstream_bad_responses_total", "kind"),
    ("gateway vs upstream", "drm_gateway_upstream_duration_seconds_bucket", "0.99"),
    (
        "Titles without drmResourceId, and requests",
        "drm_gateway_titles_without_resource_id",
        "sum(drm_gateway_titles_without_resource_id{",
    ),
    (
        "Titles without drmResourceId, and requests",
        "drm_gateway_assets_without_resource_id_total",
        "* 60",
    ),
    (
        "Titles without drmResourceId per replica",
        "drm_gateway_titles_without_resource_id",
        "by (instance, pod)",
    ),
    ("Catalog hit ratio", "drm_gateway_catalog_lookups_total", "hit"),
    ("Decisions by rule", "drm_gateway_routing_decisions_total", "rule"),
    ("Rules version per replica", "drm_gateway_rules_info", "instance, pod"),
    ("Rate-limited requests", "drm_gateway_rate_limited_total", "by (limit)"),
    ("In-flight requests", "drm_gateway_in_flight_requests", "instance"),
    ("Rules reloads", "drm_gateway_rules_reloads_total", "result"),
    ("SPEKE key requests", "drm_gateway_speke_requests_total", "by (result)"),
    ("Key mirror writes", "drm_gateway_key_mirror_writes_total", "by (provider, result)"),
    ("Key mirror retry queue", "drm_gateway_key_mirror_queue", "max("),
    ("Circuit state by provider", "drm_gateway_circuit_state", "max by (provider, drm)"),
    ("Circuit transitions", "drm_gateway_circuit_transitions_total", "to"),
    ("Upstream retries", "drm_gateway_upstream_retries_total", "by (provider, result)"),
]


@pytest.mark.parametrize(("title", "series", "text"), REQUIRED_PANELS)
def test_required_panel_exists(title: str, series: str, text: str) -> None:
    matching = [p for p in _panels(dashboard()) if title in p["title"]]
    assert matching, f"no panel titled like {title!r}"
    exprs = " ".join(t["expr"] for p in matching for t in p.get("targets", []))
    assert series in series_used(exprs) and text in exprs


def test_missing_titles_panel_leads_with_the_gauge_of_titles() -> None:
    # Titles, not requests: the request counter stays, as the second query.
    panel = next(p for p in _panels(dashboard()) if p["title"].startswith("Titles without"))
    first, second = (t["expr"] for t in panel["targets"])
    assert series_used(first) == {"drm_gateway_titles_without_resource_id"}
    assert series_used(second) == {"drm_gateway_assets_without_resource_id_total"}
    table = next(
        p for p in _panels(dashboard()) if p["title"].endswith("drmResourceId per replica")
    )
    assert table["type"] == "table"


def test_latency_panel_compares_gateway_and_upstream_quantiles() -> None:
    panel = next(p for p in _panels(dashboard()) if p["title"].startswith("Latency p50"))
    exprs = [t["expr"] for t in panel["targets"]]
    for metric in ("request_duration_seconds_bucket", "upstream_duration_seconds_bucket"):
        for q in ("0.5", "0.95", "0.99"):
            assert any(f"histogram_quantile({q}," in e and metric in e for e in exprs)


# --- alerts ----------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "DrmGatewayDown",
    "DrmGatewayHighErrorRatio",
    "DrmGatewayHighLatencyP99",
    "DrmGatewayAssetsWithoutResourceIdSpike",
    "DrmGatewayNewTitlesWithoutResourceId",
    "DrmGatewayRulesReloadFailed",
    "DrmGatewayRulesFileInvalid",
    "DrmGatewayRulesVersionMismatch",
    "DrmGatewayCircuitOpen",
}


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
    mismatch = next(r for r in rules if r["alert"] == "DrmGatewayRulesVersionMismatch")
    assert "by (job, namespace, version, sha256)" in mismatch["expr"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        c for t in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for c in t["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no quiet test"


def test_prometheusrule_carries_the_alert_groups() -> None:
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    # The file is exactly what `check-deploy.sh --sync-rules` writes.
    assert (
        K8S / "base" / "prometheusrule.yaml"
    ).read_text() == deploy_checks.prometheus_rule_text()


# --- Kubernetes ------------------------------------------------------------------------------


def _rendered(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    objs = deploy_checks.render_kustomization(K8S / overlay)
    return {(o["kind"], re.sub(r"-\w{10}$", "", o["metadata"]["name"])): o for o in objs}


def test_staging_deployment_contract() -> None:
    objs = _rendered("overlays/staging")
    dep = objs[("Deployment", "drm-gateway")]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert dep["metadata"]["namespace"] == "drm-gateway-staging"
    assert dep["spec"]["replicas"] >= 2
    assert objs[("HorizontalPodAutoscaler", "drm-gateway")]["spec"]["minReplicas"] >= 2
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "internal"}
    assert {"requests", "limits"} <= set(container["resources"])
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["/etc/drm-gateway/rules"], "subPath mounts never update"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert volumes["rules"]["configMap"]["name"] == "drm-gateway-rules"  # fixed name: in place
    secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"LEGACY_API_KEY", "INCOMING_JWT_KEY", "ADMIN_TOKEN", "REDIS_PASSWORD"}
    # The catalog is Redis now: no catalog volume, and nothing asks for ReadOnlyMany.
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert "ReadOnlyMany" not in yaml.safe_dump(list(objs.values()))
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in objs)
    data = objs[("ConfigMap", "drm-gateway-config")]["data"]
    assert set(data) == {"gateway.yaml", "staging.yaml"}  # the base and staging's differences
    config = yaml.safe_load(data["gateway.yaml"])
    drain = (
        pod["terminationGracePeriodSeconds"] - container["lifecycle"]["preStop"]["sleep"]["seconds"]
    )
    assert drain > config["server"]["shutdown_grace_seconds"]
    assert config["routing"]["rules_file"] == "/etc/drm-gateway/rules/routing.yaml"
    assert not any(o["kind"] == "Secret" for o in objs.values()), "secrets are never committed"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_python_kustomize_renders_like_kubectl() -> None:
    def normal(docs: list[dict[str, Any]]) -> list[str]:
        text = [yaml.safe_dump(d, sort_keys=True) for d in docs if d]
        return sorted(re.sub(r"(drm-gateway-config)-\w{10}", r"\1", t) for t in text)

    for overlay in ("base", "overlays/staging"):
        ours = deploy_checks.render_kustomization(K8S / overlay)
        assert normal(ours) == normal(_kubectl_render(overlay)), overlay


def test_manifest_cross_check_catches_a_servicemonitor_on_the_public_port(tmp_path: Path) -> None:
    objs = deploy_checks.render_kustomization(K8S / "base")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(objs))
    deploy_checks.check_manifests([good])
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            obj["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "drm-gateway"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(objs))
    with pytest.raises(deploy_checks.CheckFailed, match="exactly the internal Service"):
        deploy_checks.check_manifests([bad])


def _kubectl_render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", ["base", "overlays/staging"])
def test_k8s_rules_configmap_is_rules_routing_yaml(overlay: str) -> None:
    # Generated from the one file: no copy under deploy/ can drift from it.
    renders = [deploy_checks.render_kustomization(K8S / overlay)]
    if shutil.which("kubectl"):
        renders.append(_kubectl_render(overlay))
    for objs in renders:
        (rules,) = [o for o in objs if o["metadata"]["name"] == "drm-gateway-rules"]
        assert rules["kind"] == "ConfigMap"
        assert list(rules["data"]) == ["routing.yaml"]
        assert rules["data"]["routing.yaml"].encode() == (ROOT / "rules/routing.yaml").read_bytes()
    assert not list(DEPLOY.rglob("routing.yaml")), "a copy of rules/routing.yaml under deploy/"


def test_renderer_refuses_files_outside_the_kustomization_like_kubectl(tmp_path: Path) -> None:
    # Why the rules ConfigMap is generated by rules/kustomization.yaml: kustomize's default
    # load restrictor refuses a generator file above the kustomization, symlinked or not.
    (tmp_path / "rules.yaml").write_text("version: x\n")
    for name, entry in (("parent", "../rules.yaml"), ("symlink", "link.yaml")):
        base = tmp_path / name
        base.mkdir()
        (base / "link.yaml").symlink_to(tmp_path / "rules.yaml")
        (base / "kustomization.yaml").write_text(
            f"configMapGenerator:\n  - name: rules\n    files: [{entry}]\n"
        )
        with pytest.raises(deploy_checks.CheckFailed, match="not in or below"):
            deploy_checks.render_kustomization(base)
        if shutil.which("kubectl"):
            result = subprocess.run(
                ["kubectl", "kustomize", str(base)], capture_output=True, text=True, timeout=60
            )
            assert result.returncode != 0 and "is not in or below" in result.stderr, name


# What secret.example.md tells ops to put in the Secrets mounted as files (fake values here).
SECRET_FILES = {"drm-gateway-fairplay": {"certificate.der": b"0\x82\x01\x0afake-der"}}


def _container_config(overlay: str, root: Path) -> tuple[list[Path], Path]:
    """The pod's view, under `root`: every ConfigMap and documented Secret file the gateway
    container mounts, written at its mount path (paths in the config moved under `root`);
    returns the --config files in the order the container passes them, and the rules file."""
    objs = deploy_checks.render_kustomization(K8S / overlay)
    config_maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    dep = next(o for o in objs if o["kind"] == "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            files = {k: v.encode() for k, v in config_maps[volume["configMap"]["name"]].items()}
        else:
            files = SECRET_FILES.get(volume.get("secret", {}).get("secretName"), {})
        if "subPath" in mount:
            files = {"": files[mount["subPath"]]}
        for key, content in files.items():
            target = root / mount["mountPath"].lstrip("/") / key
            target.parent.mkdir(parents=True, exist_ok=True)
            moved = content.replace(b" /etc/drm-gateway/", f" {root}/etc/drm-gateway/".encode())
            target.write_bytes(moved if "configMap" in volume else content)
    args = container["args"]
    paths = [root / args[i + 1].lstrip("/") for i, a in enumerate(args) if a == "--config"]
    return paths, root / "etc/drm-gateway/rules/routing.yaml"


K8S_REDIS_URL = "redis://drm-gateway-redis:6379/0"  # the Service of base/redis.yaml


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


@pytest.mark.parametrize("which", ["k8s-base", "k8s-staging", "compose"])
def test_shipped_gateway_configs_load(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEGACY_API_KEY", "test-legacy-key")
    monkeypatch.setenv("INCOMING_JWT_KEY", "test-incoming-jwt-key-of-32-bytes!!")
    monkeypatch.setenv("PLAYER_JWT_SECRET", "test-player-secret-of-32-bytes-long!")
    monkeypatch.setenv("ADMIN_TOKEN", "test-admin-token-16+")
    monkeypatch.setenv("REDIS_PASSWORD", "test-redis-password")
    key_file = tmp_path / "incoming-jwt-key"
    key_file.write_text("test-incoming-jwt-key-of-32-bytes!!")
    if which == "compose":
        path = tmp_path / "gateway.yaml"
        path.write_text(_compose()["configs"]["gateway-config"]["content"])
        # The compose secret is a file at /run/secrets in the container.
        path.write_text(path.read_text().replace("/run/secrets/incoming-jwt-key", str(key_file)))
        rules = ROOT / "rules" / "routing.yaml"
        config = load_config(path, overrides={"routing.rules_file": str(rules)})
    else:
        # The config exactly as rendered and mounted: layers, rules, the FairPlay certificate.
        overlay = "base" if which == "k8s-base" else "overlays/staging"
        paths, rules = _container_config(overlay, tmp_path)
        config = load_config(paths[0], layers=paths[1:])
        assert config.routing.rules_file == rules
        cert = SECRET_FILES["drm-gateway-fairplay"]["certificate.der"]
        assert config.fairplay.certificate == cert, "/v1/certificate/fairplay would be a 404"
        staging = which == "k8s-staging"
        assert len(paths) == (2 if staging else 1)
        assert config.log.level == ("debug" if staging else "info")
        legacy = config.providers["legacy"].license_urls["widevine"].template
        assert legacy.startswith(
            "https://license.staging.legacy" if staging else "https://license.legacy"
        )
    assert config.player_auth.mode == "jwt" and config.admin_token
    assert config.providers["incoming"].auth.token is not None
    assert (config.server.public.host, config.server.public.port) == ("0.0.0.0", 8080)
    assert (config.server.internal.host, config.server.internal.port) == ("0.0.0.0", 9090)
    assert config.catalog.backend == "redis" and config.catalog.path is None
    assert config.catalog.redis is not None
    assert config.catalog.redis.url == (
        "redis://redis:6379/0" if which == "compose" else K8S_REDIS_URL
    )
    assert config.catalog.redis.password == "test-redis-password"  # from the environment
    # Kubernetes trusts its ingress (the pod CIDR); compose has no proxy in front to trust.
    trusted = [str(n) for n in config.server.trusted_proxies]
    assert trusted == ([] if which == "compose" else ["10.244.0.0/16"])
    assert not any(n.is_global for n in config.server.trusted_proxies)  # never the internet
    traits = provider_traits(config.providers)
    load_rules_file(rules, providers=traits)  # raises RulesError on a bad file


def test_compose_wires_the_stack() -> None:
    services = _compose()["services"]
    gateway = services["gateway"]
    assert "../rules:/etc/drm-gateway/rules:ro" in gateway["volumes"]
    assert gateway["configs"][0]["target"] == "/etc/drm-gateway/gateway.yaml"
    for kind in ("legacy", "incoming"):
        assert services[kind]["command"][:4] == ["emulate", kind, "--host", "0.0.0.0"]
    prometheus_mounts = " ".join(services["prometheus"]["volumes"])
    assert "./prometheus/prometheus.yml:" in prometheus_mounts
    assert "./prometheus/alerts.yml:" in prometheus_mounts
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert (
        "./grafana/provisioning:" in grafana_mounts
        and "./grafana/drm-gateway.json:" in grafana_mounts
    )
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "drm-gateway")
    assert job["static_configs"][0]["targets"] == ["gateway:9090"]


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.11-slim AS \w+$", text, re.M)) == 2
    final = text.split("AS final", 1)[1]
    assert "pip install" in final and "--no-index" in final and "apt-get" not in final
    assert re.search(r"^USER 10001", final, re.M)
    assert re.search(r"^EXPOSE 8080 9090$", final, re.M)
    assert "HEALTHCHECK" in final and "9090/healthz" in final
    assert 'ENTRYPOINT ["drm-gateway"]' in final
    assert 'CMD ["serve", "--config", "/etc/drm-gateway/gateway.yaml"]' in final


# --- the shared Redis catalog ----------------------------------------------------------------


def _workload(objs: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> Any:
    """The pod spec of a workload (a CronJob's through its job template)."""
    spec = objs[(kind, name)]["spec"]
    return (spec["jobTemplate"]["spec"] if kind == "CronJob" else spec)["template"]["spec"]


def _gateway_config(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        objs[("ConfigMap", "drm-gateway-config")]["data"]["gateway.yaml"]
    )
    return data


def _secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret, key) of every variable the container takes from a Secret."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("overlay", ["base", "overlays/staging"])
def test_redis_statefulset_contract(overlay: str) -> None:
    objs = _rendered(overlay)
    redis = objs[("StatefulSet", "drm-gateway-redis")]
    pod = _workload(objs, "StatefulSet", "drm-gateway-redis")
    (container,) = pod["containers"]
    # The official Debian-based image, pinned to a release.
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-bookworm", container["image"]), container["image"]
    assert redis["spec"]["replicas"] == 1
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"mountPath": "/data", "name": claim["metadata"]["name"]} in container["volumeMounts"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    # The password from the Secret, to the server (stdin) and to redis-cli (the probes).
    secret = ("drm-gateway-redis", "password")
    assert _secret_env(container) == {"REDIS_PASSWORD": secret, "REDISCLI_AUTH": secret}
    script = container["command"][-1]
    assert "requirepass $REDIS_PASSWORD" in script and "redis-server -" in script
    assert "maxmemory-policy noeviction" in script  # an evicted title would be a 404
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe
    sec, pod_sec = container["securityContext"], pod["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert pod_sec["runAsNonRoot"] and pod_sec["runAsUser"] != 0
    assert pod_sec["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # The gateway (and the import) reach it by the Service the StatefulSet governs.
    service = objs[("Service", "drm-gateway-redis")]
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels(redis).items()
    url = _gateway_config(objs)["catalog"]["redis"]["url"]
    assert url == K8S_REDIS_URL
    assert url.startswith(
        f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/"
    )
    gateway = _workload(objs, "Deployment", "drm-gateway")["containers"][0]
    assert _secret_env(gateway)["REDIS_PASSWORD"] == secret


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_manifest_command_starts_a_server_that_needs_the_password(tmp_path: Path) -> None:
    """The StatefulSet's own start script and probes, run here against Debian's redis-server
    (on a free port and a temp dir instead of 6379 and /data)."""
    container = _workload(_rendered("base"), "StatefulSet", "drm-gateway-redis")["containers"][0]
    (port,) = free_ports(1)
    script = container["command"][-1].replace("port 6379", f"port {port}")
    script = script.replace("dir /data", f"dir {tmp_path}").replace("bind * -::*", "bind 127.0.0.1")
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": "probe-test-password"}
    server = subprocess.Popen(
        [*container["command"][:-1], script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def probe(name: str, password: str) -> int:
            """The probe's command, its redis-cli pointed at this server's port."""
            command: list[str] = []
            for arg in container[name]["exec"]["command"]:
                if arg == "redis-cli":
                    command += ["redis-cli", "-p", str(port)]
                else:
                    command.append(arg.replace("redis-cli ", f"redis-cli -p {port} "))
            auth = {**env, "REDISCLI_AUTH": password}
            return subprocess.run(command, env=auth, capture_output=True, timeout=10).returncode

        for _ in range(100):
            if probe("readinessProbe", "probe-test-password") == 0:
                break
            time.sleep(0.05)
        assert probe("readinessProbe", "probe-test-password") == 0
        assert probe("readinessProbe", "wrong-password") != 0, "ready without the password"
        assert probe("livenessProbe", "wrong-password") == 0  # alive: it answers
        assert (tmp_path / "appendonlydir").is_dir()  # persistence where the volume is
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert probe("livenessProbe", "probe-test-password") != 0  # nothing listens: not alive


def _cli_args(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by the drm-gateway CLI's own parser (SystemExit on a bad command line)."""
    from proxy.cli.main import build_parser

    return build_parser(argv[0]).parse_args(argv)


@pytest.mark.parametrize("overlay", ["base", "overlays/staging"])
def test_catalog_import_cronjob_runs_a_real_command(overlay: str) -> None:
    from proxy.cli.main import cmd_catalog_import

    objs = _rendered(overlay)
    cron = objs[("CronJob", "drm-gateway-catalog-import")]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = _workload(objs, "CronJob", "drm-gateway-catalog-import")
    gateway_pod = _workload(objs, "Deployment", "drm-gateway")
    (container,) = pod["containers"]
    (gateway,) = gateway_pod["containers"]
    assert container["image"] == gateway["image"]  # the image's ENTRYPOINT is drm-gateway
    assert "command" not in container
    args = _cli_args(container["args"])
    assert args.func is cmd_catalog_import
    # Into the gateways' Redis, with the same password, checked against their providers.
    assert args.to == _gateway_config(objs)["catalog"]["redis"]["url"]
    assert _secret_env(container) == {args.password_env: ("drm-gateway-redis", "password")}
    assert not args.allow_rejects  # a rejected row fails the Job
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = mounts[args.config.as_posix()]
    assert volumes[config_mount["name"]]["configMap"]["name"].startswith("drm-gateway-config")
    assert config_mount["subPath"] == "gateway.yaml"
    (export,) = [m for path, m in mounts.items() if args.file.is_relative_to(path)]
    assert export["readOnly"]
    assert volumes[export["name"]] == {
        "name": "export",
        "configMap": {"name": "drm-gateway-catalog-export"},
    }
    # The gateway's security context, pod and container.
    assert pod["securityContext"] == gateway_pod["securityContext"]
    assert container["securityContext"] == gateway["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_catalog_import_cronjob_command_loads_a_real_redis(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CronJob's own command line, with the rendered gateway config as --config and a
    demo export, run by the CLI against a real Redis (its URL and the export path moved)."""
    import redis

    from proxy.cli.main import main
    from proxy.dev.demo import write_demo_files

    objs = _rendered("base")
    (container,) = _workload(objs, "CronJob", "drm-gateway-catalog-import")["containers"]
    write_demo_files(tmp_path, 50)
    config = tmp_path / "gateway.yaml"
    config.write_text(objs[("ConfigMap", "drm-gateway-config")]["data"]["gateway.yaml"])
    client = redis.Redis(unix_socket_path=str(redis_server.socket_path))
    client.config_set("requirepass", "cron-test-password")
    argv = list(container["args"])
    moved = {
        argv[2]: str(tmp_path / "catalog.csv"),
        argv[argv.index("--to") + 1]: redis_server.url,
        argv[argv.index("--config") + 1]: str(config),
    }
    monkeypatch.setenv(argv[argv.index("--password-env") + 1], "cron-test-password")
    assert main([moved.get(a, a) for a in argv]) == 0
    client = redis.Redis(
        unix_socket_path=str(redis_server.socket_path), password="cron-test-password"
    )
    assert len(client.keys("drm-gateway:asset:*")) == 50


def test_compose_runs_redis_and_seeds_it() -> None:
    from proxy.cli.main import cmd_catalog_import

    compose = _compose()
    services = compose["services"]
    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-bookworm", redis["image"])
    assert "requirepass $$REDIS_PASSWORD" in redis["command"][-1]  # $$: for the shell
    assert redis["environment"]["REDISCLI_AUTH"] == redis["environment"]["REDIS_PASSWORD"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["read_only"] and redis["user"] != "0"
    gateway = services["gateway"]
    assert gateway["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert gateway["environment"]["REDIS_PASSWORD"] == redis["environment"]["REDIS_PASSWORD"]
    seed = services["catalog-import"]
    assert seed["profiles"] == ["seed"]
    assert gateway["depends_on"]["catalog-import"]["required"] is False
    args = _cli_args(seed["command"])
    assert args.func is cmd_catalog_import
    config = yaml.safe_load(compose["configs"]["gateway-config"]["content"])
    assert args.to == config["catalog"]["redis"]["url"]
    assert seed["environment"] == {args.password_env: redis["environment"]["REDIS_PASSWORD"]}
    assert seed["configs"][0]["target"] == args.config.as_posix()
    # The demo catalog catalog-init writes into the `catalog` volume.
    assert args.file == Path("/var/lib/drm-gateway/catalog.csv")
    assert "catalog:/var/lib/drm-gateway:ro" in seed["volumes"]
    assert "catalog:/var/lib/drm-gateway" in services["catalog-init"]["volumes"]
    assert "catalog.csv" in (ROOT / "proxy/dev/demo.py").read_text()


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|_AUTH$", re.I)
SECRET_FIELDS = {"password", "token", "secret", "hmac_secret"}


def _secret_fields(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every secret-like field of a gateway config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_FIELDS:
                yield f"{path}.{key}", value
            yield from _secret_fields(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _secret_fields(item, f"{path}[{i}]")


def test_no_secret_value_is_committed() -> None:
    configs = [_compose()["configs"]["gateway-config"]["content"]]
    for overlay in ("base", "overlays/staging"):
        objs = deploy_checks.render_kustomization(K8S / overlay)
        assert not [o for o in objs if o["kind"] == "Secret"], overlay
        for node in deploy_checks._walk(objs):
            for env in node.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{overlay}: {env['name']} has a literal value"
                    assert "secretKeyRef" in env["valueFrom"], env["name"]
        configs += [text for o in objs if o["kind"] == "ConfigMap" for text in o["data"].values()]
    # Every secret in a gateway config names a variable or a file, never a value.
    for text in configs:
        for where, value in _secret_fields(yaml.safe_load(text)):
            assert isinstance(value, dict) and set(value) in ({"env"}, {"file"}), where
    # Compose: only the demo's placeholders (`${NAME:-demo-...}`, said so in its header), which
    # the environment replaces.
    compose_text = (DEPLOY / "compose.yaml").read_text()
    assert "The `demo-...` defaults are placeholders" in compose_text
    for name, service in _compose()["services"].items():
        for var, value in dict(service.get("environment", {})).items():
            if SECRET_NAME.search(var):
                assert re.fullmatch(r"\$\{[A-Z_]+:-demo-[a-z0-9-]+\}", value), f"{name}: {var}"
    assert "requirepass" not in re.sub(r"requirepass \$+REDIS_PASSWORD", "", compose_text)


def test_manifest_cross_check_catches_a_service_without_its_pods(tmp_path: Path) -> None:
    objs = deploy_checks.render_kustomization(K8S / "base")
    for obj in objs:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "drm-gateway-redis":
            obj["spec"]["selector"]["app.kubernetes.io/component"] = "cache"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(objs))
    with pytest.raises(deploy_checks.CheckFailed, match="drm-gateway-redis selects the pods of 0"):
        deploy_checks.check_manifests([bad])


# --- the tools -------------------------------------------------------------------------------


def test_check_deploy_script_passes() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool is missing in CI: the Makefile must run scripts/install-tools.sh")
        pytest.skip(
            "promtool not installed: run scripts/install-tools.sh (Debian package prometheus)"
        )
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-deploy.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check-deploy: all" in result.stdout


EXAMPLE_PROVIDERS = sorted((ROOT / "deploy" / "examples" / "providers").glob("*.yaml"))


def test_there_is_a_provider_example_per_kind() -> None:
    from proxy.upstream.registry import PROVIDER_KINDS

    assert {p.stem for p in EXAMPLE_PROVIDERS} == set(PROVIDER_KINDS) - {"generic"}


@pytest.mark.parametrize("example", EXAMPLE_PROVIDERS, ids=lambda p: p.stem)
def test_each_provider_example_passes_config_check(example: Path) -> None:
    """Layered over the demo config, as the example files say to use them."""
    from proxy.dev.kinds import kind_env

    demo = ROOT / "proxy" / "dev" / "demo_data" / "gateway.yaml"
    demo_env = {
        "LEGACY_API_KEY": "k" * 20,
        "INCOMING_JWT_KEY": "j" * 40,
        "ADMIN_TOKEN": "a" * 20,
        "PLAYER_JWT_SECRET": "p" * 40,
        "LEGACY_KEY_API_TOKEN": "l" * 20,
        "INCOMING_KEY_API_TOKEN": "i" * 20,
        "SPEKE_PACKAGER_TOKEN": "s" * 20,
    }
    env = {**os.environ, **demo_env, **kind_env(example.stem)}
    done = subprocess.run(
        [
            os.fspath(ROOT / ".venv" / "bin" / "drm-gateway"),
            "config",
            "check",
            str(demo),
            str(example),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Without its secrets the check names each missing variable, and no value.
    bare = {k: v for k, v in env.items() if k not in kind_env(example.stem)}
    refused = subprocess.run(
        [
            os.fspath(ROOT / ".venv" / "bin" / "drm-gateway"),
            "config",
            "check",
            str(demo),
            str(example),
        ],
        capture_output=True,
        text=True,
        env=bare,
        timeout=60,
    )
    assert refused.returncode != 0
    for name in kind_env(example.stem):
        assert name in refused.stdout + refused.stderr
