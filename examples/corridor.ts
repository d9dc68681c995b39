/**
 * A complete custom environment in a few dozen lines: walk right along a corridor to its end.
 * It is the example of docs/environments.md. Load it into any `erl` command with
 *
 *   npx erl --env-module examples/corridor.ts play corridor
 *   npx erl --env-module examples/corridor.ts train --config frozenlake-tiny --set env=corridor
 *
 * Importing the module registers the environment under the name "corridor".
 */
import {
  knownEnvs,
  parseDirection,
  registerEnv,
  TracedEpisode,
  type EnvFamily,
  type StepResult,
  type Task,
} from "../src/envs/index.ts";

export interface CorridorTask extends Task {
  length: number;
}

export class CorridorEpisode extends TracedEpisode {
  readonly initialObservation: string;
  private at = 0;
  constructor(private readonly task: CorridorTask) {
    super();
    this.initialObservation = this.show();
  }
  get success(): boolean {
    return this.at === this.task.length - 1;
  }
  private show(): string {
    return Array.from({ length: this.task.length }, (_, i) => (i === this.at ? "X" : ".")).join(" ");
  }
  protected advance(action: string): StepResult {
    const dir = parseDirection(action);
    const before = this.at;
    if (dir === "right") this.at = Math.min(this.at + 1, this.task.length - 1);
    if (dir === "left") this.at = Math.max(this.at - 1, 0);
    const done = this.success || this.trace.length + 1 >= 10;
    return {
      observation: this.show(),
      observationRole: "user",
      reward: this.success ? 1 : 0,
      done,
      stopReason: this.success ? "goal" : done ? "budget" : null,
      effective: this.at !== before,
      valid: dir !== null,
      comment: this.at !== before ? `moved ${dir}` : "no effect",
    };
  }
  feedback(): string {
    return this.success ? "Reached the end." : "Did not reach the end.";
  }
}

export class CorridorFamily implements EnvFamily<CorridorTask> {
  readonly name = "corridor";
  readonly maxTurns = 10;
  loadSplit(): CorridorTask[] {
    return [3, 4, 5].map((length) => ({ id: `c${length}`, env: "corridor", length }));
  }
  makeEpisode(task: CorridorTask): CorridorEpisode {
    return new CorridorEpisode(task);
  }
  prompt() {
    return {
      taskDescription: "Walk to the end of the corridor.",
      formatReminder: "Reply with one move in a fenced block: ```right``` or ```left```.",
    };
  }
}

if (!knownEnvs().includes("corridor")) registerEnv("corridor", () => new CorridorFamily());
