/**
 * Asking the kernel about other processes. Signal 0 sends nothing; it only checks that a process
 * exists and may be signalled. EPERM means it exists but belongs to someone else.
 */

/** Whether `pid` can name one process: a positive integer (0 and negatives address process groups). */
export function isPid(pid: unknown): pid is number {
  return typeof pid === "number" && Number.isInteger(pid) && pid > 0;
}

/** Whether a process with this id exists on this machine; false for anything that is not a pid. */
export function processAlive(pid: number): boolean {
  if (!isPid(pid)) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
