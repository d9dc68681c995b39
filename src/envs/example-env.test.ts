// The custom-environment example (examples/corridor.ts, shown in docs/environments.md) keeps compiling and working.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { getEnv } from "./index.ts";
import "../../examples/corridor.ts";

test("the documented custom environment registers and plays", async () => {
  const env = getEnv("corridor");
  const ep = env.makeEpisode(env.loadSplit("test")[0]!);
  assert.equal(ep.initialObservation, "X . .");
  await ep.step("```right```");
  const r = await ep.step("```right```");
  assert.equal(r.reward, 1);
  assert.equal(ep.done, true);
  assert.equal(ep.success, true);
});

test("--env-module loads a user environment into the CLI", () => {
  const r = spawnSync(
    process.execPath,
    ["bin/erl.mjs", "--env-module", "examples/corridor.ts", "play", "corridor", "--index", "0"],
    { input: "right\nright\n", encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Reached the end/);
});

test("--env-module with a missing file is a clear error", () => {
  const r = spawnSync(
    process.execPath,
    ["bin/erl.mjs", "--env-module", "nope/missing.ts", "play", "corridor"],
    {
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 2);
  assert.match(r.stderr, /env module .*missing\.ts.*not found/);
});
