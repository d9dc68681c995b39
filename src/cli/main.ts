/**
 * The `erl` command. Each sub-command lives in its own file under src/cli/ and exports
 * `run(args: string[]): Promise<number>` (the exit code). Modules load lazily so that
 * `erl play` never pays for the engine client or the dashboard.
 */
import { existsSync } from "node:fs";
import { register } from "node:module";
import { delimiter, dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { argsUserError, systemUserError, UserError } from "../util/errors.ts";
import { ownEntry } from "../util/own.ts";

interface Command {
  summary: string;
  load: () => Promise<{ run: (args: string[]) => Promise<number> }>;
}

const COMMANDS: Record<string, Command> = {
  play: {
    summary: "play an environment in the terminal (or scripted from stdin)",
    load: () => import("./play.ts"),
  },
  data: { summary: "data set tools: `erl data stats <env>`", load: () => import("./data.ts") },
  train: {
    summary: "train with ERL or RLVR: `erl train --config <file|preset>`",
    load: () => import("./train.ts"),
  },
  sft: {
    summary: "supervised fine-tuning on chat JSONL: `erl sft --data chats.jsonl --model DIR`",
    load: () => import("./sft.ts"),
  },
  eval: { summary: "evaluate a model or run on a split", load: () => import("./eval.ts") },
  compare: {
    summary: "compare algorithms over seeds and write a report",
    load: () => import("./compare.ts"),
  },
  export: {
    summary: "export a run's policy as an HF directory or LoRA adapter",
    load: () => import("./export.ts"),
  },
  reflections: {
    summary: "summarise a run's reflections, retries and memory",
    load: () => import("./reflections.ts"),
  },
  dashboard: {
    summary: "serve the read-only dashboard over run directories",
    load: () => import("./dashboard.ts"),
  },
  engine: { summary: "engine tools: `erl engine serve|info`", load: () => import("./engine.ts") },
  pretrain: {
    summary: "pretrain the erl-tiny base model from its synthetic recipe",
    load: () => import("./pretrain.ts"),
  },
  models: {
    summary: "known models: `erl models list`, `erl models install <name>`",
    load: () => import("./models.ts"),
  },
  demo: { summary: "the ERL-vs-RLVR demo on erl-tiny (CPU)", load: () => import("./demo.ts") },
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return (
    `usage: erl [--env-module <file>]... <command> [options]\n\ncommands:\n${lines.join("\n")}\n\n` +
    "Run `erl <command> --help` for a command's options. `--env-module` loads a TypeScript file that\n" +
    "registers your own environments (see docs/environments.md)."
  );
}

/**
 * User environments: `--env-module <file>` (repeatable, before the command) or `ERL_ENV_MODULES`
 * (paths joined by the platform's delimiter). Each module is imported before the command runs and
 * registers its environments with `registerEnv`. The resolved list is put back into
 * `ERL_ENV_MODULES` so child processes (e.g. the runs of `erl compare`) load them too.
 */
async function loadEnvModules(argv: string[]): Promise<string[]> {
  const modules = (process.env.ERL_ENV_MODULES ?? "").split(delimiter).filter(Boolean);
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--env-module" || arg.startsWith("--env-module=")) {
      const value = arg.includes("=") ? arg.slice(arg.indexOf("=") + 1) : argv[++i];
      if (!value) throw new UserError("--env-module needs a file path");
      modules.push(value);
    } else rest.push(arg);
  }
  const resolved = [...new Set(modules.map((m) => resolve(m)))];
  for (const file of resolved) if (!existsSync(file)) throw new UserError(`env module ${file} not found`);
  if (resolved.length > 0)
    register(new URL("./env-module-hooks.mjs", import.meta.url), {
      data: { folders: [...new Set(resolved.map((f) => pathToFileURL(dirname(f)).href + "/"))] },
    });
  for (const file of resolved) {
    try {
      await import(pathToFileURL(file).href);
    } catch (e) {
      if (e instanceof UserError) throw e;
      throw new UserError(`env module ${file} failed to load: ${(e as Error).message}`);
    }
  }
  if (resolved.length > 0) process.env.ERL_ENV_MODULES = resolved.join(delimiter);
  return rest;
}

export async function main(argv: string[]): Promise<number> {
  try {
    argv = await loadEnvModules(argv);
  } catch (e) {
    if (e instanceof UserError) {
      console.error(`erl: ${e.message}`);
      return e.exitCode;
    }
    throw e;
  }
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const command = ownEntry(COMMANDS, name);
  if (!command) {
    console.error(`erl: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    const mod = await command.load();
    return await mod.run(rest);
  } catch (e) {
    if (e instanceof UserError) {
      console.error(`erl ${name}: ${e.message}`);
      return e.exitCode;
    }
    const known = argsUserError(e, name) ?? systemUserError(e);
    if (known) {
      console.error(`erl ${name}: ${known.message}`);
      return known.exitCode;
    }
    console.error(`erl ${name}: internal error (a bug; please report it with the command you ran):`);
    console.error(e);
    return 1;
  }
}
