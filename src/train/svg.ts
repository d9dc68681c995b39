/**
 * A small SVG line chart for the comparison reports: lines with optional shaded bands (the spread
 * over seeds), axes with round tick values, a legend. Written by hand because a report needs only
 * this one chart type and a charting dependency would bring a DOM or a canvas with it.
 */

export interface Series {
  name: string;
  /** Points sorted by x. */
  points: readonly (readonly [number, number])[];
  /** Optional band around the line: [x, low, high]. */
  band?: readonly (readonly [number, number, number])[];
  color?: string;
  dashed?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly Series[];
  width?: number;
  height?: number;
  /** Fixed y range (e.g. [0, 1] for rewards); otherwise from the data. */
  yRange?: readonly [number, number];
  /** Only whole-number x ticks (e.g. training steps). */
  integerX?: boolean;
}

export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#9467bd",
  "#ff7f0e",
  "#8c564b",
  "#17becf",
  "#7f7f7f",
];

function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5, integer = false): number[] {
  if (!(hi > lo)) return [lo];
  const raw = integer ? Math.max(1, (hi - lo) / count) : (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const steps = integer && mag <= 1 ? [1, 2, 3, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = (steps.find((m) => m * mag >= raw) ?? 10) * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    out.push(Number(v.toPrecision(12)));
  return out;
}

function fmtTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1000 || a < 0.01) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

export function lineChart(o: ChartOptions): string {
  const W = o.width ?? 640;
  const H = o.height ?? 360;
  const m = { left: 60, right: 20, top: 36, bottom: 48 };
  const legendH = 18 * Math.ceil(o.series.length / 3);
  const plotW = W - m.left - m.right;
  const plotH = H - m.top - m.bottom - legendH;
  const xs = o.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = o.series.flatMap((s) => [
    ...s.points.map((p) => p[1]),
    ...(s.band ?? []).flatMap((b) => [b[1], b[2]]),
  ]);
  let x0 = xs.length ? Math.min(...xs) : 0;
  let x1 = xs.length ? Math.max(...xs) : 1;
  if (x1 === x0) x1 = x0 + 1;
  let [y0, y1] = o.yRange ?? [ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 1];
  if (y1 === y0) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const xTicks = niceTicks(x0, x1, 5, o.integerX);
  const yTicks = niceTicks(y0, y1);
  x0 = Math.min(x0, xTicks[0] ?? x0);
  x1 = Math.max(x1, xTicks[xTicks.length - 1] ?? x1);
  const X = (v: number): number => m.left + ((v - x0) / (x1 - x0)) * plotW;
  const Y = (v: number): number => m.top + plotH - ((v - y0) / (y1 - y0)) * plotH;
  const f = (v: number): string => v.toFixed(1);

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${esc(o.title)}</text>`,
  );
  for (const t of yTicks) {
    if (t < y0 - 1e-12 || t > y1 + 1e-12) continue;
    parts.push(
      `<line x1="${m.left}" x2="${m.left + plotW}" y1="${f(Y(t))}" y2="${f(Y(t))}" stroke="#e5e5e5"/>`,
      `<text x="${m.left - 6}" y="${f(Y(t) + 4)}" text-anchor="end">${fmtTick(t)}</text>`,
    );
  }
  for (const t of xTicks)
    parts.push(
      `<line x1="${f(X(t))}" x2="${f(X(t))}" y1="${m.top + plotH}" y2="${m.top + plotH + 4}" stroke="#333"/>`,
      `<text x="${f(X(t))}" y="${m.top + plotH + 18}" text-anchor="middle">${fmtTick(t)}</text>`,
    );
  parts.push(
    `<rect x="${m.left}" y="${m.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#333"/>`,
    `<text x="${m.left + plotW / 2}" y="${m.top + plotH + 36}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(16 ${m.top + plotH / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  );
  o.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length]!;
    if (s.band && s.band.length > 1) {
      const upper = s.band.map((b) => `${f(X(b[0]))},${f(Y(b[2]))}`);
      const lower = [...s.band].reverse().map((b) => `${f(X(b[0]))},${f(Y(b[1]))}`);
      parts.push(
        `<polygon points="${[...upper, ...lower].join(" ")}" fill="${color}" fill-opacity="0.15" stroke="none"/>`,
      );
    }
    if (s.points.length > 0) {
      const d = s.points.map((p, k) => `${k ? "L" : "M"}${f(X(p[0]))},${f(Y(p[1]))}`).join(" ");
      parts.push(
        `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      );
      for (const p of s.points)
        parts.push(`<circle cx="${f(X(p[0]))}" cy="${f(Y(p[1]))}" r="2.5" fill="${color}"/>`);
    }
    const lx = m.left + (i % 3) * (plotW / 3);
    const ly = H - legendH + 14 * Math.floor(i / 3) + 4;
    parts.push(
      `<line x1="${f(lx)}" x2="${f(lx + 22)}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      `<text x="${f(lx + 28)}" y="${ly + 4}">${esc(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
