// Corral dashboard: polls api/state every second and redraws. No libraries, no external
// assets; every value goes into the page as text (never as HTML).
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
let failures = 0;
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function ms(seconds) {
  if (!seconds) return "-";
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(1)} s`;
}
function pct(x) { return `${(x * 100).toFixed(1)}%`; }
function rate(x) { return x >= 100 ? x.toFixed(0) : x.toFixed(1); }
function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return `${Math.round(seconds)}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  return `${Math.round(seconds / 3600)}h`;
}
function clock(unixMs) { return new Date(unixMs).toLocaleTimeString(); }

function spark(values, color, label) {
  const w = 120, h = 24;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const max = Math.max(...values, 0);
  const base = document.createElementNS(SVG, "line");
  base.setAttribute("x1", 0); base.setAttribute("x2", w);
  base.setAttribute("y1", h - 0.5); base.setAttribute("y2", h - 0.5);
  base.setAttribute("stroke", "#263140");
  svg.append(base);
  if (values.length > 1 && max > 0) {
    const step = w / (values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("points", `0,${h} ${points.join(" ")} ${w},${h}`);
    area.setAttribute("fill", color);
    area.setAttribute("fill-opacity", "0.15");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    svg.append(area, line);
  }
  return svg;
}

function shareBar(share) {
  const bar = el("span", { class: "bar" });
  const fill = el("i");
  fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
  bar.append(fill);
  return el("span", {}, bar, pct(share));
}

function errorCell(row) {
  const cls = row.error_rate >= 0.05 ? "num bad" : row.error_rate > 0 ? "num warn" : "num";
  const detail = Object.entries(row.errors || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  return el("td", { class: cls, title: detail || "no errors" }, pct(row.error_rate));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderTiles(doc) {
  const backends = doc.backends;
  const healthy = backends.filter((b) => b.health === "healthy" && !b.drained).length;
  const age = doc.cluster.snapshot_age_seconds;
  const tiles = [
    ["Requests / s", rate(doc.totals.rps)],
    ["Requests (5 min)", doc.totals.requests],
    ["Backends healthy", `${healthy} / ${backends.length}`],
    ["Models", doc.models.length],
    ["Edges reporting", `${doc.totals.edges_reporting} / ${doc.cluster.edges.length}`],
    ["Control planes", doc.cluster.replicas.length],
    ["Snapshot", `v${doc.cluster.version}`],
  ];
  document.getElementById("tiles").replaceChildren(
    ...tiles.map(([k, v]) => el("div", { class: "tile" }, el("div", { class: "v" }, v), el("div", { class: "k" }, k)))
  );
  document.getElementById("summary").textContent =
    `replica ${doc.replica} \u00b7 snapshot v${doc.cluster.version}` +
    (age === null ? "" : ` (built ${age.toFixed(0)}s ago)`);
}

function renderBackends(doc) {
  const rows = doc.backends.map((b) => {
    const health = el("td", { "data-health": b.health },
      el("span", { class: `badge b-${b.health}` }, b.health),
      b.reason && b.health !== "healthy" ? el("span", { class: "reason" }, b.reason) : null);
    const flags = el("td");
    if (b.drained) flags.append(el("span", { class: "flag f-drained", title: b.drain_reason || "drained" }, "drained"));
    if (b.ejected_by.length) flags.append(el("span", { class: "flag f-ejected", title: `by ${b.ejected_by.join(", ")}` }, `ejected \u00d7${b.ejected_by.length}`));
    if (!b.drained && !b.ejected_by.length) flags.append(el("span", { class: "muted" }, `prio ${b.priority} \u00b7 w ${b.weight}`));
    return el("tr", { "data-backend": b.name },
      el("td", {}, el("strong", {}, b.name), el("div", { class: "muted" }, b.type)),
      health,
      el("td", { class: "models", title: b.models.join(", ") }, b.models.join(", ") || "-"),
      el("td", { class: "num" }, `${b.running} / ${b.waiting}`),
      el("td", { class: "num" }, b.kv_cache === null ? "-" : pct(b.kv_cache)),
      el("td", { class: "num" }, b.inflight),
      el("td", {}, shareBar(b.share)),
      el("td", { class: "num" }, rate(b.rps)),
      errorCell(b),
      el("td", { class: "num" }, `${ms(b.p50)} / ${ms(b.p95)}`),
      el("td", { class: "num" }, `${ms(b.ttft_p50)} / ${ms(b.ttft_p95)}`),
      flags,
      el("td", {}, spark(b.series.map((p) => p[0]), "#58a6ff", `requests of ${b.name}`)),
      el("td", {}, spark(b.series.map((p) => p[2]), "#d29922", `p95 latency of ${b.name}`)),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 14, class: "muted" }, "No backends registered.")));
  fill(document.querySelector("#backends tbody"), rows);
}

function renderModels(doc) {
  const rows = doc.models.map((m) => el("tr", { "data-model": m.id },
    el("td", {}, el("strong", {}, m.id)),
    el("td", { class: "models" }, m.backends.join(", ") || "-"),
    el("td", { class: "muted" }, m.alias_targets.join(", ") || "-"),
    el("td", { class: "num" }, rate(m.rps)),
    el("td", {}, shareBar(m.share)),
    errorCell(m),
    el("td", { class: "num" }, ms(m.p95)),
    el("td", { class: "num" }, ms(m.ttft_p95)),
  ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No models.")));
  fill(document.querySelector("#models tbody"), rows);
}

function renderCluster(doc) {
  const edges = doc.cluster.edges.map((e) => el("tr", { "data-edge": e.edge_id },
    el("td", {}, e.edge_id),
    el("td", {}, e.address || "-"),
    el("td", {}, e.replica || (e.subscribed ? "-" : "not subscribed")),
    el("td", { class: "num" }, e.snapshot_version ? `v${e.snapshot_version}` : "-"),
    el("td", { class: "num" }, age(e.snapshot_age_seconds)),
    el("td", { class: e.reported_seconds_ago !== null && e.reported_seconds_ago > 30 ? "num warn" : "num" },
      e.reported_seconds_ago === null ? "never" : `${age(e.reported_seconds_ago)} ago`),
    el("td", {}, e.ejected.join(", ") || "-"),
  ));
  if (!edges.length) edges.push(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No edges.")));
  fill(document.querySelector("#edges tbody"), edges);
  const now = doc.now_unix_ms;
  const replicas = doc.cluster.replicas.map((r) => el("tr", {},
    el("td", {}, r.replica_id, r.replica_id === doc.replica ? el("span", { class: "muted" }, " (this one)") : null),
    el("td", {}, r.listen || "-"),
    el("td", {}, r.http || "-"),
    el("td", { class: "num" }, r.started_unix_ms ? age((now - r.started_unix_ms) / 1000) : "-"),
  ));
  fill(document.querySelector("#replicas tbody"), replicas);
}

function renderTimeline(doc) {
  const items = doc.timeline.map((e) => el("li", { class: `k-${e.kind}`, "data-kind": e.kind },
    el("time", {}, clock(e.unix_ms)),
    el("strong", {}, e.backend), " ",
    el("span", {}, e.text)));
  if (!items.length) items.push(el("li", { class: "muted" }, "Nothing yet."));
  document.getElementById("timeline").replaceChildren(...items);
}

function setLive(state, text) {
  const live = document.getElementById("live");
  live.className = `live ${state}`;
  document.getElementById("live-text").textContent = text;
}

async function poll() {
  try {
    const resp = await fetch("api/state", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.reload(); return; }
    const doc = await resp.json();
    if (!resp.ok) throw new Error(doc.error || `HTTP ${resp.status}`);
    renderTiles(doc);
    renderBackends(doc);
    renderModels(doc);
    renderCluster(doc);
    renderTimeline(doc);
    failures = 0;
    lastOk = Date.now();
    setLive("ok", "live");
  } catch (err) {
    failures += 1;
    setLive(failures > 3 ? "down" : "stale", `no answer (${err.message})`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
