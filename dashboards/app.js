// The dashboard's entry: the live stream feeds the state, panels re-render at most once a frame.

import { Chart } from "./charts.js";
import * as panels from "./panels.js";
import { Series } from "./series.js";
import { LiveStream } from "./sse.js";
import {
  apply,
  applyHistory,
  applyStudyList,
  applyStudyReport,
  newState,
  pushBuckets,
  shownStudy,
  studyCurves,
} from "./state.js";

// Charts cost more than text: redraw them at most this often while events pour in.
const CHART_INTERVAL_MS = 250;

const state = newState();
const dirty = new Set();
let frame = 0;
let lastChartDraw = 0;

const RENDER = {
  waiting: panels.renderWaiting,
  primary: panels.renderPrimary,
  secondary: panels.renderSecondary,
  sample: panels.renderSample,
  models: panels.renderModels,
  hosts: panels.renderHosts,
  heatmap: panels.renderHeatmap,
  evolution: panels.renderEvolution,
  layers: panels.renderLayers,
  alerts: panels.renderAlerts,
  study: (st) => {
    panels.renderStudy(st);
    studyLines();
  },
};

const s = state.series;
const charts = [
  new Chart(document.getElementById("chart-loss"), {
    yLabel: "loss",
    onChange: () => redrawCharts(),
    onZoom: (view) => zoomHistory(view),
    lines: [
      { label: "loss", color: "#5ab0ff", series: s.loss },
      { label: "streaming CE", color: "#ffb454", series: s.ce },
    ],
  }),
  new Chart(document.getElementById("chart-acc"), {
    yLabel: "%",
    onChange: () => redrawCharts(),
    onZoom: (view) => zoomHistory(view),
    lines: [
      { label: "running", color: "#7bd88f", series: s.acc },
      { label: "last 20", color: "#c792ea", series: s.acc20 },
    ],
  }),
  new Chart(document.getElementById("chart-tps"), {
    yLabel: "tok/s",
    onChange: () => redrawCharts(),
    onZoom: (view) => zoomHistory(view),
    lines: [{ label: "tokens/s", color: "#4ec9b0", series: s.tps }],
  }),
  // The mode study's EM against steps: its lines are rebuilt from the study's points.
  new Chart(document.getElementById("chart-study"), {
    yLabel: "EM %",
    onChange: () => redrawCharts(),
    lines: [],
  }),
];
const STUDY_CHART = 3;

// A user's own action (zoom, resize, a control) redraws at once, not at the next interval.
function redrawCharts() {
  lastChartDraw = 0;
  schedule();
}

function schedule() {
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  for (const name of dirty) {
    if (name === "charts") continue;
    RENDER[name](state);
  }
  dirty.clear();
  updateReplaying();
  panels.renderHeader(state);
  const now = performance.now();
  if (now - lastChartDraw >= CHART_INTERVAL_MS) {
    lastChartDraw = now;
    for (const chart of charts) chart.render();
  } else if (charts.some((c) => c.dirty)) {
    setTimeout(schedule, CHART_INTERVAL_MS - (now - lastChartDraw));
  }
}

// Replaying history (page load, a long resume) looks like a fast-forward: say so while events
// arrive faster than a live run sends them and their times lie well in the past.
const REPLAY_RATE_PER_S = 200;
const REPLAY_AGE_S = 10;
const rate = { since: performance.now(), n: 0 };

function updateReplaying() {
  const now = performance.now();
  if (now - rate.since < 500) return;
  const perSecond = (rate.n * 1000) / (now - rate.since);
  rate.since = now;
  rate.n = 0;
  const age = state.lastEventTime ? (Date.now() - state.lastEventTime.getTime()) / 1000 : 0;
  state.replaying = perSecond > REPLAY_RATE_PER_S && age > REPLAY_AGE_S;
}

const EM_COLORS = ["#ff6b6b", "#ffd166", "#4cc9f0", "#f72585", "#b5e48c"];

// One accuracy-chart line per fixed eval set, added when the set first reports.
function addEvalLines() {
  const chart = charts[1];
  for (const [name, series] of s.em) {
    if (chart.lines.some((line) => line.series === series)) continue;
    const color = EM_COLORS[(chart.lines.length - 2) % EM_COLORS.length];
    chart.addLine({ label: `EM ${name}`, color, series });
  }
}

// --- mode study: one line per mode (the mean over seeds, thick) and each seed (thin)
const MODE_COLORS = {
  english: "#5ab0ff",
  canonical: "#7bd88f",
  encoded: "#ffb454",
  assorted: "#c792ea",
  mixed: "#c792ea",
  transitional: "#ff6b6b",
};
const OTHER_COLORS = ["#4ec9b0", "#f72585", "#ffd166"];

function emSeries(points) {
  const series = new Series({ onRewind: "drop" });
  for (const p of points) if (p.em != null) series.push(p.step, p.time ?? 0, p.em * 100);
  return series;
}

function studyLines() {
  const chart = charts[STUDY_CHART];
  chart.removeLines(() => true);
  const entry = shownStudy(state);
  if (!entry) return;
  studyCurves(entry).forEach(({ mode, seeds, mean }, i) => {
    const color = MODE_COLORS[mode] ?? OTHER_COLORS[i % OTHER_COLORS.length];
    chart.addLine({ label: `${mode} · mean of ${seeds.length}`, color, series: emSeries(mean), width: 2.5 });
    for (const run of seeds) {
      chart.addLine({ label: `${mode} · seed ${run.seed}`, color: `${color}80`, series: emSeries(run.points), width: 1 });
    }
  });
  chart.dirty = true;
}

// Studies: the list once at load (the newest one's report with it), then study.* events live;
// another study's report is read when the user picks it. Nothing here polls.
async function loadStudy(entry) {
  if (!entry || entry.loaded || !entry.hasReport) return;
  try {
    const response = await fetch(`api/studies/${encodeURIComponent(entry.id)}`, { cache: "no-store" });
    if (!response.ok) return;
    applyStudyReport(state, entry.id, await response.json());
  } catch {
    // the gateway is restarting: picking the study again asks again
  }
  dirty.add("study");
  schedule();
}

async function loadStudies() {
  try {
    const response = await fetch("api/studies", { cache: "no-store" });
    if (response.ok) applyStudyList(state, await response.json());
  } catch {
    // an old gateway without studies: live study events still show
  }
  await loadStudy(shownStudy(state));
  dirty.add("study");
  schedule();
}

document.getElementById("study-pick").addEventListener("change", (e) => {
  state.studyShown = e.target.value || null;
  dirty.add("study");
  schedule();
  loadStudy(shownStudy(state));
});

// Probe answers live in their own Redis stream, read over HTTP: after each evaluation (at
// most once a second, so a replay of many eval.result events costs one request).
let evolutionTimer = 0;
function loadEvolutionSoon() {
  if (evolutionTimer) return;
  evolutionTimer = setTimeout(async () => {
    evolutionTimer = 0;
    try {
      const response = await fetch("api/evolution?limit=60", { cache: "no-store" });
      if (!response.ok) return;
      state.evolution = await response.json();
      dirty.add("evolution");
      schedule();
    } catch {
      // the gateway is restarting: the next eval.result asks again
    }
  }, 1000);
}

function onEvent(type, event) {
  rate.n += 1;
  const changed = apply(state, type, event);
  if (type === "eval.result") {
    addEvalLines();
    loadEvolutionSoon();
  }
  for (const name of changed) {
    if (name === "charts") for (const chart of charts) chart.dirty = true;
    else dirty.add(name);
  }
  if (changed.length) schedule();
}

function chartOptions() {
  return {
    axis: document.getElementById("c-axis").value,
    alpha: Number(document.getElementById("c-smooth").value),
    log: document.getElementById("c-log").checked,
  };
}

for (const id of ["c-axis", "c-smooth", "c-log"]) {
  document.getElementById(id).addEventListener("input", () => {
    for (const chart of charts) chart.setOptions(chartOptions());
    redrawCharts();
  });
}

// "… ago" texts age even when no event arrives (and a replay's end is noticed).
let ticks = 0;
setInterval(() => {
  updateReplaying();
  ticks += 1;
  if (ticks % 5 === 0) for (const name of ["hosts", "models"]) dirty.add(name);
  for (const chart of charts) if (chart.dirty) lastChartDraw = 0;
  schedule();
}, 1000);

// Without a colour emoji font, 🤔 draws as a monochrome box: test one glyph's pixels once and
// let CSS name the markers instead (html.no-emoji).
function hasColorEmoji() {
  try {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#000";
    ctx.textBaseline = "top";
    ctx.font = "24px sans-serif";
    ctx.fillText("\u{1F914}", 2, 2);
    const px = ctx.getImageData(0, 0, 32, 32).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 0 && (Math.abs(px[i] - px[i + 1]) > 20 || Math.abs(px[i + 1] - px[i + 2]) > 20)) return true;
    }
  } catch {
    // no canvas: say the markers' names, which read everywhere
  }
  return false;
}
document.documentElement.classList.toggle("no-emoji", !hasColorEmoji());

// Every chart's points as CSV, from the series the chart draws.
for (const button of document.querySelectorAll("button.csv")) {
  button.addEventListener("click", () => {
    const chart = charts[Number(button.dataset.chart)];
    const name = chart.el.id.replace("chart-", "");
    const blob = new Blob([chart.csv()], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `regime3-${state.runId || "run"}-${name}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
}

// Points the charts can draw across their width: the history asks for about this many buckets.
function historyPoints() {
  return Math.max(200, Math.min(4000, Math.round(charts[0].el.clientWidth || 800)));
}

// --- compare: an earlier run, or the steps before an earlier checkpoint, dashed over the current run
const COMPARE_COLOR = "#9aa4b2";
const compareSelect = document.getElementById("c-compare");

async function refreshCompareOptions() {
  const chosen = compareSelect.value;
  const options = [["", "—"]];
  try {
    const response = await fetch("api/history/runs", { cache: "no-store" });
    if (response.ok) {
      const body = await response.json();
      for (const [run, info] of Object.entries(body.runs)) {
        if (run === state.runId) continue;
        options.push([`run:${run}`, `run ${run} (steps ${info.first_step}–${info.last_step})`]);
      }
    }
  } catch {
    // the gateway is restarting: checkpoints still offer windows
  }
  const ckpts = [...state.checkpoints.values()].filter((c) => c.ready).map((c) => c.ready);
  ckpts.sort((a, b) => b.step - a.step);
  for (const [i, c] of ckpts.entries()) {
    const before = ckpts[i + 1]?.step ?? 0;
    options.push([`window:${before}:${c.step}:${c.checkpoint_id}`, `steps before ${c.checkpoint_id} (${before}–${c.step})`]);
  }
  compareSelect.replaceChildren(...options.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    return option;
  }));
  if (options.some(([value]) => value === chosen)) compareSelect.value = chosen;
}

function clearCompare() {
  for (const chart of charts) chart.removeLines((line) => line.compare);
  state.compare = null;
}

async function loadCompare(value) {
  clearCompare();
  if (!value) return redrawCharts();
  const [kind, ...rest] = value.split(":");
  const params = new URLSearchParams({ points: String(historyPoints()) });
  let shift = 0;
  let label;
  if (kind === "run") {
    const run = rest.join(":");
    params.set("run", run);
    params.set("em", "true");
    label = run;
  } else {
    const [first, last, ckpt] = rest;
    params.set("first", first);
    params.set("last", last);
    if (state.runId) params.set("run", state.runId);
    const now = state.step?.current_step ?? Number(last);
    shift = now - Number(last); // the window ends where the current run is now
    label = `${ckpt} window, +${shift} steps`;
  }
  const response = await fetch(`api/history?${params}`, { cache: "no-store" });
  if (!response.ok) return;
  const body = await response.json();
  const b = body.buckets;
  const add = (chart, metric, name) => {
    if (!b?.[metric]) return;
    const series = new Series();
    pushBuckets(series, b, b[metric], shift);
    chart.addLine({ label: `${name} · ${label}`, color: COMPARE_COLOR, series, dash: [6, 4], compare: true });
  };
  add(charts[0], "loss", "loss");
  add(charts[1], "acc", "running");
  add(charts[2], "tps", "tokens/s");
  for (const [set, points] of Object.entries(body.em ?? {})) {
    const series = new Series({ onRewind: "drop" });
    points.step.forEach((x, i) => series.push(x + shift, 0, points.em[i] * 100));
    charts[1].addLine({ label: `EM ${set} · ${label}`, color: "#d4a5ff", series, dash: [2, 3], compare: true });
  }
  state.compare = { label, kind };
  redrawCharts();
}

compareSelect.addEventListener("focus", refreshCompareOptions);
compareSelect.addEventListener("pointerdown", refreshCompareOptions);
compareSelect.addEventListener("change", () => loadCompare(compareSelect.value));

// A zoom into a range the history drew coarsely loads that range at a finer bucket width, so
// detail appears as one zooms in even weeks back (the live points are already raw).
async function zoomHistory([xmin, xmax]) {
  const loaded = state.history;
  if (!loaded?.width || loaded.width <= 1 || chartOptions().axis !== "step") return;
  const first = Math.max(0, Math.floor(xmin));
  const last = Math.ceil(xmax);
  const params = new URLSearchParams({ first, last, points: String(historyPoints()) });
  if (loaded.run_id) params.set("run", loaded.run_id);
  try {
    const response = await fetch(`api/history?${params}`, { cache: "no-store" });
    if (!response.ok) return;
    const body = await response.json();
    const b = body.buckets;
    if (!b?.s0?.length || body.width >= loaded.width) return;
    const s = state.series;
    const targets = { loss: s.loss, ce: s.ce, tps: s.tps, acc: s.acc, acc20: s.acc20 };
    // Only up to where the live (raw) points begin: those are finer than any bucket.
    const until = Math.min(last, b.s1[b.s1.length - 1]);
    for (const [name, series] of Object.entries(targets)) {
      if (!b[name]) continue;
      const finer = new Series();
      const inRange = { s0: [], s1: [], t1: [] };
      const values = [[], [], []];
      b.s0.forEach((x, i) => {
        if (x < first || b.s1[i] > until) return;
        inRange.s0.push(x);
        inRange.s1.push(b.s1[i]);
        inRange.t1.push(b.t1[i]);
        for (let k = 0; k < 3; k++) values[k].push(b[name][k][i]);
      });
      if (!inRange.s0.length) continue;
      pushBuckets(finer, inRange, values);
      series.replaceRange(inRange.s0[0], inRange.s1[inRange.s1.length - 1], finer);
    }
    for (const chart of charts) chart.dirty = true;
    redrawCharts();
  } catch {
    // the gateway is restarting: the coarse points stay
  }
}

// --- opening: the run's downsampled history first, then the live stream from its cursor
async function loadHistory() {
  try {
    const response = await fetch(`api/history?points=${historyPoints()}`, { cache: "no-store" });
    if (!response.ok) return "0";
    const body = await response.json();
    const buckets = applyHistory(state, body);
    if (buckets) {
      const run = body.run;
      document.getElementById("history-note").textContent =
        `History: ${buckets} buckets of ${body.width} step(s) (min/max/last) up to step ${run?.last_step ?? "?"}, live since.`;
      for (const chart of charts) chart.dirty = true;
    }
    for (const name of ["primary", "secondary"]) dirty.add(name);
    schedule();
    return body.cursor || "0";
  } catch {
    return "0"; // no history endpoint (an old gateway): replay what the streams hold
  }
}

loadEvolutionSoon();

const stream = new LiveStream("events", {
  onEvent,
  onState: (name) => panels.renderConnection(name),
});

// For the browser test and for a curious human in the console: nothing reads it in the app.
window.__r3 = { state, stream, charts, loadCompare, refreshCompareOptions };
window.__r3.studiesLoaded = loadStudies();

window.addEventListener("resize", schedule);
schedule();
window.__r3.opened = loadHistory().then((cursor) => {
  stream.cursor = cursor;
  window.__r3.historyLoadedAt = performance.now();
  stream.start();
});
