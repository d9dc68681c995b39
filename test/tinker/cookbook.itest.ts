/**
 * tinker-cookbook's minimal supervised loop and minimal RL loop (recipes/sl_loop.py, rl_loop.py), run
 * unchanged by test/tinker/cookbook_drive.py against `erl engine serve --tinker` on erl-tiny: the
 * supervised loop trains 120 steps and checkpoints; the RL loop resumes from its final state through the
 * cookbook's own checkpoint code, samples through sampling clients of the live weights, and saves.
 *
 * Not part of `npm test`: run by scripts/test-tinker.sh (.ci/run).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "../../src/util/paths.ts";
import { spawnTinkerServer, tinkerEnv, tinkerPython } from "../../src/engine/tinker.ts";

const KEY = "tml-cookbook-itest";

function jsonl(file: string): Record<string, unknown>[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

test(
  "tinker-cookbook's supervised and RL loops run unchanged against serve --tinker",
  { timeout: 1_200_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "erl-tinker-cookbook-"));
    // Served under the path the recipes pass to AutoTokenizer (relative to the repository root).
    const server = await spawnTinkerServer({
      model: "models/erl-tiny",
      host: "127.0.0.1",
      port: 0,
      token: KEY,
      store: join(dir, "store"),
      dtype: "float32",
      device: "cpu",
      stderr: () => undefined,
    });
    try {
      const log = join(dir, "log");
      const { stdout, stderr } = await promisify(execFile)(
        tinkerPython(),
        [join(REPO_ROOT, "test", "tinker", "cookbook_drive.py"), server.url, "models/erl-tiny", log],
        { cwd: REPO_ROOT, env: tinkerEnv({ TINKER_API_KEY: KEY }), maxBuffer: 64 << 20, timeout: 1_000_000 },
      );
      assert.match(stdout, /\{"ok": true\}/);
      assert.match(stderr, /Resuming from batch 120/);

      const rows = jsonl(join(log, "metrics.jsonl"));
      const sl = rows.filter((r) => typeof r.train_mean_nll === "number");
      assert.equal(sl.length, 120);
      const nll = sl.map((r) => r.train_mean_nll as number);
      // The supervised loop learns its data: mean NLL per token falls from ~11 to well under 1.
      assert.ok(
        nll[0]! > 5 && nll.at(-1)! < 0.5 * Math.min(...nll.slice(0, 10)) && nll.at(-1)! < 1,
        `nll ${nll[0]} -> ${nll.at(-1)}`,
      );
      assert.ok(
        sl.every((r) => typeof r["grad_norm:mean"] === "number"),
        "optim_step reports its gradient norm",
      );
      const rl = rows.filter((r) => r["reward/total"] !== undefined);
      assert.deepEqual(
        rl.map((r) => r.step),
        [120, 121],
      );

      const ckpts = jsonl(join(log, "checkpoints.jsonl")) as {
        name: string;
        batch: number;
        state_path: string;
        sampler_path?: string;
      }[];
      assert.deepEqual(
        ckpts.map((c) => [c.name, c.batch]),
        [
          ["000060", 60],
          ["final", 120],
          ["final", 124],
        ],
      );
      for (const c of ckpts) {
        assert.match(c.state_path, /^tinker:\/\/session-[0-9a-f]+:train:0\/weights\//);
        const [run, kind, name] = c.state_path.slice("tinker://".length).split("/");
        assert.ok(
          existsSync(join(dir, "store", run!.replaceAll(":", "_"), kind!, name!, "tinker.json")),
          c.state_path,
        );
      }
      // The RL loop trained a new model created from the supervised loop's saved state.
      assert.notEqual(ckpts[2]!.state_path.split("/")[2], ckpts[1]!.state_path.split("/")[2]);
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
