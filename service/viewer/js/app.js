// The viewer: open a DICOM (file, drop or worklist), show it through the service's display
// chain, and beside it the answer and its evidence, for one resolution or all of them.

import * as api from "./api.js";
import { heatLayer, maskLayer, renderWindow } from "./layers.js";
import { MASK_RGB, Panel } from "./panel.js";

const $ = (id) => document.getElementById(id);
const AS_ASSESSED = { center: 0.5, width: 1 };
const WORKLIST_POLL_MS = 10000;

const shared = {
  display: null, // {rows, columns, spacing, voi, codes}
  windowCanvas: null,
  view: { zoom: 1, cx: 0, cy: 0 },
  win: { ...AS_ASSESSED },
  show: { heat: 0.4, mask: true, boxes: true },
  redraw: () => panels.forEach((p) => p.draw()),
  readout: (text) => { $("readout").textContent = text; },
  adjustWindow: (dCenter, dWidth) => setWindow(shared.win.center + dCenter, shared.win.width + dWidth),
};

let panels = [];
let models = [];
let defaultResolution = null;
let current = { bytes: null, jobId: null, results: [], compare: false };
let windowFrame = 0;
let busy = 0;
// Every open (file, worklist row, resolution, compare) takes a new generation; an answer
// that arrives after a newer open began is dropped, so one study's image and answer are
// never shown with another's.
let generation = 0;

// ------------------------------------------------------------------ messages
function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showError(err) {
  const box = $("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const code = err.code ? `<code>${escapeHtml(err.code)}</code> ` : "";
  const rid = err.requestId ? ` <span class="hint">(request ${escapeHtml(err.requestId)})</span>` : "";
  box.innerHTML = `${code}${escapeHtml(err.message)}${rid}`;
  box.hidden = false;
  if (err.status === 401) $("api-key").focus();
}

function setBusy(delta) {
  busy += delta;
  $("stage").setAttribute("aria-busy", busy > 0 ? "true" : "false");
  document.body.classList.toggle("busy", busy > 0);
}

// ------------------------------------------------------------------ model card
function modelFor(resolution) {
  return models.find((m) => m.resolution === resolution) || null;
}

function showModelCard(model) {
  const card = $("model-card");
  if (!model) {
    card.textContent = "No model information.";
    return;
  }
  card.innerHTML = `Model <strong>${escapeHtml(model.name)}</strong> v${escapeHtml(model.version)} · ${Number(model.resolution)} px · ` +
    `${escapeHtml(model.backend)} · <strong class="use">${escapeHtml(model.intended_use)}</strong>`;
  card.title = model.intended_use;
}

async function loadModels() {
  try {
    const info = await api.models();
    models = info.models;
    defaultResolution = info.default_resolution;
    const select = $("resolution");
    select.innerHTML = models
      .map((m) => `<option value="${Number(m.resolution)}"${m.resolution === defaultResolution ? " selected" : ""}>${Number(m.resolution)} px</option>`)
      .join("");
    showModelCard(modelFor(defaultResolution));
    showError(null);
  } catch (err) {
    $("model-card").textContent = "The models could not be listed.";
    showError(err);
  }
}

// ------------------------------------------------------------------ window
function setWindow(center, width, render = true) {
  shared.win.center = Math.min(1, Math.max(0, center));
  shared.win.width = Math.min(1, Math.max(0.01, width));
  $("window-center").value = String(shared.win.center);
  $("window-width").value = String(shared.win.width);
  $("window-center-value").textContent = shared.win.center.toFixed(3);
  $("window-width-value").textContent = shared.win.width.toFixed(3);
  if (render && !windowFrame) {
    windowFrame = requestAnimationFrame(() => {
      windowFrame = 0;
      if (!shared.display) return;
      shared.windowCanvas = renderWindow(shared.display, shared.win.center, shared.win.width, shared.windowCanvas);
      shared.redraw();
    });
  }
}

// ------------------------------------------------------------------ panels
function panelHead(result) {
  const r = Number(result.model.resolution);
  const t = result.timings_ms;
  const decision = result.assessment.status === "not_assessable"
    ? '<span class="na">not assessable</span>'
    : result.positive ? "positive" : "negative";
  return `<strong>${r} px</strong> · p ${(result.probability * 100).toFixed(1)} % · ${decision} · ` +
    `server ${t.total.toFixed(0)} ms (inference ${t.inference.toFixed(0)} ms)`;
}

function layoutPanels(count) {
  panels.forEach((p) => p.destroy());
  panels = [];
  $("empty").hidden = true;
  const box = $("panels");
  box.style.gridTemplateColumns = `repeat(${Math.max(1, count)}, minmax(0, 1fr))`;
  for (let i = 0; i < Math.max(1, count); i++) panels.push(new Panel(box, shared, ""));
}

/** Image and answers of one open, unless a newer open began meanwhile (then false). */
async function showResults(results, gen, display) {
  const layers = await Promise.all(results.map(async (r) => {
    const s = r.saliency;
    const [heat, mask] = await Promise.all([
      s && s.map ? heatLayer(s.map) : null,
      s ? maskLayer(s.mask, MASK_RGB) : null,
    ]);
    return { heat, mask };
  }));
  if (gen !== generation) return false;
  // from here on synchronous: nothing else can run in between
  setDisplay(display);
  current.results = results;
  layoutPanels(results.length || 1);
  results.forEach((r, i) => panels[i].setEvidence(r, layers[i].heat, layers[i].mask, panelHead(r)));
  if (!results.length) panels[0].setEvidence(null, null, null, "image only: no answer");
  const heatAvailable = layers.some((l) => l.heat);
  $("heat-opacity").disabled = !heatAvailable;
  $("heat-opacity").title = heatAvailable ? "" : "no saliency map for this result (worklist results carry the mask only)";
  showAnswer(results);
  return true;
}

function showAnswer(results) {
  const wanted = Number($("resolution").value);
  const main = results.find((r) => r.model.resolution === wanted) || results[0];
  $("answer-empty").hidden = !!main;
  $("answer-body").hidden = !main;
  showTrust(results);
  if (!main) return;
  showModelCard({ ...(modelFor(main.model.resolution) || {}), ...main.model });
  const na = main.assessment.status === "not_assessable";
  const decision = $("decision");
  decision.className = `decision ${na ? "undetermined" : main.positive ? "positive" : "negative"}`;
  decision.textContent = na
    ? "Pneumothorax: not assessable"
    : `Pneumothorax: ${main.positive ? "positive" : "negative"}`;
  $("probability").textContent = `${(main.probability * 100).toFixed(1)} %${na ? " (for reference only)" : ""}`;
  $("threshold").textContent = `${(main.threshold * 100).toFixed(1)} %`;
  $("ood").textContent = `${main.ood.score.toFixed(1)} (threshold ${main.ood.threshold.toFixed(1)}, ${main.ood.in_distribution ? "in" : "out of"} distribution)`;
  $("server-time").textContent = `${main.timings_ms.total.toFixed(0)} ms at ${main.model.resolution} px`;
  const body = $("boxes").querySelector("tbody");
  body.innerHTML = main.boxes
    .map((b, i) => `<tr><td>${i + 1}</td><td>${b.score.toFixed(2)}</td><td>${b.area_mm2 != null ? `${b.area_mm2.toFixed(0)} mm²` : `${Number(b.area_px)} px`}</td></tr>`)
    .join("");
  $("no-boxes").hidden = main.boxes.length > 0;
  showImageFacts(main.image);
}

function showTrust(results) {
  const banner = $("trust-banner");
  const flagged = results.filter((r) => r.assessment.status === "not_assessable");
  if (!flagged.length) {
    banner.hidden = true;
    banner.innerHTML = "";
    return;
  }
  const reasons = new Map();
  flagged.forEach((r) => r.assessment.reasons.forEach((x) => {
    const seen = reasons.get(x.code) || { message: x.message, at: [] };
    seen.at.push(`${r.model.resolution} px`);
    reasons.set(x.code, seen);
  }));
  const items = [...reasons.entries()]
    .map(([code, x]) => `<li><code>${escapeHtml(code)}</code>: ${escapeHtml(x.message)}${results.length > 1 ? ` (${escapeHtml(x.at.join(", "))})` : ""}</li>`)
    .join("");
  banner.innerHTML = `<strong>Not assessable: this answer means nothing for this image.</strong><ul>${items}</ul>`;
  banner.hidden = false;
}

function showImageFacts(image) {
  const d = shared.display;
  const rows = [];
  const add = (k, v) => { if (v !== null && v !== undefined && v !== "") rows.push(`<dt>${k}</dt><dd>${escapeHtml(v)}</dd>`); };
  if (image) {
    add("Size", `${image.columns} × ${image.rows} px`);
    add("Pixel spacing", image.pixel_spacing_mm ? `${image.pixel_spacing_mm.map((v) => v.toFixed(3)).join(" × ")} mm` : "not in the header (areas in px)");
    add("Modality", image.modality);
    add("Photometric", image.photometric_interpretation);
    add("Bits stored", image.bits_stored);
    add("View", image.view_position);
    add("Body part", image.body_part_examined);
    add("VOI fallback", image.voi_fallback);
  } else if (d) {
    add("Size", `${d.columns} × ${d.rows} px`);
    add("Pixel spacing", d.spacing ? `${d.spacing.map((v) => v.toFixed(3)).join(" × ")} mm` : "not in the header");
  }
  if (d) add("Display VOI", d.voi);
  $("image-facts").innerHTML = rows.join("") || "<dt>Image</dt><dd>none</dd>";
}

function resetView() {
  const d = shared.display;
  shared.view.zoom = 1;
  shared.view.cx = d ? d.columns / 2 : 0;
  shared.view.cy = d ? d.rows / 2 : 0;
  shared.redraw();
}

function setDisplay(display) {
  shared.display = display;
  // a new image opens as assessed: the window of the previous one does not carry over
  setWindow(AS_ASSESSED.center, AS_ASSESSED.width, false); // rendered just below
  shared.windowCanvas = display ? renderWindow(display, shared.win.center, shared.win.width) : null;
  resetView();
}

// ------------------------------------------------------------------ opening
function clearAnswer() {
  current.results = [];
  $("answer-empty").hidden = false;
  $("answer-body").hidden = true;
  showTrust([]);
}

async function openBytes(bytes) {
  current = { ...current, bytes, jobId: null };
  await assess();
}

/** Display and answer(s) of current.bytes, in parallel; each failure shown as the service said. */
async function assess() {
  if (!current.bytes) return;
  const gen = ++generation;
  const bytes = current.bytes;
  showError(null);
  clearAnswer();
  setBusy(1);
  try {
    const answer = current.compare
      ? api.compare(bytes, models.map((m) => m.resolution))
      : api.predict(bytes, Number($("resolution").value) || undefined).then((r) => [r]);
    const [display, results] = await Promise.allSettled([api.displayOf(bytes), answer]);
    const failure = results.status === "rejected" ? results.reason : display.status === "rejected" ? display.reason : null;
    await present(gen, display.status === "fulfilled" ? display.value : null,
      results.status === "fulfilled" ? results.value : [], failure);
  } catch (err) {
    if (gen === generation) showError({ message: `The answer could not be shown: ${err.message}` });
  } finally {
    setBusy(-1);
  }
}

/** Show one open's image, answers and error, unless a newer open began meanwhile. */
async function present(gen, display, results, failure) {
  if (gen !== generation) return;
  if (!(await showResults(results, gen, display))) return;
  if (failure) showError(failure);
  if (!display) {
    panels.forEach((p) => p.destroy());
    panels = [];
    $("empty").hidden = false;
  }
}

async function openJob(jobId) {
  const gen = ++generation;
  showError(null);
  clearAnswer();
  setBusy(1);
  current = { ...current, bytes: null, jobId };
  setCompare(false);
  try {
    const [job, display] = await Promise.allSettled([api.job(jobId), api.jobDisplay(jobId)]);
    const results = job.status === "fulfilled" && job.value.result ? [job.value.result] : [];
    let failure = null;
    if (job.status === "rejected") failure = job.reason;
    else if (job.value.error) failure = { code: job.value.error.code, message: job.value.error.message };
    else if (!job.value.result) failure = { message: `This instance is ${job.value.state}; its answer is not ready yet.` };
    else if (display.status === "rejected") failure = display.reason;
    await present(gen, display.status === "fulfilled" ? display.value : null, results, failure);
  } catch (err) {
    if (gen === generation) showError({ message: `The answer could not be shown: ${err.message}` });
  } finally {
    setBusy(-1);
  }
}

async function openFile(file) {
  if (!file) return;
  await openBytes(await file.arrayBuffer());
}

async function toggleCompare() {
  if (current.jobId && !current.bytes) {
    showError({ message: "Comparing resolutions needs the file itself: open it from disk." });
    return;
  }
  setCompare(!current.compare);
  await assess();
}

function setCompare(on) {
  current.compare = on;
  const button = $("compare-button");
  button.setAttribute("aria-pressed", String(on));
  button.innerHTML = `${on ? "Single resolution" : "Compare resolutions"} <kbd>C</kbd>`;
}

// ------------------------------------------------------------------ worklist
function summary(job) {
  if (job.state === "done" && job.assessment === "not_assessable") return "not assessable";
  if (job.state === "done") return `${job.positive ? "positive" : "negative"} ${(job.probability * 100).toFixed(0)} %`;
  if (job.error) return job.error.code;
  return "";
}

let worklistRound = 0;

async function refreshWorklist() {
  const state = $("worklist-state");
  const round = ++worklistRound;
  try {
    const list = await api.jobs(50);
    if (round !== worklistRound) return; // a newer refresh is on its way
    const body = $("worklist").querySelector("tbody");
    const focused = document.activeElement && document.activeElement.closest("#worklist tr[data-job]");
    const focusedJob = focused ? focused.dataset.job : null;
    const when = (t) => new Date(t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    body.innerHTML = list.map((j) => `<tr tabindex="0" data-job="${escapeHtml(j.job_id)}" title="Study ${escapeHtml(j.study_instance_uid)}"` +
      `${j.job_id === current.jobId ? ' aria-selected="true"' : ""}>` +
      `<td>${escapeHtml(when(j.created_at))}</td><td>${escapeHtml(j.state)}</td><td>${escapeHtml(summary(j))}${j.has_image ? "" : " (no image)"}</td></tr>`).join("");
    if (focusedJob) {
      const again = body.querySelector(`tr[data-job="${CSS.escape(focusedJob)}"]`);
      if (again) again.focus();
    }
    state.textContent = list.length ? `${list.length} received (newest first).` : "Nothing received yet by DICOMweb (STOW-RS) or C-STORE.";
  } catch (err) {
    state.textContent = `Worklist unavailable: ${err.message}`;
  }
}

// ------------------------------------------------------------------ wiring
function bind() {
  $("file-input").addEventListener("change", (e) => openFile(e.target.files[0]));
  $("resolution").addEventListener("change", () => {
    if (current.bytes && !current.compare) assess();
    else if (current.results.length) showAnswer(current.results);
    else showModelCard(modelFor(Number($("resolution").value)));
  });
  $("compare-button").addEventListener("click", toggleCompare);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    api.setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    $("key-state").textContent = api.apiKey() ? "A key is set for this tab." : "No key set.";
    loadModels();
    refreshWorklist();
  });
  $("window-center").addEventListener("input", (e) => setWindow(Number(e.target.value), shared.win.width));
  $("window-width").addEventListener("input", (e) => setWindow(shared.win.center, Number(e.target.value)));
  $("window-reset").addEventListener("click", () => setWindow(AS_ASSESSED.center, AS_ASSESSED.width));
  $("heat-opacity").addEventListener("input", (e) => {
    shared.show.heat = Number(e.target.value);
    $("heat-opacity-value").textContent = shared.show.heat.toFixed(2);
    shared.redraw();
  });
  $("show-mask").addEventListener("change", (e) => { shared.show.mask = e.target.checked; shared.redraw(); });
  $("show-boxes").addEventListener("change", (e) => { shared.show.boxes = e.target.checked; shared.redraw(); });
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("zoom-fit").addEventListener("click", resetView);
  $("worklist-refresh").addEventListener("click", refreshWorklist);
  const rows = $("worklist").querySelector("tbody");
  const pick = (e) => {
    const row = e.target.closest("tr[data-job]");
    if (!row) return;
    rows.querySelectorAll("tr").forEach((r) => r.removeAttribute("aria-selected"));
    row.setAttribute("aria-selected", "true");
    openJob(row.dataset.job);
  };
  rows.addEventListener("click", pick);
  rows.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(e); } });
  bindDrop();
  document.addEventListener("keydown", onKey);
}

function zoomBy(factor) {
  if (!panels.length || !shared.display) return;
  const c = panels[0].canvas;
  panels[0].zoomAt(c.width / 2, c.height / 2, factor);
}

function toggle(id) {
  const box = $(id);
  box.checked = !box.checked;
  box.dispatchEvent(new Event("change"));
}

function onKey(e) {
  // letters act everywhere but in text fields; arrows stay with sliders and lists
  const typing = e.target.closest("input:not([type=range]):not([type=checkbox]), select, textarea, dialog");
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key.startsWith("Arrow") && e.target.closest("input, tr")) return;
  const pan = 0.1;
  const d = shared.display;
  const actions = {
    o: () => $("file-input").click(),
    c: toggleCompare,
    "+": () => zoomBy(1.25),
    "=": () => zoomBy(1.25),
    "-": () => zoomBy(0.8),
    f: resetView,
    a: () => setWindow(AS_ASSESSED.center, AS_ASSESSED.width),
    h: () => {
      const slider = $("heat-opacity");
      slider.value = Number(slider.value) > 0 ? "0" : "0.4";
      slider.dispatchEvent(new Event("input"));
    },
    m: () => toggle("show-mask"),
    b: () => toggle("show-boxes"),
    "?": () => $("help").showModal(),
    ArrowLeft: () => d && ((shared.view.cx -= (pan * d.columns) / shared.view.zoom), shared.redraw()),
    ArrowRight: () => d && ((shared.view.cx += (pan * d.columns) / shared.view.zoom), shared.redraw()),
    ArrowUp: () => d && ((shared.view.cy -= (pan * d.rows) / shared.view.zoom), shared.redraw()),
    ArrowDown: () => d && ((shared.view.cy += (pan * d.rows) / shared.view.zoom), shared.redraw()),
  };
  const action = actions[e.key] || actions[e.key.toLowerCase()];
  if (action) {
    e.preventDefault();
    action();
  }
}

function bindDrop() {
  // a file dropped anywhere else must not make the browser leave the page to open it
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());
  const stage = $("stage");
  const hint = $("drop-hint");
  let depth = 0;
  stage.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; hint.hidden = false; });
  stage.addEventListener("dragover", (e) => e.preventDefault());
  stage.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) hint.hidden = true; });
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    depth = 0;
    hint.hidden = true;
    openFile(e.dataTransfer.files[0]);
  });
}

/** Canvases follow the device pixel ratio (a window moved to another screen). */
function watchPixelRatio() {
  const query = matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`);
  query.addEventListener("change", () => {
    panels.forEach((p) => p.resize());
    watchPixelRatio();
  }, { once: true });
}

async function main() {
  bind();
  watchPixelRatio();
  setWindow(AS_ASSESSED.center, AS_ASSESSED.width);
  $("heat-opacity-value").textContent = shared.show.heat.toFixed(2);
  $("key-state").textContent = api.apiKey() ? "A key is set for this tab." : "No key set.";
  await loadModels();
  await refreshWorklist();
  setInterval(() => { if (!document.hidden) refreshWorklist(); }, WORKLIST_POLL_MS);
  document.body.dataset.ready = "true";
}

main();
