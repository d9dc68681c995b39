import { test } from "node:test";
import assert from "node:assert/strict";
import { lastFencedBlock, parseDirection, renderGrid, stepsLine, gameFeedback } from "./common.ts";
import { getEnv, knownEnvs, registerEnv } from "./registry.ts";
import { UserError } from "../util/errors.ts";
import { FrozenLakeFamily } from "./frozenlake.ts";

test("action parsing: words in any case and digits inside a fenced block", () => {
  assert.equal(parseDirection("```up```"), "up");
  assert.equal(parseDirection("I go.\n```\nDOWN\n```"), "down");
  assert.equal(parseDirection("```  Left  ```"), "left");
  assert.equal(parseDirection("```\nrIgHt\n```"), "right");
  assert.deepEqual(
    ["1", "2", "3", "4"].map((d) => parseDirection("```" + d + "```")),
    ["left", "down", "right", "up"],
  );
});

test("action parsing: the last of several blocks wins", () => {
  assert.equal(parseDirection("```up```\nno wait\n```left```"), "left");
  assert.equal(parseDirection("```up```\n```junk```"), null);
  assert.equal(parseDirection("```junk```\n```2```"), "down");
});

test("action parsing: an info string on the fence is ignored", () => {
  assert.equal(parseDirection("```text\nup\n```"), "up");
  assert.equal(parseDirection("```up\n```"), "up");
});

test("action parsing: no block, unclosed block, junk, several words, other digits are invalid", () => {
  for (const bad of [
    "up",
    "",
    "```up",
    "```move up```",
    "```up down```",
    "```\nup\ndown\n```",
    "```0```",
    "```5```",
    "```upp```",
    "``up``",
    "```up.```",
    // Names every object inherits are not actions (they once came back as a function and crashed).
    "```constructor```",
    "```__proto__```",
    "```\nhasOwnProperty\n```",
  ])
    assert.equal(parseDirection(bad), null, JSON.stringify(bad));
  assert.equal(lastFencedBlock("no fences"), null);
});

test("grid rendering: ` s ` then a TAB per cell, rows joined by newlines", () => {
  assert.equal(
    renderGrid([
      ["A", "B"],
      ["C", "D"],
    ]),
    " A \t B \t\n C \t D \t",
  );
  assert.equal(stepsLine(3, 8), "Steps used: 3 of 8 (5 left).");
  assert.equal(
    gameFeedback({
      outcome: "solved",
      reward: 1,
      stepsUsed: 2,
      budget: 8,
      noEffect: 1,
      invalid: 0,
      lastAction: "up",
    }),
    "Outcome: solved. Reward 1. Steps used 2 of 8. Actions without effect: 1 (invalid: 0). Last action: up.",
  );
});

test("registry: unknown names list the known ones; users can register their own", () => {
  assert.throws(
    () => getEnv("frozenlak"),
    (e: unknown) =>
      e instanceof UserError && /unknown environment "frozenlak" \(known: .*frozenlake/.test(e.message),
  );
  assert.ok(getEnv("frozenlake") instanceof FrozenLakeFamily);
  registerEnv("my-lake", (opts) => new FrozenLakeFamily({ budget: Number(opts.budget ?? 3) }));
  assert.ok(knownEnvs().includes("my-lake"));
  assert.equal(getEnv("my-lake", { budget: 5 }).maxTurns, 5);
  assert.throws(() => registerEnv("my-lake", () => new FrozenLakeFamily()), /already registered/);
  assert.throws(() => registerEnv("Bad Name", () => new FrozenLakeFamily()), /must be lower-case/);
});
