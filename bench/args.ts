/**
 * Argument checks shared by the TypeScript benchmarks: a bad value stops the script with one line
 * naming the flag and the value (exit 2), before any work. Flags themselves are parsed by
 * `node:util` parseArgs, which refuses unknown flags and stray positionals.
 */
import { statSync } from "node:fs";
import { parseArgs, type ParseArgsConfig } from "node:util";

/** Prints "<script>: <message>" and exits 2. */
export function die(message: string): never {
  const script = (process.argv[1] ?? "bench").split("/").slice(-2).join("/");
  console.error(`${script}: ${message}`);
  process.exit(2);
}

/** parseArgs, with an unknown flag or a missing value reported as one line instead of a stack trace. */
export function parseFlags<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    return die(String((e as Error).message).split("\n")[0]!);
  }
}

/** A comma-separated list of integers in [1, max]. */
export function positiveInts(flag: string, text: string, max = 1_000_000): number[] {
  const parts = text.split(",").map((s) => s.trim());
  const out = parts.map(Number);
  if (parts.some((s) => !/^\d+$/.test(s)) || out.some((v) => v < 1 || v > max))
    die(`${flag} must be ${parts.length > 1 ? "integers" : "an integer"} from 1 to ${max}, got "${text}"`);
  return out;
}

/** An existing folder to write into (never created here: a typo must not spray files elsewhere). */
export function outputFolder(flag: string, dir: string | undefined): string | null {
  if (dir === undefined) return null;
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    die(`${flag} ${dir}: no such folder; create it first`);
  }
  if (!isDir) die(`${flag} ${dir}: not a folder`);
  return dir;
}

/** Runs a script's work; a `UserError` (bad input, named by file, key or value) ends it as one line. */
export async function guard(work: () => unknown): Promise<void> {
  try {
    await work();
  } catch (e) {
    if (e instanceof Error && e.name === "UserError") die(e.message);
    throw e;
  }
}
