/**
 * Loading a run config: presets (files in `configs/`, named without `.json`), config files (a file
 * gives only the keys it changes; everything else takes the defaults), `--config` + `--set`, and the
 * check that `model.path` is a model directory.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { KNOWN_MODELS } from "../../models/registry.ts";
import { inputError, UserError } from "../../util/errors.ts";
import { REPO_ROOT } from "../../util/paths.ts";
import { defaultConfig } from "./defaults.ts";
import { validateConfig } from "./schema.ts";
import { applyOverrides } from "./set.ts";
import type { RunConfig } from "./types.ts";

/** The folder holding the shipped presets. */
export function presetsDir(): string {
  return join(REPO_ROOT, "configs");
}

/** Names of the shipped presets (file names without `.json`). */
export function listPresets(): string[] {
  const dir = presetsDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5))
    .sort();
}

/** Resolves `--config` (a path to a JSON file, or a preset name) to a file path. */
export function resolveConfigPath(spec: string): string {
  if (existsSync(spec) && statSync(spec).isFile()) return spec;
  if (existsSync(spec) && statSync(spec).isDirectory())
    throw new UserError(
      `--config ${spec}: is a folder, not a config file (give a JSON file or a preset name)`,
    );
  const preset = join(presetsDir(), spec.endsWith(".json") ? spec : `${spec}.json`);
  if (!isAbsolute(spec) && !spec.includes("/") && existsSync(preset)) return preset;
  const presets = listPresets();
  throw new UserError(
    `--config ${spec}: no such file and no preset of that name${presets.length ? ` (presets: ${presets.join(", ")})` : ""}`,
  );
}

/** Reads and validates a config file (over the defaults). */
export function loadConfigFile(file: string): RunConfig {
  let raw: unknown;
  try {
    // A byte-order mark (some editors save UTF-8 with one) is not part of the JSON.
    raw = JSON.parse(readFileSync(file, "utf8").replace(/^\uFEFF/, ""));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw inputError({ file }, "file not found");
    throw inputError({ file }, `not valid JSON (${(e as Error).message})`);
  }
  return validateConfig(raw, { file });
}

/** Config from `--config` (file or preset; omitted = defaults) plus `--set` overrides. */
export function buildConfig(
  spec: string | undefined,
  sets: readonly string[],
): { config: RunConfig; source: string } {
  const source = spec ? resolveConfigPath(spec) : "(defaults)";
  const base = spec ? loadConfigFile(source) : defaultConfig();
  return { config: applyOverrides(base, sets), source };
}

/** How to get a missing model directory that the project knows how to build. */
function missingModelHint(path: string): string {
  const installable = KNOWN_MODELS.find(
    (m) => m.source.kind !== "shipped" && resolve(m.dir) === resolve(path),
  );
  if (installable) return ` (install it with \`npx erl models install ${installable.name}\`)`;
  if (path.includes("erl-tiny")) return " (erl-tiny is built with `npx erl pretrain`; see docs/erl-tiny.md)";
  return "";
}

/** Resolves `model.path` against the working directory and checks it is a model directory. */
export function checkModelPath(cfg: RunConfig): string {
  const path = resolve(cfg.model.path);
  if (!existsSync(path))
    throw inputError(
      { key: "model.path" },
      `model directory ${cfg.model.path} does not exist${missingModelHint(cfg.model.path)}`,
    );
  if (!statSync(path).isDirectory() || !existsSync(join(path, "config.json")))
    throw inputError(
      { key: "model.path" },
      `${cfg.model.path} is not an HF model directory (no config.json)`,
    );
  return path;
}
