// History charts: uPlot over downsampled Series, with smoothing, log scale and step/time x.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { downsample, smooth } from "./series.js";

// Draw at most this many buckets per CSS pixel of plot width (each bucket keeps min and max).
const BUCKETS_PER_PIXEL = 1;

const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 4 });

// Tick spacings of 1, 2 or 5 times a power of ten: never 2.5, whose ticks (0, 2.5, 5, 7.5)
// printed at the spacing's precision read "0, 3, 5, 8".
export const INCRS = [];
for (let e = -8; e <= 9; e++) for (const m of [1, 2, 5]) INCRS.push(Number((m * 10 ** e).toPrecision(1)));

// Decimals that print every multiple of `incr` exactly (0.5 → 1, 0.25 → 2, 20 → 0).
export function tickDecimals(incr) {
  for (let d = 0; d <= 8; d++) {
    const scaled = incr * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) < 1e-6 * Math.max(1, scaled)) return d;
  }
  return 8;
}

// Short tick labels ("9.8K", "0.0012"), as precise as the tick spacing needs: neighbours
// never read the same, and a phone-width axis stays narrow.
export function tick(v, incr) {
  if (v === null || v === undefined) return "";
  if (Math.abs(v) >= 1000 && incr >= 100) return compact.format(v);
  return v.toFixed(tickDecimals(incr || 1));
}

// Room for the longest tick label (about 7 px a character at uPlot's 12 px font) and the title.
function axisSize(u, values) {
  if (!values) return 50;
  return 28 + 7 * Math.max(...values.map((v) => String(v).length));
}

export class Chart {
  // lines: [{label, color, series: Series, scale?: number, width?: number, dash?: number[]}]
  // onChange: called when the chart needs a redraw of its own (resize, zoom), to schedule one.
  // onZoom(view): after a drag-zoom, to load finer points for the range.
  constructor(el, { lines, yLabel, onChange = () => {}, onZoom = () => {} }) {
    this.el = el;
    this.onChange = onChange;
    this.onZoom = onZoom;
    this.lines = lines;
    this.yLabel = yLabel;
    this.plot = null;
    this.key = "";
    this.view = null; // [xmin, xmax] after a drag-zoom; null = everything
    this.options = { axis: "step", alpha: 0, log: false };
    this.dirty = true;
    new ResizeObserver(() => {
      if (this.plot) this.plot.setSize(this.size());
      this.dirty = true;
      this.onChange();
    }).observe(el);
    el.addEventListener("dblclick", () => {
      this.view = null;
      this.dirty = true;
      this.onChange();
    });
  }

  size() {
    const width = Math.max(200, this.el.clientWidth);
    return { width, height: Math.round(Math.min(260, Math.max(160, width * 0.45))) };
  }

  addLine(line) {
    this.lines.push(line);
    this.key = ""; // a new series: uPlot needs building again
    this.dirty = true;
  }

  // Drop the lines `drop(line)` selects (a comparison being replaced).
  removeLines(drop) {
    const kept = this.lines.filter((line) => !drop(line));
    if (kept.length === this.lines.length) return;
    this.lines = kept;
    this.key = "";
    this.dirty = true;
  }

  // Every point of every line, long format (one row a point), as the series hold them: the
  // history's bucket points (min, max, last) and every live point since.
  csv() {
    const rows = ["series,step,time_utc,value"];
    for (const line of this.lines) {
      const s = line.series;
      const label = `"${line.label.replaceAll('"', '""')}"`;
      for (let i = 0; i < s.n; i++) {
        const t = new Date(s.time[i] * 1000).toISOString();
        rows.push(`${label},${s.step[i]},${t},${s.y[i] * (line.scale ?? 1)}`);
      }
    }
    return `${rows.join("\n")}\n`;
  }

  setOptions(options) {
    if (options.axis !== this.options.axis) this.view = null;
    this.options = { ...options };
    this.dirty = true;
  }

  build() {
    const { axis, log } = this.options;
    const chart = this;
    const opts = {
      ...this.size(),
      legend: { show: true, live: false },
      cursor: { drag: { x: true, y: false, setScale: false } },
      scales: {
        x: { time: axis === "time" },
        y: log ? { distr: 3 } : { auto: true },
      },
      axes: [
        { stroke: "#9aa4b2", grid: { stroke: "#2a3140" } },
        {
          stroke: "#9aa4b2",
          grid: { stroke: "#2a3140" },
          label: this.yLabel,
          size: axisSize,
          incrs: INCRS,
          values: (u, vals, axis, space, incr) => vals.map((v) => tick(v, incr)),
        },
      ],
      series: [
        { label: axis === "time" ? "time" : "step" },
        ...this.lines.map((line) => ({
          label: line.label,
          stroke: line.color,
          width: line.width ?? (line.dash ? 1.25 : 1.5),
          dash: line.dash,
          spanGaps: true,
          // Dots only while a line has few points (an evaluation every few hundred steps).
          points: { show: () => line.series.n < 200 },
        })),
      ],
      hooks: {
        // Zoom by re-bucketing the selected range from the raw arrays, not by stretching the
        // already-downsampled points, so detail appears as one zooms in.
        setSelect: [
          (u) => {
            if (u.select.width < 4) return;
            const xmin = u.posToVal(u.select.left, "x");
            const xmax = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            chart.view = [xmin, xmax];
            chart.dirty = true;
            chart.onChange();
            chart.onZoom(chart.view);
          },
        ],
      },
    };
    if (this.plot) this.plot.destroy();
    this.el.textContent = "";
    this.plot = new uPlot(opts, this.data(), this.el);
    this.key = `${axis}|${log}|${this.lines.length}`;
  }

  data() {
    const { axis, alpha, log } = this.options;
    const width = this.plot ? this.plot.bbox.width / devicePixelRatio : this.size().width;
    const buckets = Math.max(50, Math.round(width * BUCKETS_PER_PIXEL));
    const [xmin, xmax] = this.view ?? [null, null];
    const tables = this.lines.map((line) => {
      let ys = smooth(line.series.ys(), alpha);
      if (line.scale) ys = ys.map((v) => v * line.scale);
      const [xs, out] = downsample(line.series.xs(axis), ys, buckets, xmin, xmax);
      // A log axis cannot show zero or negatives: leave a gap rather than break the scale.
      return [xs, log ? out.map((v) => (v > 0 ? v : null)) : out];
    });
    if (tables.length === 0) return [[]]; // a chart whose lines are still to come
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  empty() {
    return this.lines.every((line) => line.series.n === 0);
  }

  render() {
    if (!this.dirty || this.el.offsetParent === null) return;
    this.dirty = false;
    this.el.dataset.empty = String(this.empty());
    const { axis, log } = this.options;
    if (!this.plot || this.key !== `${axis}|${log}|${this.lines.length}`) {
      this.build();
      return;
    }
    this.plot.setData(this.data(), true);
  }
}
