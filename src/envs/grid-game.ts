/**
 * What FrozenLake and Sokoban share: an episode that parses one move per reply, counts steps against
 * a budget (invalid replies and moves without effect included), words the step message and comment
 * the same way and ends with the same feedback line; and a family with letters, a budget and a data
 * folder. A game supplies its state, its move, its win/loss test, its board and its step details.
 */
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import type { Rng } from "../util/rng.ts";
import {
  defaultDataDir,
  gameFeedback,
  MOVE_HELP,
  parseDirection,
  stepsLine,
  TracedEpisode,
  validateSymbols,
  type Direction,
} from "./common.ts";
import type { EnvFamily, EnvPromptParts, Episode, Split, StepResult, Task } from "./types.ts";

/** What one move did to a game's state. */
export interface GridMove {
  moved: boolean;
  /** The comment for an effective move (default "moved <dir>"). */
  comment?: string;
}

export type GridStatus = "won" | "lost" | "playing";

/** An episode of a grid game on task `T` with state `St` drawn in letters `Sy`. */
export abstract class GridGameEpisode<T, St, Sy> extends TracedEpisode {
  readonly initialObservation: string;
  protected used = 0;
  private noEffect = 0;
  private invalid = 0;
  private lastAction: string | null = null;

  constructor(
    readonly task: T,
    protected readonly symbols: Sy,
    readonly budget: number,
    protected state: St,
  ) {
    super();
    this.initialObservation = `${stepsLine(0, budget)}\n${this.board()}`;
  }

  /** The board as the model sees it (the subclass's fields with initialisers are not set yet here). */
  abstract board(): string;
  /** Applies a move to the state. */
  protected abstract move(dir: Direction): GridMove;
  protected abstract status(): GridStatus;
  /** The comment's ending when the game is won or lost (e.g. "reached the goal"). */
  protected abstract endComment(status: "won" | "lost"): string;
  /** The feedback line's outcome for a finished (or unfinished) episode. */
  protected abstract outcome(status: GridStatus, done: boolean): string;
  /** The game's step details for `StepResult.info` (between `action` and the step counts). */
  protected abstract stepInfo(move: GridMove): Record<string, unknown>;

  get success(): boolean {
    return this.status() === "won";
  }

  protected advance(actionText: string): StepResult {
    const dir = parseDirection(actionText);
    this.used += 1;
    let move: GridMove = { moved: false };
    if (dir === null) {
      this.invalid += 1;
      this.lastAction = "invalid";
    } else {
      move = this.move(dir);
      this.lastAction = dir;
    }
    if (!move.moved) this.noEffect += 1;
    const status = this.status();
    const outOfSteps = status === "playing" && this.used >= this.budget;
    const what =
      dir === null
        ? `No valid action found (expected ${MOVE_HELP} in a fenced block); nothing changed.`
        : move.moved
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
        : move.moved
          ? (move.comment ?? `moved ${dir}`)
          : `${dir}: no effect`) +
      (status !== "playing" ? `; ${this.endComment(status)}` : outOfSteps ? "; out of steps" : "");
    return {
      observation: `${what}${end} ${stepsLine(this.used, this.budget)}\n${this.board()}`,
      observationRole: "user",
      reward: status === "won" ? 1 : 0,
      done: status !== "playing" || outOfSteps,
      stopReason: status === "won" ? "goal" : status === "lost" ? "failure" : outOfSteps ? "budget" : null,
      effective: move.moved,
      valid: dir !== null,
      comment,
      info: {
        action: dir,
        ...this.stepInfo(move),
        stepsUsed: this.used,
        stepsLeft: this.budget - this.used,
      },
    };
  }

  feedback(): string {
    return gameFeedback({
      outcome: this.outcome(this.status(), this.done),
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

export abstract class GridGameFamily<
  T extends Task,
  S extends { [K in keyof S]: string },
> implements EnvFamily<T> {
  readonly symbols: S;
  readonly budget: number;
  readonly dataDir: string;

  constructor(
    readonly name: string,
    defaults: { symbols: S; budget: number },
    opts: GridGameOptions<S>,
  ) {
    this.symbols = { ...defaults.symbols, ...opts.symbols };
    validateSymbols(this.symbols, name);
    this.budget = opts.budget ?? defaults.budget;
    if (!Number.isInteger(this.budget) || this.budget < 1)
      throw new UserError(`${name}: budget must be a positive integer, got ${opts.budget}`);
    this.dataDir = opts.dataDir ?? join(defaultDataDir(), name);
  }

  get maxTurns(): number {
    return this.budget;
  }

  abstract loadSplit(split: Split): T[];
  abstract generate(rng: Rng, count: number): T[];
  abstract makeEpisode(task: T): Episode;
  abstract prompt(): EnvPromptParts;
}
