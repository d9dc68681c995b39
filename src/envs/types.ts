/**
 * The environment interface. Any agent — a model, a scripted policy, a person at a terminal —
 * drives an environment through it, and users implement it for their own environments.
 * See docs/environments.md for the contract in prose.
 *
 * Shape: an `EnvFamily` knows how to get tasks (from a data split or a seeded generator) and makes a
 * fresh `Episode` per attempt from a task. An episode gives an initial observation, then
 * `step(actionText)` until `done`.
 */
import type { Rng } from "../util/rng.ts";
import type { Field } from "../util/schema.ts";

/** Why an episode stopped. */
export type StopReason =
  | "goal" // task solved (reward 1 for the games)
  | "failure" // a terminal failure, e.g. fell into a hole
  | "budget" // the action budget ran out
  | "answered" // HotpotQA: the agent answered (right or wrong)
  | "turn_limit" // HotpotQA: tool-call turns ran out
  | "context" // the agent loop stopped it: the context or a per-turn token limit overflowed
  | "aborted"; // stopped from outside

/** Role of an observation message in the chat: game boards are user turns, search results are tool turns. */
export type ObservationRole = "user" | "tool";

export interface StepResult {
  /** Text shown to the agent next (empty when done and nothing more is shown). */
  observation: string;
  observationRole: ObservationRole;
  /** Reward of this step (games: 1 on the solving step, else 0; HotpotQA: the answer's score at the end). */
  reward: number;
  done: boolean;
  stopReason: StopReason | null;
  /** Whether the action changed the state (false for invalid actions and no-op moves). */
  effective: boolean;
  /** Whether the action text parsed as a valid action. */
  valid: boolean;
  /** One short line for the reflection trace, e.g. "moved down", "no effect: wall". */
  comment: string;
  /** Environment-specific structured details for logs and the dashboard (e.g. positions, search hits). */
  info?: Record<string, unknown>;
}

/** One step as recorded for reflection and for the run files. */
export interface TraceStep {
  /** The observation the agent saw before acting. */
  observation: string;
  action: string;
  result: StepResult;
}

/** One attempt at one task. Made fresh per attempt; not reused. */
export interface Episode {
  /** The first observation (board or question) — the first user message. */
  readonly initialObservation: string;
  step(actionText: string): StepResult | Promise<StepResult>;
  readonly done: boolean;
  /** Steps so far, in order. */
  readonly trace: readonly TraceStep[];
  /** Total reward so far. */
  readonly totalReward: number;
  /** Whether the episode counts as a success (games: reached the goal; HotpotQA: exact match). */
  readonly success: boolean;
  /** End-of-episode feedback line for reflection (never reveals hidden answers). Valid once done. */
  feedback(): string;
}

/** A task: serialisable, identifies one problem instance. */
export interface Task {
  /** Stable id, unique within its split (used for GRPO group keys and logs). */
  id: string;
  /** Environment name, e.g. "frozenlake". */
  env: string;
}

/** Text an environment contributes to prompts; the agent's prompt profiles wrap it. */
export interface EnvPromptParts {
  /** What the game/task is, with no symbol meanings (the rule-free initial instructions). */
  taskDescription: string;
  /** The action-format reminder that must end every system prompt. */
  formatReminder: string;
  /**
   * Reminders for the reasoning scaffold of the `reference` prompt profile (mechanics, never symbol
   * meanings), e.g. Sokoban's "push only when the cell beyond the box is free".
   */
  reasoningHints?: string;
  /** A correct rulebook for this environment (symbol meanings, mechanics, goal), for diagnostics and pretraining. */
  referenceRulebook?: string;
}

export type Split = "train" | "test";

/** How many of the role claims in a rulebook are right (an environment's `checkClaims`). */
export interface ClaimCheck {
  /** Role claims found in the rulebook (FrozenLake: "X is you", "X is the goal", ...). */
  claims: number;
  correct: number;
  /** Every role claimed, each once, all correct. */
  complete: boolean;
}

export interface EnvFamily<T extends Task = Task> {
  readonly name: string;
  /** Loads a shipped or user-provided split. */
  loadSplit(split: Split): T[];
  /** Generates fresh tasks with the same acceptance rules as the reference data. */
  generate?(rng: Rng, count: number): T[];
  /** Makes a fresh episode for one attempt at a task. */
  makeEpisode(task: T): Episode;
  /** Prompt text pieces. */
  prompt(): EnvPromptParts;
  /** Maximum number of agent turns an episode can take. */
  readonly maxTurns: number;
  /** Strings at which a sampler should stop a reply (e.g. right after a tool call). */
  readonly stopStrings?: readonly string[];
  /**
   * Diagnostics: checks a rulebook's claims about the environment (e.g. which letter is the agent)
   * against the truth, for `erl reflections`. Optional: only environments with checkable roles offer it.
   */
  checkClaims?(rulebook: string): ClaimCheck;
}

/** Options passed through to a family's constructor; each family documents its own keys. */
export type EnvOptions = Record<string, unknown>;

/** What a family declares to the run config. */
export interface EnvConfig {
  /**
   * The keys a run config may set for this family, in a block named after it, with their defaults;
   * the block's values are passed to the factory as its options.
   */
  options?: { schema: Record<string, Field>; defaults: EnvOptions };
  /** Evaluation samples per task when the config's `eval.n` is null (default 4, the paper's). */
  evalSamples?: number;
}
