/**
 * What FrozenLake and Sokoban share. A game describes itself once (`GridGame`): its pure rules (start
 * state, move, won/lost/playing, board), the words of its comments and feedback, its step details,
 * its data loader and its prompt. From that, one episode class parses one move per reply, counts
 * steps against a budget (invalid replies and moves without effect included), words the step message
 * and comment the same way and ends with the same feedback line; one family class holds the letters,
 * budget and data folder; one breadth-first solver plays by the game's own rules. Also shared: the
 * cached split-file reader and the prompt's common parts.
 */
import { join } from "node:path";
import { inputError, UserError } from "../util/errors.ts";
import { readJsonl } from "../util/jsonl.ts";
import type { Rng } from "../util/rng.ts";
import {
  defaultDataDir,
  DIRECTIONS,
  GAME_FORMAT_REMINDER,
  gameFeedback,
  MOVE_HELP,
  movesSentence,
  parseDirection,
  stepsLine,
  TracedEpisode,
  validateSymbols,
  type Direction,
} from "./common.ts";
import type { EnvFamily, EnvPromptParts, Split, StepResult, Task } from "./types.ts";

/** What one move did: the next state and whether anything changed (a game may add details). */
export interface GridMove<St> {
  state: St;
  moved: boolean;
}

export type GridStatus = "won" | "lost" | "playing";

/**
 * A grid game on task `T` with state `St` drawn in letters `Sy`, as the generic episode, family and
 * solver below use it: its name, the paper's letters and budget, its pure rules (the functions its
 * file exports, which tests and the corpora also call), the words of its messages, the step details
 * of its rollout records, where its data is and what its prompt says. `M` is what its move returns.
 */
export interface GridGame<T, St, Sy, M extends GridMove<St> = GridMove<St>> {
  name: string;
  symbols: Readonly<Sy>;
  budget: number;
  initialState(task: T): St;
  move(task: T, state: St, dir: Direction): M;
  status(task: T, state: St): GridStatus;
  /** The board as the model sees it. */
  render(task: T, state: St, symbols: Sy): string;
  /** The comment on an effective move (default "moved <dir>"). */
  moveComment?(dir: Direction, move: M): string;
  /** The comment's ending when the game is won or lost (e.g. "reached the goal"). */
  endComment(status: "won" | "lost"): string;
  /** The feedback line's outcome for a finished (or unfinished) episode. */
  outcome(status: GridStatus, done: boolean): string;
  /** `StepResult.info` between `action` and the step counts; `move` is null after an invalid reply. */
  stepInfo(task: T, state: St, move: M | null): Record<string, unknown>;
  loadSplit(dataDir: string, split: Split): T[];
  prompt(symbols: Sy, budget: number): EnvPromptParts;
}

/** An episode of a grid game (the letters and budget default to the game's). */
export class GridGameEpisode<T, St, Sy, M extends GridMove<St> = GridMove<St>> extends TracedEpisode {
  readonly initialObservation: string;
  protected state: St;
  private used = 0;
  private noEffect = 0;
  private invalid = 0;
  private lastAction: string | null = null;

  constructor(
    readonly game: GridGame<T, St, Sy, M>,
    readonly task: T,
    protected readonly symbols: Sy = game.symbols,
    readonly budget: number = game.budget,
  ) {
    super();
    this.state = game.initialState(task);
    this.initialObservation = `${stepsLine(0, budget)}\n${this.board()}`;
  }

  /** The board as the model sees it now. */
  board(): string {
    return this.game.render(this.task, this.state, this.symbols);
  }

  get success(): boolean {
    return this.status() === "won";
  }

  private status(): GridStatus {
    return this.game.status(this.task, this.state);
  }

  protected advance(actionText: string): StepResult {
    const dir = parseDirection(actionText);
    this.used += 1;
    let move: M | null = null;
    if (dir === null) {
      this.invalid += 1;
      this.lastAction = "invalid";
    } else {
      move = this.game.move(this.task, this.state, dir);
      this.state = move.state;
      this.lastAction = dir;
    }
    const moved = move?.moved ?? false;
    if (!moved) this.noEffect += 1;
    const status = this.status();
    const outOfSteps = status === "playing" && this.used >= this.budget;
    const what =
      dir === null
        ? `No valid action found (expected ${MOVE_HELP} in a fenced block); nothing changed.`
        : moved
          ? `You moved ${dir}.`
          : `You tried ${dir}; nothing changed.`;
    const end =
      status === "won"
        ? " The episode is over: you won."
        : status === "lost"
          ? " The episode is over: you lost."
          : outOfSteps
            ? " The episode is over: no steps left."
            : "";
    const comment =
      (dir === null
        ? "invalid action"
        : moved
          ? (this.game.moveComment?.(dir, move!) ?? `moved ${dir}`)
          : `${dir}: no effect`) +
      (status !== "playing" ? `; ${this.game.endComment(status)}` : outOfSteps ? "; out of steps" : "");
    return {
      observation: `${what}${end} ${stepsLine(this.used, this.budget)}\n${this.board()}`,
      observationRole: "user",
      reward: status === "won" ? 1 : 0,
      done: status !== "playing" || outOfSteps,
      stopReason: status === "won" ? "goal" : status === "lost" ? "failure" : outOfSteps ? "budget" : null,
      effective: moved,
      valid: dir !== null,
      comment,
      info: {
        action: dir,
        ...this.game.stepInfo(this.task, this.state, move),
        stepsUsed: this.used,
        stepsLeft: this.budget - this.used,
      },
    };
  }

  feedback(): string {
    return gameFeedback({
      outcome: this.game.outcome(this.status(), this.done),
      reward: this.totalReward,
      stepsUsed: this.used,
      budget: this.budget,
      noEffect: this.noEffect,
      invalid: this.invalid,
      lastAction: this.lastAction,
    });
  }
}

export interface GridGameOptions<S> {
  /** Replaces some or all of the paper's letters. */
  symbols?: Partial<S>;
  /** Action budget (default 8, the paper's). */
  budget?: number;
  /** Folder holding the game's split files (default: data/<game>). */
  dataDir?: string;
}

/** A grid game's `EnvFamily`: its letters and budget (the game's unless `opts` replace them), data and prompt. */
export abstract class GridGameFamily<
  T extends Task,
  St,
  S extends { [K in keyof S]: string },
  M extends GridMove<St> = GridMove<St>,
> implements EnvFamily<T> {
  readonly name: string;
  readonly symbols: S;
  readonly budget: number;
  readonly dataDir: string;

  constructor(
    readonly game: GridGame<T, St, S, M>,
    opts: GridGameOptions<S>,
  ) {
    this.name = game.name;
    this.symbols = { ...game.symbols, ...opts.symbols };
    validateSymbols(this.symbols, this.name);
    this.budget = opts.budget ?? game.budget;
    if (!Number.isInteger(this.budget) || this.budget < 1)
      throw new UserError(`${this.name}: budget must be a positive integer, got ${opts.budget}`);
    this.dataDir = opts.dataDir ?? join(defaultDataDir(), this.name);
  }

  get maxTurns(): number {
    return this.budget;
  }

  loadSplit(split: Split): T[] {
    return this.game.loadSplit(this.dataDir, split);
  }

  abstract generate(rng: Rng, count: number): T[];

  makeEpisode(task: T): GridGameEpisode<T, St, S, M> {
    return new GridGameEpisode(this.game, task, this.symbols, this.budget);
  }

  prompt(): EnvPromptParts {
    return this.game.prompt(this.symbols, this.budget);
  }
}

/**
 * The shortest winning move sequence from a task's start, by breadth-first search over the game's
 * states with its own rules (moves tried in `DIRECTIONS` order; a move without effect or into a lost
 * state is not followed), or null when no win is reachable. `key` numbers states: equal states,
 * equal keys.
 */
export function solveGridGame<T, St>(
  game: Pick<GridGame<T, St, unknown>, "initialState" | "move" | "status">,
  task: T,
  key: (state: St) => number,
): Direction[] | null {
  const start = game.initialState(task);
  if (game.status(task, start) === "won") return [];
  const startKey = key(start);
  const prev = new Map<number, { from: number; dir: Direction }>();
  const seen = new Set([startKey]);
  const queue: St[] = [start];
  for (let head = 0; head < queue.length; head++) {
    const state = queue[head]!;
    const from = key(state);
    for (const dir of DIRECTIONS) {
      const next = game.move(task, state, dir);
      if (!next.moved) continue;
      const status = game.status(task, next.state);
      if (status === "lost") continue;
      const k = key(next.state);
      if (seen.has(k)) continue;
      seen.add(k);
      prev.set(k, { from, dir });
      if (status === "won") {
        const path: Direction[] = [];
        for (let at = k; at !== startKey;) {
          const p = prev.get(at)!;
          path.push(p.dir);
          at = p.from;
        }
        return path.reverse();
      }
      queue.push(next.state);
    }
  }
  return null;
}

const splitCache = new Map<string, Task[]>();

/**
 * The tasks of one split file (JSON lines, each parsed by `parse`), which must hold at least one
 * task and no id twice; cached per process and file.
 */
export function loadTaskFile<T extends Task>(
  file: string,
  split: Split,
  parse: (value: unknown, file: string, line: number, split: Split) => T,
): T[] {
  const cached = splitCache.get(file);
  if (cached) return cached as T[];
  const tasks = readJsonl(file, (v, line) => parse(v, file, line, split));
  if (tasks.length === 0) throw inputError({ file }, "no tasks in file");
  const ids = new Set<string>();
  for (const t of tasks) {
    if (ids.has(t.id)) throw inputError({ file }, `duplicate index in task id "${t.id}"`);
    ids.add(t.id);
  }
  splitCache.set(file, tasks);
  return tasks;
}

/**
 * The prompt parts of a grid game: the task description (the game's name and setting, that the
 * letters are not explained, the moves and budget), the shared format reminder, and the game's
 * reasoning hints and reference rulebook.
 */
export function gridGamePrompt(
  game: string,
  setting: string,
  budget: number,
  rest: Pick<EnvPromptParts, "reasoningHints" | "referenceRulebook">,
): EnvPromptParts {
  return {
    taskDescription:
      `You are playing ${game} on a square grid of letters. ${setting} The board does not say which ` +
      `letter is which: work it out from how the board changes after your moves. ${movesSentence(budget)}`,
    formatReminder: GAME_FORMAT_REMINDER,
    ...rest,
  };
}
