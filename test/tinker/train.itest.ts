/**
 * `erl train` with `engine.kind: "tinker"` pointed at `erl engine serve --tinker` (the official SDK in
 * the bridge, the engine behind the server), against the same run on a local engine: the same metrics,
 * seed for seed, within float rounding. A Tinker service samples one prompt per request, so the local
 * run samples each prompt with its own seed (ERL_ENGINE_SAMPLE_SEEDS=per-prompt, the bridge's
 * seeds); a local run with the default per-call seeds is the control that differs.
 *
 * Not part of `npm test`: run by scripts/test-tinker.sh (.ci/run).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "../../src/util/paths.ts";
import { spawnTinkerServer } from "../../src/engine/tinker.ts";

const TINY = join(REPO_ROOT, "models", "erl-tiny");
const KEY = "tml-train-itest";
// Metrics the bridge cannot report: the entropy needs the whole next-token distribution.
const ONLY_LOCAL = new Set(["entropy"]);

type Row = Record<string, number | string>;

function config(dir: string, name: string, engine: Record<string, unknown>, checkpointEvery = 2): string {
  const file = join(dir, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      env: "frozenlake",
      seed: 3,
      model: {
        path: TINY,
        dtype: "float32",
        device: "cpu",
        lora: { rank: 4, alpha: 32, dropout: 0, targetModules: "all-linear" },
        reference: "none",
      },
      engine,
      steps: 2,
      batchSize: 2,
      algo: {
        name: "erl",
        profile: "compact",
        maxTokensPerTurn: 48,
        maxReflectionTokens: 96,
        maxContextTokens: 2048,
      },
      optim: { lr: 1e-3 },
      loss: { klCoef: 0, dualClip: null },
      data: { evalTasks: 2 },
      eval: { every: 0, final: true, initial: false, n: 1 },
      checkpoint: { every: checkpointEvery, keep: 2 },
      runsDir: dir,
      name,
    }),
  );
  return file;
}

async function train(file: string, env: NodeJS.ProcessEnv): Promise<void> {
  await promisify(execFile)(
    process.execPath,
    [join(REPO_ROOT, "bin", "erl.mjs"), "train", "--config", file],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env },
      timeout: 900_000,
      maxBuffer: 64 << 20,
    },
  );
}

/** Starts `erl train`, interrupts it (SIGINT) once step 1 is reported, and waits for it to stop. */
async function trainUntilStep1(file: string, env: NodeJS.ProcessEnv): Promise<string> {
  const child = spawn(process.execPath, [join(REPO_ROOT, "bin", "erl.mjs"), "train", "--config", file], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const onData = (d: Buffer) => {
    out += d.toString();
    if (/^step 1\/2 /m.test(out) && child.exitCode === null) child.kill("SIGINT");
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  await new Promise((r) => child.once("exit", r));
  return out;
}

function metrics(dir: string, name: string): Row[] {
  return readFileSync(join(dir, name, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Row);
}

/** Keys whose values differ beyond rounding (timings and throughput aside). */
function differences(a: Row[], b: Row[]): string[] {
  const out: string[] = [];
  if (a.length !== b.length) return [`${a.length} rows against ${b.length}`];
  a.forEach((x, i) => {
    const y = b[i]!;
    for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) {
      if (k.startsWith("time") || k === "tokens_per_s" || k === "wall" || k === "at") continue;
      const [vx, vy] = [x[k], y[k]];
      if (vx === undefined || vy === undefined) {
        if (!ONLY_LOCAL.has(k)) out.push(`${x.kind}@${x.step} ${k}: ${vx} vs ${vy}`);
        continue;
      }
      if (typeof vx === "number" && typeof vy === "number") {
        // Sums of fp32 log-probs in another batch shape differ in the last bits; mismatch metrics are
        // themselves rounding-sized (1e-6) and compared absolutely.
        if (Math.abs(vx - vy) > 1e-5 + 1e-4 * Math.abs(vy))
          out.push(`${x.kind}@${x.step} ${k}: ${vx} vs ${vy}`);
      } else if (JSON.stringify(vx) !== JSON.stringify(vy))
        out.push(`${x.kind}@${x.step} ${k}: ${vx} vs ${vy}`);
    }
  });
  return out;
}

test(
  "erl train on a Tinker service (serve --tinker) gives the local engine's metrics, seed for seed",
  { timeout: 1_800_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "erl-tinker-train-"));
    const server = await spawnTinkerServer({
      model: TINY,
      servedModelName: "erl-tiny",
      host: "127.0.0.1",
      port: 0,
      token: KEY,
      store: join(dir, "store"),
      dtype: "float32",
      device: "cpu",
      stderr: () => undefined,
    });
    try {
      const tinkerCfg = config(dir, "tinker", {
        kind: "tinker",
        baseUrl: server.url,
        apiKeyEnv: "ERL_ITEST_TINKER_KEY",
        baseModel: "erl-tiny",
      });
      await train(tinkerCfg, { ERL_ITEST_TINKER_KEY: KEY });
      // The same run stopped after step 1 and resumed: its checkpoint is the service's saved state.
      const resumedCfg = config(
        dir,
        "resumed",
        { kind: "tinker", baseUrl: server.url, apiKeyEnv: "ERL_ITEST_TINKER_KEY", baseModel: "erl-tiny" },
        1,
      );
      const first = await trainUntilStep1(resumedCfg, { ERL_ITEST_TINKER_KEY: KEY });
      assert.match(first, /step 1\/2/);
      assert.doesNotMatch(first, /finished:/);
      await promisify(execFile)(
        process.execPath,
        [join(REPO_ROOT, "bin", "erl.mjs"), "train", "--resume", join(dir, "resumed")],
        {
          cwd: REPO_ROOT,
          env: { ...process.env, ERL_ITEST_TINKER_KEY: KEY },
          timeout: 900_000,
        },
      );
      await train(config(dir, "local", { kind: "engine" }), { ERL_ENGINE_SAMPLE_SEEDS: "per-prompt" });
      await train(config(dir, "control", { kind: "engine" }), { ERL_ENGINE_SAMPLE_SEEDS: "per-call" });

      const [tinker, local, control] = ["tinker", "local", "control"].map((n) => metrics(dir, n));
      assert.deepEqual(
        tinker!.map((r) => `${r.kind}@${r.step}`),
        ["train@1", "train@2", "eval@2"],
      );
      assert.ok(typeof tinker![0]!.loss === "number" && typeof tinker![0]!.grad_norm === "number");
      assert.deepEqual(differences(tinker!, local!), []);
      assert.deepEqual(differences(tinker!, metrics(dir, "resumed")), []);
      assert.ok(differences(tinker!, control!).length > 0, "per-call seeds sample other tokens");
      // The run's checkpoint points at the service's saved state; the export records a tinker:// path.
      const pointer = JSON.parse(
        readFileSync(join(dir, "tinker", "checkpoints", "step-000002", "engine", "tinker.json"), "utf8"),
      ) as { tinker_path: string; kind: string };
      assert.equal(pointer.kind, "state");
      assert.match(pointer.tinker_path, /^tinker:\/\/session-[0-9a-f]+:train:0\/weights\/erl-step-2-/);
      assert.ok(existsSync(join(dir, "store")));
      // Export: the adapter where the service offers downloads; this one does not, so the directory
      // records the tinker:// path of the exported weights and why nothing was downloaded.
      await promisify(execFile)(
        process.execPath,
        [join(REPO_ROOT, "bin", "erl.mjs"), "export", join(dir, "tinker"), join(dir, "exported")],
        { cwd: REPO_ROOT, env: { ...process.env, ERL_ITEST_TINKER_KEY: KEY }, timeout: 600_000 },
      );
      const exported = JSON.parse(readFileSync(join(dir, "exported", "tinker.json"), "utf8")) as Record<
        string,
        string
      >;
      assert.equal(exported.kind, "external_weights");
      assert.match(
        exported.tinker_path!,
        /^tinker:\/\/session-[0-9a-f]+:train:0\/external_weights\/erl-export-step-2-/,
      );
      assert.match(exported.not_downloaded!, /NotFoundError|404/);
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
