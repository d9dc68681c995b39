/**
 * Child process for the crash tests: runs one training run with the test doubles of testkit.ts so a
 * test can `kill -9` it at a random moment. Usage: testkit-child.ts <config.json> <runDir> [--resume]
 */
import { readFileSync } from "node:fs";
import { runTraining } from "../train/runner.ts";
import { validateConfig } from "../train/config.ts";
import { counterDeps } from "./testkit.ts";
import { Progress } from "../train/progress.ts";

const [configFile, runDir, flag] = process.argv.slice(2);
if (!configFile || !runDir) throw new Error("usage: testkit-child.ts <config.json> <runDir> [--resume]");
const config = validateConfig(JSON.parse(readFileSync(configFile, "utf8")), { file: configFile });
await runTraining({
  config,
  runDir,
  resume: flag === "--resume",
  deps: counterDeps({ delayMs: 10 }),
  progress: new Progress(process.stdout),
});
