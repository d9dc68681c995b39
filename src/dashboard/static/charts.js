/* global window, performance */
// Training curves with uPlot (served from node_modules): one small chart per metric, several runs
// overlaid in their run colours, against step or wall-clock time, optionally as the mean of the runs
// that differ only by seed with a min–max band for the seed spread.
import uPlot from "/vendor/uplot.js";
import { h, fmtDuration } from "./dom.js";
import { CHARTS, CHART_KEYS } from "./chart-defs.js";

export { CHARTS, CHART_KEYS };

/** Running sum that skips gaps (a step without the key adds nothing and draws nothing). */
export function cumulate(values) {
  let acc = 0;
  return values.map((v) => {
    if (v === null || v === undefined) return null;
    acc += v;
    return acc;
  });
}

/** Axis numbers: short, and readable for the tiny values of early losses and KLs (1e-9). */
export function fmtTick(v) {
  if (v === 0 || !Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e6) return v.toExponential(1).replace(".0e", "e").replace("e-", "e−");
  return String(Number(v.toPrecision(3)));
}

/** Exponential moving average that skips gaps; alpha 0 returns the values unchanged. */
export function smooth(values, alpha) {
  if (!alpha) return values;
  let acc = null;
  return values.map((v) => {
    if (v === null || v === undefined) return null;
    acc = acc === null ? v : alpha * acc + (1 - alpha) * v;
    return acc;
  });
}

/**
 * The lines of one chart. `runs`: [{id, label, color, group}], `metrics`: Map id → metrics columns.
 * Each line: {label, color, dash, points: Map x → y, band?: "lo"|"hi"}.
 */
export function chartLines(chart, runs, metrics, opts) {
  const lines = [];
  const per = []; // [{run, key-series, xs, ys}]
  for (const run of runs) {
    const m = metrics.get(run.id);
    const cols = m?.[chart.kind];
    if (!cols) continue;
    for (const s of chart.series) {
      const col = cols.cols[s.key];
      if (!col || col.every((v) => v === null)) continue;
      const ys = smooth(chart.cumulative ? cumulate(col) : col, opts.smooth);
      per.push({ run, s, steps: cols.step, times: cols.time, ys });
    }
  }
  if (!opts.aggregate) {
    for (const p of per) {
      const xs = opts.x === "time" ? p.times : p.steps;
      const points = new Map();
      p.ys.forEach((y, i) => y !== null && points.set(xs[i], y));
      lines.push({ label: seriesLabel(p.run.label, p.s, chart), color: p.run.color, dash: p.s.dash, points });
    }
    return lines;
  }
  // Seed spread: runs of one group, per step: mean line and min/max band.
  const groups = new Map();
  for (const p of per) {
    const k = `${p.run.group}\u0000${p.s.key}`;
    if (!groups.has(k)) groups.set(k, { run: p.run, s: p.s, members: [] });
    groups.get(k).members.push(p);
  }
  for (const g of groups.values()) {
    const byStep = new Map();
    for (const p of g.members)
      p.ys.forEach((y, i) => {
        if (y === null) return;
        const step = p.steps[i];
        if (!byStep.has(step)) byStep.set(step, { ys: [], ts: [] });
        const e = byStep.get(step);
        e.ys.push(y);
        e.ts.push(p.times[i]);
      });
    const mean = new Map();
    const lo = new Map();
    const hi = new Map();
    for (const [step, e] of byStep) {
      const x = opts.x === "time" ? e.ts.reduce((a, b) => a + b, 0) / e.ts.length : step;
      mean.set(x, e.ys.reduce((a, b) => a + b, 0) / e.ys.length);
      lo.set(x, Math.min(...e.ys));
      hi.set(x, Math.max(...e.ys));
    }
    const label =
      g.members.length > 1 ? `${g.run.groupLabel} (${g.members.length} seeds)` : `${g.run.label} (1 seed)`;
    lines.push({ label: seriesLabel(label, g.s, chart), color: g.run.color, dash: g.s.dash, points: mean });
    if (g.members.length > 1) {
      lines.push({ label: "min", color: g.run.color, points: lo, band: "lo" });
      lines.push({ label: "max", color: g.run.color, points: hi, band: "hi" });
    }
  }
  return lines;
}

function seriesLabel(name, s, chart) {
  return chart.series.length > 1 ? `${name} · ${s.label}` : name;
}

/** Aligns lines on the union of their x values, as uPlot wants: [xs, ys1, ys2, …] with nulls. */
export function alignLines(lines) {
  const xset = new Set();
  for (const l of lines) for (const x of l.points.keys()) xset.add(x);
  const xs = [...xset].sort((a, b) => a - b);
  return [xs, ...lines.map((l) => xs.map((x) => (l.points.has(x) ? l.points.get(x) : null)))];
}

function withAlpha(color, alpha) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

const sync = uPlot.sync("erl-curves");

/** A chart card that can be updated in place when only the data changes. */
export class ChartCard {
  constructor(chart) {
    this.chart = chart;
    this.plot = null;
    this.signature = "";
    this.body = h("div", { class: "chart-body" });
    this.el = h(
      "div",
      { class: "card chart", dataset: { chart: chart.id } },
      h("h3", {}, chart.title),
      this.body,
    );
  }

  update(lines, opts) {
    const signature = JSON.stringify([lines.map((l) => [l.label, l.color, l.band ?? ""]), opts.x]);
    if (lines.length === 0 || lines.every((l) => l.points.size === 0)) {
      this.destroy();
      this.body.replaceChildren(h("div", { class: "empty" }, "no data for the selected runs"));
      return;
    }
    const data = alignLines(lines);
    if (this.plot && signature === this.signature) {
      this.plot.setData(data);
      return;
    }
    this.destroy();
    this.body.replaceChildren();
    this.signature = signature;
    const width = Math.max(260, this.el.clientWidth - 24 || 420);
    const series = [
      {
        label: opts.x === "time" ? "time" : "step",
        value: (_u, v) => (v === null ? "–" : opts.x === "time" ? fmtDuration(v) : String(v)),
      },
      ...lines.map((l) => ({
        label: l.label,
        stroke: l.band ? withAlpha(l.color, 0.25) : l.color,
        width: l.band ? 0.5 : 1.75,
        dash: l.dash,
        spanGaps: true,
        points: { show: false },
        show: true,
        value: (_u, v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(3)),
      })),
    ];
    const bands = [];
    lines.forEach((l, i) => {
      if (l.band === "hi" && lines[i - 1]?.band === "lo")
        bands.push({ series: [i + 1, i], fill: withAlpha(l.color, 0.15) });
    });
    this.plot = new uPlot(
      {
        width,
        height: 190,
        series,
        bands,
        scales: {
          x: { time: false },
          // Rates and rewards keep their 0–1 frame (a flat 0 line is then read as 0, not centred
          // in an arbitrary range); the range grows when the data leaves it.
          y: this.chart.range
            ? {
                range: (_u, lo, hi) => [
                  Math.min(this.chart.range[0], lo ?? 0),
                  Math.max(this.chart.range[1], hi ?? 1),
                ],
              }
            : {},
        },
        axes: [
          {
            values: (_u, ticks) => ticks.map((v) => (opts.x === "time" ? fmtDuration(v) : String(v))),
            size: 32,
          },
          { size: 62, values: (_u, ticks) => ticks.map(fmtTick) },
        ],
        cursor: { sync: { key: sync.key } },
        legend: { live: true },
      },
      data,
      this.body,
    );
    // Band edges are drawn but kept out of the legend to keep it short.
    this.body.querySelectorAll(".u-legend .u-series").forEach((row, idx) => {
      const l = lines[idx - 1];
      if (l?.band) row.style.display = "none";
    });
    if (!window.__erlChartsDrawn) {
      window.__erlChartsDrawn = true;
      performance.mark("erl-first-chart");
    }
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(260, this.el.clientWidth - 24), height: 190 });
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.signature = "";
  }
}

export function chartGrid(cards) {
  return h(
    "div",
    { class: "charts" },
    cards.map((c) => c.el),
  );
}
