/**
 * `erl export <run> <dir>`: writes a run's trained policy (its newest checkpoint) as a plain HF
 * model directory, or as a LoRA adapter directory for a LoRA run (`--merge-lora` merges it instead).
 */
import { parseArgs } from "node:util";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";
import { KNOWN_MODELS } from "../models/registry.ts";
import { writeFileAtomic } from "../util/jsonl.ts";
import { systemUserError, UserError } from "../util/errors.ts";
import { checkModelPath } from "../train/config.ts";
import { defaultDeps, loadRunForInference } from "../train/deps.ts";

const HELP = `usage: erl export <run-dir> <out-dir> [--merge-lora]

Exports the policy of a run's newest checkpoint: an HF model directory (config, safetensors,
tokenizer) loadable by transformers, or for a LoRA run a peft adapter directory whose
adapter_config.json names its base model portably (a known model's name, or its path inside the
repository). Files get the usual modes (the umask's), so other users can read them. erl-export.json
records the run, the step and the base model.

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
  const adapter = Boolean(config.model.lora && !values["merge-lora"]);
  const base = portableBaseName(resolve(config.model.path));
  // A Tinker service's export may hold only tinker.json (the weights stay on the service).
  if (adapter && existsSync(join(out, "adapter_config.json"))) nameBase(out, base);
  writeFileAtomic(
    join(out, "erl-export.json"),
    JSON.stringify(
      { format: "erl-export", version: 1, run: basename(resolve(runDir)), step, adapter, base },
      null,
      2,
    ) + "\n",
  );
  console.log(`exported the ${adapter ? "LoRA adapter" : "HF model"} of ${runDir} (step ${step}) to ${out}`);
  if (adapter)
    console.log(
      `its base model: "${base.name}"${base.portable ? "" : ` (outside the repository: put that model's directory at <erl checkout>/${base.name} on the machine that loads it)`}; load with erl_engine.portable.load_export (docs/training.md#evaluate-and-export)`,
    );
  return 0;
}

/**
 * How an exported adapter names its base model so that another machine finds it: a known model by
 * its registry name ("erl-tiny", "smollm2-135m-instruct": models/<name> in any checkout, installable
 * with `erl models install`), a model inside the repository by its path relative to the root, and
 * any other by its folder name (not portable: the loader looks for it at the repository root).
 */
export function portableBaseName(modelPath: string): { name: string; portable: boolean } {
  const known = KNOWN_MODELS.find((m) => resolve(REPO_ROOT, m.dir) === modelPath);
  if (known) return { name: known.name, portable: true };
  const rel = relative(REPO_ROOT, modelPath);
  if (rel !== "" && !rel.startsWith("..") && !isAbsolute(rel))
    return { name: rel.split(sep).join("/"), portable: true };
  return { name: basename(modelPath), portable: false };
}

/** Replaces the absolute base path peft wrote into adapter_config.json by the portable name. */
function nameBase(out: string, base: { name: string }): void {
  const file = join(out, "adapter_config.json");
  const cfg = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  cfg.base_model_name_or_path = base.name;
  writeFileAtomic(file, JSON.stringify(cfg, null, 2) + "\n");
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
