/**
 * `erl export <run> <dir>`: writes a run's trained policy (its newest checkpoint) as a plain HF
 * model directory, or as a LoRA adapter directory for a LoRA run (`--merge-lora` merges it instead).
 */
import { parseArgs } from "node:util";
import { mkdtempSync, readdirSync, rmdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { systemUserError, UserError } from "../util/errors.ts";
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
  checkOutputDir(out, outDir);
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

/**
 * Refuses an output path that is a file, a non-empty directory or not writable, before any model is
 * loaded (a folder must be creatable in a new directory's nearest existing parent).
 */
function checkOutputDir(out: string, given: string): void {
  const stat = (p: string) => {
    try {
      return statSync(p);
    } catch {
      return null;
    }
  };
  const st = stat(out);
  if (st && !st.isDirectory()) throw new UserError(`${given} exists and is a file; pick a new directory`);
  if (st && readdirSync(out).length > 0)
    throw new UserError(`${given} exists and is not empty; pick a new directory`);
  let parent = out;
  while (!stat(parent) && dirname(parent) !== parent) parent = dirname(parent);
  if (!stat(parent)?.isDirectory())
    throw new UserError(`${given}: cannot create the directory, ${parent} is not a directory`);
  // A folder is made and removed there: a permission check alone passes for root where creating one
  // then fails (sysfs, proc), after the model has been loaded.
  try {
    rmdirSync(mkdtempSync(join(parent, ".erl-export-check-")));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    err.path = parent;
    throw (
      systemUserError(err, `cannot write the export to ${given}`) ??
      new UserError(
        `${parent}: cannot write the export to ${given}: no folder can be created there (${err.code ?? err.message})`,
        1,
      )
    );
  }
}
