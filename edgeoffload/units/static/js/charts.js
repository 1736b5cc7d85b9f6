// Small hand-written canvas charts for the live page (no library, works offline).
// Both charts take one value per second, oldest first, and share the same axes code.

const PAD = { left: 44, right: 10, top: 10, bottom: 22 };
const GRID = "#e9edf3";
const AXIS_TEXT = "#7a8494";
const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

/** Size the canvas backing store to its CSS box (sharp on high-DPI screens); returns a ready context. */
export function prepareCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, canvas.clientWidth);
  const height = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

const TICKS = 4;

/** A round tick step (1, 2, 2.5 or 5 times a power of ten; no 2.5 below 10) for `TICKS` ticks up to `peak`. */
export function niceStep(peak) {
  const raw = peak / TICKS;
  if (!(raw > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / power;
  const steps = power >= 10 ? [1, 2, 2.5, 5, 10] : [1, 2, 5, 10];
  return steps.find((step) => scaled <= step) * power;
}

function formatTick(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(value % 1000 === 0 ? 0 : 1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function drawAxes(ctx, width, height, yMax, count) {
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  ctx.font = FONT;
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let i = 0; i <= TICKS; i += 1) {
    const value = (yMax * i) / TICKS;
    const y = Math.round(PAD.top + plotH - (plotH * i) / TICKS) + 0.5;
    ctx.strokeStyle = GRID;
    ctx.beginPath();
    ctx.moveTo(PAD.left, y);
    ctx.lineTo(width - PAD.right, y);
    ctx.stroke();
    ctx.fillStyle = AXIS_TEXT;
    ctx.fillText(formatTick(value), PAD.left - 6, y);
  }
  ctx.textBaseline = "top";
  const marks = [[0, `-${count} s`], [0.5, `-${Math.round(count / 2)} s`], [1, "now"]];
  for (const [fraction, label] of marks) {
    ctx.textAlign = fraction === 0 ? "left" : fraction === 1 ? "right" : "center";
    ctx.fillText(label, PAD.left + plotW * fraction, height - PAD.bottom + 6);
  }
  return { plotW, plotH };
}

/** Lines (gaps where a value is null; `dash` a canvas dash pattern), e.g. latency p50 and p95 per second. */
export function lineChart(canvas, series) {
  const { ctx, width, height } = prepareCanvas(canvas);
  const count = Math.max(1, ...series.map((s) => s.values.length));
  const peak = Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null)));
  const yMax = niceStep(peak * 1.1) * TICKS;
  const { plotW, plotH } = drawAxes(ctx, width, height, yMax, count);
  const x = (i) => PAD.left + (count === 1 ? plotW : (plotW * i) / (count - 1));
  const y = (v) => PAD.top + plotH - (plotH * v) / yMax;
  for (const { values, color, dash } of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.setLineDash(dash || []);
    ctx.beginPath();
    let drawing = false;
    values.forEach((value, i) => {
      if (value === null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(i), y(value)); else ctx.moveTo(x(i), y(value));
      drawing = true;
    });
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = color; // a second with no neighbours would be invisible as a line: mark it
    values.forEach((value, i) => {
      if (value !== null && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null) {
        ctx.beginPath();
        ctx.arc(x(i), y(value), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
  }
}

/** Stacked bars, one per second, e.g. frames decided edge / cloud / dropped. */
export function stackedBarChart(canvas, stacks) {
  const { ctx, width, height } = prepareCanvas(canvas);
  const count = Math.max(1, ...stacks.map((s) => s.values.length));
  const totals = Array.from({ length: count }, (_, i) => stacks.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const yMax = niceStep(Math.max(0, ...totals) * 1.1) * TICKS;
  const { plotW, plotH } = drawAxes(ctx, width, height, yMax, count);
  const slot = plotW / count;
  const barW = Math.max(1, slot * 0.78);
  for (let i = 0; i < count; i += 1) {
    let base = PAD.top + plotH;
    for (const { values, color } of stacks) {
      const value = values[i] || 0;
      if (value <= 0) continue;
      const h = (plotH * value) / yMax;
      ctx.fillStyle = color;
      ctx.fillRect(PAD.left + i * slot + (slot - barW) / 2, base - h, barW, h);
      base -= h;
    }
  }
}
