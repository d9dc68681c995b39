// The run view: one run's config, status and engine.
import { h, replace, getJson, fmt, fmtDuration } from "./dom.js";
import { state, stale } from "./state.js";
export async function renderRun(view, token) {
  const run = state.byId.get(state.current);
  if (!run) return replace(view, h("div", { class: "muted pad" }, "Pick a run in the sidebar."));
  const config = await getJson("/api/run/config", { run: run.id });
  if (stale(token)) return;
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
