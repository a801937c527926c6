// ipstats dashboard: polls the API and renders with textContent only, so
// nothing that comes from access logs can ever be interpreted as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
let refreshMs = 1000;
let timer = null;

function cell(row, text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  row.appendChild(td);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function duration(seconds) {
  return seconds >= 60 && seconds % 60 === 0 ? `${seconds / 60} min` : `${seconds} s`;
}

function num(v) {
  return v === null || v === undefined ? "–" : fmt.format(v);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function renderTop(top) {
  $("total").textContent = fmt.format(top.total_requests);
  $("distinct").textContent = fmt.format(top.distinct_ips);
  $("window-start").textContent = new Date(top.window.start).toLocaleTimeString();
  $("window-end").textContent = new Date(top.window.end).toLocaleTimeString();
  $("window-length").textContent = duration(top.window.length_seconds);
  $("window-slide").textContent = duration(top.window.slide_seconds);
  refreshMs = Math.max(500, Math.min(5000, top.window.slide_seconds * 1000));
  fill($("top").tBodies[0], top.top.map((entry, i) => {
    const row = document.createElement("tr");
    cell(row, String(i + 1), true);
    cell(row, entry.ip, false);
    cell(row, fmt.format(entry.count), true);
    const share = top.total_requests ? (100 * entry.count / top.total_requests).toFixed(1) + " %" : "–";
    cell(row, share, true);
    return row;
  }));
}

function renderOffsets(offsets) {
  fill($("partitions").tBodies[0], offsets.partitions.map((p) => {
    const row = document.createElement("tr");
    cell(row, p.topic, false);
    cell(row, String(p.partition), true);
    cell(row, num(p.from_offset), true);
    cell(row, num(p.until_offset), true);
    cell(row, num(p.log_start), true);
    cell(row, num(p.log_end), true);
    cell(row, num(p.lag), true);
    cell(row, p.lag_seconds === null ? "–" : p.lag_seconds.toFixed(1), true);
    cell(row, num(p.committed_zookeeper), true);
    cell(row, num(p.committed_kafka), true);
    cell(row, p.last_reset ? `${p.last_reset.reason} → ${p.last_reset.reset_to}` +
      (p.last_reset.records_lost ? ` (${fmt.format(p.last_reset.records_lost)} lost)` : "") : "–", false);
    return row;
  }));
}

function renderStatus(status) {
  $("demo-banner").hidden = status.mode !== "demo";
  $("rate").textContent = fmt.format(Math.round(status.records_per_second));
  const skipped = Object.values(status.skipped).reduce((a, b) => a + b, 0);
  $("skipped").textContent = fmt.format(skipped);
  $("skipped").title = Object.entries(status.skipped).map(([k, v]) => `${k}: ${v}`).join("\n");
  const badge = $("health");
  const ok = status.ready && status.kafka.state === "connected";
  badge.textContent = ok ? "live" : (status.ready ? "kafka " + status.kafka.state : "starting");
  badge.className = "badge " + (ok ? "ok" : "bad");
  const zk = $("zk");
  zk.hidden = status.zookeeper.state === "disabled";
  zk.textContent = "ZooKeeper " + status.zookeeper.state;
  zk.className = "badge " + (status.zookeeper.state === "connected" ? "ok" : "bad");
  if (!status.ready) badge.title = status.phase;
}

async function refresh() {
  const n = $("n").value;
  try {
    const [top, offsets, status] = await Promise.all([
      getJson(`/api/v1/top?n=${encodeURIComponent(n)}`),
      getJson("/api/v1/offsets"),
      getJson("/api/v1/status"),
    ]);
    renderTop(top);
    renderOffsets(offsets);
    renderStatus(status);
    $("error-banner").hidden = true;
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (error) {
    $("error-banner").textContent = `Cannot reach ipstats: ${error.message}`;
    $("error-banner").hidden = false;
    $("health").className = "badge bad";
    $("health").textContent = "unreachable";
  }
  clearTimeout(timer);
  timer = setTimeout(refresh, refreshMs);
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  if (params.has("n")) $("n").value = params.get("n");
  $("n").addEventListener("change", () => {
    params.set("n", $("n").value);
    history.replaceState(null, "", "?" + params);
    refresh();
  });
  refresh();
});
