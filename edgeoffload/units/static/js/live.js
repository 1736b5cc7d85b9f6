// Live results page. Data from the server (camera names, labels, reasons) is untrusted: every
// piece of it reaches the DOM through textContent or canvas fillText, never through HTML parsing.
import { lineChart, stackedBarChart } from "./charts.js";

const COLORS = {
  edge: "#0f9488", cloud: "#5b5bd6", dropped: "#dc4c3e", error: "#9aa3b2", p50: "#0f766e", p95: "#f59e0b",
};
const POLL_MS = 2000;
const STREAM_RETRY_MS = 15000;

const tiles = new Map(); // camera name -> tile
let lastSnapshot = null;
let pollTimer = null;

// ---- formatting -------------------------------------------------------------------------------
const dash = "–";
const fmt = {
  rate: (v) => (v === null || v === undefined ? dash : v < 10 ? v.toFixed(1) : Math.round(v).toString()),
  pct: (v) => {
    if (v === null || v === undefined) return dash;
    const p = v * 100;
    return `${p > 0 && p < 10 ? p.toFixed(1) : Math.round(p)}%`;
  },
  ms: (v) => (v === null || v === undefined ? dash : `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`),
  count: (v) => (v === null || v === undefined ? dash : Number(v).toLocaleString("en-US")),
};

// ---- DOM helpers (text only) --------------------------------------------------------------------
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node && node.textContent !== text) node.textContent = text;
}

function setPill(id, state, text) {
  const node = document.getElementById(id);
  node.dataset.state = state;
  node.textContent = text;
}

function fillList(id, pairs, emptyText) {
  const list = document.getElementById(id);
  const items = pairs.length ? pairs : [[emptyText, ""]];
  list.replaceChildren(...items.flatMap(([key, value]) => {
    const dt = el("dt", pairs.length ? "" : "muted", key);
    dt.title = key;
    return [dt, el("dd", "", value)];
  }));
}

function legend(id, entries) {
  document.getElementById(id).replaceChildren(...entries.map(([label, swatch]) => {
    const item = el("span", "legend-item");
    item.append(el("span", `swatch ${swatch}`), el("span", "", label));
    return item;
  }));
}

// ---- camera tiles ---------------------------------------------------------------------------------
const TILE_STATS = [
  ["fps", "Frames/s", (s) => fmt.rate(s.fps)],
  ["edge", "Edge", (s) => fmt.pct(s.edge_share)],
  ["drop", "Dropped", (s) => fmt.pct(s.drop_rate)],
  ["p50", "p50", (s) => fmt.ms(s.latency_p50_ms)],
  ["p95", "p95", (s) => fmt.ms(s.latency_p95_ms)],
  ["frames", "Frames", (s) => fmt.count(s.frames)],
];

function createTile(camera) {
  const root = el("article", "tile");
  root.dataset.camera = camera;
  const head = el("div", "tile-head");
  const name = el("div", "tile-name", camera);
  name.title = camera;
  const badge = el("span", "badge", "waiting");
  head.append(name, badge);
  const canvas = el("canvas", "tile-canvas");
  canvas.setAttribute("aria-label", "Latest detections");
  const stats = el("div", "tile-stats");
  const values = {};
  for (const [key, label] of TILE_STATS) {
    const cell = el("div", "stat");
    values[key] = el("div", "stat-value", dash);
    values[key].dataset.stat = key;
    cell.append(el("div", "stat-label", label), values[key]);
    stats.append(cell);
  }
  const foot = el("div", "tile-foot", "");
  root.append(head, canvas, stats, foot);
  const tile = {
    camera, root, badge, canvas, values, foot, last: null, extent: [640, 480], dirty: true,
    preview: null, // { meta, image }: the latest preview frame shown
    previewAsked: "", // key of the preview being (or last) loaded
  };
  tiles.set(camera, tile);
  placeTile(tile);
  return tile;
}

function placeTile(tile) {
  const container = document.getElementById("tiles");
  document.getElementById("no-cameras")?.remove();
  const after = [...tiles.keys()].sort().find((name) => name > tile.camera);
  container.insertBefore(tile.root, after ? tiles.get(after).root : null);
}

function tileFor(camera) {
  return tiles.get(camera) || createTile(camera);
}

function showRecord(tile, record) {
  const previous = tile.last;
  if (previous && (previous.received_at > record.received_at // an older record arrived late
      || (previous.received_at === record.received_at && previous.frame_id === record.frame_id))) return;
  tile.last = record;
  const outcome = record.status === "ok" ? record.site : record.status;
  tile.badge.className = `badge ${outcome}`;
  tile.badge.textContent = outcome;
  const parts = [`frame #${record.frame_id}`];
  if (record.policy) parts.push(record.policy);
  if (record.model) parts.push(record.model);
  parts.push(`${record.detections.length} detection${record.detections.length === 1 ? "" : "s"}`);
  if (record.reason) parts.push(record.reason);
  tile.foot.textContent = parts.join(" · ");
  tile.foot.title = tile.foot.textContent;
  tile.dirty = true;
  scheduleDraw();
}

function showStats(tile, stream) {
  for (const [key, , format] of TILE_STATS) {
    const text = format(stream.stats);
    if (tile.values[key].textContent !== text) tile.values[key].textContent = text;
  }
  if (stream.extent[0] !== tile.extent[0] || stream.extent[1] !== tile.extent[1]) {
    tile.extent = stream.extent;
    tile.dirty = true;
  }
  showRecord(tile, stream.last);
  if (stream.preview) loadPreview(tile, stream.preview);
}

// A preview is a same-origin JPEG (img-src 'self'), drawn onto the tile's canvas with its boxes.
function loadPreview(tile, meta) {
  const key = `${meta.frame_id}/${meta.bytes}`;
  if (tile.previewAsked === key) return;
  tile.previewAsked = key;
  const image = new Image();
  image.addEventListener("load", () => {
    if (tile.previewAsked !== key) return; // a newer one was asked for meanwhile
    tile.preview = { meta, image };
    tile.dirty = true;
    scheduleDraw();
  });
  image.addEventListener("error", () => { // replaced by a newer one on the server: the next snapshot has it
    if (tile.previewAsked === key) tile.previewAsked = "";
  });
  const query = new URLSearchParams({ camera: tile.camera, frame_id: String(meta.frame_id) });
  image.src = `/api/preview?${query}`;
}

function drawBoxes(ctx, detections, color, scaleX, scaleY) {
  for (const detection of detections) {
    const [x, y, w, h] = detection.box;
    const bx = x * scaleX;
    const by = y * scaleY;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.strokeRect(bx, by, w * scaleX, h * scaleY);
    // Probabilities as percentages; detectors whose score is not one (Haar's stage weight) as is.
    const score = detection.score <= 1 ? `${Math.round(detection.score * 100)}%` : detection.score.toFixed(1);
    const label = `${detection.label} ${score}`;
    const labelW = ctx.measureText(label).width + 10;
    const labelY = by >= 18 ? by - 18 : by;
    ctx.fillStyle = color;
    ctx.fillRect(bx - 1, labelY, labelW, 18);
    ctx.fillStyle = "#ffffff";
    ctx.textAlign = "left";
    ctx.fillText(label, bx + 4, labelY + 9);
  }
}

function sizeCanvas(canvas, aspect) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, canvas.clientWidth);
  const height = Math.round(width * aspect);
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  ctx.textBaseline = "middle";
  return { ctx, width, height };
}

// The latest preview: the frame as the camera saw it (shrunk), its boxes, site and replica.
function drawPreview(tile) {
  const { meta, image } = tile.preview;
  const { ctx, width, height } = sizeCanvas(tile.canvas, meta.height / meta.width);
  ctx.drawImage(image, 0, 0, width, height);
  drawBoxes(ctx, meta.detections, COLORS[meta.site] || COLORS.error, width / meta.width, height / meta.height);
  const badge = [meta.site, meta.replica].filter(Boolean).join(" · ");
  if (badge) {
    const badgeW = ctx.measureText(badge).width + 12;
    ctx.fillStyle = COLORS[meta.site] || COLORS.error;
    ctx.fillRect(6, height - 26, badgeW, 20);
    ctx.fillStyle = "#ffffff";
    ctx.textAlign = "left";
    ctx.fillText(badge, 12, height - 16);
  }
  ctx.textAlign = "right";
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  ctx.fillText(`frame #${meta.frame_id} · ${meta.detections.length ? "" : "no detections · "}${meta.width}×${meta.height}`,
    width - 8, height - 16);
}

// Without previews (turned off, or none yet) boxes are drawn on a neutral frame: records carry
// box coordinates, never image pixels.
function drawTile(tile) {
  if (tile.preview) {
    drawPreview(tile);
    return;
  }
  const canvas = tile.canvas;
  const [frameW, frameH] = tile.extent;
  const aspect = Math.min(1, Math.max(9 / 21, frameH / frameW));
  const { ctx, width, height } = sizeCanvas(canvas, aspect);
  ctx.fillStyle = "#1b2230";
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = "rgba(255,255,255,0.05)";
  ctx.lineWidth = 1;
  for (let i = 1; i < 4; i += 1) {
    ctx.beginPath();
    ctx.moveTo(Math.round((width * i) / 4) + 0.5, 0);
    ctx.lineTo(Math.round((width * i) / 4) + 0.5, height);
    ctx.moveTo(0, Math.round((height * i) / 4) + 0.5);
    ctx.lineTo(width, Math.round((height * i) / 4) + 0.5);
    ctx.stroke();
  }
  const record = tile.last;
  if (!record) return;
  drawBoxes(ctx, record.detections, COLORS[record.site] || COLORS.error, width / frameW, height / frameH);
  ctx.textAlign = "center";
  ctx.fillStyle = "rgba(255,255,255,0.45)";
  if (record.status === "dropped") {
    ctx.fillText(`dropped${record.reason ? `: ${record.reason}` : ""}`, width / 2, height / 2);
  } else if (!record.detections.length) {
    ctx.fillText("no detections", width / 2, height / 2);
  }
  ctx.textAlign = "right";
  ctx.fillStyle = "rgba(255,255,255,0.35)";
  ctx.fillText(`${Math.round(frameW)}×${Math.round(frameH)} · boxes only`, width - 8, height - 10);
}

let drawScheduled = false;
function scheduleDraw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    for (const tile of tiles.values()) {
      if (tile.dirty) {
        tile.dirty = false;
        drawTile(tile);
      }
    }
  });
}

// ---- summary, charts, side panel --------------------------------------------------------------------
function showSummary(summary) {
  const totals = summary.totals;
  setText("kpi-fps", fmt.rate(totals.fps));
  setText("kpi-frames", `${fmt.count(totals.frames)} frames`);
  setText("kpi-edge", fmt.pct(totals.edge_share));
  setText("kpi-cloud", fmt.pct(totals.cloud_share));
  // cascade policies: how many frames went on to the cloud after the edge had answered
  setText("kpi-escalated", totals.escalation_share ? `of routed; escalated after the edge ${fmt.pct(totals.escalation_share)}`
    : "of routed frames");
  setText("kpi-drop", fmt.pct(totals.drop_rate));
  setText("kpi-errors", `errors ${fmt.pct(totals.error_rate)}`);
  setText("kpi-p50", fmt.ms(totals.latency_p50_ms));
  setText("kpi-p95", fmt.ms(totals.latency_p95_ms));
  const win = summary.window;
  setText("window-note", `Frames/s over the last ${win.rate_seconds} s; shares, drop rate and latency over the last `
    + `${win.history_per_camera} frames of each camera; charts show up to the last ${win.timeline_seconds} s.`);
  setText("camera-count", `${summary.cameras} of at most ${win.max_cameras}`);
  fillList("replicas", Object.entries(summary.replicas).map(([unit, n]) => [unit, String(n)]),
    "No autoscaler status yet");
  fillList("units", Object.entries(summary.units).map(([unit, status]) => [unit, status.state || "reporting"]),
    "No unit status yet");
  const ingest = summary.ingest;
  fillList("ingest", [
    ["Records received", fmt.count(ingest.records)],
    ["Malformed (ignored)", fmt.count(ingest.malformed)],
    ["Cameras evicted", fmt.count(ingest.evicted_cameras)],
    ["Live viewers", `${summary.event_streams.clients} / ${summary.event_streams.max_clients}`],
  ], "");
  const mqtt = summary.mqtt;
  if (!mqtt.enabled) setPill("mqtt-state", "warn", "MQTT off");
  else if (mqtt.connected) setPill("mqtt-state", "ok", "MQTT connected");
  else setPill("mqtt-state", "bad", "MQTT disconnected");
  drawCharts(summary.timeline);
}

const MIN_CHART_SECONDS = 30;

// Charts start at the first second with data (at least MIN_CHART_SECONDS back), so a
// freshly started testbed is not squeezed into the right edge of a two-minute axis.
function visibleSeconds(timeline) {
  const first = timeline.findIndex((s) => s.edge + s.cloud + s.dropped + s.error > 0);
  const start = first < 0 ? 0 : Math.max(0, Math.min(first, timeline.length - MIN_CHART_SECONDS));
  return timeline.slice(start);
}

// The autoscaler reports replicas per Deployment (edge-inference, cloud-inference); null if none.
function scaledReplicas(second, site) {
  const entry = Object.entries(second.scaled || {}).find(([name]) => name.startsWith(site));
  return entry ? entry[1] : null;
}

function drawCharts(fullTimeline) {
  const timeline = visibleSeconds(fullTimeline);
  lineChart(document.getElementById("latency-chart"), [
    { values: timeline.map((s) => s.p50_ms), color: COLORS.p50 },
    { values: timeline.map((s) => s.p95_ms), color: COLORS.p95 },
  ]);
  lineChart(document.getElementById("replica-chart"), [
    { values: timeline.map((s) => s.serving.edge), color: COLORS.edge },
    { values: timeline.map((s) => s.serving.cloud), color: COLORS.cloud },
    { values: timeline.map((s) => scaledReplicas(s, "edge")), color: COLORS.edge, dash: [5, 4] },
    { values: timeline.map((s) => scaledReplicas(s, "cloud")), color: COLORS.cloud, dash: [5, 4] },
  ]);
  stackedBarChart(document.getElementById("decision-chart"), [
    { values: timeline.map((s) => s.edge), color: COLORS.edge },
    { values: timeline.map((s) => s.cloud), color: COLORS.cloud },
    { values: timeline.map((s) => s.dropped), color: COLORS.dropped },
    { values: timeline.map((s) => s.error), color: COLORS.error },
  ]);
}

function showSnapshot(snapshot) {
  lastSnapshot = snapshot;
  showSummary(snapshot.summary);
  const present = new Set();
  for (const stream of snapshot.streams) {
    present.add(stream.camera);
    showStats(tileFor(stream.camera), stream);
  }
  for (const [camera, tile] of tiles) {
    if (!present.has(camera)) { // evicted on the server
      tile.root.remove();
      tiles.delete(camera);
    }
  }
  scheduleDraw();
}

// ---- transport: Server-Sent Events, polling while no stream slot is free ------------------------------
function connectStream() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    stopPolling();
    setPill("stream-state", "ok", "Live");
  });
  source.addEventListener("snapshot", (event) => showSnapshot(JSON.parse(event.data)));
  source.addEventListener("record", (event) => {
    const record = JSON.parse(event.data);
    showRecord(tileFor(record.camera), record);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) { // refused (e.g. 503: all stream slots in use)
      setPill("stream-state", "warn", "Polling");
      startPolling();
      setTimeout(connectStream, STREAM_RETRY_MS);
    } else {
      setPill("stream-state", "warn", "Reconnecting");
    }
  });
}

async function poll() {
  try {
    const [summary, streams] = await Promise.all([
      fetch("/api/summary").then((r) => r.json()),
      fetch("/api/streams").then((r) => r.json()),
    ]);
    showSnapshot({ summary, streams: streams.cameras });
  } catch (error) {
    setPill("stream-state", "bad", "Server unreachable");
  }
}

function startPolling() {
  if (pollTimer === null) {
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  }
}

function stopPolling() {
  if (pollTimer !== null) {
    clearInterval(pollTimer);
    pollTimer = null;
  }
}

legend("latency-legend", [["p50", "p50"], ["p95", "p95"]]);
legend("decision-legend", [["edge", "edge"], ["cloud", "cloud"], ["dropped", "drop"], ["error", "error"]]);
legend("replica-legend", [["edge", "edge"], ["cloud", "cloud"], ["autoscaler", "scaled"]]);
window.addEventListener("resize", () => {
  for (const tile of tiles.values()) tile.dirty = true;
  scheduleDraw();
  if (lastSnapshot) drawCharts(lastSnapshot.summary.timeline);
});
connectStream();
