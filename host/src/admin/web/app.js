// The web view of one LogStream host: polls /status and renders it.
// Everything taken from /status goes into the page as text (textContent,
// attribute values), never as markup; the server's Content-Security-Policy
// allows only this script and the style sheet. No libraries.
"use strict";

const POLL_MS = 1000;
// The chart's window, and the records/s history kept for it.
const WINDOW_MS = 5 * 60 * 1000;
// A rate over less of the host's clock than this is noise: it waits for more.
const MIN_SAMPLE_MS = 500;
const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#9c36b5", "#c2255c", "#0b7285", "#e67700", "#5f3dc4"];
const SVG = "http://www.w3.org/2000/svg";
// A host may run hundreds of units: the chart draws the busiest, the
// takeover table lists the newest.
const CHARTED_UNITS = 8;
const LISTED_TAKEOVERS = 20;

// Per unit: [{t0, t, rate}] (the rate from t0 to t, the host's clock), and
// its last (t, records_in).
const history = new Map();
const last = new Map();
// The host's clock at the first report this page saw.
let firstSeen = null;
// The chart spans at least this much, and at most WINDOW_MS.
const MIN_SPAN_MS = 10 * 1000;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const cell of cells) {
    const td = el("td", cell === null || cell === undefined ? "–" : cell);
    tr.append(td);
  }
  return tr;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const td = el("td", empty, { colspan: columns });
    tbody.append(el("tr", null, { class: "empty" }));
    tbody.lastChild.append(td);
  }
}

const clock = (ms) => new Date(ms).toLocaleTimeString();
const ms = (v) => (v === null || v === undefined ? null : v.toFixed(1) + " ms");
function bytes(n) {
  if (n === null || n === undefined) return null;
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}
function ago(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

// Record each unit's records/s since the previous report.
function sample(report) {
  const now = report.now_unix_ms;
  if (firstSeen === null) firstSeen = now;
  for (const unit of report.units) {
    const prev = last.get(unit.name);
    if (prev && unit.records_in >= prev.n && now - prev.t < MIN_SAMPLE_MS) continue;
    last.set(unit.name, { t: now, n: unit.records_in });
    if (!prev || unit.records_in < prev.n) continue;
    // Records count only while leading: a takeover within the interval
    // starts it.
    const since = unit.leader_since_unix_ms;
    const t0 = since && since > prev.t && since < now ? since : prev.t;
    const rate = ((unit.records_in - prev.n) * 1000) / (now - t0);
    if (!history.has(unit.name)) history.set(unit.name, []);
    // The rate held over the whole interval: drawn as a step over it.
    if (t0 > prev.t) history.get(unit.name).push({ t0: prev.t, t: t0, rate: 0 });
    history.get(unit.name).push({ t0, t: now, rate });
  }
  for (const [name, points] of history) {
    while (points.length && points[0].t0 < now - WINDOW_MS) points.shift();
    if (points.length === 0) history.delete(name);
  }
}

function rateOf(name) {
  const points = history.get(name);
  return points && points.length ? points[points.length - 1].rate : null;
}

function renderChart(report) {
  const width = 800, height = 220, left = 50, right = 130, top = 10, bottom = 24;
  // From the page's first report (or a takeover before it) to now: a page
  // just opened uses the whole width.
  const now = report.now_unix_ms;
  let start = firstSeen;
  for (const unit of report.units) for (const t of unit.takeovers) start = Math.min(start, t.at_unix_ms);
  const from = Math.max(now - WINDOW_MS, Math.min(start, now - MIN_SPAN_MS));
  const x = (t) => left + ((t - from) / (now - from)) * (width - left - right);
  const charted = [...history.keys()]
    .sort((a, b) => (rateOf(b) ?? 0) - (rateOf(a) ?? 0) || a.localeCompare(b))
    .slice(0, CHARTED_UNITS)
    .sort();
  let max = 1;
  for (const name of charted) for (const p of history.get(name)) max = Math.max(max, p.rate);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "records per second per unit" });
  chart.append(svg("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), stroke: "#c5cad3" }));
  chart.append(svg("text", { x: left - 6, y: y(max) + 4, "text-anchor": "end" }, Math.round(max)));
  chart.append(svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"));
  chart.append(svg("text", { x: left, y: height - 6 }, clock(from)));
  chart.append(svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, clock(now)));
  // This host's takeovers in the window, one mark per second (units often
  // fail over together), labelled left of the line in the right half.
  const marks = new Map();
  for (const unit of report.units) {
    for (const takeover of unit.takeovers) {
      if (takeover.at_unix_ms < from) continue;
      const second = Math.floor(takeover.at_unix_ms / 1000);
      if (!marks.has(second)) marks.set(second, []);
      marks.get(second).push([unit.name, takeover]);
    }
  }
  [...marks.values()].forEach((taken, i) => {
    const at = x(Math.min(...taken.map(([, t]) => t.at_unix_ms)));
    const mark = svg("g", { class: "takeover-mark" });
    mark.append(svg("line", { x1: at, y1: top, x2: at, y2: y(0), stroke: "#b3261e", "stroke-dasharray": "4 3" }));
    const flip = at > (left + width - right) / 2;
    const label = taken.length === 1
      ? `takeover ${taken[0][0]} epoch ${taken[0][1].epoch}`
      : `takeover of ${taken.length} units`;
    mark.append(svg("text", { x: flip ? at - 4 : at + 4, y: top + 10 + (i % 12) * 12,
      "text-anchor": flip ? "end" : "start" }, label));
    chart.append(mark);
  });
  if (history.size > charted.length) {
    chart.append(svg("text", { x: width - right + 8, y: height - 6 }, `busiest ${charted.length} of ${history.size}`));
  }
  charted.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const points = history.get(name)
      .flatMap((p) => [p.t0, p.t].map((t) => `${x(Math.max(t, from)).toFixed(1)},${y(p.rate).toFixed(1)}`));
    chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    chart.append(svg("text", { x: width - right + 8, y: top + 12 + i * 14, fill: color }, name));
  });
  document.getElementById("chart").replaceChildren(chart);
}

function renderUnits(report) {
  const rows = report.units.map((u) => {
    const lag = u.role === "leader" && u.input_high_watermark !== null && u.next_offset !== null
      ? Math.max(0, u.input_high_watermark - u.next_offset) : null;
    const rate = rateOf(u.name);
    const cp = u.last_checkpoint;
    const standby = u.standby ? u.standby + (u.standby_bytes ? ` (${bytes(u.standby_bytes)})` : "") : null;
    return row([
      u.name,
      u.role === "leader" ? "leader (this host)" : u.role,
      u.epoch,
      u.leader_since_unix_ms ? clock(u.leader_since_unix_ms) : null,
      u.next_offset,
      lag,
      rate === null ? null : rate.toFixed(1),
      cp ? `generation ${cp.generation}` : null,
      cp ? ago(cp.age_seconds) : null,
      cp ? bytes(cp.size_bytes) : null,
      standby,
      u.failures + (u.last_failure ? `: ${u.last_failure.reason}` : ""),
    ], {
      class: u.role, "data-unit": u.name, "data-role": u.role, "data-epoch": u.epoch ?? "",
      "data-records-per-second": rate ?? "",
    });
  });
  fill(document.querySelector("#units tbody"), rows, "This host runs no unit.", 12);
  const failed = document.getElementById("failed-processors");
  const reasons = (report.failed_processors || []).map((f) => `${f.processor}: ${f.reason}`);
  failed.hidden = reasons.length === 0;
  failed.textContent = "Processors this host could not start: " + reasons.join("; ");
  const c = report.capacity;
  document.getElementById("capacity").textContent = c
    ? `Capacity: ${c.running} of ${c.max_units} units running; ${c.warm_standbys} warm standbys using ` +
      `${c.standby_memory_used_mib} of ${c.standby_memory_mib} MiB` +
      (c.waiting.length ? `; waiting for room: ${c.waiting.join(", ")}` : "")
    : "";
}

function renderTakeovers(report) {
  const all = [];
  for (const u of report.units) for (const t of u.takeovers) all.push([u, t]);
  all.sort((a, b) => b[1].at_unix_ms - a[1].at_unix_ms);
  const rows = all.slice(0, LISTED_TAKEOVERS).map(([u, t]) => row([
    u.name, t.epoch, clock(t.at_unix_ms),
    t.generation === null ? "none (empty state)" : `generation ${t.generation}`,
    t.warm_standby ? "warm" : "restored from the store",
    ms(t.restore_ms), ms(t.fence_and_seek_ms), ms(t.total_ms), ms(t.first_output_ms),
  ], { "data-takeover": u.name, "data-epoch": t.epoch }));
  fill(document.querySelector("#takeovers tbody"), rows, "No takeover by this host.", 9);
  document.getElementById("takeovers-shown").textContent = all.length > rows.length
    ? `The ${rows.length} newest of ${all.length} listed in /status. ` : "";
}

function renderCorrupt(report) {
  const rows = [];
  for (const u of report.units) {
    for (const c of u.corrupt_checkpoints) {
      const tr = row([u.name, c.generation, c.fault, c.reason], { "data-corrupt": u.name });
      tr.lastChild.className = "text";
      rows.push(tr);
    }
  }
  fill(document.querySelector("#corrupt tbody"), rows, "None found by this host.", 4);
}

function render(report) {
  document.getElementById("host-id").textContent = report.host_id;
  document.title = `LogStream host ${report.host_id}`;
  const summary = document.getElementById("summary");
  const state = el("span", report.ready ? "ready" : "not ready: " + report.not_ready,
    { class: report.ready ? "ready" : "not-ready" });
  summary.replaceChildren(
    `Incarnation ${report.incarnation} · `, state,
    ` · ${report.units.filter((u) => u.role === "leader").length} of ${report.units.length} units led here` +
    ` · as of ${clock(report.now_unix_ms)} (host clock)`);
  renderChart(report);
  renderUnits(report);
  renderTakeovers(report);
  renderCorrupt(report);
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const report = await response.json();
    sample(report);
    render(report);
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot read /status (${e.message}): the host may be down; showing the last report.`;
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
