// How `erl export` names an adapter's base model: portably, never by an absolute path of this machine.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";
import { KNOWN_MODELS } from "../models/registry.ts";
import { portableBaseName } from "./export.ts";

test("a known model by its name, a model in the repository by its path there, any other by its folder", () => {
  assert.deepEqual(portableBaseName(join(REPO_ROOT, "models", "erl-tiny")), {
    name: "erl-tiny",
    portable: true,
  });
  assert.deepEqual(portableBaseName(join(REPO_ROOT, "test", "fixtures", "tiny-model")), {
    name: "test/fixtures/tiny-model",
    portable: true,
  });
  assert.deepEqual(portableBaseName("/data/models/my-llama"), { name: "my-llama", portable: false });
  // The engine's loader (engine/erl_engine/portable.py) finds a known model at models/<name>.
  for (const m of KNOWN_MODELS) assert.equal(m.dir, `models/${m.name}`);
});
