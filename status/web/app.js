// The status page: polls the snapshot every second and follows the live
// feed for the table of recent messages. Plain DOM; every value from the
// engine goes in as text, never as HTML.
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

const spark = [];

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

  if (s.received && s.received.per_second !== null) {
    spark.push(s.received.per_second);
    if (spark.length > 60) spark.shift();
    const top = Math.max(1, ...spark);
    const pts = spark.map((v, i) => `${(i * 120) / 59},${24 - (v / top) * 22 - 1}`);
    document.querySelector("#spark polyline").setAttribute("points", pts.join(" "));
  }
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
if (document.body.dataset.feed) {
  follow();
  setInterval(flush, 100);
} else {
  $("recent").hidden = true;
}
