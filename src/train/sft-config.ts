/**
 * The config of a supervised fine-tuning run (`erl sft`): data, model and engine (the same keys as
 * `erl train`'s), the optimiser with its learning-rate schedule, evaluation of a held-out loss, and
 * checkpoints. Files are JSON; presets live in `configs/sft/`. Validation, `--set` overrides and
 * error messages are the run config's (config.ts): unknown keys and wrong values name the key.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { inputError, UserError } from "../util/errors.ts";
import { bool, check, int, num, obj, oneOf, str, type Field } from "../util/schema.ts";
import { defaultConfig, runSchema, type RunConfig } from "./config.ts";
import { applySets } from "./config/set.ts";

export interface SftConfig {
  kind: "sft";
  description: string;
  /** Run name = directory name under `runsDir`; null derives `sft-<data>-seed<seed>-<time>`. */
  name: string | null;
  runsDir: string;
  seed: number;
  data: {
    /** Chat JSONL (src/train/sft-data.ts). */
    train: string;
    /** Held-out chat JSONL; null = `evalFraction` of the train file, drawn with the seed. */
    eval: string | null;
    /** Share of the train file held out when `eval` is null (0 = no held-out loss). */
    evalFraction: number;
    /** Evaluate on at most this many held-out conversations (null = all). */
    evalMax: number | null;
    /** "assistant": loss on assistant messages of weight 1; "all": on every token. */
    trainOn: "assistant" | "all";
    /** Longest sequence in tokens; null = the model's context window. */
    maxTokens: number | null;
    /** A conversation longer than maxTokens: "skip" it (counted and reported) or stop with an "error". */
    tooLong: "skip" | "error";
  };
  model: RunConfig["model"];
  engine: Pick<RunConfig["engine"], "url" | "python">;
  /** Passes over the train set; `steps` caps the optimizer steps when not null. */
  epochs: number;
  steps: number | null;
  /** Conversations per optimizer step. */
  batchSize: number;
  /**
   * Several conversations in one row of a micro-batch (positions restart, attention stays within
   * each) instead of padding rows to the longest: "auto" measures both on the first batch.
   */
  packing: "auto" | "on" | "off";
  optim: RunConfig["optim"] & {
    /** Learning-rate schedule after warm-up: cosine or linear decay to lr × minLrRatio, or constant. */
    schedule: "cosine" | "linear" | "constant";
    /** Linear warm-up steps from 0. */
    warmupSteps: number;
    minLrRatio: number;
  };
  eval: {
    /** Held-out loss every K steps (0 = only at the end, if `final`). */
    every: number;
    final: boolean;
    /** Before the first step too, for a starting point. */
    initial: boolean;
  };
  checkpoint: { every: number; keep: number };
}

/** The run config's `model` block: the same keys and checks as `erl train`'s. */
const modelField = (): Field => (runSchema() as Extract<Field, { kind: "object" }>).fields.model!;

export const sftSchema = (): Field =>
  obj({
    kind: oneOf(["sft"]),
    description: str(),
    name: str({ nullable: true, nonEmpty: true }),
    runsDir: str({ nonEmpty: true }),
    seed: int(0, { max: 2 ** 31 - 1 }),
    data: obj({
      train: str({ nonEmpty: true }),
      eval: str({ nullable: true, nonEmpty: true }),
      evalFraction: num({ min: 0, max: 0.5 }),
      evalMax: int(1, { nullable: true }),
      trainOn: oneOf(["assistant", "all"]),
      maxTokens: int(16, { nullable: true, max: 1 << 20 }),
      tooLong: oneOf(["skip", "error"]),
    }),
    model: modelField(),
    engine: obj({
      url: str({ nullable: true, nonEmpty: true }),
      python: str({ nullable: true, nonEmpty: true }),
    }),
    epochs: num({ min: 0, exclusiveMin: true, max: 1000 }),
    steps: int(1, { nullable: true, max: 10_000_000 }),
    batchSize: int(1, { max: 65536 }),
    packing: oneOf(["auto", "on", "off"]),
    optim: obj({
      lr: num({ min: 0 }),
      weightDecay: num({ min: 0 }),
      beta1: num({ min: 0, max: 1 }),
      beta2: num({ min: 0, max: 1 }),
      eps: num({ min: 0, exclusiveMin: true }),
      gradClip: num({ min: 0, exclusiveMin: true, nullable: true }),
      schedule: oneOf(["cosine", "linear", "constant"]),
      warmupSteps: int(0),
      minLrRatio: num({ min: 0, max: 1 }),
    }),
    eval: obj({ every: int(0), final: bool, initial: bool }),
    checkpoint: obj({ every: int(1), keep: int(1) }),
  });

export function defaultSftConfig(): SftConfig {
  const run = defaultConfig();
  return {
    kind: "sft",
    description: "",
    name: null,
    runsDir: "runs",
    seed: 0,
    data: {
      train: "",
      eval: null,
      evalFraction: 0.02,
      evalMax: 256,
      trainOn: "assistant",
      maxTokens: null,
      tooLong: "skip",
    },
    model: { ...run.model, reference: "none" },
    engine: { url: null, python: null },
    epochs: 1,
    steps: null,
    batchSize: 16,
    packing: "auto",
    optim: {
      lr: 1e-4,
      weightDecay: 0,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      gradClip: 1,
      schedule: "cosine",
      warmupSteps: 10,
      minLrRatio: 0.1,
    },
    eval: { every: 50, final: true, initial: true },
    checkpoint: { every: 50, keep: 2 },
  };
}

function crossCheck(cfg: SftConfig, where: { file?: string }): void {
  if (cfg.data.train === "")
    throw inputError({ ...where, key: "data.train" }, "required: a chat JSONL file (--data FILE)");
  if (cfg.model.reference === "base" || cfg.model.reference === "copy")
    throw inputError(
      { ...where, key: "model.reference" },
      'supervised fine-tuning has no KL term: use "none" (or "auto")',
    );
}

export function validateSftConfig(
  value: unknown,
  where: { file?: string } = {},
  base: SftConfig = defaultSftConfig(),
  cross = true,
): SftConfig {
  const cfg = check(sftSchema(), value, base, "", where) as SftConfig;
  if (cross) crossCheck(cfg, where);
  return cfg;
}

export function applySftOverrides(cfg: SftConfig, sets: readonly string[]): SftConfig {
  return applySets(sftSchema(), cfg, sets, validateSftConfig, (c) => crossCheck(c, { file: "--set" }));
}

/** The folder of the shipped SFT presets. */
export function sftPresetsDir(): string {
  return fileURLToPath(new URL("../../configs/sft/", import.meta.url));
}

export function listSftPresets(): string[] {
  const dir = sftPresetsDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5))
    .sort();
}

/** `--config` (a JSON file or a preset in configs/sft/) plus `--set` overrides, over the defaults. */
export function buildSftConfig(spec: string | undefined, sets: readonly string[]): SftConfig {
  let base = defaultSftConfig();
  if (spec !== undefined) {
    let file = spec;
    if (!(existsSync(spec) && statSync(spec).isFile())) {
      const preset = join(sftPresetsDir(), spec.endsWith(".json") ? spec : `${spec}.json`);
      if (isAbsolute(spec) || spec.includes("/") || !existsSync(preset)) {
        const presets = listSftPresets();
        throw new UserError(
          `--config ${spec}: no such file and no SFT preset of that name${presets.length ? ` (presets: ${presets.join(", ")})` : ""}`,
        );
      }
      file = preset;
    }
    let raw: unknown;
    try {
      let text = readFileSync(file, "utf8");
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      raw = JSON.parse(text);
    } catch (e) {
      throw inputError({ file }, `not valid JSON (${(e as Error).message})`);
    }
    base = validateSftConfig(raw, { file }, base, false);
  }
  const cfg = applySftOverrides(base, sets);
  crossCheck(cfg, { file: spec ?? "--set" });
  return cfg;
}
