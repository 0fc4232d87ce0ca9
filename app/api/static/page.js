// Rapid Adapt's page: the public API, from the browser. No framework, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { models: [], model: null, adaptation: null, queryImage: null, points: [], curve: null };
const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
const AUTH = meta("rapid-adapt-auth") !== "off";  // the service says whether it wants a key
const DEMO_KEY = meta("rapid-adapt-demo-key");  // the quick start's published key, when it is on
const ACTIONS = ["#model", "#mode", "#adapt", "#add-class", "#random-episode", "#predict"];

// ---- the API --------------------------------------------------------------------------
function headers() {
  const key = sessionStorage.getItem("rapid-adapt-key");
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) {
    const e = (data && data.error) || { code: "http_error", message: r.statusText, details: [] };
    const err = new Error(e.message);
    Object.assign(err, { status: r.status, code: e.code, details: e.details || [] });
    throw err;
  }
  return data;
}

function fieldName(details) {
  return (details || []).reduce((out, p) => (typeof p === "number" ? `${out}[${p}]` : out ? `${out}.${p}` : String(p)), "");
}

function showError(err) {
  const box = $("#error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  const where = err.details && err.details.length ? ` (field: ${fieldName(err.details)})` : "";
  box.textContent = `${err.status ? err.status + " " : ""}${err.code || "error"}: ${err.message}${where}`;
  box.hidden = false;
}

// Nothing that needs the API is enabled before the bases are listed: without a key, the page asks
// for one (and calls nothing that would answer 401).
function ready(on) {
  for (const sel of ACTIONS) $(sel).disabled = !on;
}

function askForKey(refused) {
  const help = $("#key-help");
  help.replaceChildren(refused
    ? "That key was refused (401). Check it and type it again above, then press Enter."
    : "This service needs an API key: type it in the API key field above, then press Enter.");
  if (DEMO_KEY) {
    const code = document.createElement("code");
    code.textContent = DEMO_KEY;
    help.append(" The quick start's key is ", code, ".");
  } else {
    help.append(" The quick start prints its key when it starts (RAPID_ADAPT_API_KEYS sets the keys); otherwise ask whoever runs this service.");
  }
  help.hidden = false;
  $("#key").classList.add("needs-key");
  $("#key").focus();
  ready(false);
}

// ---- drawing pads -------------------------------------------------------------------------
function makePad(canvas) {
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); canvas.dataset.ink = ""; };
  clear();
  let last = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = at(e); e.preventDefault(); });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    ctx.strokeStyle = "#000"; ctx.lineWidth = canvas.width / 18; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
    last = p; canvas.dataset.ink = "1";
  });
  const up = () => { last = null; };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  return { clear, png: () => (canvas.dataset.ink ? canvas.toDataURL("image/png").split(",")[1] : null) };
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ---- classes and their examples ---------------------------------------------------------
function addClass(name, images = []) {
  const li = $("#class-template").content.firstElementChild.cloneNode(true);
  const n = $("#classes").children.length + 1;
  $(".class-name", li).value = name || `class ${n}`;
  const pad = makePad($("canvas", li));
  li.examples = [];
  const addExample = (b64) => {
    li.examples.push(b64);
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-label", "remove this example");
    const img = document.createElement("img");
    img.alt = "example"; img.src = `data:image/png;base64,${b64}`;
    button.append(img);
    button.addEventListener("click", () => { li.examples.splice(li.examples.indexOf(b64), 1); item.remove(); });
    item.append(button);
    $(".thumbs", li).append(item);
  };
  $(".add-drawing", li).addEventListener("click", () => { const b = pad.png(); if (b) { addExample(b); pad.clear(); } });
  $(".clear-drawing", li).addEventListener("click", pad.clear);
  $(".remove-class", li).addEventListener("click", () => li.remove());
  $(".files", li).addEventListener("change", async (e) => { for (const f of e.target.files) addExample(await fileToBase64(f)); e.target.value = ""; });
  li.addEventListener("dragover", (e) => e.preventDefault());
  li.addEventListener("drop", async (e) => { e.preventDefault(); for (const f of e.dataTransfer.files) addExample(await fileToBase64(f)); });
  images.forEach(addExample);
  li.pad = pad;
  $("#classes").append(li);
  return li;
}

function supportSet() {
  const support = [];
  for (const li of $("#classes").children) {
    const drawn = li.pad.png();  // a drawing not yet added counts too
    const images = drawn ? li.examples.concat([drawn]) : li.examples;
    for (const image of images) support.push({ input: { image }, label: $(".class-name", li).value.trim() });
  }
  return support;
}

let examples = null;
async function randomEpisode() {
  examples = examples || await (await fetch("/static/examples/omniglot-test.json")).json();
  const alphabets = Object.keys(examples);
  const alphabet = alphabets[Math.floor(Math.random() * alphabets.length)];
  const chars = Object.keys(examples[alphabet]).sort(() => Math.random() - 0.5).slice(0, 5);
  $("#classes").replaceChildren();
  chars.forEach((c) => addClass(c.replace("character", "char "), [examples[alphabet][c][0]]));
  state.episode = chars.map((c) => [c.replace("character", "char "), examples[alphabet][c][1]]);
  $("#episode-info").textContent = `${alphabet.replace(/_/g, " ")}, an alphabet the base never saw. Try: `;
  const pick = document.createElement("button");
  pick.type = "button"; pick.textContent = "a new drawing of one of them";
  pick.addEventListener("click", () => {
    const [name, image] = state.episode[Math.floor(Math.random() * state.episode.length)];
    setQueryImage(image, `a drawing of ${name} by another person`);
  });
  $("#episode-info").append(pick);
}

// ---- regression: points on a plot ------------------------------------------------------
const PLOT = { x: [-5, 5], y: [-6, 6] };
function plotXY(px, py, canvas) {
  return [PLOT.x[0] + (px / canvas.width) * (PLOT.x[1] - PLOT.x[0]), PLOT.y[1] - (py / canvas.height) * (PLOT.y[1] - PLOT.y[0])];
}
function toPx(x, y, canvas) {
  return [((x - PLOT.x[0]) / (PLOT.x[1] - PLOT.x[0])) * canvas.width, ((PLOT.y[1] - y) / (PLOT.y[1] - PLOT.y[0])) * canvas.height];
}
function drawPlot() {
  const c = $("#plot"), ctx = c.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
  ctx.strokeStyle = "#d5dae3"; ctx.lineWidth = 1;
  for (let x = -5; x <= 5; x++) { const [px] = toPx(x, 0, c); ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, c.height); ctx.stroke(); }
  for (let y = -6; y <= 6; y += 2) { const [, py] = toPx(0, y, c); ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(c.width, py); ctx.stroke(); }
  ctx.fillStyle = "#5b6475"; ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let x = -4; x <= 4; x += 2) { const [px, py] = toPx(x, 0, c); ctx.fillText(String(x), px, py + 3); }
  ctx.textAlign = "left"; ctx.textBaseline = "middle";
  for (let y = -4; y <= 6; y += 2) { if (y) { const [px, py] = toPx(0, y, c); ctx.fillText(String(y), px + 4, py); } }
  ctx.font = "italic 13px system-ui, sans-serif";
  ctx.textAlign = "right"; ctx.textBaseline = "bottom"; ctx.fillText("x (input)", c.width - 4, toPx(0, 0, c)[1] - 2);
  ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.fillText("y (target)", toPx(0, 0, c)[0] + 4, 4);
  ctx.strokeStyle = "#9aa3b2"; ctx.beginPath();
  ctx.moveTo(0, toPx(0, 0, c)[1]); ctx.lineTo(c.width, toPx(0, 0, c)[1]);
  ctx.moveTo(toPx(0, 0, c)[0], 0); ctx.lineTo(toPx(0, 0, c)[0], c.height); ctx.stroke();
  if (state.curve) {
    ctx.strokeStyle = "#2454c7"; ctx.lineWidth = 2.5; ctx.beginPath();
    state.curve.forEach(([x, y], i) => { const [px, py] = toPx(x, y, c); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.stroke();
  }
  ctx.fillStyle = "#b42318";
  for (const [x, y] of state.points) { const [px, py] = toPx(x, y, c); ctx.beginPath(); ctx.arc(px, py, 5, 0, 2 * Math.PI); ctx.fill(); }
  $("#points-info").textContent = `${state.points.length} point${state.points.length === 1 ? "" : "s"}`;
}
function plotClick(e) {
  const c = $("#plot"), r = c.getBoundingClientRect();
  const px = (e.clientX - r.left) * c.width / r.width, py = (e.clientY - r.top) * c.height / r.height;
  const near = state.points.findIndex(([x, y]) => { const [qx, qy] = toPx(x, y, c); return Math.hypot(qx - px, qy - py) < 8; });
  if (near >= 0) state.points.splice(near, 1); else state.points.push(plotXY(px, py, c).map((v) => Math.round(v * 100) / 100));
  drawPlot();
}

// ---- adapt and predict ------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function lossText(v) {
  return v === 0 ? "0" : Math.abs(v) >= 0.01 ? v.toFixed(3) : v.toPrecision(2);
}

function adaptedText(m, seconds) {
  const before = m.support_loss_before, after = m.support_loss_after;
  const lower = before > 0 && after < before ? `, ${(100 * (1 - after / before)).toFixed(0)}% lower` : "";
  const steps = m.steps === 0 ? "no steps (the base as it is)" : `${m.steps} step${m.steps === 1 ? "" : "s"}`;
  return `Adapted in ${seconds} s: ${m.mode} mode, ${steps}, ${m.adaptation_ms.toFixed(0)} ms of compute. ` +
    `The loss on your examples went from ${lossText(before)} to ${lossText(after)}${lower}.`;
}

async function adapt() {
  showError(null);
  const model = state.model;
  if (!model) return;
  const support = model.task === "regression" ? state.points.map(([x, y]) => ({ input: [x], target: y })) : supportSet();
  const button = $("#adapt");
  button.disabled = true;
  const started = performance.now();
  try {
    let a = await api("POST", "/v1/adaptations", { model: model.name, support, mode: $("#mode").value });
    state.adaptation = null;
    while (!["succeeded", "failed", "cancelled"].includes(a.status)) {
      $("#status").textContent = a.status === "queued" ? "Waiting for a worker…" : "Adapting…";
      await sleep(150);  // short polls: the page never freezes while the job runs
      a = await api("GET", `/v1/adaptations/${a.id}?wait=2`);
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    if (a.status !== "succeeded") throw Object.assign(new Error(a.error ? a.error.message : a.status), { code: a.error ? a.error.code : a.status });
    state.adaptation = a;
    $("#status").textContent = adaptedText(a.metrics, seconds);
    if (model.task === "regression") await drawCurve(); else $("#query").hidden = false;
  } catch (err) {
    $("#status").textContent = "Not adapted: see the message above.";
    showError(err);
  } finally {
    button.disabled = false;
  }
}

async function drawCurve() {
  const xs = Array.from({ length: 101 }, (_, i) => -5 + i / 10);
  const out = await api("POST", `/v1/adaptations/${state.adaptation.id}/predictions`, { inputs: xs.map((x) => [x]) });
  state.curve = xs.map((x, i) => [x, Array.isArray(out.predictions[i].value) ? out.predictions[i].value[0] : out.predictions[i].value]);
  drawPlot();
}

let queryPad = null;
function setQueryImage(b64, note) {
  state.queryImage = b64;
  const c = $("#query-canvas"), ctx = c.getContext("2d"), img = new Image();
  img.onload = () => { queryPad.clear(); ctx.drawImage(img, 0, 0, c.width, c.height); c.dataset.ink = ""; };
  img.src = `data:image/png;base64,${b64}`;
  $("#answer").textContent = note || "";
}

async function predictQuery() {
  showError(null);
  const image = queryPad.png() || state.queryImage;
  if (!state.adaptation) { showError({ code: "not_ready", message: "adapt first" }); return; }
  if (!image) { showError({ code: "empty_inputs", message: "draw something, or choose a file" }); return; }
  try {
    const out = await api("POST", `/v1/adaptations/${state.adaptation.id}/predictions`, { inputs: [{ image }] });
    const p = out.predictions[0];
    $("#answer").textContent = `${p.label}`;
    const rows = Object.entries(p.scores).sort((a, b) => b[1] - a[1]).map(([label, score]) => {
      const li = document.createElement("li");
      const name = document.createElement("span"); name.textContent = label;
      const bar = document.createElement("span"); bar.className = "bar";
      const fill = document.createElement("span"); fill.style.width = `${(100 * score).toFixed(1)}%`;
      bar.append(fill);
      const value = document.createElement("span"); value.textContent = `${(100 * score).toFixed(0)}%`;
      li.append(name, bar, value);
      return li;
    });
    $("#scores").replaceChildren(...rows);
  } catch (err) { showError(err); }
}

// ---- the base ------------------------------------------------------------------------------
function chooseModel() {
  const model = state.models.find((m) => m.name === $("#model").value);
  state.model = model; state.adaptation = null; state.curve = null;
  if (!model) return;
  const image = model.input.kind === "image";
  $("#image-task").hidden = !image;
  $("#curve-task").hidden = image;
  $("#query").hidden = true;
  $("#random-episode").hidden = !(image && model.name === "omniglot-conv4");
  $("#base-info").textContent = `${model.task}, input ${model.input.kind} ${JSON.stringify(model.input.shape)}` +
    (model.max_ways ? `, up to ${model.max_ways} classes` : "") + (model.use_for ? `. For ${model.use_for}` : "");
  $("#status").textContent = "";
  if (image && !$("#classes").children.length) { addClass("a"); addClass("b"); }
  if (!image) drawPlot();
}

let modelsAsked = 0;  // the latest listing asked for: an older answer arriving after it is dropped

async function loadModels() {
  showError(null);
  if (AUTH && !sessionStorage.getItem("rapid-adapt-key")) { askForKey(false); return; }
  const asked = ++modelsAsked;
  try {
    const models = (await api("GET", "/v1/models")).data;
    if (asked !== modelsAsked) return;
    state.models = models;
    $("#model").replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
    $("#key-help").hidden = true;
    $("#key").classList.remove("needs-key");
    ready(true);
    // listed again (the key typed anew): the base in use and the work on the page stay as they are
    const kept = state.model && state.models.find((m) => m.name === state.model.name);
    if (kept) { $("#model").value = kept.name; state.model = kept; } else chooseModel();
  } catch (err) {
    if (err.status === 401) askForKey(true); else showError(err);
  }
}

function init() {
  ready(false);
  $("#key").value = sessionStorage.getItem("rapid-adapt-key") || "";
  $("#key").addEventListener("change", (e) => { sessionStorage.setItem("rapid-adapt-key", e.target.value.trim()); loadModels(); });
  $("#settings").addEventListener("submit", (e) => e.preventDefault());
  $("#model").addEventListener("change", chooseModel);
  $("#add-class").addEventListener("click", () => addClass());
  $("#random-episode").addEventListener("click", () => randomEpisode().catch(showError));
  $("#adapt").addEventListener("click", adapt);
  queryPad = makePad($("#query-canvas"));
  $("#clear-query").addEventListener("click", () => { queryPad.clear(); state.queryImage = null; });
  $("#query-file").addEventListener("change", async (e) => { if (e.target.files[0]) setQueryImage(await fileToBase64(e.target.files[0])); });
  $("#predict").addEventListener("click", predictQuery);
  $("#plot").addEventListener("click", plotClick);
  $("#add-point").addEventListener("click", () => {
    const x = parseFloat($("#point-x").value), y = parseFloat($("#point-y").value);
    if (Number.isFinite(x) && Number.isFinite(y)) { state.points.push([x, y]); drawPlot(); }
  });
  $("#clear-points").addEventListener("click", () => { state.points = []; state.curve = null; drawPlot(); });
  loadModels();
}

init();
