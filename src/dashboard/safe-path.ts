/**
 * Path confinement for the dashboard: every file the server reads is named by a path relative to the
 * runs directory, and this module is the one place that turns such a path into a real file path. It
 * refuses anything that could reach outside the runs directory: absolute paths, `..` segments,
 * backslashes and NUL bytes, and (after resolving symbolic links) any real path outside the root.
 */
import { realpathSync, statSync } from "node:fs";
import { join, sep } from "node:path";

/** Thrown for a request path that must not be served; the server answers 403 or 404. */
export class PathRefused extends Error {
  constructor(
    readonly requested: string,
    readonly why: string,
  ) {
    super(`refused path ${JSON.stringify(requested)}: ${why}`);
    this.name = "PathRefused";
  }
}

/** The runs directory, resolved once to its real path. */
export class RunsRoot {
  readonly real: string;

  constructor(dir: string) {
    this.real = realpathSync(dir);
  }

  /**
   * Validates a relative path (already percent-decoded) without touching the disk. Segments must be
   * plain names: no empty segments, no `.` or `..`, no backslashes, no NUL, no leading `/` or drive.
   */
  static checkRelative(rel: string): string[] {
    if (rel.includes("\0")) throw new PathRefused(rel, "NUL byte");
    if (rel.includes("\\")) throw new PathRefused(rel, "backslash");
    if (rel.startsWith("/") || /^[a-zA-Z]:/.test(rel)) throw new PathRefused(rel, "absolute path");
    const parts = rel.split("/").filter((p) => p !== "");
    for (const p of parts) {
      if (p === "." || p === "..") throw new PathRefused(rel, "dot segment");
    }
    return parts;
  }

  /**
   * The real path of `rel` inside the root, or throws `PathRefused`. A path that does not exist is
   * refused as well (there is nothing to serve). Symbolic links are followed and the target must
   * still be inside the root, so a link pointing out of the runs directory is refused.
   */
  resolve(rel: string): string {
    const parts = RunsRoot.checkRelative(rel);
    const joined = join(this.real, ...parts);
    let real: string;
    try {
      real = realpathSync(joined);
    } catch {
      throw new PathRefused(rel, "not found");
    }
    if (!this.contains(real)) throw new PathRefused(rel, "outside the runs directory");
    return real;
  }

  /** Like `resolve`, but returns null instead of throwing when the path is missing or refused. */
  tryResolve(rel: string): string | null {
    try {
      return this.resolve(rel);
    } catch (e) {
      if (e instanceof PathRefused) return null;
      throw e;
    }
  }

  /** Whether a real (already resolved) path is the root or lies under it. */
  contains(realPath: string): boolean {
    return (
      realPath === this.real || realPath.startsWith(this.real.endsWith(sep) ? this.real : this.real + sep)
    );
  }

  /** Resolves `rel` and checks it is a regular file. */
  resolveFile(rel: string): string {
    const real = this.resolve(rel);
    if (!statSync(real).isFile()) throw new PathRefused(rel, "not a file");
    return real;
  }
}
