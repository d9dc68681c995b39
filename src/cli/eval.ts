/**
 * `erl eval`: first-attempt evaluation (initial prompt, no memory) of a model directory or of a
 * trained run's newest checkpoint on a split, with the spec's sampling settings.
 *
 *   erl eval --model models/erl-tiny --env frozenlake --split test --n 4
 *   erl eval --model runs/my-run --split test
 *   erl eval --policy openai:gpt-4o-mini --env frozenlake      # any OpenAI-compatible endpoint
 */
import { parseArgs } from "node:util";
import { closeSync, existsSync, openSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { systemUserError, UserError } from "../util/errors.ts";
import { appendJsonl } from "../util/jsonl.ts";
import { Rng } from "../util/rng.ts";
import { knownEnvs } from "../envs/registry.ts";
import {
  buildConfig,
  checkModelPath,
  applyOverrides,
  envOptions,
  evalOptionsFrom,
  getAlgorithm,
  type RunConfig,
} from "../train/config.ts";
import { defaultDeps, loadRunForInference } from "../train/deps.ts";
import { checkRunLimits, readModelShape } from "../train/limits.ts";
import { isRunDirectory } from "../train/runfiles.ts";
import { Progress } from "../train/progress.ts";
import type { Engine } from "../engine/api.ts";
import type { ModelBackend } from "../agent/backend.ts";

const HELP = `usage: erl eval --model <model-dir|run-dir> [--env <env>] [--split test|train] [--n N] [--tasks N]
                [--config <file|preset>] [--set key=value ...] [--seed S] [--out rollouts.jsonl]
       erl eval --policy openai:<model> --env <env> [--base-url URL] [--api-key-env VAR] [...]

First-attempt evaluation: initial prompt, no memory, no reflection; n samples per task at the
evaluation sampling settings (T 0.7, top-p 0.8, top-k 20 unless the config says otherwise).
With a run directory, its newest checkpoint and its config are used (--env defaults to the run's).
An erl-icl run is evaluated under its memory's rulebook (its deployed artifact), next to the
initial prompt with the same seeds.

options:
  --model DIR     an HF model directory, or a run directory
  --policy P      openai:<model>: a model behind an OpenAI-compatible endpoint (training-free
                  baseline; top-k is not sent, OpenAI has none; lengths count characters)
  --base-url URL  the endpoint (default $OPENAI_BASE_URL, else https://api.openai.com/v1)
  --api-key-env V the environment variable holding the key (default OPENAI_API_KEY)
  --env ENV       ${knownEnvs().join(", ")}
  --split S       test (default) or train
  --n N           samples per task (default 4; HotpotQA 1)
  --tasks N       only the first N tasks of the split (default: all)
  --config C      config file or preset for the other settings (default <env>-tiny)
  --out FILE      also write every episode to FILE (JSONL, the rollouts.jsonl record format)`;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      env: { type: "string" },
      split: { type: "string" },
      n: { type: "string" },
      tasks: { type: "string" },
      config: { type: "string" },
      set: { type: "string", multiple: true },
      seed: { type: "string" },
      out: { type: "string" },
      policy: { type: "string" },
      "base-url": { type: "string" },
      "api-key-env": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.policy !== undefined && values.model !== undefined)
    throw new UserError("give either --model or --policy, not both");
  if (
    values.policy === undefined &&
    (values["base-url"] !== undefined || values["api-key-env"] !== undefined)
  )
    throw new UserError("--base-url and --api-key-env go with --policy openai:<model>");
  if (!values.model && !values.policy) throw new UserError(`--model or --policy is required\n\n${HELP}`);
  const split = values.split ?? "test";
  if (split !== "test" && split !== "train")
    throw new UserError(`--split must be test or train, got ${split}`);
  if (values.env !== undefined && !knownEnvs().includes(values.env))
    throw new UserError(`--env ${values.env}: unknown environment (known: ${knownEnvs().join(", ")})`);
  const n = intFlag("n", values.n, 1);
  const tasksN = intFlag("tasks", values.tasks, 1);
  const seed = intFlag("seed", values.seed, 0);
  if (values.out !== undefined) checkOut(values.out);
  const sets: string[] = [`data.evalSplit=${split}`, `data.evalTasks=${tasksN ?? "null"}`];
  if (n !== null) sets.push(`eval.n=${n}`);
  if (seed !== null) sets.push(`seed=${seed}`);
  sets.push(...(values.set ?? []));

  let config: RunConfig;
  let state: string | null = null;
  let rulebook: string | null = null;
  let apiPolicy: { model: string; baseUrl: string; apiKeyEnv: string } | null = null;
  if (values.policy !== undefined) {
    const m = /^openai:(.+)$/.exec(values.policy);
    if (!m)
      throw new UserError(`--policy ${values.policy}: expected openai:<model>, e.g. openai:gpt-4o-mini`);
    if (!values.env)
      throw new UserError(`--env is required with --policy (one of ${knownEnvs().join(", ")})`);
    const baseUrl = values["base-url"] ?? process.env.OPENAI_BASE_URL ?? "https://api.openai.com/v1";
    if (!/^https?:\/\//.test(baseUrl))
      throw new UserError(`--base-url ${baseUrl}: must start with http:// or https://`);
    apiPolicy = { model: m[1]!, baseUrl, apiKeyEnv: values["api-key-env"] ?? "OPENAI_API_KEY" };
    config = buildConfig(values.config ?? `${values.env}-tiny`, [`env=${values.env}`, ...sets]).config;
  } else {
    const modelArg = resolve(values.model!);
    if (isRunDirectory(modelArg)) {
      const r = await loadRunForInference(modelArg);
      if (values.env && values.env !== r.config.env) sets.push(`env=${values.env}`);
      config = applyOverrides(r.config, sets);
      const algo = getAlgorithm(config.algo.name);
      if (algo.deploysMemory) {
        // The artifact is the memory: the weights are the base model's (or the API's).
        rulebook = r.memory?.slots[0] ?? null;
        if (config.policy.kind === "openai")
          apiPolicy = {
            model: config.policy.model!,
            baseUrl: config.policy.baseUrl!,
            apiKeyEnv: config.policy.apiKeyEnv,
          };
        console.log(
          `evaluating the ${algo.name} run ${modelArg} at step ${r.step} under its memory${rulebook === null ? " (empty: the initial prompt)" : ""}`,
        );
      } else {
        state = r.checkpoint;
        console.log(`evaluating ${modelArg} at step ${r.step}`);
      }
    } else {
      if (!values.env)
        throw new UserError(`--env is required with a model directory (one of ${knownEnvs().join(", ")})`);
      config = buildConfig(values.config ?? `${values.env}-tiny`, [
        `env=${values.env}`,
        `model.path=${values.model}`,
        ...sets,
      ]).config;
    }
  }
  if (!apiPolicy) checkModelPath(config);

  const deps = defaultDeps();
  const progress = new Progress();
  const env = await deps.getEnv(config.env, envOptions(config));
  const tasks = env.loadSplit(config.data.evalSplit).slice(0, config.data.evalTasks ?? undefined);
  // Every size within its limit before the engine starts (src/train/limits.ts); flags named as flags.
  checkRunLimits(config, {
    only: "eval",
    shape: apiPolicy ? null : readModelShape(resolve(config.model.path)),
    evalSplitTasks: tasks.length,
    where: { flags: { "eval.n": "--n", "data.evalTasks": "--tasks", seed: "--seed" } },
  });
  let engine: Engine | null = null;
  try {
    let model: ModelBackend;
    if (apiPolicy) {
      const { apiBackendFor } = await import("../train/deps.ts");
      model = await apiBackendFor("policy", {
        ...config.policy,
        baseUrl: apiPolicy.baseUrl,
        model: apiPolicy.model,
        apiKeyEnv: apiPolicy.apiKeyEnv,
      });
      progress.line(`policy: openai:${apiPolicy.model} at ${apiPolicy.baseUrl}`);
    } else {
      progress.line(`starting the engine and loading ${config.model.path}`);
      engine = await deps.startEngine(config, resolve(config.model.path));
      if (state) await engine.loadState(state);
      model = await deps.makeBackend(engine);
    }
    const { evaluate } = await deps.trainer();
    const opts = evalOptionsFrom(config);
    const once = async (system: string | null) => {
      const t0 = performance.now();
      const res = await evaluate(
        {
          env,
          model,
          rng: new Rng(`${config.seed}/eval/cli`),
          step: 0,
          onProgress: (e) => progress.update(e.phase, e.done, e.total, e.note),
        },
        tasks,
        system !== null ? { ...opts, system } : opts,
      );
      progress.clear();
      return { res, seconds: (performance.now() - t0) / 1000 };
    };
    const line = (label: string, r: Awaited<ReturnType<typeof once>>) =>
      console.log(
        `${config.env} ${config.data.evalSplit}: ${tasks.length} tasks × ${opts.n}  mean reward ${r.res.reward.toFixed(3)}  pass@1 ${r.res.passAt1.toFixed(3)}${opts.n > 1 ? `  pass@${opts.n} ${r.res.passAtN.toFixed(3)}` : ""}${label}  (${r.seconds.toFixed(1)}s)`,
      );
    const main = await once(rulebook);
    if (rulebook !== null) {
      line("  under memory", main);
      line("  initial prompt", await once(null));
    } else line("", main);
    if (values.out) {
      try {
        appendJsonl(values.out, main.res.rollouts);
      } catch (e) {
        throw systemUserError(e, "--out: writing the episodes failed") ?? e;
      }
      console.log(`episodes: ${values.out}`);
    }
  } finally {
    if (engine) await engine.close().catch(() => undefined);
  }
  return 0;
}

/** An integer flag's value (null when absent); an error names the flag, not the config key it sets. */
function intFlag(name: string, raw: string | undefined, min: number): number | null {
  if (raw === undefined) return null;
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isSafeInteger(v) || v < min)
    throw new UserError(`--${name} must be an integer >= ${min}, got "${raw}"`);
  return v;
}

/**
 * Checks `--out` before any work: its folder exists, the file opens for appending, and an existing
 * file is a JSONL file (every line a JSON object) that the episodes can be appended to, not some
 * other file.
 */
function checkOut(out: string): void {
  const file = resolve(out);
  const dir = dirname(file);
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UserError(`--out ${out}: the folder ${dir} does not exist; create it first`);
  }
  if (!st.isDirectory()) throw new UserError(`--out ${out}: ${dir} is not a folder`);
  if (existsSync(file)) {
    if (!statSync(file).isFile()) throw new UserError(`--out ${out}: exists and is not a file`);
    const lines = readFileSync(file, "utf8").split("\n");
    lines.forEach((line, i) => {
      if (line.trim() === "") return;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        v = undefined;
      }
      if (v === null || typeof v !== "object" || Array.isArray(v))
        throw new UserError(
          `--out ${out}: exists and is not a JSONL file of records (line ${i + 1}); episodes would be appended to it. Pick another file`,
        );
    });
  }
  // Opened for appending, as the episodes will be: a permission check alone can pass (for root, say)
  // where the write then fails, after the whole evaluation.
  const existed = existsSync(file);
  try {
    closeSync(openSync(file, "a"));
    if (!existed) unlinkSync(file);
  } catch (e) {
    throw systemUserError(e, "--out: cannot write") ?? e;
  }
}
