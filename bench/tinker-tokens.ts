/**
 * Token counts behind docs/tinker.md's cost of a hosted run at the paper's settings: the prompts the
 * `paper` profile renders for the first 64 train tasks of an environment (first-attempt prompt, the
 * observation of each turn, the reflection prompt after a full-length attempt), counted with a real
 * chat tokenizer through the engine's `renderChat`.
 *
 *   node --import tsx bench/tinker-tokens.ts [model-dir] [env ...]
 *
 * model-dir defaults to models/smollm2-135m-instruct (SmolLM2's 49k BPE, installed offline by
 * `npx erl models install smollm2-135m-instruct`): a stand-in for Qwen3's tokenizer, which is not
 * reachable from the machine the figures were measured on. Replies are not sampled: the cost bound
 * takes them at the preset's caps. Prints one JSON line per environment.
 */
import { startEngine } from "../src/engine/client.ts";
import { getEnv } from "../src/envs/registry.ts";
import { getPromptProfile } from "../src/agent/prompts.ts";
import type { ChatMessage } from "../src/engine/api.ts";

const MOVES = ["right", "down", "left", "up"];

async function main(): Promise<void> {
  const [model = "models/smollm2-135m-instruct", ...envs] = process.argv.slice(2);
  const engine = await startEngine();
  try {
    await engine.loadModel({ path: model, dtype: "float32", device: "cpu", seed: 0 });
    const count = async (messages: ChatMessage[]) =>
      (await engine.renderChat(messages, { addGenerationPrompt: true })).length;
    const profile = getPromptProfile("paper");
    for (const name of envs.length ? envs : ["frozenlake", "sokoban"]) {
      const env = getEnv(name);
      const parts = env.prompt();
      const system = profile.initialSystemPrompt(parts);
      const tasks = env.loadSplit("train").slice(0, 64);
      let first = 0;
      let obs = 0;
      let obsTurns = 0;
      let reflection = 0;
      for (const task of tasks) {
        const ep = env.makeEpisode(task);
        first += await count([
          { role: "system", content: system },
          { role: "user", content: ep.initialObservation },
        ]);
        // A full-length attempt (moves in turn, in the action format the prompt asks for), for the
        // observations of later turns and for the reflection prompt that shows its whole trace.
        for (let t = 0; t < env.maxTurns && !ep.done; t++) {
          const r = await ep.step("```\n" + MOVES[t % MOVES.length]! + "\n```");
          obs += (await engine.encode(r.observation)).length;
          obsTurns += 1;
        }
        const state = { trace: ep.trace, reward: ep.totalReward, feedback: ep.feedback() };
        reflection += await count(profile.reflectionMessages(parts, null, state));
      }
      const n = tasks.length;
      console.log(
        JSON.stringify({
          env: name,
          tokenizer: model,
          tasks: n,
          maxTurns: env.maxTurns,
          firstPromptTokens: Math.round(first / n),
          observationTokensPerTurn: Math.round(obs / Math.max(obsTurns, 1)),
          turnsPlayed: +(obsTurns / n).toFixed(2),
          reflectionPromptTokens: Math.round(reflection / n),
        }),
      );
    }
  } finally {
    await engine.close();
  }
}

await main();
