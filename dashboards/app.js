// The dashboard's entry: the live stream feeds the state, panels re-render at most once a frame.

import { Chart } from "./charts.js";
import * as panels from "./panels.js";
import { LiveStream } from "./sse.js";
import { apply, newState } from "./state.js";

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
};

const s = state.series;
const charts = [
  new Chart(document.getElementById("chart-loss"), {
    yLabel: "loss",
    onChange: () => redrawCharts(),
    lines: [
      { label: "loss", color: "#5ab0ff", series: s.loss },
      { label: "streaming CE", color: "#ffb454", series: s.ce },
    ],
  }),
  new Chart(document.getElementById("chart-acc"), {
    yLabel: "%",
    onChange: () => redrawCharts(),
    lines: [
      { label: "running", color: "#7bd88f", series: s.acc },
      { label: "last 20", color: "#c792ea", series: s.acc20 },
    ],
  }),
  new Chart(document.getElementById("chart-tps"), {
    yLabel: "tok/s",
    onChange: () => redrawCharts(),
    lines: [{ label: "tokens/s", color: "#4ec9b0", series: s.tps }],
  }),
];

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

// The trainer's own status (idle, training, crashed, completed) is no event: read the B2
// payload the old viewer polls, so a crashed trainer shows even though it sends nothing.
const STATUS_INTERVAL_MS = 10_000;

async function pollStatus() {
  try {
    const response = await fetch("status/training_status.json", { cache: "no-store" });
    if (response.ok) {
      state.status = await response.json();
      dirty.add("primary");
      schedule();
    }
  } catch {
    // the gateway is restarting: the connection pill already says so
  }
}
pollStatus();
setInterval(pollStatus, STATUS_INTERVAL_MS);
loadEvolutionSoon();

const stream = new LiveStream("events", {
  onEvent,
  onState: (name) => panels.renderConnection(name),
});

// For the browser test and for a curious human in the console: nothing reads it in the app.
window.__r3 = { state, stream, charts };

window.addEventListener("resize", schedule);
schedule();
stream.start();
