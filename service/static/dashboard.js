/* memprog dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
 *
 * Talks to this service's /api/v1 only:
 *   GET  /health               banner (SIMULATED / HARDWARE + instrument identities)
 *   GET  /stations             the station selector (a lab's stations on one database)
 *   GET  /array/map            last known conductance of each cell (from the log: no read fired)
 *   GET  /jobs, /jobs/{id}     job records; GET /jobs/{id}/events: SSE "progress" events
 *   POST /jobs/{id}/abort, /emergency-stop
 *   GET  /runs, /runs/{id}     per-device results (pulses) for the histogram
 *   GET  /export?format=csv|hdf5
 * With API keys on, a 401 makes the page ask for a key, kept in localStorage and sent as
 * "Authorization: ApiKey <key>".
 */
"use strict";

const API = "/api/v1";
const KEY_STORAGE = "memprog.apiKey";
const TERMINAL = new Set(["completed", "failed", "aborted", "interrupted"]);
const ACTIVE = new Set(["queued", "running"]);
const POLL_JOBS_MS = 1000;
const POLL_HEALTH_MS = 5000;
const POLL_RUNS_MS = 4000;
const MAP_LIVE_MS = 2000;

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  needKey: false,
  jobsApi: true,
  jobs: [],
  shownJob: null,        // the job record in #job-progress
  pinnedJobId: null,     // a job the user clicked (else: the active or newest job)
  stream: null,          // {id, kind, close()}
  pollTimer: null,
  runs: [],
  selectedRunId: null,
  runPinned: false,
  map: null,
  lastMapOpId: -1,
  lastRunsSignature: "",
  ownStation: null,      // this service's station (from /health)
  station: null,         // the station whose log the page shows (the selector); null: own
};

// ?station= for the log's reads: nothing for this service's own station (the default).
function stationParam(separator) {
  return state.station && state.station !== state.ownStation
    ? `${separator}station=${encodeURIComponent(state.station)}` : "";
}

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------- API

class AuthError extends Error {}
class HttpError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
  }
}

function authHeaders() {
  return state.key ? { Authorization: `ApiKey ${state.key}` } : {};
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, authHeaders());
  const response = await fetch(API + path, Object.assign({ cache: "no-store" }, options, { headers }));
  if (response.status === 401) {
    askForKey(state.key ? "The key was refused (401)." : "");
    throw new AuthError("401");
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      const value = body.detail ?? body.error ?? body;
      detail = typeof value === "string" ? value : JSON.stringify(value);
    } catch (_) { /* not JSON */ }
    throw new HttpError(response.status, detail);
  }
  return response.json();
}

function askForKey(message) {
  state.needKey = true;
  $("auth-panel").hidden = false;
  $("auth-message").textContent = message || "";
  if (document.activeElement !== $("api-key")) $("api-key").focus();
}

function setupAuth() {
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    state.key = key;
    localStorage.setItem(KEY_STORAGE, key);
    state.needKey = false;
    $("api-key").value = "";
    $("auth-panel").hidden = true;
    closeStream();
    refreshAll();
  });
  $("api-key-forget").addEventListener("click", () => {
    state.key = "";
    localStorage.removeItem(KEY_STORAGE);
    $("auth-message").textContent = "Key forgotten.";
  });
}

let messageTimer = null;
function showMessage(text, isError = true) {
  const box = $("message");
  box.textContent = text;
  box.className = "message" + (isError ? " error" : "");
  box.hidden = !text;
  clearTimeout(messageTimer);
  if (text) messageTimer = setTimeout(() => { box.hidden = true; }, 15000);
}

// Errors of background refreshes: a 401 is handled by the key panel; others are shown.
function background(promise) {
  promise.catch((error) => {
    if (error instanceof AuthError) return;
    showMessage(String(error.message || error));
  });
}

// ---------------------------------------------------------------------------------- health

async function refreshHealth() {
  let health;
  try {
    health = await apiJson("/health");
  } catch (error) {
    if (error instanceof AuthError) throw error;
    setBanner("unavailable", "SERVICE UNREACHABLE", String(error.message || error));
    return;
  }
  const instruments = Object.entries(health.instruments || {})
    .map(([role, identity]) => `${role}: ${identity}`).join(" · ");
  if (health.status === "degraded") {
    // the database cannot take records: the service fires nothing until it can
    setBanner("unavailable", `${health.backend.toUpperCase()} — LOG UNAVAILABLE, NOTHING IS FIRED`,
      (health.log && health.log.detail) || "the database cannot take records");
  } else if (health.status !== "ok") {
    setBanner("unavailable", `${health.backend.toUpperCase()} — UNAVAILABLE`,
      health.unavailable || "backend unreachable");
  } else if (health.backend === "hardware") {
    setBanner("hardware", "HARDWARE", `real devices · ${instruments}`);
  } else {
    setBanner("simulated", "SIMULATED", `no real device is touched · ${instruments}`);
  }
  $("backend-banner").dataset.backend = health.backend;
  const predictor = health.predictor && health.predictor.name
    ? `predictor ${health.predictor.name} ${health.predictor.version || ""}` : "no predictor";
  $("service-status").textContent =
    `v${health.version} · ${health.queued} in the backend queue · ${predictor}`;
  state.ownStation = health.station;
  await refreshStations();
}

// ------------------------------------------------------------------------------- stations

// The station selector: every station of the database (GET /stations, from their heartbeats),
// a silent one (three missed heartbeats) marked; the page's map, jobs, runs and exports follow
// the selected station. With one station the selector stays hidden.
async function refreshStations() {
  let body;
  try {
    body = await apiJson("/stations");
  } catch (error) {
    if (error instanceof AuthError) throw error;
    return; // an older service: no fleet
  }
  const select = $("station-select");
  const stations = body.stations || [];
  const chosen = state.station || body.this_station;
  select.replaceChildren(...stations.map((station) => {
    const option = document.createElement("option");
    option.value = station.name;
    const own = station.name === body.this_station ? " (this service)" : "";
    const silent = station.silent ? ` — SILENT ${Math.round(station.age_s)} s` : "";
    option.textContent = `${station.name}${own}${silent}`;
    option.className = station.silent ? "silent" : "";
    option.selected = station.name === chosen;
    return option;
  }));
  const current = stations.find((station) => station.name === chosen);
  select.classList.toggle("silent", Boolean(current && current.silent));
  $("station-picker").hidden = stations.length < 2;
}

function setupStations() {
  $("station-select").addEventListener("change", () => {
    state.station = $("station-select").value;
    state.lastMapOpId = -1;
    state.lastRunsSignature = "";
    state.selectedRunId = null;
    state.runPinned = false;
    state.pinnedJobId = null;
    closeStream();
    refreshAll();
  });
}

function setBanner(kind, title, detail) {
  const banner = $("backend-banner");
  banner.className = `banner ${kind}`;
  $("backend-kind").textContent = title;
  $("backend-instruments").textContent = detail;
}

// ----------------------------------------------------------------------------- colour map

// Viridis, sampled at 9 points (perceptually uniform, readable in grey and by most colour-blind
// viewers).
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];
const NEVER_READ = [58, 63, 71];

function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
}

function formatMicro(siemens, digits = 1) {
  return (siemens * 1e6).toFixed(digits);
}

// -------------------------------------------------------------------------------- heatmap

const MAP_MARGIN = { left: 34, top: 20, right: 6, bottom: 6 };

async function refreshMap() {
  const map = await apiJson("/array/map" + stationParam("?"));
  state.map = map;
  state.lastMapOpId = map.last_operation_id;
  drawHeatmap();
}

function mapRange(map) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const row of map.conductance) {
    for (const g of row) {
      if (g === null) continue;
      if (g < lo) lo = g;
      if (g > hi) hi = g;
    }
  }
  if (lo === Infinity) return null;
  if (hi - lo < 1e-9) { lo -= 1e-6; hi += 1e-6; }  // one value: a ±1 µS window
  return [lo, hi];
}

function drawHeatmap() {
  const map = state.map;
  const canvas = $("heatmap");
  if (!map) return;
  const { rows, cols } = map;
  const wrap = $("heatmap-wrap");
  const avail = Math.max(200, Math.min(wrap.clientWidth, 720));
  const cell = Math.max(1, Math.floor(Math.min(
    (avail - MAP_MARGIN.left - MAP_MARGIN.right) / Math.max(cols, 1),
    (avail - MAP_MARGIN.top - MAP_MARGIN.bottom) / Math.max(rows, 1))));
  const width = MAP_MARGIN.left + cols * cell + MAP_MARGIN.right;
  const height = MAP_MARGIN.top + rows * cell + MAP_MARGIN.bottom;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);

  const range = mapRange(map);
  // One pixel per cell, scaled up without smoothing: fast for a 256 × 256 array.
  const image = new ImageData(Math.max(cols, 1), Math.max(rows, 1));
  let known = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = map.conductance[r][c];
      let rgb = NEVER_READ;
      if (g !== null && range) {
        rgb = colour((g - range[0]) / (range[1] - range[0]));
        known++;
      }
      const o = 4 * (r * cols + c);
      image.data[o] = rgb[0];
      image.data[o + 1] = rgb[1];
      image.data[o + 2] = rgb[2];
      image.data[o + 3] = 255;
    }
  }
  if (rows > 0 && cols > 0) {
    const pixels = document.createElement("canvas");
    pixels.width = cols;
    pixels.height = rows;
    pixels.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(pixels, MAP_MARGIN.left, MAP_MARGIN.top, cols * cell, rows * cell);
    if (cell >= 6) {  // cell borders when there is room for them
      ctx.strokeStyle = "rgba(255,255,255,0.35)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let r = 0; r <= rows; r++) {
        ctx.moveTo(MAP_MARGIN.left, MAP_MARGIN.top + r * cell + 0.5);
        ctx.lineTo(MAP_MARGIN.left + cols * cell, MAP_MARGIN.top + r * cell + 0.5);
      }
      for (let c = 0; c <= cols; c++) {
        ctx.moveTo(MAP_MARGIN.left + c * cell + 0.5, MAP_MARGIN.top);
        ctx.lineTo(MAP_MARGIN.left + c * cell + 0.5, MAP_MARGIN.top + rows * cell);
      }
      ctx.stroke();
    }
  }
  drawAxes(ctx, rows, cols, cell);
  drawLegend(range);

  canvas.dataset.rows = rows;
  canvas.dataset.cols = cols;
  canvas.dataset.cells = known;
  canvas.dataset.cellSize = cell;
  canvas.dataset.updatedAt = map.updated_at === null ? "" : map.updated_at;
  if (range) {
    canvas.dataset.gMin = range[0];
    canvas.dataset.gMax = range[1];
  }
  const when = map.updated_at ? new Date(map.updated_at * 1000).toLocaleTimeString() : "never";
  $("map-meta").textContent =
    `${rows} × ${cols} · ${known} of ${rows * cols} cells read · newest read ${when}`;
}

function tickStep(n) {
  for (const step of [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]) {
    if (n / step <= 16) return step;
  }
  return 2048;
}

function drawAxes(ctx, rows, cols, cell) {
  ctx.fillStyle = "#5d6675";
  ctx.font = "10px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  const colStep = tickStep(cols);
  for (let c = 0; c < cols; c += colStep) {
    ctx.fillText(String(c), MAP_MARGIN.left + (c + 0.5) * cell, MAP_MARGIN.top - 3);
  }
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const rowStep = tickStep(rows);
  for (let r = 0; r < rows; r += rowStep) {
    ctx.fillText(String(r), MAP_MARGIN.left - 4, MAP_MARGIN.top + (r + 0.5) * cell);
  }
  ctx.save();
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  ctx.fillText("col →", 2, 2);
  ctx.restore();
}

function drawLegend(range) {
  const canvas = $("heatmap-legend");
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = colour(x / (canvas.width - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, canvas.height);
  }
  $("legend-min").textContent = range ? formatMicro(range[0]) : "–";
  $("legend-max").textContent = range ? formatMicro(range[1]) : "–";
}

function setupHeatmapTooltip() {
  const canvas = $("heatmap");
  const tip = $("heatmap-tooltip");
  canvas.addEventListener("mousemove", (event) => {
    const map = state.map;
    if (!map) return;
    const cell = Number(canvas.dataset.cellSize || 1);
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left - MAP_MARGIN.left;
    const y = event.clientY - rect.top - MAP_MARGIN.top;
    const c = Math.floor(x / cell);
    const r = Math.floor(y / cell);
    if (x < 0 || y < 0 || r >= map.rows || c >= map.cols) {
      tip.hidden = true;
      return;
    }
    const g = map.conductance[r][c];
    const t = map.read_at[r][c];
    tip.textContent = g === null
      ? `row ${r}, col ${c}: never read`
      : `row ${r}, col ${c}: ${formatMicro(g, 2)} µS (read ${new Date(t * 1000).toLocaleTimeString()})`;
    tip.style.left = `${event.clientX - rect.left + 12}px`;
    tip.style.top = `${event.clientY - rect.top + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
}

// ----------------------------------------------------------------------------------- jobs

function jobList(body) {
  const list = Array.isArray(body) ? body : (body.jobs || body.items || []);
  const newestFirst = (a, b) => (jobTime(b) - jobTime(a)) || (Number(b.id) - Number(a.id));
  return list.slice().sort(newestFirst);
}

function jobTime(job) {
  const t = Date.parse(job.created_at);
  if (!Number.isNaN(t)) return t;
  return typeof job.created_at === "number" ? job.created_at * 1000 : 0;
}

function formatTime(value) {
  if (value === null || value === undefined) return "";
  const t = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(t.getTime())) return String(value);
  return t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false });
}

async function refreshJobs() {
  if (!state.jobsApi) return;
  let body;
  try {
    body = await apiJson("/jobs?limit=50" + stationParam("&"));
  } catch (error) {
    if (error instanceof HttpError && (error.status === 404 || error.status === 405)) {
      state.jobsApi = false;
      $("jobs-unavailable").hidden = false;
      $("jobs-table").hidden = true;
      return;
    }
    throw error;
  }
  state.jobs = jobList(body);
  renderJobsTable();
  const running = state.jobs.filter((job) => job.status === "running");
  const queued = state.jobs.filter((job) => job.status === "queued");
  // A job the user clicked stays shown until a newer job starts.
  if (state.pinnedJobId !== null
      && running.some((job) => Number(job.id) > Number(state.pinnedJobId))) {
    state.pinnedJobId = null;
  }
  const pinned = state.pinnedJobId !== null
    ? state.jobs.find((job) => String(job.id) === state.pinnedJobId) : null;
  // Show: the job the user picked, else the running one, else the next queued, else the newest.
  const chosen = pinned || running[0] || queued[queued.length - 1] || state.jobs[0] || null;
  if (!chosen) return;
  const shown = state.shownJob;
  const sameJob = shown && String(shown.id) === String(chosen.id);
  const streaming = state.stream && String(state.stream.id) === String(chosen.id);
  if (!sameJob) {
    onJobUpdate(chosen, "list");
  } else if (!TERMINAL.has(shown.status) && (!streaming || TERMINAL.has(chosen.status))) {
    // No live stream for it (or the stream missed the end): the list is the freshest source.
    onJobUpdate(chosen, "list");
  }
  if (ACTIVE.has(chosen.status)) followJob(chosen.id);
}

function renderJobsTable() {
  const body = $("jobs-table").querySelector("tbody");
  body.replaceChildren();
  for (const job of state.jobs.slice(0, 50)) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    if (state.shownJob && String(state.shownJob.id) === String(job.id)) tr.className = "selected";
    for (const text of jobRowCells(job)) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => {
      state.pinnedJobId = String(job.id);
      state.runPinned = false;
      onJobUpdate(job, "list");
      if (ACTIVE.has(job.status)) followJob(job.id);
    });
    body.appendChild(tr);
  }
}

function jobRowCells(job) {
  return [
    String(job.id).slice(0, 12),
    job.status,
    `${job.cells_done ?? 0}/${job.total_cells ?? "?"}`,
    job.cells_converged ?? "",
    job.pulses ?? "",
    job.strategy ?? "",
    job.run_id ?? "",
    formatTime(job.created_at),
  ];
}

// A fresher record of a job (from its stream): its row in the table follows.
function updateJobRow(job) {
  const index = state.jobs.findIndex((j) => String(j.id) === String(job.id));
  if (index >= 0) state.jobs[index] = job;
  const tr = $("jobs-table").querySelector(`tbody tr[data-job-id="${CSS.escape(String(job.id))}"]`);
  if (!tr) return;
  jobRowCells(job).forEach((text, i) => {
    if (tr.children[i] && tr.children[i].textContent !== String(text)) {
      tr.children[i].textContent = text;
    }
  });
}

// One job record arrived (from a stream, a poll or the list): show it.
function onJobUpdate(job, source) {
  const previous = state.shownJob;
  const sameJob = previous && String(previous.id) === String(job.id);
  state.shownJob = job;
  const total = Number(job.total_cells || 0);
  const done = Number(job.cells_done || 0);
  const percent = total > 0 ? Math.round((100 * done) / total) : (job.status === "completed" ? 100 : 0);
  const box = $("job-progress");
  box.dataset.jobId = job.id;
  box.dataset.status = job.status;
  box.dataset.cellsDone = done;
  box.dataset.totalCells = total;
  box.dataset.percent = percent;
  box.dataset.runId = job.run_id ?? "";
  box.dataset.source = source;
  $("job-title").textContent = `Job ${job.id}` + (job.strategy ? ` · ${job.strategy}` : "");
  const pill = $("job-status");
  pill.textContent = job.status;
  pill.className = `pill ${job.status}`;
  const bar = $("job-progress-bar");
  bar.style.width = `${percent}%`;
  bar.setAttribute("aria-valuenow", String(percent));
  const converged = job.cells_converged ?? 0;
  let text = `${done} / ${total} cells (${percent} %) · ${converged} converged · `
    + `${job.pulses ?? 0} pulses`;
  if (job.started_at) text += ` · started ${formatTime(job.started_at)}`;
  if (job.finished_at) text += ` · ended ${formatTime(job.finished_at)}`;
  if (job.abort_requested && ACTIVE.has(job.status)) text += " · abort requested";
  $("job-progress-text").textContent = text;
  const error = $("job-error");
  error.textContent = job.error || "";
  error.hidden = !job.error;
  $("abort-job").hidden = !ACTIVE.has(job.status);
  for (const tr of $("jobs-table").querySelectorAll("tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.jobId === String(job.id));
  }
  if (source !== "list") updateJobRow(job);

  const ended = TERMINAL.has(job.status) && !(sameJob && TERMINAL.has(previous.status));
  if (ended) {
    // The job just ended (or we see it for the first time, ended): the map, the runs and the
    // histogram of its run.
    if (state.stream && String(state.stream.id) === String(job.id)) closeStream();
    if (job.run_id !== null && job.run_id !== undefined && !state.runPinned) {
      state.selectedRunId = String(job.run_id);
    }
    background(refreshMap());
    background(refreshRuns(true));
    background(refreshHealth());
  } else if (job.run_id !== null && job.run_id !== undefined && !state.runPinned
             && state.selectedRunId !== String(job.run_id) && ACTIVE.has(job.status)) {
    state.selectedRunId = String(job.run_id);
  }
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  $("job-transport").textContent = "";
}

// Live progress of one job: EventSource (no key), a fetch()-read event stream (with a key:
// EventSource cannot send headers), and polling GET /jobs/{id} when streaming fails.
function followJob(id) {
  if (state.stream && String(state.stream.id) === String(id)) return;
  closeStream();
  if (!state.key && typeof EventSource !== "undefined") {
    const source = new EventSource(`${API}/jobs/${encodeURIComponent(id)}/events`);
    state.stream = { id, kind: "sse", close: () => source.close() };
    $("job-transport").textContent = "live (server-sent events)";
    source.addEventListener("progress", (event) => {
      onJobUpdate(JSON.parse(event.data), "sse");
    });
    source.onerror = () => {
      // The server ends the stream after the terminal state; anything else: poll instead.
      source.close();
      if (state.stream && state.stream.kind === "sse" && String(state.stream.id) === String(id)) {
        state.stream = null;
        if (!(state.shownJob && TERMINAL.has(state.shownJob.status))) pollJob(id);
      }
    };
    return;
  }
  const controller = new AbortController();
  state.stream = { id, kind: "fetch-stream", close: () => controller.abort() };
  $("job-transport").textContent = "live (event stream)";
  readEventStream(id, controller.signal).catch((error) => {
    if (controller.signal.aborted) return;
    if (error instanceof AuthError) return;
    if (state.stream && String(state.stream.id) === String(id)) {
      state.stream = null;
      pollJob(id);
    }
  });
}

async function readEventStream(id, signal) {
  const response = await api(`/jobs/${encodeURIComponent(id)}/events`, {
    signal, headers: { Accept: "text/event-stream" },
  });
  if (!response.ok || !response.body) throw new HttpError(response.status, "no event stream");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "progress" && data.length) onJobUpdate(JSON.parse(data.join("\n")), "stream");
    }
  }
  if (state.stream && String(state.stream.id) === String(id)) {
    state.stream = null;
    $("job-transport").textContent = "";
  }
  if (!(state.shownJob && TERMINAL.has(state.shownJob.status))) throw new Error("stream ended early");
}

function pollJob(id) {
  closeStream();
  const timer = { stopped: false };
  state.stream = { id, kind: "poll", close: () => { timer.stopped = true; } };
  $("job-transport").textContent = "live (polling)";
  const tick = async () => {
    if (timer.stopped) return;
    try {
      const job = await apiJson(`/jobs/${encodeURIComponent(id)}`);
      onJobUpdate(job, "poll");
      if (TERMINAL.has(job.status)) {
        if (state.stream && state.stream.kind === "poll") state.stream = null;
        $("job-transport").textContent = "";
        return;
      }
    } catch (error) {
      if (error instanceof AuthError) { timer.stopped = true; return; }
    }
    setTimeout(tick, 1000);
  };
  tick();
}

function setupJobButtons() {
  $("abort-job").addEventListener("click", () => {
    const job = state.shownJob;
    if (!job || !ACTIVE.has(job.status)) return;
    background(apiJson(`/jobs/${encodeURIComponent(job.id)}/abort`, { method: "POST" })
      .then((record) => { if (record && record.id !== undefined) onJobUpdate(record, "abort"); }));
  });
  $("emergency-stop").addEventListener("click", () => {
    if (!window.confirm("Emergency stop: abort every job and put the bench in its safe state?")) {
      return;
    }
    background(apiJson("/emergency-stop", { method: "POST" })
      .then((answer) => {
        const jobs = (answer.aborted_jobs || []).join(", ") || "none";
        showMessage(`Emergency stop: safe state confirmed (outputs off); jobs aborted: ${jobs}.`,
          false);
      })
      .finally(() => background(refreshJobs())));
  });
}

// ----------------------------------------------------------------------------------- runs

async function refreshRuns(force = false) {
  const body = await apiJson("/runs?limit=50" + stationParam("&"));
  const runs = body.runs || [];
  const signature = runs.map((run) => `${run.id}:${run.status}`).join(",");
  if (!force && signature === state.lastRunsSignature) return;
  const newFinished = runs.length && state.lastRunsSignature
    && signature !== state.lastRunsSignature;
  state.lastRunsSignature = signature;
  state.runs = runs;
  const select = $("run-select");
  select.replaceChildren();
  if (!runs.length) {
    select.appendChild(new Option("no runs yet", ""));
  }
  for (const run of runs) {
    const label = `#${run.id} · ${run.strategy} · ${run.n_targets} cells · ${run.status}`
      + ` · ${formatTime(run.started)}`;
    select.appendChild(new Option(label, String(run.id)));
  }
  if (!state.selectedRunId || !runs.some((run) => String(run.id) === state.selectedRunId)) {
    const done = runs.find((run) => run.status !== "running");
    state.selectedRunId = done ? String(done.id) : (runs[0] ? String(runs[0].id) : null);
  }
  if (state.selectedRunId) select.value = state.selectedRunId;
  if (newFinished) background(refreshMap());  // e.g. a /program run made outside the jobs API
  await refreshHistogram();
}

async function refreshHistogram() {
  const canvas = $("pulse-histogram");
  if (!state.selectedRunId) {
    drawHistogram(null, []);
    return;
  }
  const run = await apiJson(`/runs/${encodeURIComponent(state.selectedRunId)}`);
  drawHistogram(run, run.results || []);
  canvas.dataset.runId = run.id;
}

function drawHistogram(run, results) {
  const canvas = $("pulse-histogram");
  const cssWidth = Math.max(300, canvas.clientWidth || 480);
  const cssHeight = 260;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, cssWidth, cssHeight);
  canvas.dataset.cells = results.length;
  canvas.dataset.runId = run ? run.id : "";
  if (!results.length) {
    canvas.dataset.bins = 0;
    ctx.fillStyle = "#5d6675";
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(run ? "this run has no per-device results yet" : "no run yet",
      cssWidth / 2, cssHeight / 2);
    $("hist-stats").textContent = run ? `Run #${run.id}: ${run.status}.` : "No run selected.";
    return;
  }
  const pulses = results.map((r) => r.pulses);
  const maxPulses = Math.max(...pulses);
  const width = Math.max(1, Math.ceil((maxPulses + 1) / 40));  // ≤ 40 bars
  const nBins = Math.floor(maxPulses / width) + 1;
  const converged = new Array(nBins).fill(0);
  const other = new Array(nBins).fill(0);
  for (const r of results) {
    const bin = Math.floor(r.pulses / width);
    if (r.converged === false) other[bin]++;
    else converged[bin]++;
  }
  const counts = converged.map((n, i) => n + other[i]);
  const top = Math.max(...counts);
  const m = { left: 40, right: 10, top: 12, bottom: 36 };
  const plotW = cssWidth - m.left - m.right;
  const plotH = cssHeight - m.top - m.bottom;
  const barW = plotW / nBins;
  const y = (n) => m.top + plotH - (plotH * n) / top;

  ctx.strokeStyle = "#dde2ea";
  ctx.fillStyle = "#5d6675";
  ctx.font = "10px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const yStep = Math.max(1, Math.ceil(top / 5));
  for (let n = 0; n <= top; n += yStep) {
    ctx.beginPath();
    ctx.moveTo(m.left, y(n) + 0.5);
    ctx.lineTo(m.left + plotW, y(n) + 0.5);
    ctx.stroke();
    ctx.fillText(String(n), m.left - 5, y(n));
  }
  for (let i = 0; i < nBins; i++) {
    const x = m.left + i * barW;
    ctx.fillStyle = "#2e9e5b";
    ctx.fillRect(x + 1, y(converged[i]), Math.max(1, barW - 2), m.top + plotH - y(converged[i]));
    if (other[i]) {
      ctx.fillStyle = "#d9822b";
      ctx.fillRect(x + 1, y(counts[i]), Math.max(1, barW - 2), y(converged[i]) - y(counts[i]));
    }
  }
  ctx.fillStyle = "#5d6675";
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const labelEvery = Math.max(1, Math.ceil(nBins / 10));
  for (let i = 0; i < nBins; i += labelEvery) {
    ctx.fillText(String(i * width), m.left + (i + 0.5) * barW, m.top + plotH + 4);
  }
  ctx.fillText(width === 1 ? "pulses per device" : `pulses per device (bins of ${width})`,
    m.left + plotW / 2, m.top + plotH + 18);
  ctx.save();
  ctx.translate(11, m.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("devices", 0, 0);
  ctx.restore();

  const sorted = pulses.slice().sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const total = pulses.reduce((a, b) => a + b, 0);
  const nConverged = results.filter((r) => r.converged === true).length;
  const verified = results.some((r) => r.converged !== null);
  canvas.dataset.bins = nBins;
  canvas.dataset.totalPulses = total;
  $("hist-stats").textContent = `Run #${run.id} (${run.strategy}, ${run.status}): `
    + `${results.length} devices · ${total} pulses · median ${median} · max ${maxPulses}`
    + (verified ? ` · ${nConverged}/${results.length} converged (green), others orange` : "");
}

function setupRuns() {
  $("run-select").addEventListener("change", () => {
    state.selectedRunId = $("run-select").value || null;
    state.runPinned = true;
    background(refreshHistogram());
  });
}

// --------------------------------------------------------------------------------- export

function setupExport() {
  const download = async (format) => {
    const runOnly = $("export-run-only").checked && state.selectedRunId;
    const query = `format=${format}` + (runOnly ? `&run_id=${state.selectedRunId}` : "")
      + stationParam("&");
    const response = await api(`/export?${query}`);
    if (!response.ok) throw new HttpError(response.status, await response.text());
    const blob = await response.blob();
    const disposition = response.headers.get("content-disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = match ? match[1] : `memprog-operations.${format === "hdf5" ? "h5" : "csv"}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  };
  $("export-csv").addEventListener("click", () => background(download("csv")));
  $("export-hdf5").addEventListener("click", () => background(download("hdf5")));
  $("export-run-only").addEventListener("change", () => {
    $("export-scope").textContent = $("export-run-only").checked ? "selected run" : "whole log";
  });
}

// ---------------------------------------------------------------------------------- loops

function refreshAll() {
  background(refreshHealth());
  background(refreshMap());
  background(refreshRuns(true));
  background(refreshJobs());
}

function every(ms, task) {
  const run = async () => {
    if (!state.needKey && !document.hidden) {
      try {
        await task();
      } catch (error) {
        if (!(error instanceof AuthError)) showMessage(String(error.message || error));
      }
    }
    setTimeout(run, ms);
  };
  setTimeout(run, ms);
}

function start() {
  setupAuth();
  setupHeatmapTooltip();
  setupJobButtons();
  setupRuns();
  setupExport();
  setupStations();
  drawLegend(null);
  refreshAll();
  every(POLL_HEALTH_MS, refreshHealth);
  every(POLL_JOBS_MS, refreshJobs);
  every(POLL_RUNS_MS, () => refreshRuns(false));
  // While a job runs, its verify reads land in the log: keep the map live (from SQLite only).
  let lastLiveMap = 0;
  every(MAP_LIVE_MS, async () => {
    if (!(state.shownJob && state.shownJob.status === "running")) return;
    // A large array's map is megabytes of JSON: refresh it less often (~10 s at 256 × 256).
    const cells = state.map ? state.map.rows * state.map.cols : 0;
    if (Date.now() - lastLiveMap < Math.min(10000, cells / 6.5)) return;
    lastLiveMap = Date.now();
    await refreshMap();
  });
  $("refresh-map").addEventListener("click", () => background(refreshMap()));
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { drawHeatmap(); background(refreshHistogram()); }, 150);
  });
}

document.addEventListener("DOMContentLoaded", start);
