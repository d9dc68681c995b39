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
