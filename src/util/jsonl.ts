/** JSON and JSON Lines helpers: reading with errors that name file and line, appending whole lines only. */
import {
  readFileSync,
  existsSync,
  appendFileSync,
  openSync,
  fsyncSync,
  closeSync,
  writeFileSync,
  renameSync,
  unlinkSync,
} from "node:fs";
import { inputError } from "./errors.ts";

/** Parses a whole JSON file. A missing file or malformed JSON is an error naming the file. */
export function readJsonFile(file: string): unknown {
  if (!existsSync(file)) throw inputError({ file }, "file not found");
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw inputError({ file }, `malformed JSON (${(e as Error).message})`);
  }
}

/** Parses every non-empty line of a JSONL file. A malformed line is an error naming file and line. */
export function readJsonl<T = unknown>(file: string, validate?: (value: unknown, line: number) => T): T[] {
  if (!existsSync(file)) throw inputError({ file }, "file not found");
  const text = readFileSync(file, "utf8");
  return parseJsonl(text, file, validate);
}

export function parseJsonl<T = unknown>(
  text: string,
  file: string,
  validate?: (value: unknown, line: number) => T,
): T[] {
  const out: T[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw inputError({ file, line: i + 1 }, `malformed JSON (${(e as Error).message})`);
    }
    out.push(validate ? validate(value, i + 1) : (value as T));
  }
  return out;
}

/**
 * Reads a JSONL file that another process may be appending to: a last line without its newline is
 * treated as not yet written and skipped, instead of failing.
 */
export function readJsonlTolerant<T = unknown>(file: string): T[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, "utf8");
  const end = text.lastIndexOf("\n");
  return end < 0 ? [] : parseJsonl<T>(text.slice(0, end + 1), file);
}

/** Appends records as complete lines in one write, then fsyncs, so a crash never leaves half a record. */
export function appendJsonl(file: string, records: readonly unknown[]): void {
  if (records.length === 0) return;
  try {
    appendFileSync(file, records.map((r) => JSON.stringify(r)).join("\n") + "\n");
    const fd = openSync(file, "r+");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    // A failed write (a full disk) says which file; a partial line is cut by the next resume.
    if (e && typeof e === "object" && !("path" in e)) (e as NodeJS.ErrnoException).path = file;
    throw e;
  }
}

/** Writes a file atomically: temp file, fsync, rename. */
export function writeFileAtomic(file: string, content: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, content);
    const fd = openSync(tmp, "r+");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    // A full or read-only disk: leave no temp file behind (the old file, if any, is intact).
    try {
      unlinkSync(tmp);
    } catch {
      /* never created */
    }
    if (e && typeof e === "object" && !("path" in e)) (e as NodeJS.ErrnoException).path = file;
    throw e;
  }
}
