#!/usr/bin/env node
// Entry point of the `erl` command: loads the TypeScript sources through tsx, so no build step is needed.
// Before set-up (no node_modules yet) it says what to run first instead of failing on the missing loader.
let register;
try {
  ({ register } = await import("tsx/esm/api"));
} catch (e) {
  if (e?.code !== "ERR_MODULE_NOT_FOUND") throw e;
  process.stderr.write(
    "erl: not set up yet; run `npm test` or `bash scripts/setup.sh` in the repository first (it installs what erl needs)\n",
  );
  process.exit(2);
}
register();
const { main } = await import("../src/cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
