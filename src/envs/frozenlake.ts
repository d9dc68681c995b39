/**
 * FrozenLake (deterministic, not slippery), as in the ERL paper: reach the goal on an n×n board
 * without stepping into a hole, within 8 actions. This file holds the task type, the loader for the
 * reference maps, the pure dynamics, the renderer (symbol map as a parameter), the BFS solver, the
 * generator with the reference acceptance rule, and the `EnvFamily` that makes text episodes.
 */
import { join } from "node:path";
import { inputError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import type { ClaimCheck, EnvPromptParts, Split, Task } from "./types.ts";
import { GridGameEpisode, GridGameFamily, gridGamePrompt, loadTaskFile, solveGridGame } from "./grid-game.ts";
import type { GridGame, GridGameOptions } from "./grid-game.ts";
import { asRecord, DELTA, renderGrid, type Direction } from "./common.ts";

/** Board letters in the data files (never shown to the model): S start, F frozen, H hole, G goal. */
export type FrozenLakeCell = "S" | "F" | "H" | "G";

export interface FrozenLakeTask extends Task {
  env: "frozenlake";
  size: number;
  /** `size` rows, top row first, over S/F/H/G. */
  map: string[];
  start: [number, number];
  goal: [number, number];
  /** Generation parameters, when known: the reference `uid` is "{seed}_{size}_{p}". */
  uid?: string;
  seed?: number;
  p?: number;
}

/** What each role looks like on the board the model sees. */
export interface FrozenLakeSymbols {
  agent: string;
  goal: string;
  hole: string;
  frozen: string;
  agentInHole: string;
  agentOnGoal: string;
}

/** The paper's letters. */
export const FROZENLAKE_SYMBOLS: Readonly<FrozenLakeSymbols> = {
  agent: "A",
  goal: "B",
  hole: "C",
  frozen: "D",
  agentInHole: "X",
  agentOnGoal: "√",
};

export const FROZENLAKE_BUDGET = 8;

// ---------------------------------------------------------------------------------------------
// Dynamics

export type FrozenLakeStatus = "playing" | "goal" | "hole";

export interface FrozenLakeState {
  row: number;
  col: number;
  status: FrozenLakeStatus;
}

export function frozenLakeCell(task: Pick<FrozenLakeTask, "map">, row: number, col: number): FrozenLakeCell {
  return task.map[row]![col] as FrozenLakeCell;
}

export function frozenLakeInitialState(task: Pick<FrozenLakeTask, "start">): FrozenLakeState {
  return { row: task.start[0], col: task.start[1], status: "playing" };
}

/**
 * One move. Off the edge the agent stays put (no effect). Entering a hole or the goal ends the game.
 * Pure: returns the next state and whether the move changed anything.
 */
export function frozenLakeMove(
  task: Pick<FrozenLakeTask, "map" | "size">,
  state: FrozenLakeState,
  dir: Direction,
): { state: FrozenLakeState; moved: boolean } {
  if (state.status !== "playing") return { state, moved: false };
  const [dr, dc] = DELTA[dir];
  const row = state.row + dr;
  const col = state.col + dc;
  if (row < 0 || row >= task.size || col < 0 || col >= task.size) return { state, moved: false };
  const cell = frozenLakeCell(task, row, col);
  const status: FrozenLakeStatus = cell === "H" ? "hole" : cell === "G" ? "goal" : "playing";
  return { state: { row, col, status }, moved: true };
}

/** The board as the model sees it. The start cell is drawn as frozen. */
export function renderFrozenLake(
  task: Pick<FrozenLakeTask, "map" | "size">,
  state: FrozenLakeState,
  symbols: FrozenLakeSymbols = FROZENLAKE_SYMBOLS,
): string {
  const cells: string[][] = [];
  for (let r = 0; r < task.size; r++) {
    const row: string[] = [];
    for (let c = 0; c < task.size; c++) {
      const cell = frozenLakeCell(task, r, c);
      const here = r === state.row && c === state.col;
      if (here)
        row.push(cell === "H" ? symbols.agentInHole : cell === "G" ? symbols.agentOnGoal : symbols.agent);
      else row.push(cell === "H" ? symbols.hole : cell === "G" ? symbols.goal : symbols.frozen);
    }
    cells.push(row);
  }
  return renderGrid(cells);
}

// ---------------------------------------------------------------------------------------------
// Solver

/** Shortest move sequence from the start to the goal avoiding holes (BFS), or null if none. */
export function solveFrozenLake(task: Pick<FrozenLakeTask, "map" | "size" | "start">): Direction[] | null {
  return solveGridGame(FROZENLAKE, task, (s) => s.row * task.size + s.col);
}

// ---------------------------------------------------------------------------------------------
// Generator

/** Depth limit of the reference generator's acceptance search (paths of at most MAX_STEPS + 1 moves). */
export const FROZENLAKE_MAX_STEPS = 5;

/**
 * The reference generator's acceptance test, reproduced step for step: a depth-first search from
 * the start that expands neighbours in the order down, right, up, left onto a stack, never enters a
 * hole, keeps a discovered set, drops nodes deeper than `maxSteps`, and succeeds as soon as the goal
 * is generated as a neighbour. Because of the discovered set it can reject boards that do have a
 * short path; copying it keeps fresh training sets drawn from the same distribution as the
 * reference ones.
 */
export function referenceAccepts(
  map: readonly string[],
  start: readonly [number, number],
  maxSteps = FROZENLAKE_MAX_STEPS,
): boolean {
  const n = map.length;
  const order: readonly [number, number][] = [
    [1, 0],
    [0, 1],
    [-1, 0],
    [0, -1],
  ];
  const stack: [number, number, number][] = [[start[0], start[1], 0]];
  const discovered = new Set<number>();
  while (stack.length > 0) {
    const [r, c, depth] = stack.pop()!;
    if (depth > maxSteps) continue;
    const k = r * n + c;
    if (discovered.has(k)) continue;
    discovered.add(k);
    for (const [dr, dc] of order) {
      const nr = r + dr;
      const nc = c + dc;
      if (nr < 0 || nr >= n || nc < 0 || nc >= n) continue;
      const cell = map[nr]![nc];
      if (cell === "G") return true;
      if (cell !== "H") stack.push([nr, nc, depth + 1]);
    }
  }
  return false;
}

/**
 * Draws one map the way the reference does (each tile frozen with probability p, start and goal
 * redrawn until distinct and written over whatever tile was there, retry until `referenceAccepts`),
 * but from our own seeded `Rng`, so the maps are not the reference rows for the same seed.
 */
export function generateFrozenLakeMap(
  rng: Rng,
  size: number,
  p: number,
): { map: string[]; start: [number, number]; goal: [number, number] } {
  if (!Number.isInteger(size) || size < 2)
    throw new RangeError(`FrozenLake size must be an integer ≥ 2, got ${size}`);
  for (;;) {
    const grid: string[][] = [];
    for (let r = 0; r < size; r++) {
      const row: string[] = [];
      for (let c = 0; c < size; c++) row.push(rng.next() < p ? "F" : "H");
      grid.push(row);
    }
    let start: [number, number];
    let goal: [number, number];
    do {
      start = [rng.int(size), rng.int(size)];
      goal = [rng.int(size), rng.int(size)];
    } while (start[0] === goal[0] && start[1] === goal[1]);
    grid[start[0]]![start[1]] = "S";
    grid[goal[0]]![goal[1]] = "G";
    const map = grid.map((row) => row.join(""));
    if (referenceAccepts(map, start)) return { map, start, goal };
  }
}

/**
 * Fresh tasks with the reference distribution: size uniform in 2..9, p uniform in [0.6, 0.85), one
 * map per (seed, size, p). Each task's map depends only on its own seed, size and p, so a task can be
 * regenerated from its `uid`.
 */
export function generateFrozenLakeTasks(rng: Rng, count: number): FrozenLakeTask[] {
  const tasks: FrozenLakeTask[] = [];
  for (let i = 0; i < count; i++) {
    const seed = rng.seed();
    const size = rng.intBetween(2, 9);
    const p = rng.uniform(0.6, 0.85);
    tasks.push(frozenLakeTaskFromParams(seed, size, p));
  }
  return tasks;
}

/** The generated task for one (seed, size, p); its id is "gen-{seed}_{size}_{p}". */
export function frozenLakeTaskFromParams(seed: number, size: number, p: number): FrozenLakeTask {
  const { map, start, goal } = generateFrozenLakeMap(new Rng(seed), size, p);
  const uid = `${seed}_${size}_${p}`;
  return { id: `gen-${uid}`, env: "frozenlake", size, map, start, goal, uid, seed, p };
}

// ---------------------------------------------------------------------------------------------
// Data

/** Parses and checks one map record (`{index, uid, size, map, start, goal}`) of a maps file. */
export function parseFrozenLakeRecord(
  value: unknown,
  file: string,
  line: number,
  split: string,
): FrozenLakeTask {
  const rec = asRecord(value, file, line);
  const bad = (key: string, problem: string) => inputError({ file, line, key }, problem);
  const size = rec.size;
  if (typeof size !== "number" || !Number.isInteger(size) || size < 2 || size > 64)
    throw bad("size", `expected an integer board size ≥ 2, got ${JSON.stringify(size)}`);
  const map = rec.map;
  if (!Array.isArray(map) || map.length !== size)
    throw bad("map", `expected ${size} rows of ${size} characters`);
  for (const row of map)
    if (typeof row !== "string" || row.length !== size || !/^[SFHG]+$/.test(row))
      throw bad("map", `each row must be ${size} characters over S, F, H, G; got ${JSON.stringify(row)}`);
  const pos = (key: "start" | "goal", letter: string): [number, number] => {
    const v = rec[key];
    if (!Array.isArray(v) || v.length !== 2 || !v.every((x) => Number.isInteger(x) && x >= 0 && x < size))
      throw bad(key, `expected [row, col] inside the board, got ${JSON.stringify(v)}`);
    const [r, c] = v as [number, number];
    if ((map[r] as string)[c] !== letter) throw bad(key, `cell [${r}, ${c}] is not "${letter}"`);
    return [r, c];
  };
  const start = pos("start", "S");
  const goal = pos("goal", "G");
  const counts = (map as string[]).join("");
  if (counts.split("S").length !== 2 || counts.split("G").length !== 2)
    throw bad("map", "expected exactly one S and one G");
  const index = rec.index;
  if (typeof index !== "number" || !Number.isInteger(index)) throw bad("index", "expected an integer");
  const task: FrozenLakeTask = {
    id: `${split}-${index}`,
    env: "frozenlake",
    size,
    map: map as string[],
    start,
    goal,
  };
  if (typeof rec.uid === "string") {
    task.uid = rec.uid;
    const [seed, , p] = rec.uid.split("_");
    if (
      seed !== undefined &&
      p !== undefined &&
      Number.isFinite(Number(seed)) &&
      Number.isFinite(Number(p))
    ) {
      task.seed = Number(seed);
      task.p = Number(p);
    }
  }
  return task;
}

/** Loads `{dir}/{split}_maps.jsonl`; cached per process. */
export function loadFrozenLakeMaps(dir: string, split: Split): FrozenLakeTask[] {
  return loadTaskFile(join(dir, `${split}_maps.jsonl`), split, parseFrozenLakeRecord);
}

// ---------------------------------------------------------------------------------------------
// The game: prompt, grid-game description (episodes come from it), family

/** What the model is told about FrozenLake in letters `s` with `budget` moves (the rulebook: for diagnostics and pretraining). */
export function frozenLakePrompt(s = FROZENLAKE_SYMBOLS, budget = FROZENLAKE_BUDGET): EnvPromptParts {
  return gridGamePrompt(
    "FrozenLake",
    "You control an agent that must reach the goal cell without falling into a hole.",
    budget,
    {
      referenceRulebook: [
        "FrozenLake rules:",
        `- ${s.agent} is you (the agent); ${s.goal} is the goal; ${s.hole} is a hole; ${s.frozen} is safe frozen ice.`,
        `- ${s.agentOnGoal} means you are on the goal (you won); ${s.agentInHole} means you fell into a hole (you lost).`,
        "- up/down/left/right move one cell; a move off the edge of the board does nothing.",
        `- Reaching the goal gives reward 1 and ends the game; a hole ends it with reward 0; after ${budget} moves the game ends with reward 0.`,
        "- Invalid replies do nothing but still use a move.",
        `- Strategy: find ${s.agent} and ${s.goal}, plan the shortest path that avoids every ${s.hole}, then follow it.`,
      ].join("\n"),
    },
  );
}

/** FrozenLake as a grid game (grid-game.ts): the paper's letters and budget, the rules above, its words. */
export const FROZENLAKE: GridGame<FrozenLakeTask, FrozenLakeState, FrozenLakeSymbols> = {
  name: "frozenlake",
  symbols: FROZENLAKE_SYMBOLS,
  budget: FROZENLAKE_BUDGET,
  initialState: frozenLakeInitialState,
  move: frozenLakeMove,
  status: (_task, s) => (s.status === "goal" ? "won" : s.status === "hole" ? "lost" : "playing"),
  render: renderFrozenLake,
  endComment: (status) => (status === "won" ? "reached the goal" : "fell into a hole"),
  outcome(status, done) {
    if (status === "won") return "reached the goal";
    if (status === "lost") return "fell into a hole";
    return done ? "ran out of steps" : "not finished";
  },
  stepInfo: (task, s) => ({
    agent: [s.row, s.col],
    cell: frozenLakeCell(task, s.row, s.col),
    status: s.status,
  }),
  loadSplit: loadFrozenLakeMaps,
  prompt: frozenLakePrompt,
};

const CLAIM_PATTERNS: readonly [RegExp, keyof typeof FROZENLAKE_SYMBOLS][] = [
  [/(\S+) is you\b/g, "agent"],
  [/(\S+) is the goal\b/g, "goal"],
  [/(\S+) is a hole\b/g, "hole"],
  [/(\S+) is safe frozen ice\b/g, "frozen"],
];

const TABLE_CLAIM = /^ (\S+) \t(you|goal|hole|ice)\b/gm;
const TABLE_ROLE: Readonly<Record<string, keyof typeof FROZENLAKE_SYMBOLS>> = {
  you: "agent",
  goal: "goal",
  hole: "hole",
  ice: "frozen",
};

/**
 * Checks the role claims of a rulebook against letters `symbols` (default: the paper's): which
 * letters it says are the agent, the goal, a hole and safe ice, in prose ("X is you", "X is the
 * goal", "X is a hole", "X is safe frozen ice") or in the table shape (" X \tyou").
 */
export function checkClaims(rulebook: string, symbols = FROZENLAKE_SYMBOLS): ClaimCheck {
  let claims = 0;
  let correct = 0;
  const right = new Set<string>();
  for (const m of rulebook.matchAll(TABLE_CLAIM)) {
    const role = TABLE_ROLE[m[2] ?? ""]!;
    claims++;
    if (m[1] === symbols[role]) {
      correct++;
      right.add(role);
    }
  }
  for (const [re, role] of CLAIM_PATTERNS)
    for (const m of rulebook.matchAll(re)) {
      const letter = (m[1] ?? "").replace(/^[-;(]+/, "");
      claims++;
      if (letter === symbols[role]) {
        correct++;
        right.add(role);
      }
    }
  return { claims, correct, complete: right.size === 4 && claims === 4 };
}

export type FrozenLakeOptions = GridGameOptions<FrozenLakeSymbols>;
export type FrozenLakeEpisode = GridGameEpisode<FrozenLakeTask, FrozenLakeState, FrozenLakeSymbols>;

export class FrozenLakeFamily extends GridGameFamily<FrozenLakeTask, FrozenLakeState, FrozenLakeSymbols> {
  constructor(opts: FrozenLakeOptions = {}) {
    super(FROZENLAKE, opts);
  }

  generate(rng: Rng, count: number): FrozenLakeTask[] {
    return generateFrozenLakeTasks(rng, count);
  }

  checkClaims(rulebook: string): ClaimCheck {
    return checkClaims(rulebook, this.symbols);
  }
}
