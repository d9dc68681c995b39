/* global document, window, EventSource, setTimeout, clearTimeout */
// The dashboard page: a runs sidebar and five views (curves, episodes, memory, compare, run), one
// module each (view-*.js). State lives in the URL hash (state.js) so a view can be bookmarked and
// survives a reload. Live updates arrive as Server-Sent Events naming the runs whose files changed;
// only the new metric records are fetched.
import { h, replace, getJson, fmt } from "./dom.js";
import { state, $, readHash, writeHash, go, onNavigate, nextRenderToken, stale } from "./state.js";
import { renderCurves } from "./view-curves.js";
import { renderEpisodes } from "./view-episodes.js";
import { renderMemory } from "./view-memory.js";
import { renderCompare } from "./view-compare.js";
import { renderRun } from "./view-run.js";

// Colour-blind-friendly palette (Okabe–Ito, then Tableau): one hue per seed group.
const PALETTE = [
  "#0072b2",
  "#d55e00",
  "#009e73",
  "#cc79a7",
  "#e69f00",
  "#56b4e9",
  "#8c564b",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
];

// ------------------------------------------------------------------------------------------------
// Runs and colours

function assignColours(runs) {
  const groups = [...new Set(runs.map((r) => r.group))].sort();
  const seen = new Map();
  for (const r of runs) {
    const gi = groups.indexOf(r.group);
    const base = PALETTE[gi % PALETTE.length];
    const k = seen.get(r.group) ?? 0;
    seen.set(r.group, k + 1);
    // Seeds of one group share the hue, each a little lighter than the last.
    r.color = k === 0 ? base : lighten(base, Math.min(0.5, 0.18 * k));
    r.groupColor = base;
    r.groupLabel = `${r.env} · ${r.algo}`;
    r.label = r.name;
  }
}

function lighten(hex, t) {
  const n = parseInt(hex.slice(1), 16);
  const mix = (c) => Math.round(c + (255 - c) * t);
  const [r, g, b] = [mix(n >> 16), mix((n >> 8) & 255), mix(n & 255)];
  return "#" + ((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1);
}

async function loadRuns() {
  const data = await getJson("/api/runs");
  state.runs = data.runs;
  state.reports = data.reports;
  assignColours(state.runs);
  state.byId = new Map(state.runs.map((r) => [r.id, r]));
  if (state.selected.size === 0 && state.runs.length) {
    // First visit: overlay the runs of the first environment.
    const env = state.runs[0].env;
    for (const r of state.runs) if (r.env === env) state.selected.add(r.id);
  }
  for (const id of [...state.selected]) if (!state.byId.has(id)) state.selected.delete(id);
  if (!state.current || !state.byId.has(state.current)) state.current = state.runs[0]?.id ?? null;
  writeHash();
  renderSidebar();
}

function statusBadge(r) {
  return h("span", { class: `badge state-${r.state}`, title: r.error ?? "" }, r.state);
}

function renderSidebar() {
  const list = $("runs-list");
  const byEnv = new Map();
  for (const r of state.runs) {
    if (!byEnv.has(r.env)) byEnv.set(r.env, []);
    byEnv.get(r.env).push(r);
  }
  const sections = [...byEnv].map(([env, runs]) =>
    h(
      "div",
      { class: "env-group" },
      h("div", { class: "env-name" }, env),
      runs.map((r) => {
        const pct = r.totalSteps ? Math.min(100, (100 * r.step) / r.totalSteps) : 0;
        return h(
          "div",
          {
            class: `run${r.id === state.current ? " current" : ""}`,
            dataset: { run: r.id },
            onclick: (e) => {
              if (e.target.tagName === "INPUT") return;
              go({
                current: r.id,
                ep: { step: null, task: "", stage: "", offset: 0, i: null },
                mem: { offset: 0, worker: "" },
              });
              renderSidebar();
            },
          },
          h("input", {
            type: "checkbox",
            title: "overlay in the curves",
            checked: state.selected.has(r.id),
            onchange: (e) => {
              if (e.target.checked) state.selected.add(r.id);
              else state.selected.delete(r.id);
              writeHash();
              if (state.tab === "curves") render();
            },
          }),
          h("span", { class: "swatch-line", style: { background: r.color } }),
          h(
            "div",
            { class: "run-main" },
            h(
              "div",
              { class: "run-title" },
              h(
                "span",
                { class: "run-name", title: r.id },
                // Runs inside a folder (a comparison's runs) carry the folder, so two "erl-seed0"
                // from different comparisons can be told apart.
                r.id.includes("/")
                  ? h("span", { class: "run-dir" }, r.id.slice(0, r.id.lastIndexOf("/") + 1))
                  : null,
                r.name,
              ),
              statusBadge(r),
            ),
            h(
              "div",
              { class: "run-sub" },
              `${r.algo}${r.seed !== null ? ` · seed ${r.seed}` : ""} · step ${r.step}${r.totalSteps ? `/${r.totalSteps}` : ""}`,
              r.latestEval ? h("span", { class: "eval" }, ` · eval ${fmt(r.latestEval.reward, 2)}`) : null,
            ),
            h("div", { class: "progress" }, h("div", { style: { width: `${pct}%`, background: r.color } })),
            r.warnings.length ? h("div", { class: "warn" }, r.warnings.join("; ")) : null,
          ),
        );
      }),
    ),
  );
  if (state.runs.length === 0)
    sections.push(h("div", { class: "muted pad" }, "No runs found in this directory yet."));
  replace(list, sections);
}

// ------------------------------------------------------------------------------------------------
// Views

const TABS = [
  ["curves", "Curves"],
  ["episodes", "Episodes"],
  ["memory", "Memory"],
  ["compare", "Compare"],
  ["run", "Run"],
];

function renderTabs() {
  replace(
    $("tabs"),
    TABS.map(([id, label]) =>
      h(
        "button",
        {
          class: `tab${state.tab === id ? " active" : ""}`,
          dataset: { tab: id },
          onclick: () => go({ tab: id }),
        },
        label,
      ),
    ),
  );
}

async function render(opts = {}) {
  renderTabs();
  const token = nextRenderToken();
  const view = $("view");
  try {
    if (opts.live && state.tab === "episodes") return await renderEpisodes(view, token, true);
    if (state.tab !== "curves" && state.cards) {
      state.cards.forEach((c) => c.destroy());
      state.cards = null;
    }
    if (state.tab === "curves") await renderCurves(view, token);
    else if (state.tab === "episodes") await renderEpisodes(view, token);
    else if (state.tab === "memory") await renderMemory(view, token);
    else if (state.tab === "compare") await renderCompare(view, token);
    else await renderRun(view, token);
  } catch (e) {
    if (!stale(token)) replace(view, h("div", { class: "error" }, `Could not load this view: ${e.message}`));
  }
}

let pending = null;
const changed = new Set();
let listChanged = false;

function onChange(msg) {
  for (const id of msg.runs ?? []) changed.add(id);
  listChanged = listChanged || !!msg.list || (msg.runs ?? []).length > 0;
  if (pending) return;
  // Coalesce bursts of changes (a training step writes several files).
  pending = setTimeout(async () => {
    pending = null;
    const ids = [...changed];
    changed.clear();
    const relist = listChanged;
    listChanged = false;
    try {
      if (relist) await loadRuns();
      if (state.tab === "curves") {
        const sel = ids.filter((id) => state.selected.has(id));
        if (sel.length || relist) await render();
      } else if (ids.includes(state.current)) await render({ live: true });
    } catch (e) {
      setLive(false, e.message);
    }
  }, 300);
}

function setLive(on, why) {
  state.live = on;
  const el = $("live");
  el.className = on ? "live on" : "live";
  el.title = on ? "live: updates arrive as runs write" : `not live${why ? `: ${why}` : ""}`;
  el.textContent = on ? "● live" : "○ offline";
}

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => setLive(true));
  es.addEventListener("error", () => setLive(false, "reconnecting"));
  es.addEventListener("change", (e) => {
    try {
      onChange(JSON.parse(e.data));
    } catch {
      // a malformed event is ignored; the next one carries the state again
    }
  });
}

// ------------------------------------------------------------------------------------------------

async function main() {
  onNavigate(render);
  readHash();
  renderTabs();
  try {
    const info = await getJson("/api/info");
    $("runs-dir").textContent = info.runsDir;
    await loadRuns();
  } catch (e) {
    replace($("view"), h("div", { class: "error" }, `Cannot reach the dashboard server: ${e.message}`));
    return;
  }
  await render();
  connect();
  window.addEventListener("hashchange", () => {
    readHash();
    renderSidebar();
    render();
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => state.cards?.forEach((c) => c.resize()), 150);
  });
  document.body.dataset.ready = "1";
}

main();
