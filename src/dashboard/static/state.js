// The dashboard's state, kept in the URL hash so a view can be bookmarked and survives a reload, and
// navigation: `go` changes the state, writes the hash and re-renders (the renderer is app.js's).
/* global document, window, location, URLSearchParams */

export const state = {
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

export const $ = (id) => document.getElementById(id);

export function readHash() {
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

export function writeHash() {
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

let renderer = () => undefined;
/** Sets what `go` calls after a state change (app.js's `render`). */
export function onNavigate(fn) {
  renderer = fn;
}

export function go(changes) {
  Object.assign(state, changes);
  writeHash();
  renderer();
}

// Each render takes a token; a view whose token is no longer the newest stops (the user moved on).
let renderToken = 0;
export const nextRenderToken = () => ++renderToken;
export const stale = (token) => token !== renderToken;
