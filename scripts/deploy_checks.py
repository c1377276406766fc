"""Offline checks of the deployment artifacts in deploy/, used by scripts/check-deploy.sh.

    python scripts/deploy_checks.py render DIR          kustomize build without kustomize
    python scripts/deploy_checks.py rules-sync [--write] PrometheusRule == alerts.yml
    python scripts/deploy_checks.py dashboard-rules OUT dashboard PromQL as a rule file
    python scripts/deploy_checks.py manifests FILE...   cross-checks of rendered manifests
    python scripts/deploy_checks.py compose FILE        references inside compose.yaml

Every command prints what it found and exits 1 on a problem. Only PyYAML is needed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "drm-gateway.json"
RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by `scripts/check-deploy.sh --sync-rules`;
# edit alerts.yml, never this file (tests/test_deploy.py checks the two are identical).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: drm-gateway
  labels:
    # The label most Prometheus Operator installs select rules by (ruleSelector).
    role: alert-rules
spec:
"""
# What Grafana substitutes at query time; values that make every expression valid PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}


class CheckFailed(Exception):
    """A check found problems; the message lists them."""


# --- kustomize, the subset deploy/k8s uses ---------------------------------------------------


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Build a kustomization the way `kubectl kustomize` does, for the features we use:
    resources (files, directories), namespace, labels, configMapGenerator (files as `path` or
    `key=path`, in or below the kustomization's directory like kustomize's default load
    restrictor; behavior create, replace or merge; disableNameSuffixHash there or in
    generatorOptions), images and JSON 6902 patches (add, replace) with a kind/name target."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "configMapGenerator"}
    unknown = set(spec) - known - {"images", "patches", "generatorOptions"}
    if unknown:
        raise CheckFailed(f"{directory}: kustomization fields not supported here: {unknown}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render_kustomization(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    _generate_config_maps(directory, spec, objects)
    for patch in spec.get("patches", []):
        _apply_patch(patch, objects)
    for image in spec.get("images", []):
        _set_image(image, objects)
    for group in spec.get("labels", []):
        for obj in objects:
            _add_labels(obj, group["pairs"], group.get("includeSelectors", False))
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def _generate_config_maps(
    directory: Path, spec: dict[str, Any], objects: list[dict[str, Any]]
) -> None:
    for gen in spec.get("configMapGenerator", []):
        options = {**spec.get("generatorOptions", {}), **gen.get("options", {})}
        data = dict(_generator_file(directory, entry) for entry in gen.get("files", []))
        behavior = gen.get("behavior", "create")
        old = [o for o in objects if _is_generated(o, gen["name"])]
        if behavior != "create" and not old:
            raise CheckFailed(f"configMapGenerator {gen['name']}: nothing to {behavior}")
        if behavior == "merge":
            data = {**old[0]["data"], **data}
        name = gen["name"]
        if not options.get("disableNameSuffixHash", False):
            digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
            name = f"{name}-{digest[:10]}"
        config_map: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap"}
        config_map["metadata"] = {"name": name}
        config_map["data"] = data
        if behavior == "create":
            objects.append(config_map)
        else:
            # Like kustomize: the new one keeps the base's labels and its place.
            config_map["metadata"]["labels"] = dict(old[0]["metadata"].get("labels", {}))
            objects[objects.index(old[0])] = config_map
        _rename_config_map_refs(objects, gen["name"], name)


def _generator_file(directory: Path, entry: str) -> tuple[str, str]:
    """(data key, file text) of a `files:` entry, `path` or `key=path`."""
    key, _, relative = entry.rpartition("=")
    path = directory / relative
    if not path.resolve().is_relative_to(directory.resolve()):
        # kustomize's default load restrictor: symlinks are followed before this check.
        raise CheckFailed(
            f"{directory}: {relative} is not in or below the kustomization directory; "
            "kustomize refuses it (list a kustomization directory that holds it instead)"
        )
    return key or path.name, path.read_text()


def _is_generated(obj: dict[str, Any], base: str) -> bool:
    name = str(obj["metadata"]["name"])
    pattern = rf"{re.escape(base)}(-\w{{10}})?"
    return obj["kind"] == "ConfigMap" and re.fullmatch(pattern, name) is not None


def _rename_config_map_refs(objects: list[dict[str, Any]], base: str, name: str) -> None:
    for obj in objects:
        for node in _walk(obj):
            ref = node.get("configMap")
            if isinstance(ref, dict) and re.fullmatch(
                rf"{re.escape(base)}(-\w{{10}})?", ref["name"]
            ):
                ref["name"] = name


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _apply_patch(patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    target = patch["target"]
    matches = [
        o
        for o in objects
        if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
    ]
    if len(matches) != 1:
        raise CheckFailed(f"patch target {target} matches {len(matches)} objects")
    for op in yaml.safe_load(patch["patch"]):
        if op["op"] not in ("replace", "add"):
            raise CheckFailed(f"patch op {op['op']!r} not supported here")
        *parents, last = [p for p in op["path"].split("/") if p]
        node: Any = matches[0]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):  # RFC 6902: add inserts (`-` appends), replace overwrites
            if op["op"] == "replace":
                node[int(last)] = op["value"]
            else:
                node.insert(len(node) if last == "-" else int(last), op["value"])
        else:
            if op["op"] == "replace" and last not in node:
                raise CheckFailed(f"patch path {op['path']} does not exist")
            node[last] = op["value"]


def _label_nodes(obj: dict[str, Any], path: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The mappings at `path` below `obj`, created where missing; a `key[]` step fans out
    over the items of an existing list."""
    if not path:
        yield obj
        return
    key, rest = path[0], path[1:]
    if key.endswith("[]"):
        for item in obj.get(key[:-2], []):
            yield from _label_nodes(item, rest)
    else:
        yield from _label_nodes(obj.setdefault(key, {}), rest)


def _set_image(image: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        for container in _walk(obj):
            value = container.get("image")
            if isinstance(value, str) and value.split(":")[0] == image["name"]:
                tag = image.get("newTag", value.partition(":")[2])
                container["image"] = f"{image.get('newName', image['name'])}:{tag}"


_WORKLOAD_PATHS = (("spec", "selector", "matchLabels"), ("spec", "template", "metadata", "labels"))
# Where kustomize's `labels: includeSelectors: true` adds labels besides metadata ("[]": each
# item of a list), for the kinds deploy/k8s uses.
_SELECTOR_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Deployment": _WORKLOAD_PATHS,
    "StatefulSet": (*_WORKLOAD_PATHS, ("spec", "volumeClaimTemplates[]", "metadata", "labels")),
    "CronJob": (
        ("spec", "jobTemplate", "metadata", "labels"),
        ("spec", "jobTemplate", "spec", "template", "metadata", "labels"),
    ),
    "Service": (("spec", "selector"),),
    "PodDisruptionBudget": (("spec", "selector", "matchLabels"),),
}


def _add_labels(obj: dict[str, Any], pairs: dict[str, str], selectors: bool) -> None:
    obj["metadata"].setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    for path in _SELECTOR_PATHS.get(obj["kind"], ()):
        for node in _label_nodes(obj, path):
            node.update(pairs)
    if obj["kind"] == "Deployment":
        for spread in obj["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            spread.setdefault("labelSelector", {}).setdefault("matchLabels", {}).update(pairs)


# --- alerts.yml <-> PrometheusRule -----------------------------------------------------------


def prometheus_rule_text() -> str:
    """The PrometheusRule manifest: a header plus alerts.yml's groups, indented, verbatim."""
    text = ALERTS.read_text()
    start = text.index("\ngroups:") + 1
    return RULE_HEADER + "".join(
        f"  {line}" if line.strip() else line for line in text[start:].splitlines(keepends=True)
    )


def check_rules_sync(write: bool) -> str:
    """Fail unless the PrometheusRule carries exactly alerts.yml's groups (or rewrite it)."""
    if write:
        PROMETHEUS_RULE.write_text(prometheus_rule_text())
        return f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}"
    alerts = yaml.safe_load(ALERTS.read_text())
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    if rule.get("kind") != "PrometheusRule" or rule["spec"]["groups"] != alerts["groups"]:
        raise CheckFailed(
            "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
            "run scripts/check-deploy.sh --sync-rules"
        )
    count = sum(len(g["rules"]) for g in alerts["groups"])
    return f"PrometheusRule carries the same {count} rules as alerts.yml"


# --- dashboard -------------------------------------------------------------------------------


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def substitute_variables(expr: str) -> str:
    """The expression as Grafana would send it with every variable at 'All'."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    if "$" in re.sub(r'"[^"]*"', "", expr):
        raise CheckFailed(f"unknown Grafana variable in: {expr}")
    return expr


def write_dashboard_rules(out: Path) -> str:
    """Write the dashboard's queries as recording rules so `promtool check rules` parses them."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute_variables(expr)}
        for i, (_, expr) in enumerate(dashboard_expressions(dashboard))
    ]
    out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return f"{len(rules)} dashboard queries written to {out}"


# --- rendered manifests ----------------------------------------------------------------------


def check_manifests(paths: list[Path]) -> str:
    """Cross-object checks kubernetes-validate cannot make (it has no CRD schemas)."""
    problems: list[str] = []
    for path in paths:
        objs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for obj in objs:
            by_kind.setdefault(obj["kind"], []).append(obj)
        problems += [f"{path.name}: {p}" for p in _manifest_problems(by_kind)]
    if problems:
        raise CheckFailed("\n".join(problems))
    return f"{len(paths)} rendered manifest set(s) consistent"


def _manifest_problems(by_kind: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems = []
    for kind in (
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "HorizontalPodAutoscaler",
    ):
        if kind not in by_kind:
            problems.append(f"no {kind}")
    if problems:
        return problems
    workloads = by_kind["Deployment"] + by_kind.get("StatefulSet", [])
    for service in by_kind["Service"]:
        problems += _service_problems(service, workloads)
    for stateful in by_kind.get("StatefulSet", []):
        governing = stateful["spec"]["serviceName"]
        if governing not in {s["metadata"]["name"] for s in by_kind["Service"]}:
            problems.append(f"StatefulSet {stateful['metadata']['name']}: no Service {governing}")
    monitor = by_kind["ServiceMonitor"][0]["spec"]
    wanted = monitor["selector"]["matchLabels"]
    scraped = [s for s in by_kind["Service"] if _labels_match(s, wanted)]
    if [s["metadata"]["name"] for s in scraped] != ["drm-gateway-internal"]:
        problems.append("ServiceMonitor must select exactly the internal Service")
    elif monitor["endpoints"][0]["port"] not in {p["name"] for p in scraped[0]["spec"]["ports"]}:
        problems.append("ServiceMonitor endpoint port is not a port of the internal Service")
    if (
        scraped
        and scraped[0]["metadata"]["labels"].get(monitor.get("jobLabel", "")) != "drm-gateway"
    ):
        problems.append("ServiceMonitor jobLabel does not give job=drm-gateway")
    alerts = yaml.safe_load(ALERTS.read_text())["groups"]
    if by_kind["PrometheusRule"][0]["spec"]["groups"] != alerts:
        problems.append("PrometheusRule groups differ from alerts.yml")
    return problems


def _service_problems(service: dict[str, Any], workloads: list[dict[str, Any]]) -> list[str]:
    """A Service must select the pods of exactly one workload, on ports those pods name."""
    name = service["metadata"]["name"]
    selector = service["spec"]["selector"]
    selected = [
        w
        for w in workloads
        if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]
    if len(selected) != 1:
        return [f"Service {name} selects the pods of {len(selected)} workloads, not 1"]
    containers = selected[0]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for c in containers for p in c.get("ports", [])}
    return [
        f"Service {name} targetPort {port['targetPort']} is not a pod port"
        for port in service["spec"]["ports"]
        if port["targetPort"] not in ports
    ]


def _labels_match(obj: dict[str, Any], wanted: dict[str, str]) -> bool:
    labels = obj["metadata"].get("labels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


# --- compose ---------------------------------------------------------------------------------


def check_compose(path: Path) -> str:
    """References the schema cannot see: depends_on, configs, bind-mount sources, volumes."""
    doc = yaml.safe_load(path.read_text())
    services = doc["services"]
    problems = []
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep}")
        for cfg in svc.get("configs", []):
            source = cfg["source"] if isinstance(cfg, dict) else cfg
            if source not in doc.get("configs", {}):
                problems.append(f"{name}: unknown config {source}")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (path.parent / source).exists():
                    problems.append(f"{name}: bind source {source} does not exist")
            elif source not in doc.get("volumes", {}):
                problems.append(f"{name}: unknown volume {source}")
    for needed in ("gateway", "legacy", "incoming", "prometheus", "grafana"):
        if needed not in services:
            problems.append(f"no service {needed}")
    if problems:
        raise CheckFailed("\n".join(problems))
    return f"{len(services)} services, references resolve"


def main(argv: list[str] | None = None) -> int:
    """Run one check; print its result; 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render").add_argument("directory", type=Path)
    commands.add_parser("rules-sync").add_argument("--write", action="store_true")
    commands.add_parser("dashboard-rules").add_argument("out", type=Path)
    commands.add_parser("manifests").add_argument("files", type=Path, nargs="+")
    commands.add_parser("compose").add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            docs = render_kustomization(args.directory)
            print(yaml.safe_dump_all(copy.deepcopy(docs), sort_keys=True), end="")
            return 0
        if args.command == "rules-sync":
            message = check_rules_sync(args.write)
        elif args.command == "dashboard-rules":
            message = write_dashboard_rules(args.out)
        elif args.command == "manifests":
            message = check_manifests(args.files)
        else:
            message = check_compose(args.file)
    except CheckFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
