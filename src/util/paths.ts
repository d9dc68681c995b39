/**
 * Where the project's own files are: the repository root (this file is src/util/paths.ts) and the
 * Python interpreter of its virtualenv, which the engine and the other Python helpers run under.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The project's Python: $ERL_PYTHON, else `<repo>/.venv/bin/python`. */
export function defaultPython(): string {
  return process.env.ERL_PYTHON || join(REPO_ROOT, ".venv", "bin", "python");
}
