// Grid boards for the episode view: parses the boards the games print (each cell ` s ` + TAB, rows
// joined by newlines), draws them as coloured grids with their letters, and overlays the agent's path.
// Positions come from the structured step info the environments record (`info.agent`,
// `info.player`) when present, else from where the agent's letter sits on the printed boards.
import { h } from "./dom.js";

/** Symbol maps of the shipped games (the paper's letters; see src/envs/). */
export const SYMBOLS = {
  frozenlake: {
    A: { role: "agent", bg: "#f59e0b", fg: "#fff" },
    B: { role: "goal", bg: "#16a34a", fg: "#fff" },
    C: { role: "hole", bg: "#1e293b", fg: "#cbd5e1" },
    D: { role: "frozen", bg: "#dbeafe", fg: "#1e3a8a" },
    X: { role: "agent in a hole", bg: "#dc2626", fg: "#fff" },
    "√": { role: "agent on the goal", bg: "#22c55e", fg: "#fff", ring: "#f59e0b" },
  },
  sokoban: {
    A: { role: "player", bg: "#f59e0b", fg: "#fff" },
    a: { role: "player on a goal", bg: "#f59e0b", fg: "#fff", ring: "#16a34a" },
    B: { role: "box", bg: "#a16207", fg: "#fff" },
    b: { role: "box on a goal", bg: "#65a30d", fg: "#fff", ring: "#16a34a" },
    C: { role: "goal", bg: "#bbf7d0", fg: "#166534", ring: "#16a34a" },
    E: { role: "wall", bg: "#475569", fg: "#cbd5e1" },
    D: { role: "floor", bg: "#f1f5f9", fg: "#64748b" },
  },
};

const AGENT_LETTERS = { frozenlake: ["A", "X", "√"], sokoban: ["A", "a"] };

/** Parses the last board printed in a text, as rows of cell letters, or null when there is none. */
export function parseBoard(text) {
  if (typeof text !== "string" || !text.includes("\t")) return null;
  const lines = text.split("\n");
  let best = null;
  let cur = [];
  const flush = () => {
    if (cur.length > 0) best = cur;
    cur = [];
  };
  for (const line of lines) {
    const pieces = line.split("\t");
    if (pieces.length > 1 && pieces[pieces.length - 1].trim() === "") pieces.pop();
    const isBoard =
      line.includes("\t") &&
      pieces.length > 0 &&
      pieces.every((p) => /^ ?\S{1,2} ?$/u.test(p) && p.trim() !== "");
    if (!isBoard) {
      flush();
      continue;
    }
    const row = pieces.map((p) => p.trim());
    if (cur.length > 0 && cur[0].length !== row.length) flush();
    cur.push(row);
  }
  flush();
  return best;
}

/** Board from a FrozenLake task's data map (S/F/H/G), for records without printed boards. */
export function boardFromLakeTask(task, at) {
  if (!task || !Array.isArray(task.map)) return null;
  return task.map.map((row, r) =>
    [...row].map((ch, c) => {
      const here = at && at[0] === r && at[1] === c;
      if (here) return ch === "H" ? "X" : ch === "G" ? "√" : "A";
      return ch === "H" ? "C" : ch === "G" ? "B" : "D";
    }),
  );
}

export function findAgent(board, env) {
  if (!board) return null;
  const letters = AGENT_LETTERS[env] ?? ["A"];
  for (let r = 0; r < board.length; r++)
    for (let c = 0; c < board[r].length; c++) if (letters.includes(board[r][c])) return [r, c];
  return null;
}

function pos(v) {
  return Array.isArray(v) && v.length === 2 && v.every((x) => Number.isInteger(x)) ? [v[0], v[1]] : null;
}

/** A trace step in either shape: the environments' `{observation, action, result}` or the flat one. */
export function stepParts(s) {
  const r = s && typeof s.result === "object" && s.result !== null ? s.result : (s ?? {});
  return {
    observation: typeof s?.observation === "string" ? s.observation : "",
    action: typeof s?.action === "string" ? s.action : "",
    next: typeof r.observation === "string" && r !== s ? r.observation : null,
    reward: typeof r.reward === "number" ? r.reward : null,
    effective: r.effective,
    valid: r.valid,
    comment: typeof r.comment === "string" ? r.comment : "",
    info: r.info && typeof r.info === "object" ? r.info : null,
    done: r.done === true,
  };
}

/**
 * The steps of a record with `next` (what the environment showed after the action) filled in for
 * the flat trace shape of training runs: the next step's observation, and for the last step the
 * record's `finalObservation` (absent in older records).
 */
export function traceSteps(record) {
  const trace = Array.isArray(record?.trace) ? record.trace.map(stepParts) : [];
  trace.forEach((s, i) => {
    if (s.next !== null) return;
    if (i + 1 < trace.length) s.next = trace[i + 1].observation || null;
    else if (typeof record.finalObservation === "string") s.next = record.finalObservation;
  });
  return trace;
}

/**
 * The boards of an episode: `boards[0]` before the first action, `boards[i+1]` after action i (null
 * when unknown), and the agent's position on each.
 */
export function episodeBoards(record) {
  const env = record.env;
  const trace = traceSteps(record);
  let first = trace.length ? parseBoard(trace[0].observation) : null;
  if (!first && Array.isArray(record.messages)) {
    const u = record.messages.find((m) => m && m.role === "user");
    first = u ? parseBoard(u.content) : null;
  }
  const task = record.taskData;
  if (!first && env === "frozenlake" && task) first = boardFromLakeTask(task, pos(task.start));
  const boards = [first];
  for (let i = 0; i < trace.length; i++) boards.push(parseBoard(trace[i].next));
  // The final board of a flat trace is only in the chat: the last user message after the last action.
  if (trace.length && !boards[trace.length] && Array.isArray(record.messages)) {
    const last = [...record.messages].reverse().find((m) => m && m.role === "user");
    const b = last ? parseBoard(last.content) : null;
    if (b && JSON.stringify(b) !== JSON.stringify(boards[trace.length - 1])) boards[trace.length] = b;
  }
  // Records written before `finalObservation` existed have no board after the final action: replay that move.
  if (trace.length && !boards[trace.length] && boards[trace.length - 1]) {
    const last = trace[trace.length - 1];
    boards[trace.length] = applyMove(
      boards[trace.length - 1],
      env,
      moveOf(last.action),
      last.effective !== false,
    );
  }
  const path = boards.map((b, i) => {
    const info = i > 0 ? trace[i - 1].info : null;
    return pos(info?.agent) ?? pos(info?.player) ?? findAgent(b, env);
  });
  if (!path[0] && task) path[0] = pos(task.start) ?? pos(task.player);
  return { env, trace, boards, path };
}

const DELTAS = { up: [-1, 0], down: [1, 0], left: [0, -1], right: [0, 1] };
const DIGITS = { 1: "left", 2: "down", 3: "right", 4: "up" };

/** The move in a reply's last fenced block (as the games parse it), or null. */
export function moveOf(action) {
  const blocks = [...String(action).matchAll(/```([\s\S]*?)```/g)];
  const body = blocks.length
    ? blocks[blocks.length - 1][1].trim().split("\n").pop().trim().toLowerCase()
    : "";
  return DELTAS[body] ? body : (DIGITS[body] ?? null);
}

/**
 * The board after one move, for the grid games' letters: FrozenLake (A/X/√ agent, B goal, C hole,
 * D frozen) and Sokoban (A/a player, B/b box, C goal, E wall, D floor). Used only where the run
 * recorded no board after a step; an ineffective move leaves the board as it was.
 */
export function applyMove(board, env, move, effective) {
  const at = findAgent(board, env);
  if (!at || !move || !effective) return board;
  const [dr, dc] = DELTAS[move];
  const next = board.map((row) => [...row]);
  const [r, c] = [at[0] + dr, at[1] + dc];
  if (next[r]?.[c] === undefined) return board;
  if (env === "frozenlake") {
    next[at[0]][at[1]] = "D";
    next[r][c] = next[r][c] === "C" ? "X" : next[r][c] === "B" ? "√" : "A";
    return next;
  }
  if (env === "sokoban") {
    const target = next[r][c];
    if (target === "B" || target === "b") {
      const beyond = next[r + dr]?.[c + dc];
      if (beyond === undefined || !"DC".includes(beyond)) return board;
      next[r + dr][c + dc] = beyond === "C" ? "b" : "B";
    }
    next[at[0]][at[1]] = next[at[0]][at[1]] === "a" ? "C" : "D";
    next[r][c] = target === "C" || target === "b" ? "a" : "A";
    return next;
  }
  return board;
}

/**
 * Draws a board: a CSS grid of coloured cells with their letters, and, when `path` is given, the
 * agent's path over it (numbered dots joined by a line).
 */
export function drawBoard(board, env, opts = {}) {
  const size = opts.cell ?? 30;
  if (!board) return h("div", { class: "board missing" }, "no board");
  const map = SYMBOLS[env] ?? {};
  const rows = board.length;
  const cols = Math.max(...board.map((r) => r.length));
  const cells = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const letter = board[r][c] ?? "";
      const sym = map[letter] ?? fallbackSymbol(letter);
      cells.push(
        h(
          "div",
          {
            class: "cell",
            title: `${letter}: ${sym.role} (row ${r}, column ${c})`,
            style: {
              background: sym.bg,
              color: sym.fg,
              boxShadow: sym.ring ? `inset 0 0 0 ${Math.max(2, size / 10)}px ${sym.ring}` : "",
            },
          },
          opts.letters === false ? "" : letter,
        ),
      );
    }
  }
  const grid = h(
    "div",
    {
      class: "grid",
      style: {
        gridTemplateColumns: `repeat(${cols}, ${size}px)`,
        gridAutoRows: `${size}px`,
        fontSize: `${Math.round(size * 0.5)}px`,
      },
    },
    cells,
  );
  const wrap = h(
    "div",
    { class: "board", style: { width: `${cols * size}px`, height: `${rows * size}px` } },
    grid,
  );
  const path = (opts.path ?? []).filter(Boolean);
  if (path.length > 1) wrap.appendChild(pathOverlay(path, rows, cols, size));
  return wrap;
}

function pathOverlay(path, rows, cols, size) {
  const center = (p) => [p[1] * size + size / 2, p[0] * size + size / 2];
  const pts = path.map(center);
  const svg = h("svg:svg", {
    class: "path",
    width: cols * size,
    height: rows * size,
    viewBox: `0 0 ${cols * size} ${rows * size}`,
  });
  svg.appendChild(
    h("svg:polyline", {
      points: pts.map((p) => p.join(",")).join(" "),
      fill: "none",
      stroke: "#7c3aed",
      "stroke-width": Math.max(2, size / 9),
      "stroke-linejoin": "round",
      "stroke-linecap": "round",
      opacity: "0.75",
    }),
  );
  // One marker per visited cell, labelled with every step that ended there ("2,5" on a revisit).
  const visits = new Map();
  path.forEach((p, i) => {
    if (i === 0) return;
    const prev = path[i - 1];
    if (prev[0] === p[0] && prev[1] === p[1]) return; // no-op move: nothing to mark
    const k = `${p[0]},${p[1]}`;
    if (!visits.has(k)) visits.set(k, { p, steps: [] });
    visits.get(k).steps.push(i);
  });
  for (const { p, steps } of visits.values()) {
    const [x, y] = center(p);
    const label = steps.join(",");
    const r = Math.max(4, size / 5) * (label.length > 2 ? 1.35 : 1);
    svg.appendChild(h("svg:circle", { cx: x, cy: y, r, fill: "#7c3aed" }));
    svg.appendChild(
      h(
        "svg:text",
        {
          x,
          y: y + Math.max(3, size / 12),
          "text-anchor": "middle",
          "font-size": Math.max(7, size / (label.length > 2 ? 4.2 : 3.2)),
          fill: "#fff",
        },
        label,
      ),
    );
  }
  return svg;
}

const FALLBACK = ["#e0e7ff", "#fce7f3", "#dcfce7", "#fef9c3", "#ffedd5", "#e0f2fe", "#f3e8ff", "#f5f5f4"];

function fallbackSymbol(letter) {
  let h0 = 0;
  for (const ch of letter) h0 = (h0 * 31 + ch.codePointAt(0)) >>> 0;
  return { role: "unknown symbol", bg: FALLBACK[h0 % FALLBACK.length], fg: "#1f2937" };
}

/** The legend of the letters that appear on a set of boards. */
export function legend(boards, env) {
  const map = SYMBOLS[env] ?? {};
  const seen = new Set();
  for (const b of boards) if (b) for (const row of b) for (const l of row) seen.add(l);
  const items = [...seen].sort().map((l) => {
    const sym = map[l] ?? fallbackSymbol(l);
    return h(
      "span",
      { class: "legend-item" },
      h("span", { class: "swatch", style: { background: sym.bg, color: sym.fg } }, l),
      sym.role,
    );
  });
  return h("div", { class: "legend" }, items);
}
