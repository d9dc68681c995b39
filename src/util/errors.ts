/**
 * Errors meant for the person at the terminal. The CLI prints `UserError`s as one clear message
 * (no stack trace) and exits non-zero; anything else is a bug and is printed with its stack.
 */
export class UserError extends Error {
  constructor(
    message: string,
    /** Process exit code the CLI uses for this error. */
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = "UserError";
  }
}

/** Error for bad input at a known place: a file, optionally a line and a key. */
export function inputError(
  where: { file?: string; line?: number; key?: string },
  problem: string,
): UserError {
  const parts: string[] = [];
  if (where.file) parts.push(where.line !== undefined ? `${where.file}:${where.line}` : where.file);
  if (where.key) parts.push(`key "${where.key}"`);
  return new UserError(parts.length ? `${parts.join(", ")}: ${problem}` : problem);
}

/** What the operating system's error codes that a user can act on mean, in words. */
const SYSTEM_ERRORS: Record<string, string> = {
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
  EROFS: "the file system is read-only",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EIO: "input/output error from the device",
  ENOTDIR: "a part of the path is not a directory",
  EISDIR: "is a directory",
  EMFILE: "too many open files",
};

/**
 * A file-system error the user can act on (full or read-only disk, permissions), as a `UserError`
 * naming the path, the cause in words and the code; null for anything else (a bug stays a bug).
 */
export function systemUserError(e: unknown, doing?: string): UserError | null {
  if (!e || typeof e !== "object") return null;
  const err = e as NodeJS.ErrnoException;
  const code = err.code;
  if (!code || !Object.hasOwn(SYSTEM_ERRORS, code)) return null;
  const path = err.path ?? (err as { dest?: string }).dest;
  const what = doing ?? (err.syscall ? `${err.syscall} failed` : "failed");
  return new UserError(`${path ? `${path}: ` : ""}${what}: ${SYSTEM_ERRORS[code]} (${code})`, 1);
}

/** A `node:util` parseArgs error (missing or ambiguous option value, unknown option) as a `UserError`. */
export function argsUserError(e: unknown, command: string): UserError | null {
  const code = e && typeof e === "object" ? (e as { code?: unknown }).code : undefined;
  if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS_")) return null;
  const message = String((e as Error).message);
  const opt = /Option '(-[-\w]+)/.exec(message)?.[1];
  const help = `(see erl ${command} --help)`;
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && opt) {
    if (/argument missing/.test(message)) return new UserError(`${opt} needs a value ${help}`);
    if (/ambiguous/.test(message))
      return new UserError(
        `${opt} needs a value, but the next argument starts with "-"; to give a value that starts with "-", write ${opt}=VALUE ${help}`,
      );
  }
  return new UserError(`${message.split("\n")[0]} ${help}`);
}
