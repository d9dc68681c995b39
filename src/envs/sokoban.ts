/**
 * Sokoban with one box, as in the ERL paper: push the box onto the goal within 8 actions. This file
 * holds the task type, the loader for the reference layouts (XSB characters, never shown to the
 * model), the pure dynamics, the renderer (symbol map as a parameter), the BFS solver over
 * (player, box) states, the generator with the reference acceptance rule, and the `EnvFamily`.
 */
import { join } from "node:path";
import { inputError, UserError } from "../util/errors.ts";
import type { Rng } from "../util/rng.ts";
import type { EnvPromptParts, Split, Task } from "./types.ts";
import { GridGameEpisode, GridGameFamily, gridGamePrompt, loadTaskFile, solveGridGame } from "./grid-game.ts";
import type { GridGame, GridGameOptions } from "./grid-game.ts";
import { asRecord, DELTA, renderGrid, type Direction } from "./common.ts";

export type Pos = [number, number];

export interface SokobanTask extends Task {
  env: "sokoban";
  size: number;
  /** The board in XSB characters, top row first: # wall, space floor, . goal, $ box, @ player, + player on goal. */
  layout: string[];
  player: Pos;
  box: Pos;
  goal: Pos;
  /** Reference name `sokoban_{n}x{n}_g{rc}_b{rc}_p{rc}`, when known. */
  layoutName?: string;
}

export interface SokobanSymbols {
  player: string;
  playerOnGoal: string;
  box: string;
  boxOnGoal: string;
  goal: string;
  wall: string;
  floor: string;
}

/** The paper's letters. */
export const SOKOBAN_SYMBOLS: Readonly<SokobanSymbols> = {
  player: "A",
  playerOnGoal: "a",
  box: "B",
  boxOnGoal: "b",
  goal: "C",
  wall: "E",
  floor: "D",
};

export const SOKOBAN_BUDGET = 8;

// ---------------------------------------------------------------------------------------------
// Dynamics

export interface SokobanState {
  player: Pos;
  box: Pos;
}

export function isWall(task: Pick<SokobanTask, "layout">, r: number, c: number): boolean {
  const row = task.layout[r];
  return row === undefined || c < 0 || c >= row.length || row[c] === "#";
}

export function sokobanInitialState(task: Pick<SokobanTask, "player" | "box">): SokobanState {
  return { player: [task.player[0], task.player[1]], box: [task.box[0], task.box[1]] };
}

export function isSolved(task: Pick<SokobanTask, "goal">, state: SokobanState): boolean {
  return state.box[0] === task.goal[0] && state.box[1] === task.goal[1];
}

/** What one Sokoban move did: the next state, whether anything moved, whether the box moved. */
export interface SokobanMove {
  state: SokobanState;
  moved: boolean;
  pushed: boolean;
}

/**
 * One move. Walking into a wall, or pushing the box into a wall, does nothing; the box is pushed,
 * never pulled. Pure: returns the next state, whether anything moved, and whether the box moved.
 */
export function sokobanMove(
  task: Pick<SokobanTask, "layout">,
  state: SokobanState,
  dir: Direction,
): SokobanMove {
  const [dr, dc] = DELTA[dir];
  const to: Pos = [state.player[0] + dr, state.player[1] + dc];
  if (isWall(task, to[0], to[1])) return { state, moved: false, pushed: false };
  if (to[0] === state.box[0] && to[1] === state.box[1]) {
    const boxTo: Pos = [to[0] + dr, to[1] + dc];
    // With one box, "a box behind the box" cannot happen; a second box would be blocked the same way.
    if (isWall(task, boxTo[0], boxTo[1])) return { state, moved: false, pushed: false };
    return { state: { player: to, box: boxTo }, moved: true, pushed: true };
  }
  return { state: { player: to, box: state.box }, moved: true, pushed: false };
}

/** The board as the model sees it. */
export function renderSokoban(
  task: Pick<SokobanTask, "layout" | "goal">,
  state: SokobanState,
  symbols: SokobanSymbols = SOKOBAN_SYMBOLS,
): string {
  const cells = task.layout.map((row, r) =>
    [...row].map((ch, c) => {
      const goal = r === task.goal[0] && c === task.goal[1];
      if (r === state.player[0] && c === state.player[1]) return goal ? symbols.playerOnGoal : symbols.player;
      if (r === state.box[0] && c === state.box[1]) return goal ? symbols.boxOnGoal : symbols.box;
      if (ch === "#") return symbols.wall;
      return goal ? symbols.goal : symbols.floor;
    }),
  );
  return renderGrid(cells);
}

// ---------------------------------------------------------------------------------------------
// Solver

/** Shortest move sequence that puts the box on the goal (BFS over player and box), or null. */
export function solveSokoban(
  task: Pick<SokobanTask, "layout" | "player" | "box" | "goal">,
): Direction[] | null {
  const w = Math.max(...task.layout.map((r) => r.length));
  const h = task.layout.length;
  return solveGridGame(SOKOBAN, task, (s) => ((s.player[0] * w + s.player[1]) * h + s.box[0]) * w + s.box[1]);
}

// ---------------------------------------------------------------------------------------------
// Layouts and generator

/** The reference generator keeps a layout only if it is solvable in at most this many moves. */
export const SOKOBAN_MAX_SOLUTION = 8;

/** The reference layout name: `sokoban_{n}x{n}_g{rc}_b{rc}_p{rc}`. */
export function sokobanLayoutName(size: number, goal: Pos, box: Pos, player: Pos): string {
  return `sokoban_${size}x${size}_g${goal[0]}${goal[1]}_b${box[0]}${box[1]}_p${player[0]}${player[1]}`;
}

/** An n×n room: wall border, empty interior, with the three pieces placed. */
export function buildSokobanLayout(size: number, goal: Pos, box: Pos, player: Pos): string[] {
  const rows: string[][] = [];
  for (let r = 0; r < size; r++) {
    const row: string[] = [];
    for (let c = 0; c < size; c++)
      row.push(r === 0 || c === 0 || r === size - 1 || c === size - 1 ? "#" : " ");
    rows.push(row);
  }
  rows[goal[0]]![goal[1]] = ".";
  rows[box[0]]![box[1]] = "$";
  rows[player[0]]![player[1]] = "@";
  return rows.map((r) => r.join(""));
}

/**
 * Fresh layouts with the reference acceptance rules: side n uniform in 6..8, goal, box and player
 * drawn uniformly from the interior and redrawn until distinct, kept only if the BFS optimum is at
 * most 8 moves; a layout already drawn (kept or rejected) is skipped. Our own `Rng`, so these are
 * not the reference rows. `exclude` holds layout names that must not be reused (e.g. a test split).
 */
export function generateSokobanTasks(
  rng: Rng,
  count: number,
  opts: { sizes?: readonly number[]; maxSolution?: number; exclude?: ReadonlySet<string> } = {},
): SokobanTask[] {
  const sizes = opts.sizes ?? [6, 7, 8];
  const maxSolution = opts.maxSolution ?? SOKOBAN_MAX_SOLUTION;
  const seen = new Set<string>(opts.exclude ?? []);
  const tasks: SokobanTask[] = [];
  let draws = 0;
  while (tasks.length < count) {
    if (++draws > 1000 * (count + 10))
      throw new UserError(`sokoban: could not find ${count} distinct layouts`);
    const size = rng.pick(sizes);
    const interior = () => [rng.intBetween(1, size - 2), rng.intBetween(1, size - 2)] as Pos;
    let goal: Pos, box: Pos, player: Pos;
    do {
      goal = interior();
      box = interior();
      player = interior();
    } while (same(goal, box) || same(goal, player) || same(box, player));
    const name = sokobanLayoutName(size, goal, box, player);
    if (seen.has(name)) continue;
    seen.add(name);
    const task: SokobanTask = {
      id: `gen-${name}`,
      env: "sokoban",
      size,
      layout: buildSokobanLayout(size, goal, box, player),
      player,
      box,
      goal,
      layoutName: name,
    };
    const path = solveSokoban(task);
    if (path !== null && path.length <= maxSolution) tasks.push(task);
  }
  return tasks;
}

function same(a: Pos, b: Pos): boolean {
  return a[0] === b[0] && a[1] === b[1];
}

// ---------------------------------------------------------------------------------------------
// Data

/** Parses an XSB layout with exactly one player, one box and one goal into a task. */
export function sokobanTaskFromLayout(
  id: string,
  layout: readonly string[],
  where: { file?: string; line?: number } = {},
): SokobanTask {
  const bad = (problem: string) => inputError({ ...where, key: "layout" }, problem);
  if (layout.length < 3) throw bad("expected at least 3 rows");
  const size = layout.length;
  let player: Pos | null = null;
  let box: Pos | null = null;
  let goal: Pos | null = null;
  for (let r = 0; r < size; r++) {
    const row = layout[r];
    if (typeof row !== "string" || row.length !== size)
      throw bad(`expected a square board: row ${r} should have ${size} characters`);
    if (!/^[# .$@+*]*$/.test(row)) throw bad(`unknown character in row ${r}: ${JSON.stringify(row)}`);
    for (let c = 0; c < size; c++) {
      const ch = row[c];
      if (ch === "#" || ch === " ") continue;
      if (ch === "@" || ch === "+") {
        if (player) throw bad("more than one player");
        player = [r, c];
      }
      if (ch === "$" || ch === "*") {
        if (box) throw bad("more than one box");
        box = [r, c];
      }
      if (ch === "." || ch === "+" || ch === "*") {
        if (goal) throw bad("more than one goal");
        goal = [r, c];
      }
    }
  }
  if (!player || !box || !goal) throw bad("expected exactly one player, one box and one goal");
  if (same(box, goal)) throw bad("the box is already on the goal");
  return { id, env: "sokoban", size, layout: layout.slice(), player, box, goal };
}

function parseSokobanRecord(value: unknown, file: string, line: number, split: string): SokobanTask {
  const rec = asRecord(value, file, line);
  const layout = rec.layout;
  if (!Array.isArray(layout) || !layout.every((r) => typeof r === "string"))
    throw inputError({ file, line, key: "layout" }, "expected a list of strings");
  const index = rec.index;
  if (typeof index !== "number" || !Number.isInteger(index))
    throw inputError({ file, line, key: "index" }, "expected an integer");
  const task = sokobanTaskFromLayout(`${split}-${index}`, layout as string[], { file, line });
  if (typeof rec.layout_name === "string") task.layoutName = rec.layout_name;
  return task;
}

/** Loads `{dir}/{split}.jsonl`; cached per process. */
export function loadSokobanSplit(dir: string, split: Split): SokobanTask[] {
  return loadTaskFile(join(dir, `${split}.jsonl`), split, parseSokobanRecord);
}

// ---------------------------------------------------------------------------------------------
// The game: prompt, grid-game description (episodes come from it), family

/** What the model is told about Sokoban in letters `s` with `budget` moves (the rulebook: for diagnostics and pretraining). */
export function sokobanPrompt(s = SOKOBAN_SYMBOLS, budget = SOKOBAN_BUDGET): EnvPromptParts {
  return gridGamePrompt(
    "Sokoban",
    "You control a player in a walled room with one box and one goal; you win by pushing the box onto the goal.",
    budget,
    {
      reasoningHints:
        "Push the box only when the cell beyond it, in the direction of the push, is free: a box " +
        "against a wall or in a corner cannot be pulled back out.",
      referenceRulebook: [
        "Sokoban rules:",
        `- ${s.player} is you (the player); ${s.playerOnGoal} is you standing on the goal.`,
        `- ${s.box} is the box; ${s.boxOnGoal} is the box on the goal (solved). ${s.goal} is the goal.`,
        `- ${s.wall} is a wall; ${s.floor} is empty floor.`,
        "- up/down/left/right move you one cell. Walking into the box pushes it one cell the same way.",
        "- You cannot pull the box. Walking into a wall, or pushing the box into a wall, does nothing but uses a move.",
        `- Putting the box on the goal gives reward 1 and ends the game; after ${budget} moves it ends with reward 0.`,
        "- Invalid replies do nothing but still use a move.",
        "- Strategy: stand on the far side of the box from the goal, then push; avoid pushing the box against a wall where it cannot reach the goal.",
      ].join("\n"),
    },
  );
}

/** Sokoban as a grid game (grid-game.ts): the paper's letters and budget, the rules above, its words. */
export const SOKOBAN: GridGame<SokobanTask, SokobanState, SokobanSymbols, SokobanMove> = {
  name: "sokoban",
  symbols: SOKOBAN_SYMBOLS,
  budget: SOKOBAN_BUDGET,
  initialState: sokobanInitialState,
  move: sokobanMove,
  status: (task, state) => (isSolved(task, state) ? "won" : "playing"),
  render: renderSokoban,
  moveComment: (dir, move) => (move.pushed ? `moved ${dir}, pushed the box` : `moved ${dir}`),
  endComment: () => "box on the goal",
  outcome: (status, done) =>
    status === "won" ? "solved" : done ? "not solved, ran out of steps" : "not finished",
  stepInfo: (task, state, move) => ({
    player: state.player,
    box: state.box,
    goal: task.goal,
    pushed: move?.pushed ?? false,
  }),
  loadSplit: loadSokobanSplit,
  prompt: sokobanPrompt,
};

export type SokobanOptions = GridGameOptions<SokobanSymbols>;
export type SokobanEpisode = GridGameEpisode<SokobanTask, SokobanState, SokobanSymbols, SokobanMove>;

export class SokobanFamily extends GridGameFamily<SokobanTask, SokobanState, SokobanSymbols, SokobanMove> {
  constructor(opts: SokobanOptions = {}) {
    super(SOKOBAN, opts);
  }

  /** Fresh layouts; the shipped test layouts are never drawn, so a fresh training set cannot leak them. */
  generate(rng: Rng, count: number): SokobanTask[] {
    return generateSokobanTasks(rng, count, { exclude: this.testLayoutNames() });
  }

  /** The reference names of the test split's layouts (what a fresh training set must not reuse). */
  testLayoutNames(): Set<string> {
    return new Set(
      this.loadSplit("test").map((t) => t.layoutName ?? sokobanLayoutName(t.size, t.goal, t.box, t.player)),
    );
  }
}
