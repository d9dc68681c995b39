/**
 * `erl sft`: supervised fine-tuning on chat JSONL (the OpenAI fine-tuning format), as a run directory
 * like `erl train`'s, or the continuation of a stopped one.
 *
 *   erl sft --data chats.jsonl --model models/smollm2-135m-instruct [--config F|preset] [--set k=v ...]
 *   erl sft --resume runs/<run>
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { checkModelPath } from "../train/config.ts";
import {
  applySftOverrides,
  buildSftConfig,
  listSftPresets,
  validateSftConfig,
  type SftConfig,
} from "../train/sft-config.ts";
import { defaultSftRunName, runSft } from "../train/sft.ts";
import { runFilesForResume } from "../train/runfiles.ts";
import { checkRunName } from "../train/runner.ts";

const RESUME_SETTABLE = ["engine.url", "engine.python", "model.path"];

const HELP = `usage: erl sft --data FILE [--model DIR] [--config FILE|preset] [--set key.path=value ...]
       erl sft --resume <run-dir> [--break-lock]

Supervised fine-tuning on chat JSONL (one {"messages": [...]} per line, the OpenAI fine-tuning
format; "weight": 0 on an assistant message leaves it out of the loss). The loss is on assistant
tokens, rendered with the model's own chat template exactly as the RL path samples them.
Writes a run directory (config.json, metrics.jsonl, checkpoints/); export it with erl export.

options:
  --data FILE             train conversations (data.train)
  --eval-data FILE        held-out conversations (data.eval; default: data.evalFraction of --data)
  --model DIR             the model to fine-tune (model.path)
  --lora RANK             LoRA of this rank on every linear layer (alpha 2×rank); default: the config's
  --config FILE|preset    a JSON config, or a preset from configs/sft/
  --set key.path=value    override a config key (repeatable), e.g. --set optim.lr=2e-4
  --runs-dir DIR          parent folder of run directories (default runs)
  --name NAME             run name (default sft-<data>-seed<seed>-<time>)
  --resume <run-dir>      continue a stopped or crashed run from its newest checkpoint
  --break-lock            with --resume: take over the writer lock of a run whose holder cannot be judged
  --print-config          print the resolved config and exit

presets: ${listSftPresets().join(", ") || "(none)"}
Keys and defaults: docs/sft.md.`;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: "string" },
      "eval-data": { type: "string" },
      model: { type: "string" },
      lora: { type: "string" },
      config: { type: "string" },
      set: { type: "string", multiple: true },
      "runs-dir": { type: "string" },
      name: { type: "string" },
      resume: { type: "string" },
      "break-lock": { type: "boolean" },
      "print-config": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const sets = [...(values.set ?? [])];
  let config: SftConfig;
  let runDir: string;
  if (values.resume) {
    for (const k of ["data", "eval-data", "model", "lora", "config", "runs-dir", "name"] as const)
      if (values[k] !== undefined)
        throw new UserError(`--resume continues a run with its own config; drop --${k}`);
    const files = runFilesForResume(values.resume, sets, RESUME_SETTABLE);
    config = applySftOverrides(validateSftConfig(files.readConfig(), { file: files.configFile }), sets);
    runDir = files.dir;
  } else {
    if (values.data) sets.unshift(`data.train=${values.data}`);
    if (values["eval-data"]) sets.unshift(`data.eval=${values["eval-data"]}`);
    if (values.model) sets.unshift(`model.path=${values.model}`);
    if (values.lora !== undefined) {
      const r = Number(values.lora);
      if (!Number.isInteger(r) || r < 1 || r > 4096)
        throw new UserError(`--lora: expected a rank from 1 to 4096, got ${JSON.stringify(values.lora)}`);
      sets.unshift(`model.lora={"rank":${r},"alpha":${2 * r},"dropout":0,"targetModules":"all-linear"}`);
    }
    if (values["runs-dir"]) sets.push(`runsDir=${values["runs-dir"]}`);
    if (values.name) sets.push(`name=${values.name}`);
    config = buildSftConfig(values.config, sets);
    if (config.name !== null) checkRunName(config.name);
    runDir = resolve(config.runsDir, config.name ?? defaultSftRunName(config));
  }
  if (values["print-config"]) {
    console.log(JSON.stringify(config, null, 2));
    return 0;
  }
  if (values["break-lock"] && !values.resume)
    throw new UserError("--break-lock goes with --resume <run-dir>");
  checkModelPath({ model: config.model } as Parameters<typeof checkModelPath>[0]);
  const { startSftEngine } = await import("../train/deps.ts");
  const summary = await runSft({
    config,
    runDir,
    resume: Boolean(values.resume),
    breakLock: Boolean(values["break-lock"]),
    deps: {
      startEngine: startSftEngine,
      makeBackend: async (engine) => (await import("../agent/backend.ts")).EngineBackend.create(engine),
    },
  });
  console.log(
    `${summary.alreadyFinished ? "already finished" : "finished"}: ${summary.runDir} (${summary.steps} steps` +
      (summary.finalEvalLoss !== null ? `, held-out loss ${summary.finalEvalLoss.toFixed(4)}` : "") +
      ")",
  );
  console.log(`export: npx erl export ${summary.runDir} <out-dir>`);
  return 0;
}
