/**
 * `erl train`: one training run from a config file or preset, or the continuation of a stopped one.
 *
 *   erl train --config frozenlake-tiny [--set algo.name=rlvr --set steps=10] [--runs-dir runs] [--name my-run]
 *   erl train --resume runs/my-run
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import {
  applyOverrides,
  buildConfig,
  checkModelPath,
  listPresets,
  validateConfig,
  type RunConfig,
} from "../train/config.ts";
import { runDirFor, runTraining } from "../train/runner.ts";
import { defaultDeps } from "../train/deps.ts";
import { runFilesForResume } from "../train/runfiles.ts";

/** The keys `--resume` may change: where the engine and the model are, nothing the run computes. */
const RESUME_SETTABLE = ["engine.url", "engine.python", "engine.baseUrl", "model.path"];

const HELP = `usage: erl train --config <file|preset> [--set key.path=value ...] [--runs-dir DIR] [--name NAME]
       erl train --resume <run-dir> [--set engine.url=URL] [--break-lock]

Trains with ERL, RLVR or an ablation and writes a run directory (docs/run-format.md).

options:
  --config <file|preset>  a JSON config file, or a preset name from configs/
  --set key.path=value    override one config key (repeatable), e.g. --set algo.name=rlvr
  --runs-dir DIR          parent folder of run directories (default: the config's runsDir, "runs")
  --name NAME             run name (default: <env>-<algo>-seed<seed>-<time>)
  --resume <run-dir>      continue a stopped or crashed run from its newest checkpoint (with --set,
                          only engine.url, engine.python or model.path may change)
  --break-lock            with --resume: take over the run's writer lock although its holder cannot
                          be shown to be gone (another machine); a run has one writer
  --print-config          print the resolved config as JSON and exit

presets: ${listPresets().join(", ") || "(none)"}
See docs/training.md for every config key.`;

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string" },
      set: { type: "string", multiple: true },
      "runs-dir": { type: "string" },
      name: { type: "string" },
      resume: { type: "string" },
      "print-config": { type: "boolean" },
      "break-lock": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const sets = [...(values.set ?? [])];
  let config: RunConfig;
  let runDir: string;
  if (values.resume) {
    if (values.config || values.name || values["runs-dir"])
      throw new UserError(
        "--resume continues a run with its own config; drop --config, --name and --runs-dir",
      );
    const files = runFilesForResume(values.resume, sets, RESUME_SETTABLE);
    config = applyOverrides(validateConfig(files.readConfig(), { file: files.configFile }), sets);
    runDir = files.dir;
  } else {
    if (!values.config)
      throw new UserError(`--config is required (a file or one of: ${listPresets().join(", ")})\n\n${HELP}`);
    if (values["runs-dir"]) sets.push(`runsDir=${values["runs-dir"]}`);
    if (values.name) sets.push(`name=${values.name}`);
    config = buildConfig(values.config, sets).config;
    runDir = runDirFor(config);
  }
  if (values["print-config"]) {
    console.log(JSON.stringify(config, null, 2));
    return 0;
  }
  checkModelPath(config);
  if (values["break-lock"] && !values.resume)
    throw new UserError("--break-lock goes with --resume <run-dir>");
  const summary = await runTraining({
    config,
    runDir,
    resume: Boolean(values.resume),
    breakLock: Boolean(values["break-lock"]),
    deps: defaultDeps(),
  });
  const ev = summary.finalEval;
  console.log(
    `${summary.alreadyFinished ? "already finished" : "finished"}: ${summary.runDir}` +
      (ev ? `  final eval reward ${ev.reward.toFixed(3)} (pass@1 ${ev.passAt1.toFixed(3)}, n ${ev.n})` : ""),
  );
  console.log(`dashboard: npx erl dashboard ${resolve(config.runsDir)}`);
  return 0;
}
