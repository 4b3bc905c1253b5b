// How numbers, sizes, durations and times read on the dashboard.

export const DASH = "—";

export function num(value, digits = 4) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function int(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return Math.round(value).toLocaleString("en-US");
}

export function pct(value, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return `${value.toFixed(digits)}%`;
}

// EM/ECE arrive as fractions (0..1); shown as percentages.
export function frac(value, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return pct(value * 100, digits);
}

export function bytes(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = value;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

export function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return `${value.toFixed(1)} s`;
  const s = Math.round(value);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

export function clock(date) {
  if (!date || Number.isNaN(date.getTime())) return DASH;
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function ago(date, now = Date.now()) {
  if (!date) return DASH;
  return `${seconds(Math.max(0, (now - date.getTime()) / 1000))} ago`;
}
