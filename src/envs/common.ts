/**
 * Pieces shared by the grid games: action parsing, the board renderer, step-count wording, feedback
 * lines, and a small base class that keeps an episode's trace. Dynamics and rendering stay apart:
 * every game exports a pure step function and renders through `renderGrid` with a symbol map that
 * callers may replace (the erl-tiny corpus draws fresh letters per episode).
 */
import { join } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";
import { inputError, UserError } from "../util/errors.ts";
import { ownEntry } from "../util/own.ts";
import type { Episode, StepResult, TraceStep } from "./types.ts";

export type Direction = "left" | "down" | "right" | "up";

export const DIRECTIONS: readonly Direction[] = ["left", "down", "right", "up"];

/** Row/column change of each move; row 0 is the top row. */
export const DELTA: Readonly<Record<Direction, readonly [number, number]>> = {
  left: [0, -1],
  down: [1, 0],
  right: [0, 1],
  up: [-1, 0],
};

/** Digit aliases, as in the reference environments: 1 Left, 2 Down, 3 Right, 4 Up. */
const DIGIT_ACTIONS: Readonly<Record<string, Direction>> = {
  "1": "left",
  "2": "down",
  "3": "right",
  "4": "up",
};

/** The content of the last complete triple-backtick block, or null when there is none. */
export function lastFencedBlock(text: string): string | null {
  const blocks = [...text.matchAll(/```([\s\S]*?)```/g)];
  const last = blocks[blocks.length - 1];
  if (!last) return null;
  let body = last[1] ?? "";
  // An opening fence may carry an info string ("```text\nup\n```"); it is not part of the action
  // unless it is the only thing in the block ("```up\n```").
  const newline = body.indexOf("\n");
  if (newline >= 0) {
    const info = body.slice(0, newline).trim();
    const rest = body.slice(newline + 1).trim();
    body = rest === "" ? info : info === "" || /^[a-z][\w-]*$/i.test(info) ? rest : body;
  }
  return body.trim();
}

/**
 * Parses one move from a reply: the last fenced block must hold exactly one of up/down/left/right
 * (any case) or a digit 1–4. Anything else is invalid (null): the caller spends a step on it.
 */
export function parseDirection(text: string): Direction | null {
  const body = lastFencedBlock(text);
  if (body === null) return null;
  const word = body.toLowerCase();
  if (word === "up" || word === "down" || word === "left" || word === "right") return word;
  return ownEntry(DIGIT_ACTIONS, word) ?? null;
}

/** Wraps a move in the fenced block the parser expects (used by scripted players and the CLI). */
export function formatAction(dir: Direction): string {
  return "```\n" + dir + "\n```";
}

/** The board text: each cell is ` s ` followed by a TAB, rows joined by newlines. */
export function renderGrid(cells: readonly (readonly string[])[]): string {
  return cells.map((row) => row.map((s) => ` ${s} \t`).join("")).join("\n");
}

/** "Steps used: 3 of 8 (5 left)." — the honest count every game message carries. */
export function stepsLine(used: number, budget: number): string {
  return `Steps used: ${used} of ${budget} (${Math.max(0, budget - used)} left).`;
}

/** Checks that a symbol map gives every role a distinct, non-empty, single-line symbol. */
export function validateSymbols<K extends string>(symbols: Readonly<Record<K, string>>, game: string): void {
  const seen = new Map<string, string>();
  for (const [role, sym] of Object.entries(symbols) as [string, string][]) {
    if (typeof sym !== "string" || sym.length === 0 || /\s/.test(sym))
      throw new UserError(`${game}: symbol for "${role}" must be a non-empty string without spaces`);
    const other = seen.get(sym);
    if (other) throw new UserError(`${game}: roles "${other}" and "${role}" share the symbol "${sym}"`);
    seen.set(sym, role);
  }
}

/** Summary of a finished game episode, the ingredients of its feedback line. */
export interface GameOutcome {
  /** e.g. "reached the goal", "fell into a hole", "ran out of steps", "solved", "not solved". */
  outcome: string;
  reward: number;
  stepsUsed: number;
  budget: number;
  noEffect: number;
  invalid: number;
  lastAction: string | null;
}

/** The end-of-episode feedback line for the grid games: outcome, reward, steps, no-effect count, last action. */
export function gameFeedback(o: GameOutcome): string {
  const last = o.lastAction === null ? "none" : o.lastAction;
  return (
    `Outcome: ${o.outcome}. Reward ${o.reward}. Steps used ${o.stepsUsed} of ${o.budget}. ` +
    `Actions without effect: ${o.noEffect} (invalid: ${o.invalid}). Last action: ${last}.`
  );
}

/**
 * Keeps the trace and totals of an episode. Subclasses implement `advance`, which returns the step
 * result for one action; this class records it and refuses steps after the end. Steps are
 * synchronous: every shipped environment computes its answer in memory.
 */
export abstract class TracedEpisode implements Episode {
  abstract readonly initialObservation: string;
  private readonly steps: TraceStep[] = [];
  private lastObservation: string | null = null;
  private reward = 0;
  private finished = false;

  get done(): boolean {
    return this.finished;
  }
  get trace(): readonly TraceStep[] {
    return this.steps;
  }
  get totalReward(): number {
    return this.reward;
  }
  abstract readonly success: boolean;
  abstract feedback(): string;

  protected abstract advance(actionText: string): StepResult;

  step(actionText: string): StepResult {
    if (this.finished) throw new Error("step() called on a finished episode");
    const before = this.lastObservation ?? this.initialObservation;
    const result = this.advance(actionText);
    this.steps.push({ observation: before, action: actionText, result });
    this.reward += result.reward;
    this.finished = result.done;
    this.lastObservation = result.observation;
    return result;
  }
}

/**
 * Where the shipped data lives: `data/` at the repository root, or `$ERL_DATA_DIR` when set (for a
 * copy elsewhere). Environments also take a `dataDir` option that wins over both.
 */
export function defaultDataDir(): string {
  const fromEnv = process.env.ERL_DATA_DIR;
  if (fromEnv) return fromEnv;
  return join(REPO_ROOT, "data");
}

/** Checks that a parsed JSONL line is an object, with an error naming file and line. */
export function asRecord(value: unknown, file: string, line: number): Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw inputError({ file, line }, "expected a JSON object");
  return value as Record<string, unknown>;
}

/** How moves may be written, as the games' prompts say it. */
export const MOVE_HELP = "up, down, left or right (or 1 = left, 2 = down, 3 = right, 4 = up)";

/** The sentence on moves and the budget that both games' task descriptions end with. */
export function movesSentence(budget: number): string {
  return (
    `Each turn you make one move: up, down, left or right. You have ${budget} moves; every reply uses one, ` +
    "even if it has no valid move."
  );
}

/** The action-format reminder both games' system prompts end with. */
export const GAME_FORMAT_REMINDER =
  "End every reply with exactly one move in a fenced code block, for example:\n```\nup\n```\n" +
  `Allowed moves: ${MOVE_HELP}.`;
