/**
 * Where the dashboard's browser tests and benchmark find Debian's chromium, and the flags they start
 * it with: headless, no sandbox (root in CI), and no background networking (the machine has no
 * network, and Chromium's own connections would otherwise be refused many times a second).
 */
export const CHROMIUM_PATH = process.env.ERL_CHROMIUM ?? "/usr/bin/chromium";

export const CHROMIUM_ARGS: readonly string[] = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-quic",
  "--disable-sync",
];
