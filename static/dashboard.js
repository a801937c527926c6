// ipstats dashboard. Live data comes from /api/v1/events (Server-Sent
// Events); when that fails the page polls the REST routes instead. Every
// value is inserted with textContent or as an SVG attribute, never as HTML,
// so nothing that comes from access logs can be interpreted as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const fmt = new Intl.NumberFormat();
const params = new URLSearchParams(location.search);
let source = null;
let pollTimer = null;
let sseFailures = 0;
let selectedIp = null;
let selectedNet = null;
let lastSlideMs = 1000;
// With --cluster the answers that cover every instance are asked for
// (the event stream carries this instance's view); null until known.
let clusterMode = null;

// With --auth-token-file the page is opened as /?access_token=...: every API
// call carries the token on (an event stream cannot send a header).
function api(path) {
  const token = params.get("access_token");
  if (!token) return path;
  return `${path}${path.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}`;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function num(v) {
  return v === null || v === undefined ? "–" : fmt.format(v);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds >= 7200) return `${(seconds / 3600).toFixed(1)} h`;
  if (seconds >= 120) return `${Math.round(seconds / 60)} min`;
  if (seconds >= 10) return `${Math.round(seconds)} s`;
  return `${seconds.toFixed(1)} s`;
}

function bar(fraction, className) {
  const outer = el("div", undefined, "bar" + (className ? " " + className : ""));
  const inner = el("span");
  // CSSOM, not a style attribute: allowed by the page's style-src 'self'.
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  outer.appendChild(inner);
  return outer;
}

function setBadge(id, text, ok) {
  const badge = $(id);
  badge.textContent = text;
  badge.className = "badge " + (ok ? "ok" : "bad");
}

// ---- rendering ------------------------------------------------------------

// A top entry's key: an address, or a network when grouped.
function keyOf(entry) {
  return entry.network !== undefined ? entry.network : entry.ip;
}

function renderTop(top) {
  const grouped = top.prefix4 !== undefined;
  $("top-title").textContent = (grouped ? "Top networks" : "Top IPs") +
    (top.exact === false ? ` (estimates ± ${fmt.format(top.error_bound)}: memory budget reached)` : "");
  $("top-key").textContent = grouped ? "Network" : "IP";
  $("total").textContent = fmt.format(top.total_requests);
  $("distinct").textContent = (top.distinct_ips_estimated ? "≈ " : "") + fmt.format(top.distinct_ips);
  $("window-start").textContent = new Date(top.window.start).toLocaleTimeString();
  $("window-end").textContent = new Date(top.window.end).toLocaleTimeString();
  $("window-length").textContent = duration(top.window.length_seconds);
  $("window-slide").textContent = duration(top.window.slide_seconds);
  lastSlideMs = Math.max(500, top.window.slide_seconds * 1000);
  const max = top.top.length ? top.top[0].count : 1;
  $("top").tBodies[0].replaceChildren(...top.top.map((entry, i) => {
    const row = el("tr");
    row.appendChild(el("td", String(i + 1), "num"));
    const keyCell = el("td");
    const button = el("button", keyOf(entry), grouped ? "net" : "ip");
    button.type = "button";
    if (grouped) {
      button.dataset.network = entry.network;
      button.title = `${fmt.format(entry.distinct_ips)} addresses: show them`;
    } else {
      button.dataset.ip = entry.ip;
      button.title = "show this IP's history";
    }
    keyCell.appendChild(button);
    const alert = flagged.get(keyOf(entry));
    if (alert) {
      row.classList.add("flagged");
      keyCell.appendChild(el("span", ` ⚑ ${alert.rule}`, "flag"));
    }
    row.appendChild(keyCell);
    row.appendChild(countCell(entry));
    const share = el("td", undefined, "share");
    share.appendChild(bar(entry.count / max));
    const pct = top.total_requests ? (100 * entry.count / top.total_requests).toFixed(1) + " %" : "–";
    share.appendChild(el("span", grouped ? `${pct} · ${fmt.format(entry.distinct_ips)} addr.` : pct, "bar-label"));
    row.appendChild(share);
    return row;
  }));
  renderTopChart(top.top.slice(0, 10));
}

// A count as the answer gives it: exact, or "≈ estimate ± half its bounds"
// with the bounds in the title, when a summarized pane was read.
function countText(entry) {
  if (entry.lower === undefined || entry.upper === undefined) return fmt.format(entry.count);
  return `≈ ${fmt.format(entry.count)} ± ${fmt.format(Math.ceil((entry.upper - entry.lower) / 2))}`;
}

function countCell(entry) {
  const cell = el("td", countText(entry), "num");
  if (entry.lower !== undefined) {
    cell.classList.add("estimate");
    cell.title = `between ${fmt.format(entry.lower)} and ${fmt.format(entry.upper)}`;
  }
  return cell;
}

function renderTopChart(entries) {
  const chart = $("top-chart");
  const rowHeight = 18;
  // Drawn at the element's own width, so that text keeps its size on a phone.
  const width = Math.max(240, chart.clientWidth || 600);
  const labelWidth = Math.min(250, Math.round(width * 0.42));
  chart.setAttribute("viewBox", `0 0 ${width} ${Math.max(1, entries.length) * rowHeight}`);
  chart.setAttribute("height", String(Math.max(1, entries.length) * rowHeight));
  const max = entries.length ? entries[0].count : 1;
  chart.replaceChildren(...entries.flatMap((entry, i) => {
    const y = i * rowHeight;
    const label = svgEl("text", { x: labelWidth - 6, y: y + 13, "text-anchor": "end" });
    label.textContent = keyOf(entry);
    const w = Math.max(1, (width - labelWidth - 56) * entry.count / max);
    const rect = svgEl("rect", { x: labelWidth, y: y + 3, width: w, height: rowHeight - 6, rx: 2 });
    const value = svgEl("text", { x: labelWidth + w + 4, y: y + 13 });
    value.textContent = fmt.format(entry.count);
    return [label, rect, value];
  }));
}

function sparkline(id, values) {
  const svg = $(id);
  if (values.length < 2) {
    svg.replaceChildren();
    return;
  }
  const max = Math.max(...values, 1);
  const step = 120 / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(2)},${(27 - 25 * v / max).toFixed(2)}`);
  svg.replaceChildren(
    svgEl("polygon", { points: `0,28 ${points.join(" ")} 120,28` }),
    svgEl("polyline", { points: points.join(" ") }),
  );
}

function renderHistory(history) {
  sparkline("spark-rate", history.map((p) => p.records_per_second));
  sparkline("spark-distinct", history.map((p) => p.distinct_ips));
}

function renderOffsets(offsets) {
  const maxLag = Math.max(1, ...offsets.partitions.map((p) => p.lag || 0));
  $("partitions").tBodies[0].replaceChildren(...offsets.partitions.map((p) => {
    const row = el("tr");
    row.appendChild(el("td", p.topic));
    row.appendChild(el("td", String(p.partition), "num"));
    row.appendChild(el("td", num(p.from_offset), "num"));
    row.appendChild(el("td", num(p.until_offset), "num"));
    row.appendChild(el("td", num(p.log_end), "num"));
    const lag = el("td");
    lag.appendChild(bar((p.lag || 0) / maxLag, "lag"));
    lag.appendChild(el("span", num(p.lag), "bar-label"));
    row.appendChild(lag);
    row.appendChild(el("td", p.lag_seconds === null ? "–" : p.lag_seconds.toFixed(1), "num"));
    row.appendChild(el("td", num(p.committed_zookeeper), "num"));
    row.appendChild(el("td", num(p.committed_kafka), "num"));
    const reset = p.last_reset;
    row.appendChild(el("td", reset
      ? `${reset.reason} → ${fmt.format(reset.reset_to)}` + (reset.records_lost ? ` (${fmt.format(reset.records_lost)} lost)` : "")
      : "–"));
    return row;
  }));
}

// How current the answer is: by event time, the data's own time and how
// far behind the clock it is ("data up to 12:01:05, 3 s behind").
function freshness(time) {
  if (time.source === "arrival") return "by arrival time";
  if (!time.window_end) return `by ${time.source} time · no data yet`;
  const end = new Date(time.window_end).toLocaleTimeString();
  return `data up to ${end}, ${duration(time.event_time_lag_seconds)} behind`;
}

function renderStatus(status) {
  $("demo-banner").hidden = status.mode !== "demo";
  $("rate").textContent = fmt.format(Math.round(status.records_per_second));
  const rows = Object.entries(status.skipped).map(([reason, n]) => [reason.replace(/_/g, " "), n]);
  // Not a skip: lines with invalid UTF-8, read repaired and counted as any other.
  rows.push(["repaired (invalid UTF-8, read)", status.records_repaired]);
  // Not a skip either: records that came after their pane closed.
  if (status.time.source !== "arrival") rows.push(["late (after --lateness)", status.time.records_late]);
  $("skips").tBodies[0].replaceChildren(...rows.map(([label, n]) => {
    const row = el("tr");
    row.appendChild(el("td", label));
    row.appendChild(el("td", fmt.format(n), "num"));
    return row;
  }));
  $("freshness").textContent = freshness(status.time);
  // Windows longer than the kept history cannot be asked for.
  const seconds = { "10s": 10, "1m": 60, "5m": 300, "1h": 3600 };
  for (const option of $("range").options) {
    if (option.value) option.disabled = seconds[option.value] > status.retention_seconds;
  }
  const cp = status.checkpoint;
  $("checkpoint").textContent = cp.age_seconds === null ? "none yet" : duration(cp.age_seconds);
  $("checkpoint-note").textContent = cp.failing ? `failing: ${cp.last_error || "unknown error"}` : "";
  const degraded = status.degraded || [];
  const ok = status.ready && degraded.length === 0;
  setBadge("health", status.ready ? (ok ? "healthy" : "degraded: " + degraded.join(", ")) : "starting: " + status.phase, ok);
  setBadge("kafka", "Kafka " + status.kafka.state, status.kafka.state === "connected");
  const zk = status.zookeeper;
  $("zk").hidden = zk.state === "disabled";
  setBadge("zk", "ZooKeeper " + zk.state, zk.state === "connected");
}

// The range and grouping chosen, as query parameters ("" when live by address).
function adhocQuery() {
  const q = new URLSearchParams();
  if ($("range").value) q.set("window", $("range").value);
  const group = $("group").value;
  if (group.includes("24")) q.set("prefix4", "24");
  if (group.includes("64")) q.set("prefix6", "64");
  return q.toString();
}

function rangeQuery() {
  return $("range").value ? `?window=${encodeURIComponent($("range").value)}` : "";
}

// Keys breaking a rule now (addresses and networks), for marking rows.
let flagged = new Map();

function renderAlerts(alerts) {
  const firing = (alerts && alerts.firing) || [];
  const transitions = (alerts && alerts.transitions) || [];
  flagged = new Map(firing.map((f) => [f.key, f]));
  $("alerts").hidden = firing.length === 0 && transitions.length === 0;
  $("alerts-count").textContent = firing.length === 1 ? "1 alert" : `${firing.length} alerts`;
  $("alerts-firing").replaceChildren(...firing.map((f) => {
    const item = el("li", undefined, "firing");
    item.appendChild(el("strong", f.rule));
    item.appendChild(el("span", ` ${f.key} · ${fmt.format(f.value)} ≥ ${fmt.format(f.threshold)} · since ${new Date(f.since).toLocaleTimeString()}${f.block ? " · blocked" : ""}`));
    return item;
  }));
  $("alerts-transitions").replaceChildren(...transitions.map((t) =>
    el("li", `${new Date(t.at).toLocaleTimeString()} ${t.state} ${t.rule} ${t.key} (${fmt.format(t.value)}, needs ${fmt.format(t.threshold)})`, t.state)));
}

// Who counts what: each instance, its partitions, those it is rebuilding,
// and whether the answers on this page are complete.
function renderCluster(status, coverage) {
  $("cluster").hidden = false;
  const complete = coverage && coverage.complete;
  setBadge("cluster-complete", complete ? "complete" : "incomplete", !!complete);
  const missing = coverage ? coverage.missing : [];
  const leader = status.cluster.rules_leader;
  $("cluster-note").textContent = `this page asks ${status.cluster.instance_id}` +
    (leader ? ` · rules leader ${leader}` : "") +
    (missing.length ? ` · not counted up to date: ${missing.join(", ")}` : "");
  const progress = new Map(status.cluster.held.map((h) => [h.partition, h.progress]));
  const instances = coverage ? coverage.instances : [];
  $("cluster-instances").tBodies[0].replaceChildren(...instances.map((i) => {
    const row = el("tr");
    row.appendChild(el("td", i.id));
    row.appendChild(el("td", i.partitions.join(", ") || "–"));
    row.appendChild(el("td", i.rebuilding.map((p) =>
      progress.has(p) ? `${p} (${Math.round(progress.get(p) * 100)} %)` : p).join(", ") || "–"));
    row.appendChild(el("td", i.reachable ? "yes" : "no"));
    return row;
  }));
}

// Who is behind the traffic (--asn-db, --country-db): the busiest
// autonomous systems with their organisations, and countries, over the
// window chosen. Hidden without the databases.
async function renderOwners(status) {
  const loaded = new Set((status.databases || []).map((d) => d.option));
  $("owners").hidden = loaded.size === 0;
  if (loaded.size === 0) return;
  const q = $("range").value ? `&window=${encodeURIComponent($("range").value)}` : "";
  const ask = (group) => loaded.has(`--${group === "asn" ? "asn" : "country"}-db`)
    ? getJson(`/api/v1/top?group=${group}&n=${encodeURIComponent(n())}${q}`)
    : Promise.resolve(null);
  const [asns, countries] = await Promise.all([ask("asn"), ask("country")]);
  const rows = (answer, cells) => answer ? answer.top.map((entry) => {
    const row = el("tr");
    cells(entry, row);
    row.appendChild(countCell(entry));
    row.appendChild(el("td", fmt.format(entry.distinct_ips), "num"));
    return row;
  }) : [];
  $("owners-asn").tBodies[0].replaceChildren(...rows(asns, (entry, row) => {
    const key = `AS${entry.asn}`;
    const cell = el("td");
    const button = el("button", entry.asn === 0 ? "unknown" : key, "asn");
    button.type = "button";
    button.dataset.asn = String(entry.asn);
    button.title = `${fmt.format(entry.distinct_ips)} addresses: show them`;
    cell.appendChild(button);
    const alert = flagged.get(key);
    if (alert) {
      row.classList.add("flagged");
      cell.appendChild(el("span", ` ⚑ ${alert.rule}`, "flag"));
    }
    row.appendChild(cell);
    row.appendChild(el("td", entry.org || "–"));
  }));
  $("owners-country").tBodies[0].replaceChildren(...rows(countries, (entry, row) => {
    const cell = el("td", entry.country === "--" ? "unknown" : entry.country);
    const alert = flagged.get(entry.country);
    if (alert) {
      row.classList.add("flagged");
      cell.appendChild(el("span", ` ⚑ ${alert.rule}`, "flag"));
    }
    row.appendChild(cell);
  }));
  const answer = asns || countries;
  $("owners-note").textContent = answer && answer.exact === false
    ? `(estimates ± ${fmt.format(answer.error_bound)}: memory budget reached)` : "";
}

async function render(event) {
  renderAlerts(event.alerts);
  let top = event.top;
  let offsets = event.offsets;
  let failed = null;
  const adhoc = adhocQuery();
  if (clusterMode === null) clusterMode = !!(await getJson("/api/v1/status").catch(() => ({}))).cluster;
  if (clusterMode && !adhoc) {
    try {
      [top, offsets] = await Promise.all([
        getJson(`/api/v1/top?n=${encodeURIComponent(n())}`),
        getJson("/api/v1/offsets"),
      ]);
      renderCluster(await getJson("/api/v1/status"), top.cluster);
    } catch (error) {
      failed = `Cannot load the cluster's answer: ${error.message}`;
    }
  }
  if (adhoc) {
    try {
      top = await getJson(`/api/v1/top?n=${encodeURIComponent(n())}&${adhoc}`);
    } catch (error) {
      failed = `Cannot load that window: ${error.message}`;
    }
  }
  renderTop(top);
  renderOffsets(offsets);
  renderStatus(event.status);
  try {
    await renderOwners(event.status);
  } catch (error) {
    failed = failed || `Cannot load who is behind the traffic: ${error.message}`;
  }
  if (event.history) renderHistory(event.history);
  // Shown after the status, which would otherwise repaint the badge.
  // ipstats answered (a busy or refused question is no outage).
  if (failed) showError(failed, false); else $("error-banner").hidden = true;
  $("updated").textContent = new Date().toLocaleTimeString();
  if (selectedIp) loadIpHistory(selectedIp);
  if (selectedNet) loadMembers(selectedNet);
  if (selectedAsn !== null) loadAsn(selectedAsn);
}

function showError(message, unreachable = true) {
  $("error-banner").textContent = message;
  $("error-banner").hidden = false;
  if (unreachable) setBadge("health", "unreachable", false);
}

// ---- one IP's history -------------------------------------------------------

async function loadIpHistory(ip) {
  try {
    const response = await fetch(api(`/api/v1/ips/${encodeURIComponent(ip)}${rangeQuery()}`), { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderIpHistory(await response.json());
  } catch (error) {
    showError(`Cannot load the history of ${ip}: ${error.message}`);
  }
}

function renderIpHistory(detail) {
  $("ip-history").hidden = false;
  $("ip-history-ip").textContent = detail.ip;
  $("ip-history-count").textContent = countText(detail);
  const chart = $("ip-history-chart");
  const panes = detail.panes;
  const width = 300;
  const height = 120;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...panes.map((p) => p.count));
  const w = width / Math.max(1, panes.length);
  chart.replaceChildren(
    svgEl("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }),
    ...panes.map((p, i) => {
      const h = (height - 4) * p.count / max;
      const rect = svgEl("rect", { x: i * w, y: height - h, width: Math.max(0.5, w - 0.5), height: h });
      const title = svgEl("title");
      title.textContent = `${new Date(p.start).toLocaleTimeString()}: ${p.count}`;
      rect.appendChild(title);
      return rect;
    }),
  );
}

// ---- one network's or one AS's members ----------------------------------------

// The members panel: `title`, then the answer's count, distinct addresses
// and busiest addresses (each opens its history).
function renderMembers(title, detail) {
  $("net-members").hidden = false;
  $("net-members-net").textContent = title;
  $("net-members-count").textContent = countText(detail);
  $("net-members-distinct").textContent = fmt.format(detail.distinct_ips);
  $("net-members-table").tBodies[0].replaceChildren(...detail.top.map((entry) => {
    const row = el("tr");
    const cell = el("td");
    const button = el("button", entry.ip, "ip");
    button.type = "button";
    button.dataset.ip = entry.ip;
    button.title = "show this IP's history";
    cell.appendChild(button);
    row.appendChild(cell);
    row.appendChild(countCell(entry));
    return row;
  }));
}

async function loadMembers(network) {
  try {
    const q = rangeQuery();
    const detail = await getJson(`/api/v1/networks/${encodeURIComponent(network)}${q ? q + "&" : "?"}n=25`);
    renderMembers(detail.network, detail);
  } catch (error) {
    showError(`Cannot load the members of ${network}: ${error.message}`);
  }
}

let selectedAsn = null;

async function loadAsn(asn) {
  try {
    const q = rangeQuery();
    const detail = await getJson(`/api/v1/asns/${encodeURIComponent(asn)}${q ? q + "&" : "?"}n=25`);
    renderMembers(`AS${detail.asn}${detail.org ? " " + detail.org : ""}`, detail);
  } catch (error) {
    showError(`Cannot load AS${asn}: ${error.message}`);
  }
}

// ---- data feed: SSE, polling as the fall-back ----------------------------------

function n() {
  return $("n").value;
}

function connect() {
  if (source) source.close();
  clearTimeout(pollTimer);
  if (!("EventSource" in window) || sseFailures >= 3) {
    poll();
    return;
  }
  source = new EventSource(api(`/api/v1/events?n=${encodeURIComponent(n())}`));
  source.addEventListener("snapshot", (message) => {
    sseFailures = 0;
    $("feed").textContent = "streaming";
    render(JSON.parse(message.data));
  });
  source.onerror = () => {
    sseFailures += 1;
    if (sseFailures >= 3) {
      source.close();
      source = null;
      poll();
    }
  };
}

async function getJson(path) {
  const response = await fetch(api(path), { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  $("feed").textContent = "polling";
  try {
    const [top, offsets, status, alerts] = await Promise.all([
      getJson(`/api/v1/top?n=${encodeURIComponent(n())}`),
      getJson("/api/v1/offsets"),
      getJson("/api/v1/status"),
      getJson("/api/v1/alerts"),
    ]);
    render({ top, offsets, status, alerts });
  } catch (error) {
    showError(`Cannot reach ipstats: ${error.message}`);
  }
  clearTimeout(pollTimer);
  pollTimer = setTimeout(() => {
    // Try the live stream again from time to time.
    sseFailures = Math.max(0, sseFailures - 1);
    if (sseFailures < 3) connect(); else poll();
  }, lastSlideMs);
}

// ---- controls, kept in the URL --------------------------------------------------

function keepInUrl(name, value, fallback) {
  if (value === fallback) params.delete(name); else params.set(name, value);
  const query = params.toString();
  history.replaceState(null, "", query ? "?" + query : location.pathname);
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = ["light", "dark"].includes(theme) ? theme : "auto";
}

document.addEventListener("DOMContentLoaded", () => {
  const wantedN = params.get("n");
  if (wantedN && [...$("n").options].some((o) => o.value === wantedN)) $("n").value = wantedN;
  const theme = params.get("theme") || "auto";
  $("theme").value = ["light", "dark"].includes(theme) ? theme : "auto";
  applyTheme($("theme").value);
  selectedIp = params.get("ip");
  if (selectedIp) loadIpHistory(selectedIp);

  $("n").addEventListener("change", () => {
    keepInUrl("n", n(), "10");
    connect();
  });
  $("theme").addEventListener("change", () => {
    applyTheme($("theme").value);
    keepInUrl("theme", $("theme").value, "auto");
  });
  for (const [id, name] of [["range", "window"], ["group", "group"]]) {
    const wanted = params.get(name);
    if (wanted && [...$(id).options].some((o) => o.value === wanted)) $(id).value = wanted;
    $(id).addEventListener("change", () => {
      keepInUrl(name, $(id).value, "");
      connect();
    });
  }
  selectedNet = params.get("network");
  if (selectedNet) loadMembers(selectedNet);
  const choose = (event) => {
    const net = event.target.closest("button.net");
    if (net) {
      selectedNet = net.dataset.network;
      selectedAsn = null;
      keepInUrl("asn", "", "");
      keepInUrl("network", selectedNet, "");
      loadMembers(selectedNet);
      return;
    }
    const button = event.target.closest("button.ip");
    if (!button) return;
    selectedIp = button.dataset.ip;
    keepInUrl("ip", selectedIp, "");
    loadIpHistory(selectedIp);
  };
  $("top").addEventListener("click", choose);
  $("owners-asn").addEventListener("click", (event) => {
    const button = event.target.closest("button.asn");
    if (!button) return;
    selectedNet = null;
    keepInUrl("network", "", "");
    selectedAsn = button.dataset.asn;
    keepInUrl("asn", selectedAsn, "");
    loadAsn(selectedAsn);
  });
  selectedAsn = params.get("asn");
  if (selectedAsn !== null) loadAsn(selectedAsn);
  $("net-members-table").addEventListener("click", choose);
  $("net-members-close").addEventListener("click", () => {
    selectedNet = null;
    selectedAsn = null;
    keepInUrl("network", "", "");
    keepInUrl("asn", "", "");
    $("net-members").hidden = true;
  });
  $("ip-history-close").addEventListener("click", () => {
    selectedIp = null;
    keepInUrl("ip", "", "");
    $("ip-history").hidden = true;
  });
  connect();
});
