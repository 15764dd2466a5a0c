// The dashboard: plain DOM over the service's own API (no framework, no build step).
// The API key lives in `state.key` only: never in storage, cookies or the URL.
"use strict";

const state = { key: null, role: null, keysRequired: false, models: [], model: null, detail: null, poll: null, urls: [] };
const $ = (id) => document.getElementById(id);

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function notice(text, error = false) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("error", error);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { const problem = await response.json(); detail = problem.detail || problem.message || detail; } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return options.raw ? response : response.json();
}

function canAdmin() { return state.role === "admin"; }

function applyRole() {
  const badge = $("role");
  badge.className = "badge";
  if (state.role === "admin") { badge.textContent = state.keysRequired ? "admin" : "open (loopback): admin"; badge.classList.add("admin"); }
  else if (state.role === "read") { badge.textContent = "read-only"; badge.classList.add("read"); }
  else { badge.textContent = state.keysRequired ? "key needed" : "…"; }
  for (const button of document.querySelectorAll("[data-admin]")) {
    button.disabled = !canAdmin();
    button.title = canAdmin() ? "" : "needs an admin key";
  }
}

async function session() {
  const info = await api("/ui/session");
  state.role = info.role;
  state.keysRequired = info.keys_required;
  applyRole();
  if (info.keys_required && !info.role) {
    notice(state.key ? "That key is not valid here: enter another." : "This server needs an API key: enter a read key to look, an admin key to promote and retrain.");
    return false;
  }
  notice("");
  return true;
}

function headline(metric) {
  if (!metric) return "";
  return Object.entries(metric).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(3) : v}`).join(", ");
}

async function loadModels() {
  const body = $("models").tBodies[0];
  const list = await api("/v1/models?limit=1000");
  state.models = list.models;
  body.replaceChildren();
  for (const m of list.models) {
    const tr = row([m.name, m.kind, m.production_version ? `v${m.production_version}` : "none", (m.last_trained || "").replace("T", " ").slice(0, 19), headline(m.headline_metric)]);
    tr.classList.add("selectable");
    tr.dataset.model = m.name;
    if (m.name === state.model) tr.classList.add("selected");
    tr.addEventListener("click", () => selectModel(m.name));
    body.appendChild(tr);
  }
}

async function selectModel(name) {
  state.model = name;
  for (const tr of $("models").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.model === name);
  $("model-panel").hidden = false;
  $("model-title").textContent = name;
  $("chart").hidden = true;
  $("chart-caption").textContent = "";
  await loadDetail();  // the spec names the series' key columns
  await Promise.all([loadSeries(), loadJobs(), loadMonitoring()]);
}

async function loadDetail() {
  const detail = await api(`/v1/models/${encodeURIComponent(state.model)}`);
  state.detail = detail;
  $("model-description").textContent = (detail.spec && detail.spec.description) || "";
  if (detail.spec && detail.spec.horizon) $("horizon").value = detail.spec.horizon;
  const byVersion = {};
  for (const [alias, version] of Object.entries(detail.aliases)) (byVersion[version] = byVersion[version] || []).push(alias);
  const body = $("versions").tBodies[0];
  body.replaceChildren();
  for (const v of [...detail.versions].reverse()) {
    const button = el("button", "Make production", { "data-admin": "", "data-version": String(v.version) });
    const isProduction = detail.aliases.production === v.version;
    button.addEventListener("click", () => promote(v.version));
    const tr = row([`v${v.version}`, (v.created_at || "").replace("T", " ").slice(0, 19), v.cutoff, (v.forecaster || "").split(".").pop(), (byVersion[v.version] || []).join(", "), isProduction ? "" : button]);
    tr.dataset.version = String(v.version);
    body.appendChild(tr);
  }
  applyRole();
}

async function promote(version) {
  try {
    await api(`/v1/models/${encodeURIComponent(state.model)}/aliases/production`, { method: "PUT", json: { version } });
    notice(`${state.model}: production -> v${version}`);
    await Promise.all([loadDetail(), loadModels()]);
  } catch (error) { notice(`Promote failed: ${error.message}`, true); }
}

async function loadSeries() {
  const select = $("series");
  select.replaceChildren();
  try {
    const answer = await api(`/v1/models/${encodeURIComponent(state.model)}/predict`, { method: "POST", json: { horizon: 1 } });
    const forecast = answer.forecast;
    const keys = (state.detail?.spec?.data?.keys) || [];
    const ids = keys.length ? [...new Set(forecast[keys[0]].map((_, i) => keys.map((k) => forecast[k][i]).join("/")))] : ["(the series)"];
    for (const id of ids) select.appendChild(el("option", id, { value: keys.length ? id : "" }));
    select.disabled = !keys.length;
  } catch (error) {
    select.appendChild(el("option", `(needs future exogenous values: ${error.message})`, { value: "" }));
  }
}

async function showForecast(event) {
  event.preventDefault();
  const params = new URLSearchParams({ horizon: $("horizon").value });
  const coverage = state.detail?.spec?.coverage;
  if (coverage && coverage.length) params.set("coverage", coverage[coverage.length - 1]);
  if ($("series").value) params.append("series", $("series").value);
  try {
    const response = await api(`/v1/models/${encodeURIComponent(state.model)}/forecast.png?${params}`, { raw: true });
    const url = URL.createObjectURL(await response.blob());
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.urls = [url];
    const img = $("chart");
    img.src = url;
    img.hidden = false;
    img.dataset.series = $("series").value;
    $("chart-caption").textContent = `${state.model} ${$("series").value || ""}: ${$("horizon").value} steps`;
  } catch (error) { notice(`Forecast failed: ${error.message}`, true); }
}

function progressCell(job) {
  const p = job.progress || {};
  const bar = el("progress");
  if (p.total) { bar.max = p.total; bar.value = p.done || 0; }
  if (job.status === "succeeded") { bar.max = 1; bar.value = 1; }
  const wrap = el("span");
  wrap.appendChild(bar);
  wrap.appendChild(document.createTextNode(` ${p.stage || ""} ${p.total ? `${p.done}/${p.total}` : ""}`));
  return wrap;
}

function resultText(job) {
  if (job.error) return job.error;
  const r = job.result || {};
  if (job.kind === "retrain") return r.promoted ? `published v${r.version}, promoted` : (r.version ? `published v${r.version}, kept production` : "");
  if (job.kind === "backtest") return headline(r.aggregate);
  if (job.kind === "leaderboard") return r.winner ? `winner ${r.winner}` : "";
  if (job.kind === "export") return r.file ? `${r.rows} rows` : "";
  return "";
}

async function loadJobs() {
  clearTimeout(state.poll);
  if (!state.model) return;
  const model = state.model;
  const list = await api(`/v1/jobs?model=${encodeURIComponent(model)}&limit=10`);
  if (model !== state.model) return;
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  let active = false;
  for (const job of list.jobs) {
    active = active || job.status === "queued" || job.status === "running";
    const tr = row([job.id.slice(0, 8), job.kind, job.status, progressCell(job), resultText(job)]);
    tr.dataset.job = job.id;
    tr.dataset.status = job.status;
    body.appendChild(tr);
  }
  renderResults(list.jobs);
  if (active) state.poll = setTimeout(() => loadJobs().catch((e) => notice(e.message, true)), 1000);
  else if (state.hadActive) { state.hadActive = false; await Promise.all([loadDetail(), loadModels()]); }
  state.hadActive = active;
}

function metricsTable(rows, columns) {
  const table = el("table");
  const head = el("tr");
  for (const c of columns) head.appendChild(el("th", c));
  table.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  for (const r of rows) body.appendChild(row(r));
  table.appendChild(body);
  return table;
}

function fmt(v) { return typeof v === "number" ? v.toFixed(4) : (v ?? ""); }

function renderResults(jobs) {
  const box = $("results");
  box.replaceChildren();
  const backtest = jobs.find((j) => j.kind === "backtest" && j.status === "succeeded");
  const board = jobs.find((j) => j.kind === "leaderboard" && j.status === "succeeded");
  if (!backtest && !board) { box.appendChild(el("p", "No finished backtest or leaderboard yet.", { class: "muted" })); return; }
  if (backtest) {
    box.appendChild(el("h4", `Backtest ${backtest.id.slice(0, 8)} (v${backtest.params.version})`));
    const agg = backtest.result.aggregate || {};
    box.appendChild(metricsTable(Object.entries(agg).map(([k, v]) => [k, fmt(v)]), ["metric", "value"]));
  }
  if (board) {
    const r = board.result;
    box.appendChild(el("h4", `Leaderboard ${board.id.slice(0, 8)}: ranked by ${r.rank_by}`));
    box.appendChild(metricsTable((r.candidates || []).map((c) => [c.name, c.status || "", fmt((c.aggregate || {})[r.rank_by])]), ["candidate", "status", r.rank_by]));
  }
}

async function loadMonitoring() {
  const box = $("monitoring");
  box.replaceChildren();
  try {
    const doc = await api(`/v1/models/${encodeURIComponent(state.model)}/monitoring`);
    const anomalies = await api(`/v1/models/${encodeURIComponent(state.model)}/anomalies`).catch(() => null);
    box.appendChild(el("p", `${doc.actuals} actuals joined; drift policy: ${doc.policy.state}${anomalies ? `; ${anomalies.count} anomalies of ${anomalies.scored} scored` : ""}`));
    const rows = [];
    for (const v of doc.versions || []) {
      const overall = v.overall || {};
      rows.push([`v${v.version}`, fmt(overall.MAE), fmt(overall.MASE), fmt(overall.coverage), v.drift !== undefined ? fmt(v.drift) : ""]);
    }
    if (rows.length) box.appendChild(metricsTable(rows, ["version", "MAE", "MASE", "coverage", "drift"]));
    if (anomalies && anomalies.anomalies.length) {
      const first = anomalies.anomalies.slice(0, 10).map((a) => [Object.values(a.series || {}).join("/") || a.series, a.time, fmt(a.actual), fmt(a.score)]);
      box.appendChild(metricsTable(first, ["series", "time", "actual", "score"]));
    }
    if (doc.actuals > 0) {
      const response = await api(`/v1/models/${encodeURIComponent(state.model)}/monitoring.png`, { raw: true });
      const img = $("monitoring-chart");
      img.src = URL.createObjectURL(await response.blob());
      img.hidden = false;
    } else { $("monitoring-chart").hidden = true; }
  } catch (error) { box.appendChild(el("p", `Monitoring: ${error.message}`, { class: "muted" })); }
}

async function startJob(path, json, what) {
  try {
    const job = await api(path, { method: "POST", json });
    notice(`${what} started: job ${job.id.slice(0, 8)}`);
    state.hadActive = true;
    await loadJobs();
  } catch (error) { notice(`${what} failed: ${error.message}`, true); }
}

async function refresh() {
  if (await session()) {
    await loadModels();
    if (state.model) await selectModel(state.model);
  } else {
    $("models").tBodies[0].replaceChildren();
    $("model-panel").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim() || null;
    $("key").value = "";  // not left in the field either
    refresh().catch((e) => notice(e.message, true));
  });
  $("key-forget").addEventListener("click", () => { state.key = null; refresh().catch((e) => notice(e.message, true)); });
  $("forecast-form").addEventListener("submit", showForecast);
  $("retrain").addEventListener("click", () => startJob(`/v1/models/${encodeURIComponent(state.model)}/retrain`, {}, "Retrain"));
  $("backtest").addEventListener("click", () => startJob(
    `/v1/models/${encodeURIComponent(state.model)}/backtests`,
    { splitter: { type: "folds", folds: 3, horizon: Number($("horizon").value) || 12 } },
    "Backtest",
  ));
  refresh().catch((e) => notice(e.message, true));
});
