// The memory view: every rulebook a run's memory accepted, with its diff against the one before.
import { h, replace, getJson, diffView, pagerView } from "./dom.js";
import { state, go, stale } from "./state.js";
export async function renderMemory(view, token) {
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
  if (stale(token)) return;
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
