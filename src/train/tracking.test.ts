/**
 * Metrics to TensorBoard and Weights & Biases (offline), with the real libraries: a run on the
 * counter engine writes both, and each is read back with the library's own reader — TensorBoard's
 * EventAccumulator, and the W&B offline run file through wandb's record protobuf — and compared
 * with metrics.jsonl. The libraries come from the project's Python (`defaultPython`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig } from "./config.ts";
import { runTraining } from "./runner.ts";
import { Progress } from "./progress.ts";
import { counterDeps } from "../testing/testkit.ts";
import { defaultPython } from "../util/paths.ts";
import { UserError } from "../util/errors.ts";

const quiet = (): Progress => new Progress({ write: () => undefined });

function config(tracking: Record<string, unknown>) {
  return validateConfig({
    env: "frozenlake",
    model: { path: "unused" },
    steps: 3,
    batchSize: 2,
    data: { evalTasks: 2 },
    eval: { every: 2, final: true, initial: true, n: 1 },
    checkpoint: { every: 3, keep: 1 },
    tracking,
  });
}

/** Runs a Python snippet with the project's Python and returns its stdout parsed as JSON. */
function python(script: string, ...args: string[]): unknown {
  const r = spawnSync(defaultPython(), ["-c", script, ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** Every numeric metric of metrics.jsonl, as "step|key" → value. */
function jsonlScalars(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of readFileSync(join(dir, "metrics.jsonl"), "utf8").split("\n").filter(Boolean)) {
    const r = JSON.parse(line) as Record<string, unknown>;
    for (const [k, v] of Object.entries(r))
      if (k !== "step" && k !== "kind" && typeof v === "number") out.set(`${r.step}|${k}`, v);
  }
  return out;
}

const READ_TENSORBOARD = `
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({f"{e.step}|{tag}": e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}))
`;

// The offline run file (run-<id>.wandb) is a log of wandb's Record protobufs in 32 KiB blocks of
// chunks (4-byte CRC, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) after a
// 7-byte ":W&B" header; the Record type is wandb's own.
const READ_WANDB = `
import glob, json, struct, sys
from wandb.proto import wandb_internal_pb2 as pb
[path] = glob.glob(sys.argv[1] + "/wandb/offline-run-*/run-*.wandb")
data = open(path, "rb").read()
assert data[:4] == b":W&B", data[:7]
pos, buf, rows, config = 7, b"", {}, {}
while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    if left < 7:
        pos += left
        continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0:
        pos += left
        continue
    buf += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
        r = pb.Record()
        r.ParseFromString(buf)
        buf = b""
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            step = items.pop("_step")
            for k, v in items.items():
                if not k.startswith("_"):
                    rows[f"{step}|{k}"] = v
        if r.WhichOneof("record_type") == "run":
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
print(json.dumps({"rows": rows, "config": config}))
`;

test("tracking: TensorBoard event files and a W&B offline run hold every metric of metrics.jsonl", async () => {
  const runs = mkdtempSync(join(tmpdir(), "erl-tracking-"));
  const dir = join(runs, "tracked");
  await runTraining({
    config: config({ tensorboard: true, wandb: "offline", wandbProject: "erl-test" }),
    runDir: dir,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  const truth = jsonlScalars(dir);
  assert.ok(truth.has("0|eval/reward") && truth.has("3|reward/first") && truth.has("2|loss"));

  assert.equal(
    readdirSync(join(dir, "tensorboard")).filter((f) => f.startsWith("events.out.tfevents")).length,
    1,
  );
  const tb = python(READ_TENSORBOARD, join(dir, "tensorboard")) as Record<string, number>;
  assert.deepEqual(new Set(Object.keys(tb)), new Set(truth.keys()));
  // TensorBoard keeps 32-bit floats.
  for (const [k, v] of truth)
    assert.ok(Math.abs(tb[k]! - v) <= 1e-6 * Math.max(1, Math.abs(v)), `${k}: ${tb[k]} vs ${v}`);

  const wb = python(READ_WANDB, dir) as { rows: Record<string, number>; config: Record<string, unknown> };
  assert.deepEqual(wb.rows, Object.fromEntries(truth));
  assert.deepEqual((wb.config.algo as { name: string }).name, "erl", "the run config is the W&B config");
});

test("tracking off writes nothing beside metrics.jsonl; a Python without the libraries is refused up front", async () => {
  const runs = mkdtempSync(join(tmpdir(), "erl-tracking-"));
  await runTraining({
    config: config({}),
    runDir: join(runs, "plain"),
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  const names = readdirSync(join(runs, "plain"));
  assert.ok(!names.includes("tensorboard") && !names.includes("wandb"), names.join(", "));

  // A fresh virtualenv has neither package: the run stops before its first step and says which.
  const bare = join(runs, "bare-venv");
  const made = spawnSync(defaultPython(), ["-m", "venv", "--without-pip", bare], { encoding: "utf8" });
  assert.equal(made.status, 0, made.stderr);
  await assert.rejects(
    runTraining({
      config: config({ tensorboard: true, python: join(bare, "bin", "python") }),
      runDir: join(runs, "refused"),
      resume: false,
      deps: counterDeps(),
      progress: quiet(),
    }),
    (e: unknown) =>
      e instanceof UserError && /tracking\.tensorboard needs the Python package tensorboard/.test(e.message),
  );
});
