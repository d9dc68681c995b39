// The compare view: a comparison's report.
import { h, replace, getJson } from "./dom.js";
import { state, go, stale } from "./state.js";
export async function renderCompare(view, token) {
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
  if (stale(token)) return;
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
