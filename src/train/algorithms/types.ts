/**
 * An algorithm as the run sees it: one descriptor per algorithm, registered by name
 * (registry.ts). The runner, the run config and `erl compare` ask the descriptor and name no
 * algorithm: what its step is, how the run config maps onto the step's options, whether the run
 * trains on its samples, whether it keeps a rulebook memory, and its own config keys and defaults.
 */
import type { AlgoContext, MemoryMode, StepResult } from "../../algo/types.ts";
import type { Task } from "../../envs/types.ts";
import type { Field, Source } from "../../util/schema.ts";
import type { RunConfig } from "../config/types.ts";

/** What the runner reads of any algorithm's options. */
export interface StepOptions {
  /** Attempts per task. */
  n: number;
  /** The memory scope, for algorithms that keep a rulebook memory. */
  memory?: MemoryMode;
}

export interface Algorithm<O extends StepOptions = StepOptions> {
  /** The `algo.name` that selects it: lower-case letters, digits and "-". */
  readonly name: string;
  /** One line for listings (`erl compare --help`). */
  readonly summary: string;
  /** Attempts per task when `algo.n` is null. */
  readonly attemptsPerTask: number;
  /** Whether the runner trains the policy on the step's samples (false: the weights never change). */
  readonly trains: boolean;
  /**
   * Whether it keeps a rulebook memory: the runner applies the step's writes (it is memory's only
   * writer), checkpoints the memory and reports `memory/updates`.
   */
  readonly usesMemory: boolean;
  /**
   * Whether its artifact is the memory's rulebook rather than weights: evaluation then runs under
   * that rulebook, and beside it (same seeds) under the initial prompt.
   */
  readonly deploysMemory: boolean;
  /** Whether a failed first attempt gets a reflection and a second attempt (for budget statements). */
  readonly retries: boolean;
  /**
   * Its own keys in the config's `algo` block beside the shared ones, with their defaults. Several
   * algorithms may declare one key (the ERL variants share theirs) if they declare it alike.
   */
  readonly schema: Readonly<Record<string, Field>>;
  readonly defaults: Readonly<Record<string, unknown>>;
  /** The step's options, from a validated run config. */
  options(cfg: RunConfig): O;
  /** Constraints between config keys that only this algorithm has: throws a UserError naming the key. */
  check?(cfg: RunConfig, where: Source): void;
  /** One training step: the batch's rollouts, and the samples, records, memory writes and metrics. */
  step(ctx: AlgoContext, tasks: readonly Task[], options: O): Promise<StepResult>;
}
