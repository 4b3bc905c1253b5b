// What the dashboard knows: bus events (bus/events.py) folded into one state, no DOM here.

import { Series } from "./series.js";

const MAX_ALERTS = 100;
// Checkpoints remembered (the timeline shows the newest few, the rest behind "more").
const MAX_CHECKPOINTS = 200;

export function newState() {
  return {
    step: null, // the latest train.step
    sample: null, // the latest train.sample
    layers: null, // the latest train.layers
    evalResult: null, // the latest eval.result
    evolution: null, // GET /api/evolution: probe answers per evaluation
    lastCheckpoint: null, // the latest checkpoint.ready (for val_loss)
    hosts: new Map(), // host → latest telemetry
    checkpoints: new Map(), // checkpoint id → {ready, nodes: Map node → {pulled, swapped, failed}}
    active: new Map(), // node → {model_id, time, how}
    jobs: new Map(), // job id → {queue, state}
    alerts: [], // newest first
    lastEventTime: null,
    trainerSeen: null, // time of the trainer's latest word: a step, a status, a sample, progress
    status: null, // the trainer's status: GET /api/history at load, then train.status events
    replaying: false, // set by app.js while history streams in faster than live
    runId: "",
    history: null, // GET /api/history: {run_id, width, run} of the rollups loaded at start
    compare: null, // {label, kind} of the overlay shown, or null
    // Mode studies (regime3 study modes): study id → newStudy(); GET /api/studies at load,
    // then study.progress / study.report events. studyShown: the id picked, null = newest.
    studies: new Map(),
    studyShown: null,
    series: {
      loss: new Series(),
      ce: new Series(),
      tps: new Series(),
      acc: new Series(),
      acc20: new Series(),
      em: new Map(), // emLine (set, scorer) → Series: each its own line, or two would zigzag
    },
  };
}

function when(event) {
  const t = Date.parse(event.time);
  return Number.isNaN(t) ? new Date() : new Date(t);
}

// One EM line per set and scorer (services/gateway/history.py em_line, the same rule): the
// trainer's keeps the set's name, a node's adds its own, so the two never zigzag in one line.
export function emLine(event) {
  const by = event.scorer;
  return !by || by === "trainer" ? event.eval_set : `${event.eval_set} · ${by}`;
}

function checkpoint(state, id) {
  let entry = state.checkpoints.get(id);
  if (!entry) {
    entry = { id, ready: null, nodes: new Map() };
    state.checkpoints.set(id, entry);
    // Map keeps insertion order: the oldest checkpoints are dropped first.
    while (state.checkpoints.size > MAX_CHECKPOINTS) {
      state.checkpoints.delete(state.checkpoints.keys().next().value);
    }
  }
  return entry;
}

function nodeOf(entry, node) {
  let n = entry.nodes.get(node);
  if (!n) {
    n = { pulled: null, swapped: null, failed: null };
    entry.nodes.set(node, n);
  }
  return n;
}

// Which panels an event changes, so only those re-render.
const PANELS = {
  "train.step": ["primary", "secondary", "charts", "waiting"],
  "train.status": ["primary"],
  "train.sample": ["secondary", "sample", "charts"],
  "train.layers": ["layers"],
  "eval.result": ["primary", "secondary", "heatmap", "charts"],
  "checkpoint.ready": ["models", "primary"],
  "checkpoint.pruned": ["models"],
  "checkpoint.pulled": ["models"],
  "model.swapped": ["models"],
  "model.swap_failed": ["models"],
  "model.activated": ["models"],
  telemetry: ["hosts", "primary"],
  alert: ["alerts"],
  "study.progress": ["study"],
  "study.report": ["study"],
};

// What shows the trainer alive besides its steps: validating a large file or running a fixed
// eval sends no train.step for minutes, but job progress, samples and its own eval results.
function fromTrainer(type, event) {
  if (type.startsWith("train.")) return true;
  if (type === "eval.result") return (event.scorer ?? "trainer") === "trainer";
  return type.startsWith("job.") && String(event.queue ?? "").startsWith("train-");
}

// Fold one event into the state; returns the panels to re-render.
export function apply(state, type, event) {
  const t = when(event);
  state.lastEventTime = t;
  if (fromTrainer(type, event) && !(state.trainerSeen > t)) state.trainerSeen = t;
  if (event.run_id) state.runId = event.run_id;
  const secs = t.getTime() / 1000;
  const s = state.series;
  switch (type) {
    case "train.step":
      state.step = event;
      s.loss.push(event.current_step, secs, event.loss);
      if (event.streaming_ce != null) s.ce.push(event.current_step, secs, event.streaming_ce);
      if (event.tokens_per_sec != null) s.tps.push(event.current_step, secs, event.tokens_per_sec);
      break;
    case "train.status":
      state.status = { ...(state.status ?? {}), ...event };
      break;
    case "train.sample":
      state.sample = event;
      if (event.accuracy_percent != null) s.acc.push(event.current_step, secs, event.accuracy_percent);
      if (event.accuracy_last_20 != null) s.acc20.push(event.current_step, secs, event.accuracy_last_20);
      break;
    case "train.layers":
      state.layers = event;
      break;
    case "eval.result":
      state.evalResult = event;
      if (event.step != null) {
        const line = emLine(event);
        if (!s.em.has(line)) s.em.set(line, new Series({ onRewind: "drop" }));
        s.em.get(line).push(event.step, secs, event.fixed_eval_em * 100);
      }
      break;
    case "checkpoint.ready":
      checkpoint(state, event.checkpoint_id).ready = event;
      state.lastCheckpoint = event;
      break;
    case "checkpoint.pruned": {
      const entry = state.checkpoints.get(event.checkpoint_id);
      if (entry) entry.pruned = event;
      break;
    }
    case "checkpoint.pulled":
      nodeOf(checkpoint(state, event.checkpoint_id), event.node).pulled = event;
      break;
    case "model.swapped":
      nodeOf(checkpoint(state, event.model_id), event.node).swapped = event;
      state.active.set(event.node, { model_id: event.model_id, time: t, how: "swapped" });
      break;
    case "model.swap_failed":
      nodeOf(checkpoint(state, event.checkpoint_id), event.node).failed = event;
      break;
    case "model.activated":
      state.active.set(event.node, { model_id: event.model_id, time: t, how: event.by });
      break;
    case "telemetry":
      state.hosts.set(event.host, event);
      break;
    case "alert":
      addAlert(state, event);
      break;
    case "study.progress":
      studyPoint(study(state, event.study_id, secs), { ...event, time: secs });
      break;
    case "study.report":
      foldReport(study(state, event.study_id, secs), event);
      break;
    default:
      if (type.startsWith("job.")) return applyJob(state, type, event);
      return [];
  }
  return PANELS[type] ?? [];
}

function addAlert(state, alert) {
  state.alerts.unshift(alert);
  if (state.alerts.length > MAX_ALERTS) state.alerts.length = MAX_ALERTS;
}

// Queue depth by priority, from job events: a job is waiting from job.queued until it starts
// (or ends). Jobs queued before the streams' retained window are not counted; train.step's
// batch_queue_size (from RQ itself) is shown beside it.
function applyJob(state, type, event) {
  if (type === "job.failed") {
    // A failed job is something a human should see, like an alert.
    addAlert(state, {
      level: "error",
      source: event.worker || "worker",
      code: `job_failed:${event.queue}`,
      message: `${event.description || event.func || event.job_id}: ${event.reason}`,
      time: event.time,
    });
  }
  const job = state.jobs.get(event.job_id) ?? { queue: event.queue, state: "queued" };
  job.queue = event.queue || job.queue;
  if (type === "job.queued") job.state = "queued";
  else if (type === "job.started" || type === "job.progress") job.state = "running";
  else job.state = "done";
  if (job.state === "done") state.jobs.delete(event.job_id);
  else state.jobs.set(event.job_id, job);
  return type === "job.failed" ? ["secondary", "alerts"] : ["secondary"];
}

export function queueDepths(state) {
  const depths = {};
  for (const job of state.jobs.values()) {
    if (job.state !== "queued") continue;
    depths[job.queue] = (depths[job.queue] ?? 0) + 1;
  }
  return depths;
}

// The val−train gap (docs/compat.md): the evaluation's own figure, else the last checkpoint's val_loss
// against the current streaming CE (the trainer's smoothed train loss).
export function valTrainGap(state) {
  if (state.evalResult?.val_train_gap != null) {
    return { value: state.evalResult.val_train_gap, source: `eval ${state.evalResult.eval_set}` };
  }
  if (state.status?.val_train_gap != null) {
    return { value: state.status.val_train_gap, source: "trainer status" };
  }
  const ckpt = state.lastCheckpoint;
  const train = state.step?.streaming_ce ?? state.step?.loss;
  if (ckpt?.val_loss != null && train != null) {
    return { value: ckpt.val_loss - train, source: `checkpoint step ${ckpt.step}` };
  }
  return { value: null, source: "" };
}

// The trainer's GPU: train.step carries it; else the first GPU of a trainer host's telemetry.
export function trainerGpu(state) {
  const st = state.step;
  if (st?.gpu_temp_c != null || st?.gpu_vram_used_bytes != null) {
    return {
      temp_c: st.gpu_temp_c,
      vram_used_bytes: st.gpu_vram_used_bytes,
      vram_total_bytes: st.gpu_vram_total_bytes,
      power_watts: st.gpu_power_watts,
    };
  }
  for (const tel of state.hosts.values()) {
    if (tel.role === "trainer" && tel.gpus?.length) return tel.gpus[0];
  }
  return null;
}

// The trainer's status as a pill text: what train.status (or the status hash at load) says.
export function trainerStatus(state) {
  const st = state.status;
  if (!st?.status) return null;
  return { status: st.status, model: st.model_name ?? null };
}

// Fold GET /api/history's rollups into the series: each bucket as its min, max and last point
// (so a spike survives, as the chart's own downsampling keeps it), before live events arrive.
export function applyHistory(state, body) {
  state.history = { run_id: body.run_id, width: body.width, run: body.run ?? null };
  if (body.status) state.status = body.status;
  if (body.run_id) state.runId = body.run_id;
  const b = body.buckets;
  if (!b || !b.s0?.length) return 0;
  const s = state.series;
  const targets = { loss: s.loss, ce: s.ce, tps: s.tps, acc: s.acc, acc20: s.acc20 };
  for (const [name, series] of Object.entries(targets)) {
    if (b[name]) pushBuckets(series, b, b[name]);
  }
  return b.s0.length;
}

export function pushBuckets(series, b, [mins, maxs, lasts], shift = 0) {
  for (let i = 0; i < b.s0.length; i++) {
    if (lasts[i] === null || lasts[i] === undefined) continue;
    const s0 = b.s0[i] + shift;
    const s1 = b.s1[i] + shift;
    const t = b.t1[i];
    if (s1 > s0) {
      series.push(s0, t, mins[i]);
      series.push((s0 + s1) / 2, t, maxs[i]);
    }
    series.push(s1, t, lasts[i]);
  }
}

// Rates: how many results a figure rests on; below this it is marked provisional.
export const PROVISIONAL_N = 30;

// The n behind each accuracy card: running accuracy counts every sample, "last 20/50" at most
// that many, EM and ECE the evaluated set.
export function rateCounts(state) {
  const total = state.sample?.total_evals ?? 0;
  return {
    acc: total,
    acc20: Math.min(20, total),
    acc50: Math.min(50, total),
    em: state.evalResult?.total ?? 0,
  };
}

// --- mode studies -----------------------------------------------------------------------------

// The study target when the report names none (regime3 study modes --target's default).
export const STUDY_TARGET = 0.9;

function study(state, id, started = null) {
  let entry = state.studies.get(id);
  if (!entry) {
    entry = {
      id,
      started, // unix seconds: the list's score, else the first point's time
      info: {}, // the report's headline fields: domain, difficulty, modes, seeds, steps, target
      runs: new Map(), // "mode|seed" → {mode, seed, points: Map step → point}
      table: null, // the report's own rows, when it has no points the page can read
      loaded: false, // GET /api/studies/{id} read
    };
    state.studies.set(id, entry);
  } else if (entry.started === null && started !== null) {
    entry.started = started;
  }
  return entry;
}

// One evaluation point of one run (a mode and a seed); the same step again replaces it, so a
// report's points and the stream's replay of the same study merge without duplicates.
function studyPoint(entry, point) {
  if (point.mode == null || point.seed == null || point.step == null) return;
  const key = `${point.mode}|${point.seed}`;
  let run = entry.runs.get(key);
  if (!run) {
    run = { mode: String(point.mode), seed: point.seed, points: new Map(), state: "running" };
    entry.runs.set(key, run);
  }
  // The end of a run (state done or failed) may come without figures: it changes the state,
  // not the run's last point.
  if (point.em != null) run.points.set(Number(point.step), point);
  if (point.state) run.state = point.state;
  if (point.total_steps && !entry.info.steps) entry.info.steps = point.total_steps;
}

const INFO_FIELDS = ["domain", "difficulty", "modes", "seeds", "steps", "target", "state", "report_path"];

// A report (the study.report event, or the JSON of GET /api/studies/{id}): its headline and
// its points, wherever it keeps them: a list of points, or {mode: {seed: [points] or columns}}.
export function foldReport(entry, report) {
  // regime3 study modes keeps its options under "plan", the study.report event at the top.
  for (const source of [report.plan ?? {}, report]) {
    for (const k of INFO_FIELDS) if (source[k] != null) entry.info[k] = source[k];
  }
  const started = report.started ?? report.plan?.started;
  if (started != null && entry.started === null) entry.started = started;
  let found = 0;
  const take = (point) => {
    studyPoint(entry, point);
    found += 1;
  };
  // A run's points as a list, or as columns ({step: [...], em: [...], ...}).
  const run = (mode, seed, pts) => {
    if (Array.isArray(pts)) pts.forEach((q) => take({ mode, seed, ...q }));
    const steps = pts?.step ?? pts?.steps;
    if (!Array.isArray(pts) && Array.isArray(steps)) {
      steps.forEach((st, i) => {
        const q = { mode, seed, step: st };
        for (const [k, col] of Object.entries(pts)) if (Array.isArray(col) && k !== "steps") q[k] = col[i];
        take(q);
      });
    }
  };
  for (const name of ["points", "progress", "runs", "curves", "curve"]) {
    const data = report[name];
    if (Array.isArray(data)) {
      for (const p of data) {
        const pts = p?.points ?? p?.curve;
        if (pts && typeof pts === "object") {
          // A run: its points, then its state (a point carries none: the run's says it).
          run(p.mode, p.seed, pts);
          const known = entry.runs.get(`${p.mode}|${p.seed}`);
          if (known && p.state) known.state = p.state;
        }
        else if (p && (Array.isArray(p.step) || Array.isArray(p.steps))) run(p.mode, p.seed, p);
        else if (p && typeof p === "object") take(p);
      }
    } else if (data && typeof data === "object") {
      for (const [mode, bySeed] of Object.entries(data)) {
        for (const [seed, pts] of Object.entries(bySeed ?? {})) run(mode, Number(seed), pts);
      }
    }
  }
  if (Array.isArray(report.table)) entry.table = report.table;
  // A finished study's report: runs whose points said nothing of their end are over.
  if (report.state === "done" || (report.type === "study.report" && report.state == null)) {
    for (const known of entry.runs.values()) if (known.state === "running") known.state = "done";
  }
  return found;
}

// The study shown: the one picked, else the newest (by start).
export function shownStudy(state) {
  if (state.studyShown && state.studies.has(state.studyShown)) return state.studies.get(state.studyShown);
  let newest = null;
  for (const entry of state.studies.values()) {
    if (!newest || (entry.started ?? 0) > (newest.started ?? 0)) newest = entry;
  }
  return newest;
}

const mean = (values) => {
  const xs = values.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
};

// The modes of a study in its own order (the report's), then any others its points name.
export function studyModes(entry) {
  const modes = [...(entry.info.modes ?? [])];
  for (const run of entry.runs.values()) if (!modes.includes(run.mode)) modes.push(run.mode);
  return modes;
}

// Per mode: each seed's points (ascending steps) and the mean over seeds at every step where
// each seed that has reached it has a point.
export function studyCurves(entry) {
  const out = [];
  for (const mode of studyModes(entry)) {
    const seeds = [...entry.runs.values()].filter((r) => r.mode === mode);
    seeds.sort((a, b) => a.seed - b.seed);
    const perSeed = seeds.map((r) => ({
      seed: r.seed,
      state: r.state,
      points: [...r.points.values()].sort((a, b) => a.step - b.step),
    }));
    const steps = [...new Set(perSeed.flatMap((r) => r.points.map((p) => p.step)))].sort((a, b) => a - b);
    const meanPoints = steps.map((step) => {
      const at = perSeed.map((r) => r.points.find((p) => p.step === step)).filter(Boolean);
      return {
        step,
        n: at.length,
        em: mean(at.map((p) => p.em)),
        time: Math.max(...at.map((p) => p.time ?? 0)),
      };
    });
    out.push({ mode, seeds: perSeed, mean: meanPoints });
  }
  return out;
}

// The table: per mode (means over seeds), EM at the last step, the mean over seeds of each
// seed's own first step at the target (given once every seed reached it), thinking tokens per
// answer, answer-token CE and parse failures at the last step, from the points the page has
// (live or the report's).
export function studyTable(entry) {
  const target = entry.info.target ?? STUDY_TARGET;
  return studyCurves(entry).map(({ mode, seeds }) => {
    const last = seeds.map((r) => r.points[r.points.length - 1]).filter(Boolean);
    const over = (r) => r.state === "done" || r.state === "failed";
    const running = seeds.some((r) => !over(r));
    // As the study's report counts it: each seed's first evaluation at the target, the mean
    // over seeds when every seed reached it.
    const firsts = seeds.map((r) => r.points.find((p) => p.em !== null && p.em >= target)?.step);
    const reached = firsts.filter((f) => f !== undefined);
    let first;
    if (seeds.length && reached.length === seeds.length) first = mean(reached);
    else if (running) first = reached.length ? `${reached.length} of ${seeds.length} seeds, not yet` : "not yet";
    else first = reached.length ? `never in ${seeds.length - reached.length} of ${seeds.length}` : "never";
    return {
      mode,
      seeds: seeds.length,
      step: last.length ? Math.min(...last.map((p) => p.step)) : null,
      em: mean(last.map((p) => p.em)),
      first_at_target: first,
      thinking_tokens: mean(last.map((p) => p.thinking_tokens)),
      answer_ce: mean(last.map((p) => p.answer_ce)),
      parse_failures: mean(last.map((p) => p.parse_failures)),
      state: seeds.some((r) => r.state === "failed") ? "failed" : running ? "running" : "done",
      // the seeds' spread of that first step ("300–320"), when they differ
      first_range: reached.length === seeds.length && reached.length > 1 && Math.min(...reached) !== Math.max(...reached)
        ? `${Math.min(...reached)}–${Math.max(...reached)}` : null,
    };
  });
}

// GET /api/studies: each listed study (newest first) with its headline fields.
export function applyStudyList(state, body) {
  for (const s of body.studies ?? []) {
    const entry = study(state, s.study_id, s.started ?? null);
    for (const k of INFO_FIELDS) if (s[k] != null && entry.info[k] == null) entry.info[k] = s[k];
    entry.hasReport = Boolean(s.report);
  }
}

// GET /api/studies/{id}: the full report.
export function applyStudyReport(state, id, report) {
  const entry = study(state, id, report.started ?? null);
  foldReport(entry, report);
  entry.loaded = true;
  return entry;
}
