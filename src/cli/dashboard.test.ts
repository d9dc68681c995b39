// Tests of `erl dashboard` option handling: help, and clear errors for a bad directory or port.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "./dashboard.ts";
import { UserError } from "../util/errors.ts";

test("--help prints usage and exits 0", async () => {
  const log = console.log;
  let out = "";
  console.log = (s: string) => (out += s);
  try {
    assert.equal(await run(["--help"]), 0);
  } finally {
    console.log = log;
  }
  assert.match(out, /usage: erl dashboard \[runs-dir\] \[--port P\] \[--host H\]/);
});

test("bad input is a UserError naming the problem", async () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-dash-cli-"));
  try {
    await assert.rejects(
      run([join(dir, "missing")]),
      (e: unknown) => e instanceof UserError && /not found/.test(e.message),
    );
    writeFileSync(join(dir, "file"), "x");
    await assert.rejects(
      run([join(dir, "file")]),
      (e: unknown) => e instanceof UserError && /not a directory/.test(e.message),
    );
    await assert.rejects(
      run([dir, "--port", "99999"]),
      (e: unknown) => e instanceof UserError && /--port/.test(e.message),
    );
    await assert.rejects(
      run([dir, "--port", "abc"]),
      (e: unknown) => e instanceof UserError && /"abc"/.test(e.message),
    );
    await assert.rejects(
      run([dir, "other"]),
      (e: unknown) => e instanceof UserError && /at most one/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
