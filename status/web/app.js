// The status page: polls the snapshot every second for the figures, and
// the history for the charts of the last 15 minutes, which it draws itself
// as SVG; follows the live feed for the table of recent messages. Plain
// DOM; every value from the engine goes in as text, never as HTML.
"use strict";

const KEEP = 1000; // messages kept for filtering
const SHOW = 200;  // rows shown
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// --- formatting -----------------------------------------------------------

function num(v, digits) {
  if (v === null || v === undefined) return "—";
  return v.toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function seconds(v) {
  if (v === null || v === undefined) return "—";
  if (v < 0.001) return num(v * 1e6, 0) + " µs";
  if (v < 1) return num(v * 1e3, v < 0.01 ? 2 : 1) + " ms";
  return num(v, 2) + " s";
}

function setState(el, text, ok) {
  el.textContent = text;
  el.className = "state " + (ok ? "ok" : "bad");
}

// --- snapshot -------------------------------------------------------------

function showSnapshot(s) {
  const rate = (r) => (r ? num(r.per_second, 1) : "—");
  const total = (r) => (r ? num(r.total) : "—");
  $("devices").textContent = num(s.devices_connected);
  $("received-rate").textContent = rate(s.received);
  $("received-total").textContent = total(s.received);
  $("rejected-total").textContent = total(s.rejected);
  $("acked-rate").textContent = rate(s.acked);
  $("acked-total").textContent = total(s.acked);
  $("stored-rate").textContent = rate(s.stored);
  $("stored-total").textContent = total(s.stored);
  $("ack-p50").textContent = seconds(s.ack_latency && s.ack_latency.p50_seconds);
  $("ack-p99").textContent = seconds(s.ack_latency && s.ack_latency.p99_seconds);
  $("e2e-p50").textContent = seconds(s.feed_latency && s.feed_latency.p50_seconds);
  $("e2e-p99").textContent = seconds(s.feed_latency && s.feed_latency.p99_seconds);
  $("store-p50").textContent = seconds(s.store_latency && s.store_latency.p50_seconds);
  $("store-p99").textContent = seconds(s.store_latency && s.store_latency.p99_seconds);
  $("window").textContent = num(s.window_seconds, 1);
  $("readers").textContent = num(s.feed_readers);
  const c = s.commands || {};
  for (const k of ["queued", "sent", "answered", "expired", "failed", "cancelled"]) {
    $("cmd-" + k).textContent = num(c[k]);
  }
  $("updated").textContent = "updated " + new Date(s.time).toLocaleTimeString();

  const tbody = $("queues").tBodies[0];
  tbody.replaceChildren(...s.queues.map((q) => {
    const tr = document.createElement("tr");
    tr.dataset.hop = q.hop;
    for (const v of [q.hop, num(q.entries), q.bytes === null ? "—" : num(q.bytes)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
}

async function poll() {
  try {
    const resp = await fetch("snapshot", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    showSnapshot(await resp.json());
    setState($("engine-state"), "running", true);
  } catch (e) {
    setState($("engine-state"), "unreachable: " + e.message, false);
  }
  setTimeout(poll, 1000);
}

// --- charts ---------------------------------------------------------------
//
// The engine keeps a point a second for the last 15 minutes (each over the
// few seconds before it, as the figures above); the page loads them all
// once, then asks for what is new every second. Each chart is an SVG drawn
// here, one unit to a CSS pixel: grid, axes, and a path per series, broken
// where a point has no value.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = { blue: "#3b6fd8", green: "#1a7f37", orange: "#d97706", red: "#c62828", purple: "#8250df", teal: "#0e8a8c", grey: "#687083" };
const HOP_COLORS = { frontend: COLORS.blue, uplink_inflight: COLORS.purple, middletier_inbox: COLORS.orange, middletier: COLORS.green, command: COLORS.red, command_events: COLORS.teal };

const CHARTS = [
  { id: "rates", log: false, fmt: short, lines: [["received", "received", COLORS.blue], ["acked", "acked", COLORS.green], ["stored", "stored", COLORS.orange]] },
  { id: "ack", log: true, fmt: seconds, lines: [["ack_p50", "p50", COLORS.blue], ["ack_p99", "p99", COLORS.red]] },
  { id: "feed", log: true, fmt: seconds, lines: [["feed_p50", "p50", COLORS.blue], ["feed_p99", "p99", COLORS.red]] },
  { id: "store", log: true, fmt: seconds, lines: [["store_p50", "p50", COLORS.blue], ["store_p99", "p99", COLORS.red]] },
  { id: "queues", log: false, fmt: short, queues: true },
];

// hist holds the points, oldest first: times in ms, and per series (and
// per hop) one value or null per time.
const hist = { time: [], series: {}, queues: {}, spanMs: 15 * 60 * 1000, intervalS: 1, windowS: 5 };

function short(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return num(v / 1e6, 1) + "M";
  if (a >= 1e4) return num(v / 1e3, 0) + "k";
  return num(v, a < 10 ? 2 : 0);
}

// pad makes every column as long as the times (null for points that came
// before a series or a hop existed, or after it went).
function pad(cols) {
  for (const col of Object.values(cols)) {
    while (col.length < hist.time.length) col.push(null);
  }
}

function addHistory(h) {
  hist.spanMs = h.history_seconds * 1000;
  hist.intervalS = h.interval_seconds;
  hist.windowS = h.window_seconds;
  const before = hist.time.length;
  const add = (cols, key, values) => {
    if (!cols[key]) cols[key] = new Array(before).fill(null);
    cols[key].push(...values);
  };
  hist.time.push(...h.time);
  for (const [k, v] of Object.entries(h.series)) add(hist.series, k, v);
  for (const q of h.queues) add(hist.queues, q.hop, q.entries);
  pad(hist.series);
  pad(hist.queues);
  // Keep the span before the newest point.
  const n = hist.time.length;
  if (n) {
    const cut = hist.time[n - 1] - hist.spanMs;
    let i = 0;
    while (i < n && hist.time[i] <= cut) i++;
    if (i) {
      hist.time.splice(0, i);
      for (const col of [...Object.values(hist.series), ...Object.values(hist.queues)]) col.splice(0, i);
    }
  }
}

function node(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// niceStep is 1, 2 or 5 times a power of ten, at least x.
function niceStep(x) {
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  const f = x / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

// scale maps a value to 0 (bottom) .. 1 (top), with the ticks to draw.
function scale(values, log) {
  if (log) {
    const pos = values.filter((v) => v > 0);
    let lo = pos.length ? Math.floor(Math.log10(Math.min(...pos))) : -4;
    let hi = pos.length ? Math.ceil(Math.log10(Math.max(...pos))) : 0;
    if (hi <= lo) hi = lo + 1;
    const ticks = [];
    for (let e = lo; e <= hi; e++) ticks.push(Math.pow(10, e));
    return { ticks, at: (v) => (Math.log10(v) - lo) / (hi - lo), ok: (v) => v > 0 };
  }
  const top0 = Math.max(0, ...values);
  const step = niceStep(top0 > 0 ? top0 / 4 : 0.25);
  const top = Math.max(step, Math.ceil(top0 / step) * step);
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(v);
  return { ticks, at: (v) => v / top, ok: () => true };
}

function drawChart(def) {
  const fig = document.querySelector(`figure.chart[data-chart="${def.id}"]`);
  const svg = fig.querySelector("svg");
  const W = Math.max(160, Math.round(svg.getBoundingClientRect().width));
  const H = Math.max(80, Math.round(svg.getBoundingClientRect().height));
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const m = { l: 52, r: 10, t: 8, b: 18 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  svg.dataset.plot = [m.l, m.t, pw, ph].join(" "); // the plot area, for tests

  const lines = def.queues
    ? Object.keys(hist.queues).map((hop) => [hop, hop, HOP_COLORS[hop] || COLORS.grey, hist.queues[hop]])
    : def.lines.map(([key, label, color]) => [key, label, color, hist.series[key] || []]);
  const values = lines.flatMap((l) => l[3].filter((v) => v !== null));
  const y = scale(values, def.log);
  // The time axis ends at the newest point and reaches back as far as the
  // history does: 15 minutes, or less (but at least a minute) while the
  // engine is younger, so that its first minutes fill the chart.
  const n = hist.time.length;
  const t1 = n ? hist.time[n - 1] : Date.now();
  const span = Math.min(hist.spanMs, Math.max(60000, n ? t1 - hist.time[0] : 0));
  const t0 = t1 - span;
  const X = (t) => m.l + ((t - t0) / span) * pw;
  const Y = (v) => m.t + ph - y.at(v) * ph;

  const parts = [];
  for (const tick of y.ticks) {
    const py = Y(tick).toFixed(1);
    parts.push(node("line", { class: "grid", x1: m.l, x2: m.l + pw, y1: py, y2: py }));
    parts.push(node("text", { x: m.l - 6, y: Number(py) + 3, "text-anchor": "end" }, def.fmt(tick)));
  }
  const step = [10, 20, 30, 60, 120, 300].map((s) => s * 1000).find((s) => span / s <= 5) || 300000;
  for (let ago = 0; ago <= span + 1; ago += step) {
    const px = X(t1 - ago).toFixed(1);
    parts.push(node("line", { class: "grid", x1: px, x2: px, y1: m.t, y2: m.t + ph }));
    const anchor = ago === 0 ? "end" : Number(px) - m.l < 24 ? "start" : "middle";
    const label = ago === 0 ? "now" : step < 60000 ? `−${ago / 1000} s` : `−${ago / 60000} min`;
    parts.push(node("text", { x: px, y: H - 4, "text-anchor": anchor }, label));
  }
  for (const [key, , color, col] of lines) {
    let d = "", drawn = 0, pen = false;
    for (let i = 0; i < n; i++) {
      const v = col[i];
      if (v === null || v === undefined || !y.ok(v)) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${X(hist.time[i]).toFixed(1)} ${Y(v).toFixed(1)}`;
      pen = true;
      drawn++;
    }
    parts.push(node("path", { class: "line", d: d || "M0 0", stroke: d ? color : "none", "data-series": key, "data-points": drawn }));
  }
  if (!values.length) {
    parts.push(node("text", { class: "empty", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle" }, n ? "no data in the last 15 minutes" : "waiting for the first points…"));
  }
  svg.replaceChildren(...parts);

  // The legend: each series with its newest value.
  fig.querySelector(".legend").replaceChildren(...lines.map(([key, label, color, col]) => {
    const span = document.createElement("span");
    const i = document.createElement("i");
    i.style.background = color;
    const b = document.createElement("b");
    let last = null;
    for (let k = col.length - 1; k >= 0 && last === null; k--) last = col[k];
    b.textContent = last === null ? "—" : def.fmt(last);
    span.append(i, label + " ", b);
    span.dataset.series = key;
    return span;
  }));
}

function drawCharts() {
  for (const def of CHARTS) drawChart(def);
  const n = hist.time.length;
  $("history-note").textContent = n
    ? `${new Date(hist.time[0]).toLocaleTimeString()} – ${new Date(hist.time[n - 1]).toLocaleTimeString()} · a point every ${num(hist.intervalS, 1)} s, each over the ${num(hist.windowS, 1)} s before it`
    : "the engine keeps 15 minutes; the first points come within seconds";
}

async function pollHistory() {
  try {
    const n = hist.time.length;
    const resp = await fetch("history" + (n ? "?since=" + hist.time[n - 1] : ""), { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    addHistory(await resp.json());
    drawCharts();
  } catch (e) {
    $("history-note").textContent = "history unreachable: " + e.message;
  }
  setTimeout(pollHistory, 1000);
}

window.addEventListener("resize", drawCharts);

// --- recent messages ------------------------------------------------------

const kept = [];    // newest last: {device, text, frame}
let pending = [];   // arrived since the last render
let missed = 0;

function matches(m) {
  const dev = $("filter-device").value.trim().toLowerCase();
  const text = $("filter-text").value.trim().toLowerCase();
  return (!dev || m.device.toLowerCase().includes(dev)) && (!text || m.text.toLowerCase().includes(text));
}

function row(m) {
  const f = m.frame;
  const tr = document.createElement("tr");
  tr.dataset.device = m.device;
  const cells = [
    [new Date(f.received).toISOString().slice(11, 23), "time"],
    [m.device, "device"],
    [JSON.stringify(f.payload), "payload"],
    [`${f.middletier} · ${f.seq}`, "seq"],
  ];
  for (const [v, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = v;
    td.className = cls;
    tr.append(td);
  }
  return tr;
}

// render redraws the whole table from what is kept (after a filter change).
function render() {
  const rows = [];
  for (let i = kept.length - 1; i >= 0 && rows.length < SHOW; i--) {
    if (matches(kept[i])) rows.push(row(kept[i]));
  }
  $("messages").tBodies[0].replaceChildren(...rows);
  pending = [];
  counts();
}

// flush adds what arrived since the last flush at the top of the table.
function flush() {
  if (pending.length && !$("pause").checked) {
    const tbody = $("messages").tBodies[0];
    const rows = pending.filter(matches).reverse().slice(0, SHOW).map(row);
    tbody.prepend(...rows);
    while (tbody.rows.length > SHOW) tbody.lastElementChild.remove();
    pending = [];
  }
  counts();
}

function counts() {
  $("shown").textContent = $("messages").tBodies[0].rows.length;
  $("kept").textContent = kept.length;
  $("missed").textContent = missed;
}

function feedURL() {
  const u = document.body.dataset.feed;
  let url = /^wss?:\/\//.test(u) ? u : (location.protocol === "https:" ? "wss://" : "ws://") + location.host + u;
  const token = params.get("token");
  if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  return url;
}

let backoff = 500;

function follow() {
  const state = $("feed-state");
  const ws = new WebSocket(feedURL());
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "subscribe" }));
  };
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    switch (f.type) {
      case "subscribed":
        backoff = 500;
        setState(state, "live", true);
        break;
      case "message": {
        const m = { device: f.device, text: f.device + " " + JSON.stringify(f.payload), frame: f };
        kept.push(m);
        if (kept.length > KEEP) kept.splice(0, kept.length - KEEP);
        pending.push(m);
        if (pending.length > KEEP) pending.splice(0, pending.length - KEEP);
        break;
      }
      case "missed":
        missed += f.count;
        break;
      case "error":
        setState(state, "error: " + f.code, false);
        break;
    }
  };
  ws.onclose = (ev) => {
    setState(state, `disconnected (${ev.code}${ev.reason ? " " + ev.reason : ""}), retrying`, false);
    setTimeout(follow, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

$("filter-device").addEventListener("input", render);
$("filter-text").addEventListener("input", render);
$("pause").addEventListener("change", () => { if (!$("pause").checked) render(); });
if ($("filter-device").value === "" && params.get("device")) $("filter-device").value = params.get("device");

poll();
pollHistory();
if (document.body.dataset.feed) {
  follow();
  setInterval(flush, 100);
} else {
  $("recent").hidden = true;
}
