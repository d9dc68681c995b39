/**
 * `erl export <run> <dir>`: writes a run's trained policy (its newest checkpoint) as a plain HF
 * model directory, or as a LoRA adapter directory for a LoRA run (`--merge-lora` merges it instead).
 */
import { parseArgs } from "node:util";
import { existsSync, readdirSync } from "node:fs";
import { resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { checkModelPath } from "../train/config.ts";
import { defaultDeps, loadRunForInference } from "../train/deps.ts";

const HELP = `usage: erl export <run-dir> <out-dir> [--merge-lora]

Exports the policy of a run's newest checkpoint: an HF model directory (config, safetensors,
tokenizer) loadable by transformers, or for a LoRA run a peft adapter directory.

options:
  --merge-lora   for a LoRA run, merge the adapters into the base weights and write a full model`;

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { "merge-lora": { type: "boolean" }, help: { type: "boolean", short: "h" } },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const [runDir, outDir] = positionals;
  if (!runDir || !outDir || positionals.length > 2)
    throw new UserError(`expected a run directory and an output directory\n\n${HELP}`);
  const out = resolve(outDir);
  if (existsSync(out) && readdirSync(out).length > 0)
    throw new UserError(`${outDir} exists and is not empty; pick a new directory`);
  const { config, checkpoint, step } = await loadRunForInference(resolve(runDir));
  checkModelPath(config);
  const deps = defaultDeps();
  console.log(`loading ${config.model.path} and the checkpoint of step ${step}`);
  const engine = await deps.startEngine(config, resolve(config.model.path));
  try {
    await engine.loadState(checkpoint);
    await engine.export(out, { mergeLora: Boolean(values["merge-lora"]) });
  } finally {
    await engine.close().catch(() => undefined);
  }
  const kind = config.model.lora && !values["merge-lora"] ? "LoRA adapter" : "HF model";
  console.log(`exported the ${kind} of ${runDir} (step ${step}) to ${out}`);
  return 0;
}
