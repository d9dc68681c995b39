// The episodes view: a run's episodes by step, task and stage, and one episode in full (first attempt, reflection, second attempt).
import { h, replace, getJson, fmt, diffView, pagerView } from "./dom.js";
import { traceSteps, episodeBoards, drawBoard, legend } from "./boards.js";
import { state, writeHash, go, stale } from "./state.js";
export async function renderEpisodes(view, token, live = false) {
  const run = state.byId.get(state.current);
  if (!run) return replace(view, h("div", { class: "muted pad" }, "Pick a run in the sidebar."));
  if (!run.files.rollouts)
    return replace(view, h("div", { class: "muted pad" }, `${run.name} has no rollouts.jsonl.`));
  const steps = await getJson("/api/run/steps", { run: run.id });
  if (stale(token)) return;
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
  if (stale(token)) return;
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

async function renderEpisodeDetail(el, run, i, token) {
  const ep = await getJson("/api/run/episode", { run: run.id, i });
  if (stale(token)) return;
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
