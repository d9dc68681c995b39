// User mistakes on the command line get one clear line naming the flag, key, value or file at fault,
// and a non-zero exit: never a stack trace, never work started first (issue 17, items 3, 7, 9-11).
import { test } from "node:test";
import assert from "node:assert/strict";
import fs, { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { main } from "./main.ts";
import { openEngine } from "../engine/client.ts";
import { systemUserError, UserError } from "../util/errors.ts";

const TINY = fileURLToPath(new URL("../../test/fixtures/tiny-model", import.meta.url));

/** Runs `erl <argv>` in this process and returns its exit code and what it printed. */
async function erl(...argv: string[]): Promise<{ code: number; err: string; out: string }> {
  const err: string[] = [];
  const out: string[] = [];
  const saved = { error: console.error, log: console.log };
  console.error = (...a: unknown[]) => void err.push(a.map(String).join(" "));
  console.log = (...a: unknown[]) => void out.push(a.map(String).join(" "));
  try {
    const code = await main(argv);
    return { code, err: err.join("\n"), out: out.join("\n") };
  } finally {
    console.error = saved.error;
    console.log = saved.log;
  }
}

function clean(r: { code: number; err: string }, re: RegExp, code = 2): void {
  assert.equal(r.code, code, r.err);
  assert.match(r.err, re);
  assert.doesNotMatch(r.err, /internal error|\n\s+at \S/, "no stack trace");
}

const dir = mkdtempSync(join(tmpdir(), "erl-cli-errors-"));

test("a flag without its value names the flag", async () => {
  clean(await erl("train", "--config"), /^erl train: --config needs a value/);
  clean(
    await erl("train", "--resume", "--config", "x"),
    /^erl train: --resume needs a value, but the next argument starts with "-"/,
  );
  clean(await erl("dashboard", dir, "--poll", "-5"), /--poll needs a value.*write --poll=VALUE/);
  clean(await erl("dashboard", dir, "--poll=-5"), /--poll must be an integer from 100 to 60000, got "-5"/);
  clean(await erl("train", "--bogus"), /Unknown option '--bogus'/);
});

test("eval: --n, --tasks and --out are checked before any work, naming the flag", async () => {
  const base = ["eval", "--model", TINY, "--env", "frozenlake"];
  clean(await erl(...base, "--n", "0"), /^erl eval: --n must be an integer >= 1, got "0"$/);
  clean(await erl(...base, "--tasks", "two"), /--tasks must be an integer >= 1, got "two"/);
  const missing = join(dir, "no-such-folder", "out.jsonl");
  const r = await erl(...base, "--out", missing);
  clean(r, /--out .*out\.jsonl: the folder .*no-such-folder does not exist/);
  assert.doesNotMatch(r.out + r.err, /starting the engine/);
  const notJsonl = join(dir, "notes.txt");
  writeFileSync(notJsonl, "my notes\n");
  clean(
    await erl(...base, "--out", notJsonl),
    /notes\.txt: exists and is not a JSONL file of records \(line 1\)/,
  );
  assert.equal(readFileSync(notJsonl, "utf8"), "my notes\n", "left untouched");
  // A folder where no file can be created, even by root (sysfs): refused before the evaluation, not
  // after it (a permission check alone passes for root).
  const r2 = await erl(...base, "--n", "1", "--tasks", "1", "--out", "/sys/erl-episodes.jsonl");
  assert.notEqual(r2.code, 0);
  assert.match(r2.err, /^erl eval: .*erl-episodes\.jsonl: --out: cannot write: |^erl eval: --out /);
  assert.doesNotMatch(r2.out + r2.err, /starting the engine|internal error/);
});

test("config keys named like built-in object members are unknown keys", async () => {
  for (const key of ["constructor", "toString", "hasOwnProperty", "__proto__"]) {
    const file = join(dir, `cfg-${key}.json`);
    writeFileSync(file, `{"algo": {"${key}": {}}}`);
    clean(
      await erl("train", "--config", file, "--print-config"),
      new RegExp(`key "algo\\.${key}": unknown key`),
    );
    writeFileSync(file, `{"${key}": 1}`);
    clean(await erl("train", "--config", file, "--print-config"), new RegExp(`key "${key}": unknown key`));
    clean(
      await erl("train", "--config", "frozenlake-tiny", "--set", `${key}=1`, "--print-config"),
      new RegExp(`--set, key "${key}": unknown key`),
    );
    clean(
      await erl("train", "--config", "frozenlake-tiny", "--set", `optim.${key}=1`, "--print-config"),
      /unknown key/,
    );
  }
});

test("a command named like a built-in object member is an unknown command", async () => {
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty"])
    clean(await erl(name), new RegExp(`^erl: unknown command "${name}"`));
});

test("a run name that is not one folder name is refused", async () => {
  for (const name of ["..", ".", "a/b", "../escape"]) {
    const r = await erl(
      "train",
      "--config",
      "frozenlake-tiny",
      "--runs-dir",
      join(dir, "runs"),
      "--name",
      name,
    );
    clean(r, /key "name": .* is not a run name/);
  }
});

test("export: an output path that is a file, under a file or unwritable is refused before loading anything", async () => {
  const file = join(dir, "a-file");
  writeFileSync(file, "x");
  clean(await erl("export", join(dir, "run"), file), /a-file exists and is a file; pick a new directory/);
  clean(
    await erl("export", join(dir, "run"), join(file, "sub")),
    /cannot create the directory, .*a-file is not a directory/,
  );
  const full = join(dir, "full");
  mkdirSync(full);
  writeFileSync(join(full, "x"), "");
  clean(await erl("export", join(dir, "run"), full), /exists and is not empty/);
  // Where no folder can be created, even by root (sysfs, proc): refused before the run is read.
  clean(
    await erl("export", join(dir, "run"), "/sys/erl-export"),
    /^erl export: \/sys: cannot write the export to \/sys\/erl-export: /,
    1,
  );
  clean(
    await erl("export", join(dir, "run"), "/proc/erl-export/x"),
    /^erl export: \/proc: cannot write the export to \/proc\/erl-export\/x: /,
    1,
  );
});

test("a remote engine without a token names what to set, not a flag train does not have", async () => {
  const saved = process.env.ERL_ENGINE_TOKEN;
  delete process.env.ERL_ENGINE_TOKEN;
  try {
    await assert.rejects(openEngine({ url: "http://127.0.0.1:9" }), (e: unknown) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, /engine\.url http:\/\/127\.0\.0\.1:9: .*set ERL_ENGINE_TOKEN/);
      assert.doesNotMatch(e.message, /--engine-token/);
      return true;
    });
  } finally {
    if (saved !== undefined) process.env.ERL_ENGINE_TOKEN = saved;
  }
});

test("a full or read-only disk is reported with its path and cause", () => {
  const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), {
    code: "ENOSPC",
    syscall: "write",
    path: "/runs/x/metrics.jsonl",
  });
  assert.equal(
    systemUserError(enospc)?.message,
    "/runs/x/metrics.jsonl: write failed: no space left on the device (ENOSPC)",
  );
  const erofs = Object.assign(new Error("EROFS"), {
    code: "EROFS",
    syscall: "open",
    path: "/ro/status.json",
  });
  assert.match(
    systemUserError(erofs)!.message,
    /\/ro\/status\.json: open failed: the file system is read-only \(EROFS\)/,
  );
  assert.equal(systemUserError(new TypeError("x")), null, "a bug stays a bug");
});

test("a folder that cannot be created on a read-only disk is named with EROFS, not ENOENT", async () => {
  // On a read-only file system a plain mkdir fails with EROFS, but Node's recursive mkdir reports
  // ENOENT (it looks the path up after the failed mkdir and reports that). Both are emulated here for
  // everything under `ro`, as seen on a read-only tmpfs, since a test cannot count on mounting one.
  const ro = join(dir, "read-only");
  mkdirSync(ro);
  const f = fs as unknown as { mkdirSync: (p: unknown, o?: unknown) => unknown };
  const real = f.mkdirSync;
  f.mkdirSync = (p, o) => {
    if (typeof p === "string" && resolve(p).startsWith(ro + sep)) {
      const recursive = typeof o === "object" && o !== null && (o as { recursive?: boolean }).recursive;
      const code = recursive ? "ENOENT" : "EROFS";
      throw Object.assign(new Error(`${code}: mkdir '${p}'`), { code, syscall: "mkdir", path: p });
    }
    return real(p, o);
  };
  syncBuiltinESMExports();
  try {
    clean(
      await erl("train", "--config", "frozenlake-tiny", "--runs-dir", join(ro, "runs")),
      /read-only\/runs: cannot create the run directory: the file system is read-only \(EROFS\)$/,
      1,
    );
    const compare = ["compare", "--env", "frozenlake", "--algos", "erl", "--seeds", "1"];
    clean(
      await erl(...compare, "--out", join(ro, "cmp")),
      /read-only\/cmp: mkdir failed: the file system is read-only \(EROFS\)$/,
      1,
    );
  } finally {
    f.mkdirSync = real;
    syncBuiltinESMExports();
  }
});

test("`erl` before set-up (no node_modules) says what to run first, in one line, and exits 2", async () => {
  const { spawnSync } = await import("node:child_process");
  // The entry point alone, where no node_modules can be found above it: as in a fresh clone.
  const dir = mkdtempSync(join(tmpdir(), "erl-fresh-"));
  mkdirSync(join(dir, "bin"));
  fs.copyFileSync(fileURLToPath(new URL("../../bin/erl.mjs", import.meta.url)), join(dir, "bin", "erl.mjs"));
  const r = spawnSync(process.execPath, [join(dir, "bin", "erl.mjs"), "--help"], { encoding: "utf8" });
  assert.equal(r.status, 2);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /not set up yet; run `npm test` or `bash scripts\/setup\.sh`/);
  assert.doesNotMatch(r.stderr, /ERR_MODULE_NOT_FOUND|at .*\(/);
});
