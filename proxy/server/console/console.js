// The migration console: fetches the admin endpoints every few seconds and shows them.
// Every figure comes from the server (GET /admin/summary computes the shares); this script
// only formats. Each shown value carries data-k (a stable key) and data-v (the raw value).
// The browser sends the admin credentials it was asked for when the page loaded (HTTP Basic);
// nothing secret is in this file.
"use strict";

const REFRESH_MS = 5000;
const MISSING_LIMIT = 20;
const HISTORY_LIMIT = 10;
const SOURCES = {
  summary: "summary",
  rules: "rules",
  missing: `missing?limit=${MISSING_LIMIT}`,
  fleet: "fleet",
  history: `rules/history?limit=${HISTORY_LIMIT}`,
};
const SVG_NS = "http://www.w3.org/2000/svg";

// --- small DOM helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.setAttribute("class", value);
    else node.setAttribute(name, String(value));
  }
}

function raw(value) {
  return value === null || value === undefined ? "null" : String(value);
}

// A table cell holding one value: data-k names it, data-v holds it unformatted.
function cell(key, value, text, cls) {
  return h("td", { "data-k": key, "data-v": raw(value), class: cls }, text);
}

function count(key, value) {
  return cell(key, value, formatCount(value), "num");
}

function share(key, value) {
  return cell(key, value, formatShare(value), "num");
}

function formatCount(value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US");
}

function formatShare(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)}%`;
}

function formatTime(iso) {
  return iso ? iso.replace("T", " ").replace("Z", " UTC") : "—";
}

function fill(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(...rows);
}

function note(id, key, value, text, cls) {
  const node = document.getElementById(id);
  node.replaceChildren(h("span", { "data-k": key, "data-v": raw(value), class: cls }, text));
  return node;
}

function emptyRow(columns, text) {
  return h("tr", {}, h("td", { colspan: columns, class: "muted" }, text));
}

// --- fetching ------------------------------------------------------------------------------

async function fetchJson(path) {
  try {
    const response = await fetch(path, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return { status: response.status, ok: response.ok, body };
  } catch (error) {
    return { status: 0, ok: false, body: null, error: String(error) };
  }
}

function failure(result) {
  if (result.status === 0) return "the gateway did not answer";
  const message = result.body && result.body.message ? `: ${result.body.message}` : "";
  return `HTTP ${result.status}${message}`;
}

// --- sections ------------------------------------------------------------------------------

function renderShare(summary) {
  fill(
    "share-table",
    summary.share.map((row) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, h("span", { class: `swatch drm-${row.drm}` }), row.drm),
        count(`share|${row.drm}|hour|requests`, row.hour.requests),
        count(`share|${row.drm}|hour|incoming`, row.hour.incoming),
        share(`share|${row.drm}|hour|share`, row.hour.share),
        count(`share|${row.drm}|total|requests`, row.total.requests),
        count(`share|${row.drm}|total|incoming`, row.total.incoming),
        share(`share|${row.drm}|total|share`, row.total.share),
      ),
    ),
  );
  document.getElementById("share-chart").replaceChildren(shareChart(summary));
}

// One line per DRM system: the incoming share of each minute (gaps where none was asked).
function shareChart(summary) {
  const width = 720, height = 210, left = 44, right = 12, top = 12, bottom = 28;
  const minutes = summary.minutes.length;
  const x = (i) => left + (i * (width - left - right)) / Math.max(minutes - 1, 1);
  const y = (value) => top + (1 - value) * (height - top - bottom);
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "incoming share per DRM system, per minute over the last hour",
    class: "share-svg",
  });
  for (const level of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(level), y2: y(level), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(level) + 4, class: "axis end" }, `${level * 100}%`));
  }
  const labels = [[0, `${minutes} min ago`], [Math.floor(minutes / 2), `${minutes - Math.floor(minutes / 2)} min ago`], [minutes - 1, "now"]];
  for (const [i, text] of labels) {
    chart.append(svg("text", { x: x(i), y: height - 8, class: "axis middle" }, text));
  }
  const legend = h("p", { class: "legend" });
  for (const row of summary.share) {
    let path = "";
    let points = 0;
    let pen = "M";
    row.minutes.forEach((minute, i) => {
      if (minute.share === null) {
        pen = "M";
        return;
      }
      path += `${pen}${x(i).toFixed(1)},${y(minute.share).toFixed(1)} `;
      pen = "L";
      points += 1;
      const dot = svg("circle", { cx: x(i), cy: y(minute.share), r: 2.5, class: `dot drm-${row.drm}` });
      dot.append(svg("title", {}, `${row.drm} ${summary.minutes[i]}: ${formatShare(minute.share)} of ${minute.requests}`));
      chart.append(dot);
    });
    if (path) chart.append(svg("path", { d: path.trim(), class: `line drm-${row.drm}` }));
    chart.setAttribute(`data-points-${row.drm}`, points);
    legend.append(h("span", { class: "legend-item" }, h("span", { class: `swatch drm-${row.drm}` }), row.drm));
  }
  const box = h("div", {}, chart, legend);
  return box;
}

function renderProviders(summary) {
  const fields = ["requests", "errors", "upstream_failures", "fallbacks_from", "fallbacks_to"];
  fill(
    "providers-table",
    summary.by_provider.map((row) => {
      const legacy = row.provider === summary.default_provider;
      const cells = [];
      for (const span of ["hour", "total"]) {
        for (const name of fields) {
          const value = row[span][name];
          const bad = value > 0 && name !== "requests" && name !== "fallbacks_to";
          cells.push(cell(`provider|${row.provider}|${span}|${name}`, value, formatCount(value), bad ? "num bad" : "num"));
        }
      }
      return h("tr", {}, h("th", { scope: "row" }, row.provider, legacy ? h("span", { class: "tag" }, "legacy") : h("span", { class: "tag incoming" }, "incoming")), ...cells);
    }),
  );
}

function renderCircuits(summary) {
  const list = document.getElementById("circuits-list");
  if (!summary.circuits.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No circuit has been used yet."));
    return;
  }
  list.replaceChildren(
    ...summary.circuits.map((c) =>
      h(
        "div",
        { class: `circuit state-${c.state}` },
        h("span", { class: "circuit-name" }, `${c.provider} / ${c.drm}`),
        h("span", { "data-k": `circuit|${c.provider}|${c.drm}`, "data-v": c.state, class: "circuit-state" }, c.state.replace("_", "-")),
      ),
    ),
  );
}

function whenText(when) {
  if (!when || !Object.keys(when).length) return "every request";
  return Object.entries(when)
    .map(([name, value]) => `${name}: ${Array.isArray(value) ? value.join(", ") : value}`)
    .join("; ");
}

function rolloutText(rule) {
  if (rule.enabled === false) return "disabled";
  const percent = rule.percent === undefined ? 100 : rule.percent;
  return rule.stickiness ? `${percent}% by ${rule.stickiness}` : `${percent}%`;
}

// A rule's decisions (none counted yet: 0; the summary unreadable: unknown).
function decisionCells(name, decisions) {
  const none = decisions ? { hour: 0, hour_share: null, total: 0 } : { hour: null, hour_share: null, total: null };
  const row = (decisions && decisions.get(name)) || none;
  return [
    count(`rule|${name}|hour`, row.hour),
    share(`rule|${name}|hour_share`, row.hour_share),
    count(`rule|${name}|total`, row.total),
  ];
}

function renderRules(result, summary) {
  const version = document.getElementById("rules-version");
  if (!result.ok) {
    version.textContent = "unavailable";
    version.dataset.v = "null";
    fill("rules-table", [emptyRow(9, `Rules could not be read: ${failure(result)}`)]);
    return;
  }
  const rules = result.body;
  version.textContent = rules.version ?? "none";
  version.dataset.v = raw(rules.version);
  const sha = document.getElementById("rules-sha");
  sha.textContent = rules.sha256 ? `sha256 ${rules.sha256.slice(0, 12)}…` : "";
  sha.dataset.k = "rules|sha256";
  sha.dataset.v = raw(rules.sha256);
  const decisions = summary ? new Map(summary.decisions.map((d) => [d.rule, d])) : null;
  const shown = new Set();
  const rows = (rules.rules || []).map((rule, i) => {
    shown.add(rule.name);
    return h(
      "tr",
      { class: rule.enabled === false ? "disabled" : null },
      h("td", { class: "num" }, i + 1),
      cell(`rule|${rule.name}|name`, rule.name, rule.name),
      h("td", { class: "when" }, whenText(rule.when)),
      cell(`rule|${rule.name}|route`, rule.route, rule.route),
      cell(`rule|${rule.name}|percent`, rule.percent ?? null, rolloutText(rule)),
      h("td", {}, rule.fallback || "—"),
      ...decisionCells(rule.name, decisions),
    );
  });
  shown.add("default");
  rows.push(
    h(
      "tr",
      { class: "default" },
      h("td", {}, ""),
      cell("rule|default|name", "default", "default"),
      h("td", { class: "when" }, "no rule decided"),
      cell("rule|default|route", rules.default ?? null, rules.default ?? "—"),
      h("td", {}, ""),
      h("td", {}, ""),
      ...decisionCells("default", decisions),
    ),
  );
  // Guards and rules of earlier versions that decided requests in this process.
  for (const [name, row] of decisions || []) {
    if (shown.has(name) || !(row.total > 0)) continue;
    const guard = name.startsWith("guard:");
    rows.push(
      h(
        "tr",
        { class: "other" },
        h("td", {}, ""),
        cell(`rule|${name}|name`, name, name),
        h("td", { class: "when muted" }, guard ? "a guard overrode the default provider" : "not in the current rules"),
        h("td", {}, Object.keys(row.hour_by_provider).join(", ") || "—"),
        h("td", {}, ""),
        h("td", {}, ""),
        ...decisionCells(name, decisions),
      ),
    );
  }
  fill("rules-table", rows);
  const problems = rules.problems || [];
  if (problems.length) showBanner(`The rules file is refused (${problems.join("; ")}); version ${rules.version} still serves.`);
}

function renderMissing(result) {
  if (!result.ok) {
    note("missing-meta", "missing|status", "failed", `Could not be read: ${failure(result)}`, "bad");
    fill("missing-table", []);
    return;
  }
  const listing = result.body;
  const meta = note("missing-meta", "missing|total", listing.total, `${formatCount(listing.total)} titles listed`);
  meta.append(` (${listing.scope === "fleet" ? "the whole fleet's traffic" : "this replica's traffic"}`);
  if (listing.titles.length) meta.append(`; the ${listing.titles.length} most requested shown`);
  if (listing.evicted) meta.append(`; ${formatCount(listing.evicted)} least recently seen dropped`);
  meta.append(")");
  if (!listing.titles.length) {
    fill("missing-table", [emptyRow(6, "No title has been requested without its drmResourceId.")]);
    return;
  }
  fill(
    "missing-table",
    listing.titles.map((title, i) =>
      h(
        "tr",
        {},
        h("td", { class: "num" }, i + 1),
        cell(`missing|${i + 1}|asset`, title.asset_id, title.asset_id, "mono"),
        count(`missing|${i + 1}|count`, title.count),
        h("td", {}, Object.entries(title.by_drm).map(([drm, n]) => `${drm} ${n}`).join(" · ")),
        h("td", {}, formatTime(title.first_seen)),
        h("td", {}, formatTime(title.last_seen)),
      ),
    ),
  );
}

function renderFleet(result) {
  document.getElementById("fleet-table").hidden = !result.ok;
  if (result.status === 404) {
    note("fleet-meta", "fleet|status", "unavailable", "fleet view unavailable", "muted");
    fill("fleet-table", []);
    return;
  }
  if (!result.ok) {
    note("fleet-meta", "fleet|status", "failed", `fleet view failed: ${failure(result)}`, "bad");
    fill("fleet-table", []);
    return;
  }
  const fleet = result.body;
  const meta = note("fleet-meta", "fleet|status", "ok", fleet.scope === "fleet" ? "every live replica" : "this replica only");
  meta.append(" · ", h("span", { "data-k": "fleet|agree", "data-v": raw(fleet.agree), class: fleet.agree ? "good" : "bad" }, fleet.agree ? "all run the same rules" : "replicas disagree"));
  for (const text of fleet.disagreements || []) meta.append(h("span", { class: "bad block" }, text));
  if (fleet.note) meta.append(h("span", { class: "muted block" }, fleet.note));
  fill(
    "fleet-table",
    fleet.replicas.map((r) =>
      h(
        "tr",
        { class: r.replica_id === fleet.self ? "self" : null },
        h("td", { class: "mono" }, r.replica_id, r.replica_id === fleet.self ? h("span", { class: "tag" }, "this page") : null),
        h("td", {}, r.version ?? "—"),
        cell(`fleet|${r.replica_id}|rules_version`, r.rules_version, r.rules_version ?? "none"),
        cell(`fleet|${r.replica_id}|rules_sha256`, r.rules_sha256, r.rules_sha256 ? `${r.rules_sha256.slice(0, 12)}…` : "—", "mono"),
        h("td", { class: r.catalog && r.catalog.ok ? "good" : "bad" }, r.catalog ? `${r.catalog.backend} ${r.catalog.ok ? "ok" : "failing"}` : "—"),
        count(`fleet|${r.replica_id}|in_flight`, r.in_flight),
        h("td", {}, r.age_seconds === undefined ? "—" : `${Number(r.age_seconds).toFixed(0)} s ago`),
      ),
    ),
  );
}

function renderHistory(result) {
  const list = document.getElementById("history-list");
  if (result.status === 404) {
    note("history-meta", "history|status", "unavailable", "rules history unavailable", "muted");
    list.replaceChildren();
    return;
  }
  if (!result.ok) {
    note("history-meta", "history|status", "failed", `rules history failed: ${failure(result)}`, "bad");
    list.replaceChildren();
    return;
  }
  const entries = result.body.entries || [];
  note("history-meta", "history|status", "ok", entries.length ? (result.body.scope === "fleet" ? "changes across the fleet" : "changes seen by this replica") : "No change recorded yet.");
  list.replaceChildren(
    ...entries.map((e, i) => {
      const item = h(
        "li",
        { class: `result-${e.result}` },
        h("span", { class: "when" }, formatTime(e.at)),
        " ",
        h("span", { "data-k": `history|${i + 1}|result`, "data-v": e.result, class: "badge" }, e.result),
        " ",
        h("span", { "data-k": `history|${i + 1}|version`, "data-v": raw(e.version), class: "mono" }, `${e.previous_version ?? "—"} → ${e.version ?? "—"}`),
        " by ",
        h("strong", { "data-k": `history|${i + 1}|who`, "data-v": raw(e.who) }, e.who ?? "?"),
        h("span", { class: "muted" }, ` (${e.trigger})`),
      );
      for (const problem of e.problems || []) item.append(h("span", { class: "bad block" }, problem));
      if (e.diff) item.append(h("details", {}, h("summary", {}, "diff"), h("pre", {}, e.diff)));
      return item;
    }),
  );
}

// --- the refresh loop ----------------------------------------------------------------------

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = false;
}

async function refresh() {
  // Numbered: data-refresh-started when it begins, data-refreshes once it is shown.
  const number = Number(document.body.dataset.refreshStarted || 0) + 1;
  document.body.dataset.refreshStarted = String(number);
  const names = Object.keys(SOURCES);
  const results = await Promise.all(names.map((name) => fetchJson(SOURCES[name])));
  const got = Object.fromEntries(names.map((name, i) => [name, results[i]]));
  const banner = document.getElementById("banner");
  banner.hidden = true;
  if (results.some((r) => r.status === 401)) {
    showBanner("Not authorised: reload the page and sign in with an admin token.");
  }
  const summary = got.summary.ok ? got.summary.body : null;
  if (summary) {
    renderShare(summary);
    renderProviders(summary);
    renderCircuits(summary);
    document.getElementById("scope").textContent = `this replica since ${formatTime(summary.since)}`;
    document.body.dataset.generatedAt = summary.generated_at;
  } else {
    showBanner(`The summary could not be read: ${failure(got.summary)}`);
  }
  renderRules(got.rules, summary);
  renderMissing(got.missing);
  renderFleet(got.fleet);
  renderHistory(got.history);
  const updated = document.getElementById("updated");
  updated.textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC · every ${REFRESH_MS / 1000} s`;
  document.body.dataset.state = summary ? "ready" : "error";
  document.body.dataset.refreshes = String(number);
}

async function loop() {
  if (!document.hidden) {
    try {
      await refresh();
    } catch (error) {
      showBanner(`The page failed to update: ${error}`);
      document.body.dataset.state = "error";
    }
  }
  setTimeout(loop, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", loop);
