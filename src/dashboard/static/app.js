/* global document, window, location, EventSource, URLSearchParams, setTimeout, clearTimeout */
// The dashboard page: a runs sidebar and five views (curves, episodes, memory, compare, run). State
// lives in the URL hash so a view can be bookmarked and survives a reload. Live updates arrive as
// Server-Sent Events naming the runs whose files changed; only the new metric records are fetched.
import { h, replace, getJson, fmt, fmtDuration, diffView } from "./dom.js";
import { CHARTS, CHART_KEYS, ChartCard, chartLines, chartGrid } from "./charts.js";
import { episodeBoards, drawBoard, legend, traceSteps } from "./boards.js";

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

const state = {
  runs: [],
  reports: [],
  byId: new Map(),
  tab: "curves",
  selected: new Set(),
  current: null,
  x: "step",
  agg: false,
  smooth: 0,
  ep: { step: null, task: "", stage: "", offset: 0, i: null },
  mem: { offset: 0, worker: "" },
  report: null,
  metrics: new Map(),
  cards: null,
  live: false,
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------------
// URL hash state

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.tab = p.get("tab") ?? "curves";
  const runs = p.get("runs");
  state.selected = new Set(runs ? runs.split(",").filter(Boolean) : []);
  state.current = p.get("run");
  state.x = p.get("x") === "time" ? "time" : "step";
  state.agg = p.get("agg") === "1";
  state.smooth = Math.min(0.99, Math.max(0, Number(p.get("smooth") ?? 0) || 0));
  const step = p.get("step");
  state.ep = {
    step: step === null || step === "" ? null : Number(step),
    task: p.get("task") ?? "",
    stage: p.get("stage") ?? "",
    offset: Number(p.get("eo") ?? 0) || 0,
    i: p.get("ep") === null ? null : Number(p.get("ep")),
  };
  state.mem = { offset: Number(p.get("mo") ?? 0) || 0, worker: p.get("worker") ?? "" };
  state.report = p.get("report");
}

function writeHash() {
  const p = new URLSearchParams();
  p.set("tab", state.tab);
  if (state.selected.size) p.set("runs", [...state.selected].join(","));
  if (state.current) p.set("run", state.current);
  if (state.x !== "step") p.set("x", state.x);
  if (state.agg) p.set("agg", "1");
  if (state.smooth) p.set("smooth", String(state.smooth));
  if (state.ep.step !== null) p.set("step", String(state.ep.step));
  if (state.ep.task) p.set("task", state.ep.task);
  if (state.ep.stage) p.set("stage", state.ep.stage);
  if (state.ep.offset) p.set("eo", String(state.ep.offset));
  if (state.ep.i !== null) p.set("ep", String(state.ep.i));
  if (state.mem.offset) p.set("mo", String(state.mem.offset));
  if (state.mem.worker) p.set("worker", state.mem.worker);
  if (state.report) p.set("report", state.report);
  const next = "#" + p.toString();
  if (location.hash !== next) window.history.replaceState(null, "", next);
}

function go(changes) {
  Object.assign(state, changes);
  writeHash();
  render();
}

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

let renderToken = 0;
async function render(opts = {}) {
  renderTabs();
  const token = ++renderToken;
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
    if (token === renderToken)
      replace(view, h("div", { class: "error" }, `Could not load this view: ${e.message}`));
  }
}

// --- Curves

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

async function renderCurves(view, token) {
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
  if (token !== renderToken) return;
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
async function renderEpisodes(view, token, live = false) {
  const run = state.byId.get(state.current);
  if (!run) return replace(view, h("div", { class: "muted pad" }, "Pick a run in the sidebar."));
  if (!run.files.rollouts)
    return replace(view, h("div", { class: "muted pad" }, `${run.name} has no rollouts.jsonl.`));
  const steps = await getJson("/api/run/steps", { run: run.id });
  if (token !== renderToken) return;
  if (steps.steps.length === 0)
    return replace(view, h("div", { class: "muted pad" }, "No episodes recorded yet."));
  const stepList = steps.steps.map((s) => s.step);
  const newest = stepList[stepList.length - 1];
  const following = live && state.ep.i === null && state.ep.step === state.ep.newest;
  let step = state.ep.step;
  if (step === null || !stepList.includes(step) || following) step = newest;
  if (following && step !== state.ep.step) state.ep.offset = 0;
  state.ep.step = step;
  state.ep.newest = newest;
  const page = await getJson("/api/run/rollouts", {
    run: run.id,
    step,
    task: state.ep.task,
    stage: state.ep.stage,
    offset: state.ep.offset,
    limit: 40,
  });
  if (token !== renderToken) return;
  writeHash();
  const idx = stepList.indexOf(step);
  const setStep = (s) => go({ ep: { step: s, task: "", stage: state.ep.stage, offset: 0, i: null } });
  const toolbar = h(
    "div",
    { class: "toolbar" },
    h("span", { class: "label" }, run.name),
    h("span", { class: "muted" }, `${steps.total} episodes over ${stepList.length} steps`),
    h("button", { disabled: idx <= 0, onclick: () => setStep(stepList[idx - 1]) }, "◀"),
    h(
      "label",
      {},
      "step ",
      h("input", {
        type: "number",
        id: "ep-step",
        value: String(step),
        min: String(stepList[0]),
        max: String(stepList[stepList.length - 1]),
        onchange: (e) => {
          const want = Number(e.target.value);
          const near = stepList.reduce(
            (a, b) => (Math.abs(b - want) < Math.abs(a - want) ? b : a),
            stepList[0],
          );
          setStep(near);
        },
      }),
    ),
    h("button", { disabled: idx >= stepList.length - 1, onclick: () => setStep(stepList[idx + 1]) }, "▶"),
    h("input", {
      type: "range",
      class: "step-slider",
      min: "0",
      max: String(stepList.length - 1),
      value: String(idx),
      onchange: (e) => setStep(stepList[Number(e.target.value)]),
    }),
    h(
      "label",
      {},
      "task ",
      h(
        "select",
        {
          id: "ep-task",
          onchange: (e) => go({ ep: { ...state.ep, task: e.target.value, offset: 0, i: null } }),
        },
        h("option", { value: "" }, "all tasks"),
        (page.tasks ?? []).map((t) => h("option", { value: t, selected: t === state.ep.task }, t)),
      ),
    ),
    h(
      "label",
      {},
      "stage ",
      h(
        "select",
        { onchange: (e) => go({ ep: { ...state.ep, stage: e.target.value, offset: 0, i: null } }) },
        ["", "first", "second", "eval"].map((s) =>
          h("option", { value: s, selected: s === state.ep.stage }, s || "all"),
        ),
      ),
    ),
  );
  const table = h(
    "table",
    { class: "episodes" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["#", "task", "stage", "attempt", "turns", "reward", "outcome"].map((c) => h("th", {}, c)),
      ),
    ),
    h(
      "tbody",
      {},
      page.items.map((it) =>
        h(
          "tr",
          {
            class: `episode-row${it.i === state.ep.i ? " selected" : ""}`,
            dataset: { i: String(it.i) },
            onclick: () => go({ ep: { ...state.ep, i: it.i } }),
          },
          h("td", { class: "num" }, String(it.i)),
          h("td", {}, it.task),
          h("td", {}, h("span", { class: `stage stage-${it.stage}` }, it.stage), it.reflection ? " ✎" : ""),
          h("td", { class: "num" }, String(it.attempt)),
          h("td", { class: "num" }, String(it.turns)),
          h("td", { class: "num" }, rewardPill(it.reward)),
          h("td", {}, it.stopReason ?? ""),
        ),
      ),
    ),
  );
  const pager = pagerView(page.total, page.offset, 40, (o) => go({ ep: { ...state.ep, offset: o } }));
  // A live refresh keeps the open episode's element (its scroll position and opened details).
  const kept = live && state.ep.i !== null ? view.querySelector("#episode-detail") : null;
  const detail = kept ?? h("div", { id: "episode-detail" });
  const listCard = h("div", { class: "episode-list card" }, table, pager);
  const oldList = live ? view.querySelector(".episode-list") : null;
  const scroll = oldList ? oldList.scrollTop : 0;
  replace(view, toolbar, h("div", { class: "episodes-layout" }, listCard, detail));
  listCard.scrollTop = scroll;
  if (kept) return;
  if (state.ep.i !== null) await renderEpisodeDetail(detail, run, state.ep.i, token);
  else
    replace(
      detail,
      h(
        "div",
        { class: "muted pad" },
        "Click an episode to see first attempt → reflection → second attempt.",
      ),
    );
}

function rewardPill(r) {
  if (r === null || r === undefined) return h("span", { class: "pill" }, "–");
  const cls = r >= 1 ? "good" : r > 0 ? "mid" : "bad";
  return h("span", { class: `pill ${cls}` }, fmt(r, 2));
}

function pagerView(total, offset, limit, onPage) {
  if (total <= limit) return h("div", { class: "pager muted" }, `${total} shown`);
  return h(
    "div",
    { class: "pager" },
    h("button", { disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, "‹ prev"),
    h("span", {}, `${offset + 1}–${Math.min(total, offset + limit)} of ${total}`),
    h("button", { disabled: offset + limit >= total, onclick: () => onPage(offset + limit) }, "next ›"),
  );
}

async function renderEpisodeDetail(el, run, i, token) {
  const ep = await getJson("/api/run/episode", { run: run.id, i });
  if (token !== renderToken) return;
  const rec = ep.record;
  const first = rec.stage === "second" ? ep.partner?.record : rec;
  const second = rec.stage === "second" ? rec : ep.partner?.record;
  const columns = [];
  if (rec.stage === "eval" || (!first && !second)) columns.push(attemptView(rec, "Evaluation attempt"));
  else {
    if (first) columns.push(attemptView(first, "First attempt"));
    if (second) {
      columns.push(reflectionView(second.reflection, ep.reflectionDiff));
      columns.push(attemptView(second, "Second attempt"));
    } else
      columns.push(
        h(
          "div",
          { class: "card note" },
          first && first.reward >= 1
            ? "Solved on the first attempt: no reflection (gate closed)."
            : "No second attempt recorded for this episode.",
        ),
      );
  }
  replace(
    el,
    h(
      "div",
      { class: "detail-head" },
      h("strong", {}, `step ${rec.step} · task ${rec.task} · attempt ${rec.attempt}`),
      h("span", { class: "muted" }, ` · ${rec.env ?? run.env}`),
    ),
    h("div", { class: `attempts cols-${columns.length}` }, columns),
  );
}

function turnsText(n) {
  return `${n} turn${n === 1 ? "" : "s"}`;
}

function lastFenced(text) {
  const blocks = [...String(text).matchAll(/```([\s\S]*?)```/g)];
  const last = blocks[blocks.length - 1];
  return last ? last[1].trim().split("\n").pop().trim() : null;
}

function attemptView(rec, title) {
  const env = rec.env;
  const head = h(
    "div",
    { class: "attempt-head" },
    h("h3", {}, title),
    rewardPill(rec.reward),
    h(
      "span",
      { class: "muted" },
      ` ${rec.stopReason ?? ""} · ${turnsText(Array.isArray(rec.trace) ? rec.trace.length : 0)}`,
    ),
  );
  const system = h("details", {}, h("summary", {}, "system prompt"), h("pre", {}, rec.system ?? ""));
  const body = env === "hotpotqa" ? qaAttempt(rec) : gridAttempt(rec);
  return h(
    "div",
    { class: "card attempt", dataset: { stage: rec.stage } },
    head,
    system,
    body,
    h("div", { class: "feedback" }, h("span", { class: "label" }, "feedback "), rec.feedback ?? ""),
  );
}

/** FrozenLake's `info.cell` is the task map's letter under the agent (S/F/H/G), not a board letter. */
const LAKE_CELLS = { S: "start", F: "frozen", H: "hole", G: "goal" };

function gridAttempt(rec) {
  const { env, trace, boards, path } = episodeBoards(rec);
  const main = h(
    "div",
    { class: "board-main" },
    drawBoard(boards[0], env, { cell: 30, path }),
    legend(boards, env),
  );
  const steps = h(
    "ol",
    { class: "steps" },
    trace.map((s, k) => {
      // The move as the environment parsed it (step info), else the reply's last fenced line.
      const move = typeof s.info?.action === "string" ? s.info.action : lastFenced(s.action);
      const at = path[k + 1];
      const cell = typeof s.info?.cell === "string" ? (LAKE_CELLS[s.info.cell] ?? s.info.cell) : "";
      const where = at ? `(${at[0]},${at[1]})${cell ? ` ${cell}` : ""}` : "";
      const cls = s.valid === false ? "invalid" : s.effective === false ? "noeffect" : "ok";
      return h(
        "li",
        { class: `step ${cls}` },
        drawBoard(boards[k + 1], env, { cell: 13, letters: false }),
        h(
          "div",
          { class: "step-text" },
          h(
            "div",
            {},
            h("span", { class: "stepno" }, `${k + 1}`),
            h("span", { class: "move" }, move ?? "(no move)"),
            " ",
            h("span", { class: "effect" }, s.comment),
            where
              ? h("span", { class: "muted pos", title: "row, column after the move" }, ` ${where}`)
              : null,
            s.reward ? h("span", { class: "pill good" }, `+${fmt(s.reward, 2)}`) : null,
          ),
          h("details", {}, h("summary", {}, "reply"), h("pre", {}, s.action)),
        ),
      );
    }),
  );
  return h("div", {}, main, steps);
}

function qaAttempt(rec) {
  const trace = traceSteps(rec);
  const question = rec.taskData?.question ?? trace[0]?.observation ?? "";
  const items = trace.map((s, k) => {
    const info = s.info ?? {};
    // The environment records each tool call of a turn as {query, topK, hits, error?} in
    // `info.calls`; older records had a single {query, hits} at the top of info.
    const calls = Array.isArray(info.calls)
      ? info.calls.filter((c) => c && typeof c === "object")
      : info.query
        ? [info]
        : [];
    const snippets = s.next ? s.next.split("\n").filter((l) => l.trim()) : [];
    return h(
      "li",
      { class: "qa-step" },
      h("div", {}, h("span", { class: "stepno" }, `${k + 1}`), h("span", { class: "effect" }, s.comment)),
      h("pre", { class: "reply" }, s.action),
      calls.map((c) => searchView(c)),
      snippets.length
        ? h(
            "details",
            {},
            h(
              "summary",
              {},
              `${calls.length ? "retrieved text" : "environment reply"} (${snippets.length} lines)`,
            ),
            h("pre", {}, snippets.join("\n")),
          )
        : null,
    );
  });
  const lastInfo = trace[trace.length - 1]?.info ?? {};
  const boxed = /\\boxed\{([^}]*)\}/.exec(trace[trace.length - 1]?.action ?? "");
  const answer = lastInfo.answer ?? (boxed ? boxed[1] : null);
  const gold = rec.taskData?.answer ?? null;
  return h(
    "div",
    {},
    h("div", { class: "question" }, h("span", { class: "label" }, "question "), question),
    h("ol", { class: "steps" }, items),
    h(
      "div",
      { class: "answer" },
      h("span", { class: "label" }, "extracted answer "),
      h("code", {}, answer ?? "(none)"),
      gold !== null ? [h("span", { class: "label" }, "  gold "), h("code", {}, String(gold))] : null,
      " reward ",
      rewardPill(rec.reward),
    ),
  );
}

function searchView(call) {
  const hits = Array.isArray(call.hits) ? call.hits.filter((x) => x && typeof x === "object") : [];
  return h(
    "div",
    { class: "search" },
    h("span", { class: "move" }, `search: ${String(call.query ?? "")}`),
    call.error ? h("span", { class: "pill bad" }, `error: ${String(call.error)}`) : null,
    !call.error && hits.length === 0 ? h("span", { class: "muted" }, " no results") : null,
    hits.length
      ? h(
          "table",
          { class: "hits" },
          hits.map((x) =>
            h(
              "tr",
              {},
              h("td", { class: "num" }, fmt(x.score, 2)),
              h("td", {}, String(x.id ?? "")),
              h("td", {}, String(x.title ?? "")),
            ),
          ),
        )
      : null,
  );
}

function reflectionView(refl, diff) {
  if (!refl)
    return h(
      "div",
      { class: "card reflection" },
      h("h3", {}, "Reflection"),
      h("div", { class: "muted" }, "none recorded"),
    );
  const empty = !refl.memoryBefore;
  return h(
    "div",
    { class: "card reflection" },
    h("h3", {}, "Reflection"),
    h("details", {}, h("summary", {}, "reflection prompt"), h("pre", {}, refl.prompt ?? "")),
    h("details", {}, h("summary", {}, "model output"), h("pre", {}, refl.text ?? "")),
    h("h4", {}, "Rulebook"),
    h("pre", { class: "rulebook" }, refl.rulebook ?? ""),
    h("h4", {}, empty ? "Diff against memory (memory was empty)" : "Diff against the memory it started from"),
    diffView(diff),
  );
}

// --- Memory

async function renderMemory(view, token) {
  const run = state.byId.get(state.current);
  if (!run) return replace(view, h("div", { class: "muted pad" }, "Pick a run in the sidebar."));
  if (!run.files.memory)
    return replace(
      view,
      h("div", { class: "muted pad" }, `${run.name} has no memory.jsonl (no memory writes).`),
    );
  const limit = 10;
  const page = await getJson("/api/run/memory", {
    run: run.id,
    offset: state.mem.offset,
    limit,
    worker: state.mem.worker,
  });
  if (token !== renderToken) return;
  const toolbar = h(
    "div",
    { class: "toolbar" },
    h("span", { class: "label" }, run.name),
    h("span", { class: "muted" }, `${page.total} accepted rulebook${page.total === 1 ? "" : "s"}`),
    page.workers.length
      ? h(
          "label",
          {},
          "worker ",
          h(
            "select",
            { onchange: (e) => go({ mem: { offset: 0, worker: e.target.value } }) },
            h("option", { value: "" }, "all"),
            page.workers.map((w) =>
              h("option", { value: String(w), selected: String(w) === state.mem.worker }, String(w)),
            ),
          ),
        )
      : null,
  );
  const items = page.items.map((m, k) =>
    h(
      "div",
      { class: "card mem-item" },
      h(
        "div",
        { class: "mem-head" },
        h("span", { class: "version" }, `v${page.offset + k + 1}`),
        h("span", {}, `step ${m.step}`),
        h(
          "span",
          { class: "muted" },
          `episode ${m.episode} · task ${m.task}${m.worker !== null ? ` · worker ${m.worker}` : ""}`,
        ),
        h(
          "button",
          {
            class: "link",
            onclick: () =>
              go({
                tab: "episodes",
                ep: { step: m.step, task: m.task, stage: "second", offset: 0, i: null },
              }),
          },
          "show episode →",
        ),
      ),
      diffView(m.diff),
      h("details", {}, h("summary", {}, "full rulebook"), h("pre", {}, m.rulebook)),
    ),
  );
  replace(
    view,
    toolbar,
    h(
      "div",
      { class: "timeline" },
      items.length ? items : h("div", { class: "muted pad" }, "No memory writes yet."),
    ),
    pagerView(page.total, page.offset, limit, (o) => go({ mem: { ...state.mem, offset: o } })),
  );
}

// --- Compare

async function renderCompare(view, token) {
  if (state.reports.length === 0)
    return replace(
      view,
      h(
        "div",
        { class: "muted pad" },
        "No comparison reports (report.md from `erl compare`) in this directory.",
      ),
    );
  const id =
    state.report && state.reports.some((r) => r.id === state.report) ? state.report : state.reports[0].id;
  const data = await getJson("/api/report", { id });
  if (token !== renderToken) return;
  const article = h("article", { class: "card report" });
  // The server rendered this Markdown with raw HTML turned off (every tag in it is escaped) and
  // rewrote image links to its confined /files/ route; the page's CSP forbids inline scripts too.
  article.innerHTML = data.html;
  replace(
    view,
    h(
      "div",
      { class: "toolbar" },
      h("span", { class: "label" }, "report"),
      h(
        "select",
        { onchange: (e) => go({ report: e.target.value }) },
        state.reports.map((r) => h("option", { value: r.id, selected: r.id === id }, `${r.title} (${r.id})`)),
      ),
    ),
    article,
  );
}

// --- Run details

async function renderRun(view, token) {
  const run = state.byId.get(state.current);
  if (!run) return replace(view, h("div", { class: "muted pad" }, "Pick a run in the sidebar."));
  const config = await getJson("/api/run/config", { run: run.id });
  if (token !== renderToken) return;
  const rows = [
    ["directory", run.id],
    ["environment", run.env],
    ["algorithm", run.algo],
    ["model", run.model],
    ["seed", run.seed ?? "–"],
    ["status", run.state + (run.error ? ` — ${run.error}` : "")],
    ["step", `${run.step}${run.totalSteps ? ` of ${run.totalSteps}` : ""}`],
    ["updated", run.updatedAt ?? "–"],
    ["latest eval", run.latestEval ? `${fmt(run.latestEval.reward)} at step ${run.latestEval.step}` : "–"],
    ["wall-clock", run.latestTrain ? fmtDuration(run.latestTrain.time) : "–"],
  ];
  replace(
    view,
    h(
      "div",
      { class: "card" },
      h(
        "table",
        { class: "kv" },
        rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v)))),
      ),
    ),
    run.warnings.length ? h("div", { class: "card warn" }, run.warnings.join("\n")) : null,
    h("div", { class: "card" }, h("h3", {}, "config.json"), h("pre", {}, JSON.stringify(config, null, 2))),
  );
}

// ------------------------------------------------------------------------------------------------
// Live updates

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
