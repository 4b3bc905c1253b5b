// Growable typed-array series, EMA smoothing and min/max bucket downsampling for the charts.
//
// Raw points stay in Float64Arrays (x by step, x by time, y) so 100k points cost ~2.4 MB and
// no per-point objects; a chart only ever draws about two points per pixel column.

export class Series {
  // onRewind: what a point for an earlier step means. "truncate" (training metrics): the run
  // went back (a resume from an earlier checkpoint, a new run from step 0), so the points past
  // it are history that no longer leads anywhere and are dropped. "drop" (evaluations, which
  // may finish out of order): the late point is ignored.
  constructor({ capacity = 1024, onRewind = "truncate" } = {}) {
    this.onRewind = onRewind;
    this.n = 0;
    this.step = new Float64Array(capacity);
    this.time = new Float64Array(capacity); // unix seconds, what uPlot's time axis wants
    this.y = new Float64Array(capacity);
  }

  push(step, time, y) {
    if (!Number.isFinite(y)) return;
    // x must never go backwards: the bucketing below (and uPlot) rely on it.
    if (this.n > 0 && step < this.step[this.n - 1]) {
      if (this.onRewind === "drop") return;
      this.n = lowerBound(this.step.subarray(0, this.n), step);
    }
    if (this.n === this.y.length) this.grow();
    this.step[this.n] = step;
    this.time[this.n] = time;
    this.y[this.n] = y;
    this.n += 1;
  }

  grow() {
    const cap = this.y.length * 2;
    for (const key of ["step", "time", "y"]) {
      const next = new Float64Array(cap);
      next.set(this[key]);
      this[key] = next;
    }
  }

  // Replace the points with step in [xmin, xmax] by `other`'s (finer history for a zoomed
  // range); `other`'s steps must lie in that range, ascending.
  replaceRange(xmin, xmax, other) {
    const steps = this.step.subarray(0, this.n);
    const lo = lowerBound(steps, xmin);
    let hi = lowerBound(steps, xmax);
    while (hi < this.n && this.step[hi] <= xmax) hi += 1;
    const n = lo + other.n + (this.n - hi);
    const out = {};
    for (const key of ["step", "time", "y"]) {
      const next = new Float64Array(Math.max(n, 16));
      next.set(this[key].subarray(0, lo));
      next.set(other[key].subarray(0, other.n), lo);
      next.set(this[key].subarray(hi, this.n), lo + other.n);
      out[key] = next;
    }
    Object.assign(this, out);
    this.n = n;
  }

  xs(axis) {
    return (axis === "time" ? this.time : this.step).subarray(0, this.n);
  }

  ys() {
    return this.y.subarray(0, this.n);
  }
}

// Exponential moving average; alpha 0 = raw. A fresh array: the raw values stay untouched.
export function smooth(ys, alpha) {
  if (alpha <= 0) return ys;
  const out = new Float64Array(ys.length);
  let acc = ys.length ? ys[0] : 0;
  for (let i = 0; i < ys.length; i++) {
    acc = alpha * acc + (1 - alpha) * ys[i];
    out[i] = acc;
  }
  return out;
}

// First index with xs[i] >= x (xs ascending).
function lowerBound(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Keep each bucket's minimum and maximum (in x order), so spikes survive downsampling, with
// at most `buckets` buckets over [xmin, xmax] (null = everything). Returns plain arrays.
export function downsample(xs, ys, buckets, xmin = null, xmax = null) {
  const start = xmin === null ? 0 : Math.max(0, lowerBound(xs, xmin) - 1);
  const end = xmax === null ? xs.length : Math.min(xs.length, lowerBound(xs, xmax) + 1);
  const count = end - start;
  if (count <= buckets * 2) {
    return [Array.from(xs.subarray(start, end)), Array.from(ys.subarray(start, end))];
  }
  const outX = [];
  const outY = [];
  const per = count / buckets;
  for (let b = 0; b < buckets; b++) {
    const from = start + Math.floor(b * per);
    const to = Math.min(end, start + Math.floor((b + 1) * per));
    if (from >= to) continue;
    let iMin = from;
    let iMax = from;
    for (let i = from + 1; i < to; i++) {
      if (ys[i] < ys[iMin]) iMin = i;
      if (ys[i] > ys[iMax]) iMax = i;
    }
    const first = Math.min(iMin, iMax);
    const second = Math.max(iMin, iMax);
    outX.push(xs[first]);
    outY.push(ys[first]);
    if (second !== first) {
      outX.push(xs[second]);
      outY.push(ys[second]);
    }
  }
  return [outX, outY];
}
