/**
 * Creating folders so that a failure says why. Node's `mkdirSync(dir, { recursive: true })` reports
 * ENOENT when a folder cannot be made for another reason (a read-only file system, no permission):
 * after the failed mkdir it looks the path up and reports that look-up's error instead. The run would
 * then stop with "internal error" and a stack trace in place of "the file system is read-only".
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";

/** `mkdir -p`: creates `dir` and its missing parents one at a time, so an error carries the real code. */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let p = resolve(dir); !existsSync(p); p = dirname(p)) {
    missing.push(p);
    if (dirname(p) === p) break;
  }
  for (const p of missing.reverse()) {
    try {
      mkdirSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
  if (!statSync(dir).isDirectory())
    throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), {
      code: "ENOTDIR",
      syscall: "mkdir",
      path: dir,
    });
}
