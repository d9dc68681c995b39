/**
 * The `erl` command. Each sub-command lives in its own file under src/cli/ and exports
 * `run(args: string[]): Promise<number>` (the exit code). Modules load lazily so that
 * `erl play` never pays for the engine client or the dashboard.
 */
import { UserError } from "../util/errors.ts";

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
  eval: { summary: "evaluate a model or run on a split", load: () => import("./eval.ts") },
  compare: {
    summary: "compare algorithms over seeds and write a report",
    load: () => import("./compare.ts"),
  },
  export: {
    summary: "export a run's policy as an HF directory or LoRA adapter",
    load: () => import("./export.ts"),
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
  demo: { summary: "the ERL-vs-RLVR demo on erl-tiny (CPU)", load: () => import("./demo.ts") },
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: erl <command> [options]\n\ncommands:\n${lines.join("\n")}\n\nRun \`erl <command> --help\` for a command's options.`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const command = COMMANDS[name];
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
    if (
      e &&
      typeof e === "object" &&
      "code" in e &&
      (e as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION"
    ) {
      console.error(`erl ${name}: ${String((e as { message?: unknown }).message)}`);
      return 2;
    }
    console.error(`erl ${name}: internal error (a bug; please report it with the command you ran):`);
    console.error(e);
    return 1;
  }
}
