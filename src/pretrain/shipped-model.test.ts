// The shipped erl-tiny checkpoint loads through the engine, tokenises a board cell as one token,
// and a fixed-seed greedy episode on a fixed reference task gives the recorded action sequence.
// A change to the model files, the tokenizer, the chat template, the prompts or the sampler that
// alters what the model does shows up here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { EngineBackend } from "../agent/backend.ts";
import { runEpisodes } from "../agent/loop.ts";
import { parseDirection } from "../envs/common.ts";
import { FrozenLakeFamily } from "../envs/frozenlake.ts";
import { SokobanFamily } from "../envs/sokoban.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { startEngine } from "../engine/client.ts";
import { Rng } from "../util/rng.ts";
import { rulebookSystemPrompt, tableRulebookText } from "./frozenlake-corpus.ts";
import { sokobanTableRulebook } from "./sokoban-corpus.ts";

const MODEL = fileURLToPath(new URL("../../models/erl-tiny/", import.meta.url));
const SOKOBAN_MODEL = fileURLToPath(new URL("../../models/erl-tiny-sokoban/", import.meta.url));

/** One temperature-0 episode of `task` under `system`, through the agent loop. */
async function greedyEpisode<T extends Task>(
  engine: Awaited<ReturnType<typeof startEngine>>,
  env: EnvFamily<T>,
  task: T,
  system: string,
) {
  const [outcome] = await runEpisodes([{ id: "golden", task, system, sampling: { temperature: 0 } }], {
    env,
    model: await EngineBackend.create(engine),
    rng: new Rng(0),
    settings: {
      maxTokensPerTurn: 64,
      maxContextTokens: 2048,
      contextOverflow: "stop",
      turnTokenLimit: "step",
    },
  });
  return outcome!;
}

/**
 * Recorded with the shipped checkpoint (step 14,210): test task 28 (4×4), the correct table
 * rulebook, temperature 0. Five moves: the episode ends on the goal.
 */
const TASK_INDEX = 28;
const RECORDED_ACTIONS: readonly string[] = ["down", "down", "right", "right", "up"];

test("shipped erl-tiny: loads through the engine and replays the recorded greedy episode", async () => {
  const engine = await startEngine({ env: { OMP_NUM_THREADS: "1" } });
  try {
    const info = await engine.loadModel({ path: MODEL, dtype: "bfloat16", device: "cpu", seed: 0 });
    assert.ok(info.model);
    assert.ok(info.parameters.total > 1_000_000 && info.parameters.total < 15_000_000);
    const cells = await engine.encode(" A \t B \t C \t D \t X \t √ \t", { addSpecialTokens: false });
    assert.equal(cells.length, 6, "one token per board cell");

    const env = new FrozenLakeFamily();
    const task = env.loadSplit("test")[TASK_INDEX]!;
    const parts = env.prompt();
    const outcome = await greedyEpisode(
      engine,
      env,
      task,
      rulebookSystemPrompt(tableRulebookText({ roles: { ...env.symbols }, notes: [] }), parts),
    );
    const actions = outcome.turns.map((t) => parseDirection(t.text) ?? "invalid");
    assert.deepEqual(actions, RECORDED_ACTIONS);
    assert.equal(outcome.success, true);
  } finally {
    await engine.close();
  }
});

/**
 * Recorded with erl-tiny-sokoban (step 19,564): Sokoban test task 71 (8×8: player, box and goal in
 * one row), the correct table rulebook, temperature 0. One push solves it.
 */
const SOKOBAN_TASK_INDEX = 71;
const SOKOBAN_RECORDED_ACTIONS: readonly string[] = ["right"];

test("shipped erl-tiny-sokoban: loads through the engine and replays the recorded greedy episode", async () => {
  const engine = await startEngine({ env: { OMP_NUM_THREADS: "1" } });
  try {
    await engine.loadModel({ path: SOKOBAN_MODEL, dtype: "bfloat16", device: "cpu", seed: 0 });
    const cells = await engine.encode(" A \t a \t B \t b \t C \t D \t E \t", { addSpecialTokens: false });
    assert.equal(cells.length, 7, "one token per board cell");
    const env = new SokobanFamily();
    const task = env.loadSplit("test")[SOKOBAN_TASK_INDEX]!;
    const outcome = await greedyEpisode(
      engine,
      env,
      task,
      rulebookSystemPrompt(sokobanTableRulebook({ ...env.symbols }), env.prompt()),
    );
    assert.deepEqual(
      outcome.turns.map((t) => parseDirection(t.text) ?? "invalid"),
      SOKOBAN_RECORDED_ACTIONS,
    );
    assert.equal(outcome.success, true);
  } finally {
    await engine.close();
  }
});
