// The dashboard: pipelines polled from /pipelines once a second, one live feed over
// EventSource. No build step, nothing from another host. A token, when the server needs
// one, is sent once to POST /session and then lives in an HttpOnly cookie; it is never
// put in a URL and never stored by this script.
"use strict";

const STATUSES = ["starting", "processing", "chunk_error", "error", "complete"];
const HISTORY = 60;      // sparkline points (one per poll)
const MAX_ROWS = 500;    // envelopes kept in the feed
const MAX_HELD = 5000;   // envelopes held while paused
const $ = (id) => document.getElementById(id);

const view = { last: null, history: new Map(), selected: null, source: null,
               paused: false, held: [], shown: new Set(STATUSES), timer: null,
               queue: [], frame: 0 };

function fmtRate(v) {
  if (v === null || v === undefined) return "-";
  return v >= 100 ? Math.round(v).toLocaleString() : v.toFixed(1);
}
function fmtCount(v) { return v === null || v === undefined ? "-" : v.toLocaleString(); }
function sum(obj) { return Object.values(obj || {}).reduce((a, b) => a + b, 0); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 24`);
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...points);
  const line = document.createElementNS(ns, "polyline");
  const start = HISTORY - points.length;
  line.setAttribute("points",
    points.map((v, i) => `${start + i},${(23 - (v / top) * 22).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

async function poll() {
  let resp;
  try {
    resp = await fetch("/pipelines", { credentials: "same-origin",
                                       headers: { accept: "application/json" } });
  } catch (err) {
    $("status").textContent = "server unreachable, retrying…";
    return;
  }
  if (resp.status === 401) { showLogin(); return; }
  if (!resp.ok) { $("status").textContent = `server answered ${resp.status}`; return; }
  const body = await resp.json();
  $("login").hidden = true;
  $("main").hidden = false;
  $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  render(body.pipelines, performance.now());
}

function render(pipelines, now) {
  const before = view.last;
  const dt = before ? (now - before.at) / 1000 : 0;
  const prev = new Map(before ? before.pipelines.map((p) => [p.name, p]) : []);
  const rate = (p, key) => {
    const old = prev.get(p.name);
    if (!old || dt <= 0) return null;
    return Math.max(0, (p.metrics[key] || 0) - (old.metrics[key] || 0)) / dt;
  };
  const tbody = $("pipelines").tBodies[0];
  tbody.replaceChildren();
  for (const p of pipelines) {
    const m = p.metrics || {};
    const out = rate(p, "out");
    const hist = view.history.get(p.name) || [];
    if (out !== null) hist.push(out);
    while (hist.length > HISTORY) hist.shift();
    view.history.set(p.name, hist);
    const row = el("tr", { "data-name": p.name, class: p.name === view.selected ? "selected" : "" },
      el("td", {}, p.name),
      el("td", { class: `state ${p.state}` }, p.state),
      el("td", { class: "n" }, fmtRate(rate(p, "in"))),
      el("td", { class: "n" }, fmtRate(out)),
      el("td", { class: "n" }, fmtRate(rate(p, "chunk_errors"))),
      el("td", { class: "n processed" }, fmtCount(m.out)),
      el("td", { class: "n chunk-errors" }, fmtCount(m.chunk_errors)),
      el("td", { class: "n" }, fmtCount(sum(m.clients))),
      el("td", { class: "n" }, fmtCount(sum(m.sink_queue))),
      el("td", { class: "n" }, fmtCount(m.acks_pending)),
      el("td", { class: "n" }, fmtCount(m.backlog)),
      el("td", {}, sparkline(hist)));
    row.addEventListener("click", () => follow(p.name));
    tbody.append(row);
  }
  view.last = { at: now, pipelines };
}

function showLogin() {
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("status").textContent = "token needed";
  if (view.source) { view.source.close(); view.source = null; }
}

async function login(event) {
  event.preventDefault();
  const token = $("token").value;
  $("token").value = "";
  const resp = await fetch("/session", {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json" }, body: JSON.stringify({ token }) });
  if (resp.status === 204) {
    $("login-error").textContent = "";
    $("logout").hidden = false;
    await poll();
  } else {
    $("login-error").textContent = "wrong token";
  }
}

async function logout() {
  await fetch("/session", { method: "DELETE", credentials: "same-origin" });
  showLogin();
}

// -- the live feed ----------------------------------------------------------------

function follow(name) {
  if (view.source) view.source.close();
  view.selected = name;
  view.held = [];
  view.queue = [];
  $("feed").hidden = false;
  $("feed-name").textContent = name;
  $("envelopes").replaceChildren();
  for (const row of $("pipelines").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.name === name);
  }
  const url = `/pipelines/${encodeURIComponent(name)}/events?since=0`;
  const source = new EventSource(url, { withCredentials: true });
  source.onmessage = (e) => receive(JSON.parse(e.data));
  source.onopen = () => { $("feed-info").textContent = "connected"; };
  source.onerror = () => {
    $("feed-info").textContent = source.readyState === EventSource.CLOSED
      ? "stream ended" : "reconnecting…";
  };
  view.source = source;
}

function receive(env) {
  if (env.status === "heartbeat") return;
  if (view.paused) {
    view.held.push(env);
    if (view.held.length > MAX_HELD) view.held.shift();
    $("feed-info").textContent = `paused: ${view.held.length} held`;
    return;
  }
  append(env);
}

function summary(env) {
  if (env.status === "processing") return JSON.stringify(env.data);
  if (env.status === "complete") return `${env.reason} ${JSON.stringify(env.stats)}`;
  if (env.status === "lagged") return `missed ${env.missed}`;
  return "";
}

function details(env) {
  const dl = el("dl", {});
  const add = (k, v) => dl.append(el("dt", {}, k), el("dd", { class: k }, v));
  add("stage", env.stage || "");
  add("type", (env.error && env.error.type) || "");
  add("message", (env.error && env.error.message) || "");
  if ("chunk" in env) add("chunk", JSON.stringify(env.chunk, null, 1));
  const box = el("details", {}, el("summary", {},
    `${env.stage}: ${env.error ? env.error.type + ": " + env.error.message : ""}`), dl);
  return box;
}

function row(env) {
  const item = el("li", { class: env.status, "data-status": env.status },
    el("span", { class: "seq" }, String(env.seq ?? "")),
    el("span", { class: "st" }, env.status));
  if (env.status === "chunk_error" || env.status === "error") item.append(details(env));
  else item.append(summary(env));
  item.hidden = !view.shown.has(env.status);
  return item;
}

// Envelopes are queued and drawn once per frame: a fast pipeline costs one layout per
// frame, not one per envelope.
function append(env) {
  view.queue.push(env);
  if (view.queue.length > MAX_ROWS) view.queue.shift();
  if (!view.frame) view.frame = requestAnimationFrame(flush);
}

function flush() {
  view.frame = 0;
  const list = $("envelopes");
  const batch = document.createDocumentFragment();
  for (const env of view.queue) batch.append(row(env));
  view.queue = [];
  list.append(batch);
  let extra = list.children.length - MAX_ROWS;
  while (extra-- > 0) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function setPaused(paused) {
  if (view.frame) { cancelAnimationFrame(view.frame); flush(); }
  view.paused = paused;
  $("pause").textContent = paused ? "resume" : "pause";
  if (!paused) {
    const held = view.held;
    view.held = [];
    for (const env of held) append(env);
    $("feed-info").textContent = "live";
  } else {
    $("feed-info").textContent = "paused: 0 held";
  }
}

function filters() {
  const box = $("filters");
  for (const status of STATUSES) {
    const input = el("input", { type: "checkbox", value: status, id: `show-${status}` });
    input.checked = true;
    input.addEventListener("change", () => {
      if (input.checked) view.shown.add(status); else view.shown.delete(status);
      for (const li of $("envelopes").children) li.hidden = !view.shown.has(li.dataset.status);
    });
    box.append(el("label", {}, input, ` ${status}`));
  }
}

function start() {
  filters();
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("pause").addEventListener("click", () => setPaused(!view.paused));
  poll();
  view.timer = setInterval(poll, 1000);
}

document.addEventListener("DOMContentLoaded", start);
