// The custom-environment example from docs/environments.md, kept here so that it keeps compiling and working.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  getEnv,
  parseDirection,
  registerEnv,
  TracedEpisode,
  type EnvFamily,
  type StepResult,
  type Task,
} from "./index.ts";

interface CorridorTask extends Task {
  length: number;
}

class CorridorEpisode extends TracedEpisode {
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

class CorridorFamily implements EnvFamily<CorridorTask> {
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

registerEnv("corridor", () => new CorridorFamily());

test("the documented custom environment registers and plays", async () => {
  const env = getEnv("corridor");
  const ep = env.makeEpisode(env.loadSplit("test")[0]!);
  assert.equal(ep.initialObservation, "X . .");
  await ep.step("```right```");
  const r = await ep.step("```right```");
  assert.equal(r.reward, 1);
  assert.equal(ep.done, true);
  assert.equal(ep.success, true);
});
