// The CI-sized recipe end to end (corpus → tokenizer → a few bf16 steps → HF export), then the
// exported directory loads through the engine and renders chats with one token per board cell.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEngine } from "../engine/client.ts";

test("erl pretrain --recipe tiny --ci runs end to end and the export loads through the engine", async () => {
  const work = mkdtempSync(join(tmpdir(), "erl-tiny-ci-"));
  try {
    const r = spawnSync(
      process.execPath,
      ["bin/erl.mjs", "pretrain", "--recipe", "tiny", "--ci", "--work", work],
      {
        encoding: "utf8",
      },
    );
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const log = readFileSync(join(work, "train-log.jsonl"), "utf8").trim().split("\n");
    assert.equal(log.length, 3, "three optimizer steps");
    const model = join(work, "model");
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
      assert.ok(existsSync(join(model, f)), f);
    const cfg = JSON.parse(readFileSync(join(model, "config.json"), "utf8")) as { architectures: string[] };
    assert.deepEqual(cfg.architectures, ["LlamaForCausalLM"]);

    // Resuming a finished run does no more steps.
    const again = spawnSync(
      process.execPath,
      ["bin/erl.mjs", "pretrain", "--recipe", "tiny", "--ci", "--work", work, "--resume", "--stage", "train"],
      { encoding: "utf8" },
    );
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /resumed at step 3/);

    const engine = await startEngine();
    try {
      const info = await engine.loadModel({ path: model, dtype: "bfloat16", device: "cpu", seed: 0 });
      assert.ok(info.model && info.model.eosTokenIds.length === 1);
      const board = " A \t D \t\n C \t B \t";
      const ids = await engine.encode(board, { addSpecialTokens: false });
      assert.equal(ids.length, 5, "one token per cell plus the newline");
      const chat = await engine.renderChat(
        [
          { role: "system", content: "s" },
          { role: "user", content: board },
        ],
        { addGenerationPrompt: true },
      );
      const out = await engine.sample({ prompts: [chat], n: 1, maxTokens: 4, temperature: 0, seed: 0 });
      assert.equal(out.length, 1);
      assert.ok(out[0]!.tokens.length >= 1);
    } finally {
      await engine.close();
    }

    // The acceptance stage runs on the toy model and writes every figure (FrozenLake and Sokoban).
    const evalRun = spawnSync(
      process.execPath,
      [
        "bin/erl.mjs",
        "pretrain",
        "--recipe",
        "tiny",
        "--ci",
        "--work",
        work,
        "--stage",
        "eval",
        "--limit",
        "2",
        "--modes",
        "greedy",
      ],
      { encoding: "utf8" },
    );
    assert.equal(evalRun.status, 0, evalRun.stderr + evalRun.stdout);
    const report = JSON.parse(readFileSync(join(work, "acceptance-quick.json"), "utf8")) as {
      modes: { mode: string; tasks: number; s0: number; sRule: number; retries: number }[];
      sokoban: {
        mode: string;
        tasks: number;
        s0: number;
        sRule: number;
        sRuleReference: number;
        bySize: { sRule: object; sRuleReference: object };
      }[];
    };
    assert.deepEqual(
      report.modes.map((m) => [m.mode, m.tasks]),
      [["greedy", 2]],
    );
    assert.deepEqual(
      report.sokoban.map((m) => [m.mode, m.tasks]),
      [["greedy", 2]],
    );
    for (const f of [...report.modes, ...report.sokoban])
      for (const x of [f.s0, f.sRule]) assert.ok(x >= 0 && x <= 1);
    const sk = report.sokoban[0]!;
    assert.ok(sk.sRuleReference >= 0 && sk.sRuleReference <= 1);
    for (const split of [sk.bySize.sRule, sk.bySize.sRuleReference]) {
      const sizes = Object.values(split as Record<string, [number, number]>);
      assert.equal(
        sizes.reduce((n, [, tasks]) => n + tasks, 0),
        2,
        "every Sokoban task counted once by size",
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
