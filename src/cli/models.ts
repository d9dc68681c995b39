/**
 * `erl models list` shows the known models (registry.ts) and whether each is on this machine;
 * `erl models install <name>` builds one (see src/models/install.ts).
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
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
