// The curves view: metric charts of the selected runs, overlaid or as mean and seed spread.
// --- Curves
import { h, replace, getJson } from "./dom.js";
import { chartLines, ChartCard, chartGrid } from "./charts.js";
import { CHARTS, CHART_KEYS } from "./chart-defs.js";
import { state, $, go, stale } from "./state.js";

async function ensureMetrics(ids) {
  await Promise.all(
    ids.map(async (id) => {
      const have = state.metrics.get(id);
      const slice = await getJson("/api/run/metrics", {
        run: id,
        since: have ? have.next : 0,
        keys: CHART_KEYS.join(","),
      });
      if (!have) state.metrics.set(id, slice);
      else if (slice.from === have.next) {
        for (const kind of ["train", "eval"]) appendColumns(have[kind], slice[kind]);
        have.next = slice.next;
      } else
        state.metrics.set(id, await getJson("/api/run/metrics", { run: id, keys: CHART_KEYS.join(",") }));
    }),
  );
}

function appendColumns(into, add) {
  const n = into.step.length;
  const m = add.step.length;
  if (m === 0) return;
  into.step.push(...add.step);
  into.time.push(...add.time);
  for (const k of new Set([...Object.keys(into.cols), ...Object.keys(add.cols)])) {
    if (!into.cols[k]) into.cols[k] = new Array(n).fill(null);
    into.cols[k].push(...(add.cols[k] ?? new Array(m).fill(null)));
  }
}

export async function renderCurves(view, token) {
  const runs = state.runs.filter((r) => state.selected.has(r.id));
  if (!state.cards || !view.querySelector(".charts")) {
    state.cards = CHARTS.map((c) => new ChartCard(c));
    const toolbar = h(
      "div",
      { class: "toolbar" },
      h("span", { class: "label" }, "x axis"),
      segmented(
        [
          ["step", "step"],
          ["time", "wall-clock"],
        ],
        state.x,
        (v) => go({ x: v }),
      ),
      h(
        "label",
        { class: "check" },
        h("input", {
          type: "checkbox",
          id: "agg",
          checked: state.agg,
          onchange: (e) => go({ agg: e.target.checked }),
        }),
        " mean over seeds (band: min–max)",
      ),
      h(
        "label",
        { class: "check" },
        "smoothing ",
        h("input", {
          type: "range",
          min: "0",
          max: "0.95",
          step: "0.05",
          value: String(state.smooth),
          onchange: (e) => go({ smooth: Number(e.target.value) }),
        }),
      ),
      h("span", { class: "muted", id: "curve-note" }),
    );
    replace(view, toolbar, chartGrid(state.cards));
  } else {
    // Toolbar state may have changed through the hash.
    view
      .querySelectorAll(".seg button")
      .forEach((b) => b.classList.toggle("active", b.dataset.value === state.x));
  }
  if (runs.length === 0) {
    $("curve-note").textContent = "Tick runs in the sidebar to plot them.";
  }
  await ensureMetrics(runs.map((r) => r.id));
  if (stale(token)) return;
  const opts = { x: state.x, aggregate: state.agg, smooth: state.smooth };
  for (const card of state.cards) card.update(chartLines(card.chart, runs, state.metrics, opts), opts);
  const note = $("curve-note");
  if (note && runs.length) note.textContent = `${runs.length} run${runs.length > 1 ? "s" : ""}`;
}

function segmented(options, value, onPick) {
  return h(
    "span",
    { class: "seg" },
    options.map(([v, label]) =>
      h(
        "button",
        { class: v === value ? "active" : "", dataset: { value: v }, onclick: () => onPick(v) },
        label,
      ),
    ),
  );
}

// --- Episodes

/**
 * The Episodes view. `live`: a refresh because the run wrote more (the list, the step range and the
 * counts are updated; an open episode stays as it is, and a view that was showing the newest step
 * moves on to the new newest step).
 */
