// Rendering the state into the page's panels; each function owns one panel's DOM.

import { DASH, ago, bytes, clock, frac, int, num, pct, seconds } from "./format.js";
import {
  PROVISIONAL_N,
  STUDY_TARGET,
  emLine,
  queueDepths,
  rateCounts,
  shownStudy,
  studyModes,
  studyTable,
  trainerGpu,
  trainerStatus,
  valTrainGap,
} from "./state.js";

function $(id) {
  return document.getElementById(id);
}

// Write only when the text changed: no layout work for values that did not move.
function text(id, value) {
  const node = $(id);
  if (node && node.textContent !== value) node.textContent = value;
}

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fill(id, ...children) {
  const node = $(id);
  node.classList.remove("empty");
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function width(id, fraction) {
  const node = $(id);
  const w = `${Math.max(0, Math.min(100, fraction * 100)).toFixed(1)}%`;
  if (node.style.width !== w) node.style.width = w;
}

export function renderWaiting(state) {
  $("waiting").hidden = state.step !== null;
}

// "1,008,000 / 1,008,537": the total smaller, so a week's step count fits its card unwrapped.
function stepFigure(current, total) {
  const node = $("v-step");
  const want = total ? `${current} / ${total}` : current;
  if (node.textContent === want) return;
  node.replaceChildren(current, ...(total ? [h("span", { class: "of" }, ` / ${total}`)] : []));
}

export function renderPrimary(state) {
  const st = state.step;
  if (st) {
    text("v-loss", num(st.loss));
    text("v-ce", num(st.streaming_ce));
    const total = st.total_steps;
    stepFigure(int(st.current_step), total ? int(total) : null);
    width("v-progress", total ? st.current_step / total : 0);
    text("v-epoch", `${total ? "of this file's estimated end · " : ""}epoch ${st.epoch} · lr ${num(st.learning_rate, 3)}`);
    text("v-tps", st.tokens_per_sec == null ? DASH : int(st.tokens_per_sec));
    text("v-eta", seconds(st.eta_seconds));
    const at = st.eta_seconds == null ? null : new Date(Date.now() + st.eta_seconds * 1000);
    text("v-eta-at", at ? `at ${clock(at)}` : "");
    text("v-qeta", seconds(st.queue_eta_seconds));
    const qat = st.queue_eta_seconds == null ? null : new Date(Date.now() + st.queue_eta_seconds * 1000);
    const files = backlogTotals(st.queue_backlog).files;
    text("v-qeta-at", qat ? `${int(files)} more file(s) · at ${clock(qat)}` : "no measured rate yet");
  }
  const gap = valTrainGap(state);
  text("v-gap", num(gap.value, 3));
  text("v-gap-src", gap.source);
  const gpu = trainerGpu(state);
  if (gpu) {
    text("v-temp", gpu.temp_c == null ? DASH : `${Math.round(gpu.temp_c)} °C`);
    text("v-power", gpu.power_watts == null ? "" : `${Math.round(gpu.power_watts)} W`);
    const used = gpu.vram_total_bytes ? gpu.vram_used_bytes / gpu.vram_total_bytes : null;
    text("v-vram", used == null ? bytes(gpu.vram_used_bytes) : pct(used * 100, 0));
    text("v-vram-total", `${bytes(gpu.vram_used_bytes)} of ${bytes(gpu.vram_total_bytes)}`);
    width("v-vram-bar", gpu.vram_total_bytes ? gpu.vram_used_bytes / gpu.vram_total_bytes : 0);
  }
}

export function renderSecondary(state) {
  const sm = state.sample;
  const n = rateCounts(state);
  if (sm) {
    rate("v-acc", pct(sm.accuracy_percent), n.acc, `${int(sm.total_correct)} of ${int(sm.total_evals)} samples`);
    rate("v-acc20", pct(sm.accuracy_last_20), n.acc20, `of the last ${int(n.acc20)} samples`);
    rate("v-acc50", pct(sm.accuracy_last_50), n.acc50,
      `of the last ${int(n.acc50)} samples${sm.accuracy_trend ? ` · ${sm.accuracy_trend}` : ""}`);
  }
  const ev = state.evalResult;
  if (ev) {
    rate("v-em", frac(ev.fixed_eval_em), n.em,
      `${ev.correct} of ${ev.total} · ${emLine(ev)}${ev.fixed_eval_trend ? ` · ${ev.fixed_eval_trend}` : ""}`);
    text("v-ece-ce", num(ev.fixed_eval_ce));
    text("v-ece-ce-n", `per token of the set's own reference · n = ${int(ev.total)}`);
    // Per token of the golden answer only (after the last 🛑): the same text in every mode,
    // so it compares modes where the CE above cannot.
    text("v-answer-ce", num(ev.answer_ce));
    text("v-answer-ce-n", ev.answer_ce == null ? "not reported by this scorer" : "per answer token · compares modes");
    rate("v-ece", num(ev.fixed_eval_ece, 3), n.em, `n = ${int(ev.total)} answers`);
  }
  const st = state.step;
  if (st) {
    text("v-file", st.current_file ?? DASH);
    const parts = [];
    if (st.batch_step != null) parts.push(`step ${int(st.batch_step)} / ${int(st.batch_total_steps)}`);
    if (st.file_examples_total) parts.push(`${int(st.file_examples_done)} / ${int(st.file_examples_total)} examples`);
    if (st.batch_number != null) parts.push(`file #${st.batch_number}`);
    text("v-file-progress", parts.join(" · "));
  }
  const depths = queueDepths(state);
  const rows = ["train", "node"].map((kind) =>
    h(
      "div",
      { class: "queue-row" },
      h("span", { class: "muted" }, kind),
      ...["high", "normal", "low"].map((p) => {
        const n = depths[`${kind}-${p}`] ?? 0;
        return h("span", { class: `q q-${p}${n ? "" : " q-zero"}`, "data-queue": `${kind}-${p}` }, `${p} ${n}`);
      }),
    ),
  );
  if (st?.queue_backlog) rows.push(backlogTable(st.queue_backlog));
  else if (st?.batch_queue_size != null) {
    rows.push(h("div", { class: "sub" }, `${st.batch_queue_size} file(s) waiting (trainer)`));
  }
  fill("v-queue", ...rows);
}

// A rate and the n it rests on; a small n is marked provisional (dimmed, and says so).
function rate(id, value, n, detail) {
  text(id, value);
  const provisional = n > 0 && n < PROVISIONAL_N;
  const node = $(id);
  if (node.dataset.provisional !== String(provisional)) node.dataset.provisional = String(provisional);
  text(`${id}-n`, provisional ? `${detail} · provisional (n < ${PROVISIONAL_N})` : detail);
}

export function backlogTotals(backlog) {
  const total = { files: 0, examples: 0, tokens: 0, tokensKnown: false };
  for (const b of Object.values(backlog ?? {})) {
    total.files += b.files ?? 0;
    total.examples += b.examples ?? 0;
    if (b.tokens != null) {
      total.tokens += b.tokens;
      total.tokensKnown = true;
    }
  }
  return total;
}

const compactNumber = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 3 });

// The training queue by priority (trainer's train.step): files, examples, estimated tokens.
function backlogTable(backlog) {
  const cell = (v) => (v == null ? DASH : compactNumber.format(v));
  const total = backlogTotals(backlog);
  return h("div", { class: "scroll" },
    h("table", { class: "backlog", id: "v-backlog" },
      h("thead", {}, h("tr", {}, h("th", {}, "train waiting"), h("th", {}, "files"), h("th", {}, "examples"), h("th", { title: "estimated from the current file's tokens per example" }, "≈ tokens"))),
      h("tbody", {},
        ["high", "normal", "low"].map((p) => {
          const b = backlog[p] ?? {};
          return h("tr", { "data-priority": p }, h("th", { class: `q-${p}` }, p), h("td", {}, int(b.files ?? 0)), h("td", {}, cell(b.examples ?? 0)), h("td", {}, cell(b.tokens)));
        }),
        h("tr", { class: "total" }, h("th", {}, "all"), h("td", {}, int(total.files)), h("td", {}, cell(total.examples)), h("td", {}, total.tokensKnown ? cell(total.tokens) : DASH)),
      ),
    ),
  );
}

// 🤔/🛑 runs as "🤔×4": the count stays legible in any font, and where no emoji font draws
// the glyph (html.no-emoji, detected in app.js) the marker's name replaces it.
const MARKERS = /((?:\u{1F914})+|(?:\u{1F6D1})+)/u;
const MARKER_NAMES = { "\u{1F914}": "think", "\u{1F6D1}": "stop" };

export function withMarkers(value) {
  if (value == null) return [];
  const parts = String(value).split(MARKERS);
  return parts.map((part, i) => {
    if (i % 2 === 0) return part;
    const glyph = String.fromCodePoint(part.codePointAt(0));
    const count = [...part].length;
    const name = MARKER_NAMES[glyph];
    return h("span", { class: "marker", "data-marker": name, title: `${count} × ${name} marker (${glyph})` },
      h("span", { class: "glyph" }, glyph), h("span", { class: "word" }, name), `×${count}`);
  }).filter((p) => p !== "");
}

export function renderSample(state) {
  const sm = state.sample;
  if (!sm) return;
  text("sample-step", `step ${int(sm.current_step)}`);
  const verdict = sm.parse_failed ? "parse failed" : sm.answer_matches ? "match" : "no match";
  const cls = sm.answer_matches ? "ok" : "bad";
  fill(
    "sample",
    h("div", { class: `verdict ${cls}`, id: "sample-verdict" }, verdict),
    sm.current_system_prompt ? [h("h3", {}, "system"), h("pre", {}, sm.current_system_prompt)] : [],
    h("h3", {}, "prompt"),
    h("pre", { id: "sample-prompt" }, withMarkers(sm.current_prompt)),
    h("h3", {}, "golden answer"),
    h("pre", { id: "sample-golden" }, withMarkers(sm.golden_answer)),
    h("h3", {}, "model answer"),
    h("pre", { id: "sample-answer" }, withMarkers(sm.model_answer)),
    sm.canonical_answer != null
      ? [h("h3", {}, "decoded (canonical form)"), h("pre", { id: "sample-canonical" }, sm.canonical_answer)]
      : [],
  );
}

function nodeStage(n, ready) {
  const bits = [];
  if (n.pulled) {
    const after = ready ? (Date.parse(n.pulled.time) - Date.parse(ready.time)) / 1000 : null;
    bits.push(
      h("span", { class: "stage pulled" }, `pulled ${bytes(n.pulled.bytes)} in ${seconds(n.pulled.download_seconds)}` +
        (after != null ? ` (${seconds(after)} after ready)` : "")),
    );
  }
  if (n.swapped) {
    bits.push(
      h("span", { class: "stage swapped" }, `swapped: load ${seconds(n.swapped.load_seconds)}, swap ${seconds(n.swapped.swap_seconds)}`),
    );
    if (ready) {
      const total = (Date.parse(n.swapped.time) - Date.parse(ready.time)) / 1000;
      bits.push(h("span", { class: "stage total" }, `ready→serving ${seconds(total)}`));
    }
  }
  if (n.failed) bits.push(h("span", { class: "stage failed" }, `swap failed (try ${n.failed.attempt}): ${n.failed.reason}`));
  return bits;
}

const TIMELINE_SHOWN = 3;

export function renderModels(state) {
  if (state.active.size) {
    fill(
      "active-models",
      h("ul", { class: "plain" },
        [...state.active].map(([node, a]) =>
          h("li", { "data-node": node }, h("b", {}, node), " serves ", h("code", {}, a.model_id), h("span", { class: "muted" }, ` · ${a.how} ${ago(a.time)}`)),
        ),
      ),
    );
  }
  if (!state.checkpoints.size) return;
  const all = [...state.checkpoints.values()].reverse();
  const row = (c) =>
    h(
      "li",
      { class: "ckpt", "data-checkpoint": c.id },
      h("div", {},
        h("code", {}, c.id),
        c.ready ? h("span", { class: "muted" }, ` · step ${int(c.ready.step)} · ${bytes(c.ready.size_bytes)} · ready ${clock(new Date(c.ready.time))}`) : null,
        c.ready?.val_loss != null ? h("span", { class: "muted" }, ` · val ${num(c.ready.val_loss)}`) : null,
        c.pruned ? h("span", { class: "stage failed" }, `pruned (${c.pruned.reason})`) : null,
      ),
      [...c.nodes].map(([node, n]) => h("div", { class: "node-stages" }, h("b", {}, node), ...nodeStage(n, c.ready))),
    );
  // The newest few in full; the rest behind "more", so a week of checkpoints stays one panel.
  const older = all.slice(TIMELINE_SHOWN);
  const open = $("timeline").querySelector("details")?.open ?? false;
  fill(
    "timeline",
    h("ul", { class: "plain timeline" }, all.slice(0, TIMELINE_SHOWN).map(row)),
    older.length
      ? h("details", open ? { id: "timeline-more", open: "" } : { id: "timeline-more" },
          h("summary", {}, `more: ${older.length} older checkpoint(s)`),
          h("ul", { class: "plain timeline" }, older.map(row)))
      : null,
  );
}

function meter(label, used, total, fmt) {
  const f = total ? used / total : 0;
  return h(
    "div",
    { class: "meter" },
    h("span", {}, label),
    h("div", { class: "bar" }, h("div", { style: `width:${(Math.min(1, f) * 100).toFixed(1)}%` })),
    h("span", { class: "muted" }, `${fmt(used)} / ${fmt(total)}`),
  );
}

// Hosts report every few seconds: a minute of silence means the reporter is down.
const STALE_MS = 60_000;

export function renderHosts(state) {
  if (!state.hosts.size) return;
  const watts = (w) => (w == null ? DASH : `${Math.round(w)} W`);
  const cards = [...state.hosts.values()].map((tel) =>
    h(
      "div",
      { class: "host", "data-host": tel.host },
      h("h3", {}, tel.host,
        h("span", { class: "muted" }, ` · ${tel.role} · ${ago(new Date(tel.time))}`),
        Date.now() - Date.parse(tel.time) > STALE_MS ? h("span", { class: "stale" }, " · stale") : null),
      tel.gpus?.length
        ? tel.gpus.map((g) =>
            h("div", { class: "gpu" },
              h("div", {}, h("b", {}, `GPU ${g.index}`), ` ${g.name}`),
              h("div", { class: "gpu-figures" },
                h("span", { class: "temp" }, g.temp_c == null ? DASH : `${Math.round(g.temp_c)} °C`),
                h("span", {}, `${watts(g.power_watts)} / ${watts(g.power_limit_watts)}`),
                g.utilization_percent != null ? h("span", {}, `${Math.round(g.utilization_percent)}% busy`) : null,
              ),
              meter("VRAM", g.vram_used_bytes, g.vram_total_bytes, bytes),
            ),
          )
        : h("div", { class: "muted" }, `no GPU reading${tel.gpu_reason ? `: ${tel.gpu_reason}` : ""}`),
      h("div", { class: "sub" }, `power profile: ${tel.power_profile ?? DASH} · CPU ${pct(tel.cpu_percent, 0)}`),
      meter("RAM", tel.ram_used_bytes, tel.ram_total_bytes, bytes),
      meter("disk used", tel.disk_total_bytes - tel.disk_free_bytes, tel.disk_total_bytes, bytes),
      h("div", { class: "sub" }, `disk free ${bytes(tel.disk_free_bytes)}`),
    ),
  );
  fill("hosts", ...cards);
}

// Natural order, so "layer.10" sorts after "layer.9"; difficulty words in their own order.
const collator = new Intl.Collator(undefined, { numeric: true });
const LEVELS = ["trivial", "easy", "medium", "hard", "expert"];
function natural(a, b) {
  const ra = LEVELS.indexOf(a.toLowerCase());
  const rb = LEVELS.indexOf(b.toLowerCase());
  if (ra >= 0 && rb >= 0) return ra - rb;
  return collator.compare(a, b);
}

export function renderHeatmap(state) {
  const ev = state.evalResult;
  if (!ev || !Object.keys(ev.pattern_heatmap ?? {}).length) return;
  // Each cell is an EM over its own n answers (pattern_counts, from the scorer); an event from
  // before the counts has only the set's n, said in the title.
  const counts = ev.pattern_counts ?? {};
  const by = ev.scorer ? ` · scored by ${ev.scorer}` : "";
  text("heatmap-model", `${ev.model_id} · step ${ev.step ?? DASH}${by} · n = ${int(ev.total)} answers in all`);
  const domains = Object.keys(ev.pattern_heatmap).sort(natural);
  const diffs = [...new Set(domains.flatMap((d) => Object.keys(ev.pattern_heatmap[d])))].sort(natural);
  const cell = (v, n) => {
    if (v == null) return h("td", { class: "na" }, DASH);
    // red (0) → green (1) through yellow, readable on the dark background.
    return h("td", { style: `background:hsl(${Math.round(v * 120)} 60% 32%)` },
      frac(v, 0), n == null ? [] : h("small", { class: "n" }, `n = ${int(n)}`));
  };
  fill(
    "heatmap",
    h("div", { class: "scroll" },
      h("table", { class: "heat" },
        h("thead", {}, h("tr", {}, h("th", {}, "domain \\ difficulty"), diffs.map((d) => h("th", {}, d)))),
        h("tbody", {}, domains.map((dom) => h("tr", {}, h("th", {}, dom), diffs.map((d) => cell(ev.pattern_heatmap[dom][d], counts[dom]?.[d]))))),
      ),
    ),
  );
}

// How each probe's answer changed over the last evaluations (GET /api/evolution).
const EVOLUTION_COLUMNS = 6;
// By code point, so an emoji is never cut in half.
const clip = (value, n) => {
  const chars = [...value];
  return chars.length > n ? `${chars.slice(0, n - 1).join("")}…` : value;
};

export function renderEvolution(state) {
  const evo = state.evolution;
  if (!evo || !evo.probes?.length) return;
  const sets = [...new Set(evo.probes.map((p) => p.eval_set))];
  text("evolution-set", sets.join(", "));
  const steps = [...new Set(evo.probes.flatMap((p) => p.history.map((x) => x.step)))]
    .sort((a, b) => a - b)
    .slice(-EVOLUTION_COLUMNS);
  const cell = (entry) => {
    if (!entry) return h("td", { class: "na" }, DASH);
    const verdict = entry.parse_failed ? "unparsed" : entry.match ? "ok" : "bad";
    return h("td", { class: `evo ${verdict}`, title: entry.answer }, withMarkers(clip(entry.answer || "(no answer)", 24)));
  };
  fill(
    "evolution",
    h("div", { class: "scroll" },
      h("table", { class: "evolution" },
        h("thead", {}, h("tr", {}, h("th", {}, "probe (golden)"), steps.map((st) => h("th", {}, `step ${int(st)}`)))),
        h("tbody", {}, evo.probes.map((p) => {
          const byStep = new Map(p.history.map((x) => [x.step, x]));
          return h("tr", {},
            h("th", { title: p.question }, `${clip(p.question, 40)} (${clip(p.golden, 16)})`),
            steps.map((st) => cell(byStep.get(st))));
        })),
      ),
    ),
  );
}

export function renderLayers(state) {
  const ly = state.layers;
  if (!ly) return;
  text("layers-step", `step ${int(ly.current_step)}`);
  const names = Object.keys(ly.layer_activity_summary).sort(natural);
  const metrics = [...new Set(names.flatMap((n) => Object.keys(ly.layer_activity_summary[n])))].sort();
  const max = {};
  for (const m of metrics) max[m] = Math.max(1e-30, ...names.map((n) => ly.layer_activity_summary[n][m] ?? 0));
  fill(
    "layers",
    h("div", { class: "scroll" },
      h("table", { class: "layers" },
        h("thead", {}, h("tr", {}, h("th", {}, "layer"), metrics.map((m) => h("th", {}, m)))),
        h("tbody", {}, names.map((n) =>
          h("tr", {}, h("th", {}, n), metrics.map((m) => {
            const v = ly.layer_activity_summary[n][m];
            return h("td", {},
              h("div", { class: "lbar", style: `width:${(((v ?? 0) / max[m]) * 100).toFixed(1)}%` }),
              h("span", {}, num(v, 3)));
          })),
        )),
      ),
    ),
  );
}

export function renderAlerts(state) {
  if (!state.alerts.length) return;
  fill(
    "alerts",
    ...state.alerts.map((a) =>
      h("li", { class: `alert ${a.level}` },
        h("span", { class: "level" }, a.level),
        h("span", { class: "muted" }, ` ${clock(new Date(a.time))} ${a.source}/${a.code} `),
        h("span", { class: "message" }, a.message),
      ),
    ),
  );
}

const CONNECTION_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  lagged: "lagged — resuming",
};

export function renderConnection(stateName) {
  const pill = $("conn");
  pill.dataset.state = stateName;
  text("conn", CONNECTION_TEXT[stateName] ?? stateName);
}

const SILENT_MS = 120_000;

export function renderHeader(state) {
  const st = trainerStatus(state);
  const pill = $("trainer-status");
  pill.hidden = !st;
  if (st) {
    // A trainer killed mid-run publishes no status change: a "training" trainer that has said
    // nothing for a while (no step, no progress while validating, no sample or eval) is shown
    // as silent, from the page's own clock.
    const last = state.trainerSeen ? state.trainerSeen.getTime() : NaN;
    const silent = st.status === "training" && Date.now() - last > SILENT_MS;
    pill.dataset.status = silent ? "silent" : st.status;
    const what = silent ? `silent: no word for ${seconds((Date.now() - last) / 1000)}` : st.status;
    text("trainer-status", `trainer ${what}${st.model ? ` · ${st.model}` : ""}`);
  }
  text("run", state.runId ? `run ${state.runId}` : "");
  const at = state.lastEventTime ? clock(state.lastEventTime) : "";
  text("last-event", !at ? "" : state.replaying ? `replaying history… at ${at}` : `last event ${at}`);
}

// --- mode study (regime3 study modes) -----------------------------------------------------------

const STUDY_DAY = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "short" });

function studyLabel(entry) {
  const i = entry.info;
  const what = i.domain ? ` · ${i.domain} d${i.difficulty ?? "?"}` : "";
  const when = entry.started ? ` · ${STUDY_DAY.format(new Date(entry.started * 1000))}` : "";
  return `${entry.id}${what}${when}`;
}

// The picker: every study the page knows, newest first; "" follows the newest.
function studyPicker(state, ordered) {
  const select = $("study-pick");
  const options = [["", `newest (${ordered[0]?.id ?? DASH})`], ...ordered.map((e) => [e.id, studyLabel(e)])];
  const key = JSON.stringify(options);
  if (select.dataset.key !== key) {
    select.dataset.key = key;
    select.replaceChildren(...options.map(([value, label]) => h("option", { value }, label)));
  }
  const want = state.studyShown ?? "";
  if (select.value !== want) select.value = want;
}

const STUDY_COLUMNS = [
  ["mode", "mode"],
  ["em", "EM at last step"],
  ["first_at_target", "first step at target EM"],
  ["thinking_tokens", "thinking tokens per answer"],
  ["answer_ce", "answer-token CE"],
  ["parse_failures", "parse failures"],
];

export function renderStudy(state) {
  const panel = $("study-panel");
  panel.hidden = state.studies.size === 0;
  if (panel.hidden) return;
  const ordered = [...state.studies.values()].sort((a, b) => (b.started ?? 0) - (a.started ?? 0));
  studyPicker(state, ordered);
  const entry = shownStudy(state);
  const i = entry.info;
  const target = i.target ?? STUDY_TARGET;
  const bits = [
    entry.id,
    i.domain ? `${i.domain} d${i.difficulty ?? "?"}` : null,
    `modes ${studyModes(entry).join(", ") || DASH}`,
    i.seeds?.length ? `seeds ${i.seeds.join(", ")}` : null,
    i.steps ? `${int(i.steps)} steps` : null,
    `target EM ${frac(target, 0)}`,
  ];
  text("study-meta", bits.filter(Boolean).join(" · "));
  const rows = studyTable(entry);
  if (!rows.length && entry.table?.length) {
    // A report whose points the page cannot read: its own table, as it is.
    const cols = [...new Set(entry.table.flatMap((r) => Object.keys(r)))];
    fill("study-table", h("div", { class: "scroll" }, h("table", { class: "study" },
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
      h("tbody", {}, entry.table.map((r) => h("tr", {}, cols.map((c) => h("td", {}, r[c] == null ? DASH : String(r[c])))))))));
    return;
  }
  if (!rows.length) {
    fill("study-table", h("div", { class: "empty" }, "No points yet: the first evaluation of each run comes after its first eval interval."));
    return;
  }
  const cell = (row, key) => {
    const v = row[key];
    if (key === "mode") return h("th", {}, v, row.state !== "done" ? h("span", { class: "muted" }, ` (${row.state})`) : null);
    if (key === "em") return h("td", {}, frac(v), row.step != null ? h("small", { class: "muted" }, ` @${int(row.step)}`) : null);
    if (key === "first_at_target") {
      return h("td", {}, typeof v === "number" ? int(v) : v,
        row.first_range ? h("small", { class: "muted" }, ` (${row.first_range})`) : null);
    }
    if (key === "thinking_tokens") return h("td", {}, v == null ? DASH : num(v, 3));
    if (key === "parse_failures") return h("td", {}, v == null ? DASH : num(v, 3));
    return h("td", {}, num(v, 3));
  };
  fill(
    "study-table",
    h("div", { class: "scroll" },
      h("table", { class: "study", id: "study-rows" },
        h("thead", {}, h("tr", {}, STUDY_COLUMNS.map(([, label]) => h("th", {}, label)))),
        h("tbody", {}, rows.map((row) => h("tr", { "data-mode": row.mode }, STUDY_COLUMNS.map(([key]) => cell(row, key))))),
      ),
    ),
    h("p", { class: "hint muted" },
      `Means over ${rows[0].seeds} seed(s) at each run's last evaluation; the first step at ${frac(target, 0)} EM is each seed's first evaluation there, averaged when every seed reached it. ` +
      "answer-token CE is per token of the golden answer, the same text in every mode (the fixed-eval CE is per token of each mode's own reference)."),
  );
}
