/**
 * `erl sft` end to end through the real engine: token-exact masks against transformers' own
 * assistant masks (apply_chat_template with return_assistant_tokens_mask, on SmolLM2's and
 * erl-tiny's templates with generation markers added), bad input named by file, line and field, a
 * tiny run whose loss falls, an identical run after kill -9 and --resume, and export.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startEngine, type EngineClient } from "../engine/client.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import { EngineBackend } from "../agent/backend.ts";
import { assistantClosing } from "../agent/trajectory.ts";
import type { ChatMessage } from "../engine/api.ts";
import { findModel, modelDir } from "../models/registry.ts";
import { installModel } from "../models/install.ts";
import { UserError } from "../util/errors.ts";
import { learningRate } from "./lr-schedule.ts";
import { parseChatLine, readChatFile, type ChatExample } from "./sft-data.ts";
import { renderExample, trainedClosing } from "./sft-render.ts";
import { plannedSteps, splitHeldOut, stepIndices } from "./sft.ts";
import { defaultSftConfig } from "./sft-config.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ERL = join(ROOT, "bin", "erl.mjs");
const TINY = join(ROOT, "test", "fixtures", "tiny-model");
const ERL_TINY = join(ROOT, "models", "erl-tiny");
const SMOL = findModel("smollm2-135m-instruct")!;
const SMOL_DIR = modelDir(REPO_ROOT, SMOL);

// SmolLM2's and erl-tiny's chat templates with generation markers around what the model writes (the
// reply and its end-of-turn token), as transformers needs for return_assistant_tokens_mask. The test
// checks first that each renders exactly as the model's own template.
const SMOL_TAGGED =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}" +
  "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}" +
  "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const TINY_TAGGED =
  "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|assistant|>' }}{% generation %}" +
  "{{ message['content'] + '<|end|>' }}{% endgeneration %}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

const CHATS: ChatMessage[][] = [
  [
    { role: "system", content: "You play a grid game." },
    { role: "user", content: " A \t B \t\n C \t D \t" },
    { role: "assistant", content: "you A \tright\n```\nright\n```" },
    { role: "user", content: "You moved right.\n C \t A \t" },
    { role: "assistant", content: "```\ndown\n```" },
  ],
  [
    { role: "user", content: "What is 2 + 2?" },
    { role: "assistant", content: "4" },
  ],
  [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Name a colour." },
    { role: "assistant", content: "Teal, a blue-green." },
    { role: "user", content: "Another?" },
    { role: "assistant", content: " Ochre " },
    { role: "tool", content: '{"ok": true}' },
    { role: "assistant", content: "Done.\n\nBye" },
  ],
];

function example(messages: ChatMessage[], line = 1, weights?: (0 | 1)[]): ChatExample {
  return {
    line,
    messages,
    weights: weights ?? messages.map((m) => (m.role === "assistant" ? 1 : 0)),
    extra: {},
  };
}

/** transformers' ids and assistant masks for each chat, with `template` replacing the model's own. */
function hfMasks(
  dir: string,
  template: string,
  chats: ChatMessage[][],
): { own: number[][]; ids: number[][]; masks: number[][] } {
  const script = [
    "import json, sys",
    "from transformers import AutoTokenizer",
    "req = json.load(sys.stdin)",
    "tok = AutoTokenizer.from_pretrained(req['dir'], local_files_only=True)",
    "own = [list(tok.apply_chat_template(c, tokenize=True, return_dict=False)) for c in req['chats']]",
    "ids, masks = [], []",
    "for c in req['chats']:",
    "    out = tok.apply_chat_template(c, chat_template=req['template'], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)",
    "    ids.append([int(i) for i in out['input_ids']])",
    "    masks.append([int(m) for m in out['assistant_masks']])",
    "print(json.dumps({'own': [[int(i) for i in x] for x in own], 'ids': ids, 'masks': masks}))",
  ].join("\n");
  const r = spawnSync(defaultPython(), ["-c", script], {
    input: JSON.stringify({ dir, template, chats }),
    env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_VERBOSITY: "error" },
    maxBuffer: 64 << 20,
  });
  assert.equal(r.status, 0, `python reference failed: ${r.stderr?.toString()}`);
  return JSON.parse(r.stdout.toString()) as { own: number[][]; ids: number[][]; masks: number[][] };
}

let smol: EngineClient;
let tiny: EngineClient;
before(async () => {
  await installModel(SMOL, { python: defaultPython(), root: REPO_ROOT, dir: SMOL_DIR, log: () => undefined });
  [smol, tiny] = await Promise.all([startEngine(), startEngine()]);
  await Promise.all([
    smol.loadModel({ path: SMOL_DIR, dtype: "float32", device: "cpu", seed: 0 }),
    tiny.loadModel({ path: ERL_TINY, dtype: "float32", device: "cpu", seed: 0 }),
  ]);
});
after(async () => {
  await Promise.all([smol?.close(), tiny?.close()]);
});

for (const [name, dir, template, engine] of [
  ["SmolLM2", () => SMOL_DIR, SMOL_TAGGED, () => smol],
  ["erl-tiny", () => ERL_TINY, TINY_TAGGED, () => tiny],
] as const) {
  test(`${name}: the trained tokens are exactly transformers' assistant tokens`, async () => {
    const model = await EngineBackend.create(engine());
    const hf = hfMasks(dir(), template, CHATS);
    for (let c = 0; c < CHATS.length; c++) {
      // The marked template renders as the model's own, so its masks speak for the model's template.
      assert.deepEqual(hf.ids[c], hf.own[c], `chat ${c}: the marked template differs from the model's`);
      const seq = await renderExample(model, example(CHATS[c]!), "chats.jsonl");
      assert.deepEqual(seq.ids, hf.ids[c], `chat ${c}: ids`);
      assert.deepEqual(seq.mask, hf.masks[c], `chat ${c}: mask`);
      assert.ok(seq.mask.some((m) => m === 1));
    }
    // Weight 0 leaves a reply out of the loss and nothing else changes.
    const chat = CHATS[2]!;
    const weights = chat.map((m, i) => (m.role === "assistant" && i !== 4 ? 1 : 0)) as (0 | 1)[];
    const seq = await renderExample(model, example(chat, 1, weights), "chats.jsonl");
    const all = await renderExample(model, example(chat), "chats.jsonl");
    assert.deepEqual(seq.ids, all.ids);
    const dropped = all.mask.map((m, t) => m - seq.mask[t]!);
    assert.ok(dropped.every((d) => d === 0 || d === 1));
    const closing = await assistantClosing(model);
    const untrainedTail = closing.length - trainedClosing(closing, model.eosTokenIds); // SmolLM2: the "\n"
    assert.equal(
      dropped.filter((d) => d === 1).length,
      (await model.renderChat(chat.slice(0, 5), { addGenerationPrompt: false })).length -
        (await model.renderChat(chat.slice(0, 4), { addGenerationPrompt: true })).length -
        untrainedTail,
    );
  });
}

test("after the last trained reply nothing is kept; `all` trains every token", async () => {
  const model = await EngineBackend.create(tiny);
  const chat: ChatMessage[] = [...CHATS[1]!, { role: "user", content: "and 3 + 3?" }];
  const seq = await renderExample(model, example(chat), "c.jsonl");
  const upToReply = await model.renderChat(chat.slice(0, 2), { addGenerationPrompt: false });
  assert.deepEqual(seq.ids, upToReply);
  const all = await renderExample(model, example(chat), "c.jsonl", "all");
  assert.ok(all.mask.every((m) => m === 1));
  assert.equal(trainedClosing([5, 1, 9], [1]), 2);
  assert.equal(trainedClosing([5, 9], [1]), 2);
});

// ---------------------------------------------------------------------------------------------
// Bad input: one message naming file, line and field

test("bad chat lines are errors naming the file, the line and the field", () => {
  const cases: [unknown, RegExp][] = [
    [[1, 2], /f\.jsonl:3: expected a JSON object with a "messages" list/],
    [{ msgs: [] }, /f\.jsonl:3, key "messages": missing/],
    [{ messages: [] }, /f\.jsonl:3, key "messages": the list is empty/],
    [
      { messages: [{ role: "robot", content: "x" }] },
      /key "messages\[0\]\.role": unknown role "robot" \(expected one of system, user, assistant, tool\)/,
    ],
    [{ messages: [{ role: "user" }] }, /key "messages\[0\]\.content": missing/],
    [
      { messages: [{ role: "user", content: 3 }] },
      /key "messages\[0\]\.content": expected a string, got number/,
    ],
    [
      { messages: [{ role: "user", content: [{ type: "image_url" }] }] },
      /key "messages\[0\]\.content\[0\]": expected a text part/,
    ],
    [
      { messages: [{ role: "user", content: "x", weight: 1 }] },
      /key "messages\[0\]\.weight": is read on assistant messages only/,
    ],
    [
      { messages: [{ role: "assistant", content: "x", weight: 0.5 }] },
      /key "messages\[0\]\.weight": expected 0 or 1, got 0\.5/,
    ],
    [
      {
        messages: [
          { role: "user", content: "q" },
          { role: "assistant", content: "  " },
        ],
      },
      /key "messages\[1\]\.content": an assistant message with weight 1 is empty/,
    ],
    [
      { messages: [{ role: "assistant", content: "x", tool_calls: [] }] },
      /key "messages\[0\]\.tool_calls": not supported/,
    ],
  ];
  for (const [value, want] of cases) {
    assert.throws(
      () => parseChatLine(value, "f.jsonl", 3),
      (e: unknown) => e instanceof UserError && want.test(e.message),
      JSON.stringify(value),
    );
  }
  // Content as text parts is joined; an empty reply of weight 0 is fine.
  const ok = parseChatLine(
    {
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "a" },
            { type: "text", text: "b" },
          ],
        },
        { role: "assistant", content: "", weight: 0 },
      ],
      id: 7,
    },
    "f.jsonl",
    1,
  );
  assert.equal(ok.messages[0]!.content, "ab");
  assert.deepEqual(ok.weights, [0, 0]);
  assert.deepEqual(ok.extra, { id: 7 });
});

test("a chat file: malformed JSON names its line, a BOM is not data, conversations with nothing to train are counted", () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-sft-data-"));
  const f = join(dir, "chats.jsonl");
  writeFileSync(
    f,
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [\n',
  );
  assert.throws(
    () => readChatFile(f),
    (e: unknown) => e instanceof UserError && /chats\.jsonl:2: malformed JSON/.test(e.message),
  );
  writeFileSync(
    f,
    "\uFEFF" +
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n\n' +
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no", "weight": 0}]}\n',
  );
  const read = readChatFile(f);
  assert.equal(read.examples.length, 1);
  assert.deepEqual(read.skippedNoTarget, [3]);
  writeFileSync(f, '{"messages": [{"role": "user", "content": "hi"}]}\n');
  assert.throws(() => readChatFile(f), /no conversation has an assistant message with weight 1/);
  assert.throws(() => readChatFile(join(dir, "missing.jsonl")), /missing\.jsonl: file not found/);
  assert.throws(() => readChatFile(dir), /is not a file/);
});

// ---------------------------------------------------------------------------------------------
// Pure parts: the schedule, the order of steps, the held-out split

test("learning-rate schedules: warm-up, then cosine / linear / constant to the floor", () => {
  const s = { lr: 1, warmupSteps: 4, minLrRatio: 0.1, totalSteps: 14 };
  assert.equal(learningRate({ ...s, name: "cosine" }, 2), 0.5);
  assert.equal(learningRate({ ...s, name: "cosine" }, 4), 1);
  assert.ok(Math.abs(learningRate({ ...s, name: "cosine" }, 9) - 0.55) < 1e-12); // half way: (1 + 0.1) / 2
  assert.ok(Math.abs(learningRate({ ...s, name: "cosine" }, 14) - 0.1) < 1e-12);
  assert.ok(Math.abs(learningRate({ ...s, name: "linear" }, 9) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate({ ...s, name: "linear" }, 6) - (0.1 + 0.9 * 0.8)) < 1e-12);
  assert.equal(learningRate({ ...s, name: "constant" }, 13), 1);
  assert.equal(learningRate({ ...s, warmupSteps: 0, name: "cosine" }, 0), 1);
});

test("steps walk seeded permutations of each epoch; a step's data depends on its number alone", () => {
  const n = 10;
  const seen = new Map<number, number>();
  for (let s = 1; s <= 5; s++)
    for (const i of stepIndices(n, 4, 3, s).indices) seen.set(i, (seen.get(i) ?? 0) + 1);
  // 20 draws over two epochs: every conversation exactly twice.
  assert.equal(seen.size, n);
  assert.ok([...seen.values()].every((c) => c === 2));
  assert.deepEqual(stepIndices(n, 4, 3, 3), stepIndices(n, 4, 3, 3));
  assert.deepEqual(stepIndices(n, 4, 3, 3).epoch, 0);
  assert.deepEqual(stepIndices(n, 4, 3, 4).epoch, 1);
  assert.notDeepEqual(stepIndices(n, 4, 3, 1).indices, stepIndices(n, 4, 4, 1).indices);
  const cfg = { ...defaultSftConfig(), batchSize: 4, epochs: 2, steps: null };
  assert.equal(plannedSteps(cfg, 10), 5);
  assert.equal(plannedSteps({ ...cfg, steps: 3 }, 10), 3);
  const ex = Array.from({ length: 50 }, (_, i) => example(CHATS[1]!, i + 1));
  const { train, held } = splitHeldOut(ex, 0.1, 0);
  assert.equal(held.length, 5);
  assert.equal(train.length, 45);
  assert.deepEqual(splitHeldOut(ex, 0.1, 0).held, held);
});

// ---------------------------------------------------------------------------------------------
// Runs through the CLI: the loss falls, kill -9 and --resume give the same run, export

function chatFile(dir: string, n: number): string {
  const f = join(dir, "train.jsonl");
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const a = i % 5;
    lines.push(
      JSON.stringify({
        messages: [
          { role: "system", content: "Answer with the letter after the one given." },
          { role: "user", content: "ABCDEFG"[a]! },
          { role: "assistant", content: "BCDEFGH"[a]! },
        ],
      }),
    );
  }
  writeFileSync(f, lines.join("\n") + "\n");
  return f;
}

function metrics(run: string): Record<string, number | string>[] {
  return readFileSync(join(run, "metrics.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, number | string>);
}

const SFT_ARGS = (data: string, runs: string, name: string) => [
  ERL,
  "sft",
  "--data",
  data,
  "--model",
  TINY,
  "--runs-dir",
  runs,
  "--name",
  name,
  "--set",
  "batchSize=4",
  "--set",
  "epochs=4",
  "--set",
  "optim.lr=3e-3",
  "--set",
  "optim.warmupSteps=1",
  "--set",
  "data.evalFraction=0.2",
  "--set",
  "eval.every=2",
  "--set",
  "checkpoint.every=1",
  "--set",
  "packing=off",
  "--set",
  "model.dtype=float32",
];
const ENV = { ...process.env, ERL_TEST: "1", ERL_ENGINE_THREADS: "1" };

test("a tiny run's held-out loss falls; kill -9 and --resume give the identical run; export loads", async () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-sft-run-"));
  const data = chatFile(dir, 25);
  const whole = spawnSync(process.execPath, SFT_ARGS(data, dir, "whole"), { env: ENV, encoding: "utf8" });
  assert.equal(whole.status, 0, whole.stderr + whole.stdout);
  const m = metrics(join(dir, "whole"));
  const evals = m.filter((r) => r.kind === "eval").map((r) => Number(r["eval/loss"]));
  const trains = m.filter((r) => r.kind === "train");
  assert.equal(trains.length, 20); // 20 conversations after the held-out 5, 4 epochs of 4 per step
  assert.ok(evals.length >= 3);
  assert.ok(evals[evals.length - 1]! < 0.5 * evals[0]!, `held-out loss ${evals.join(" → ")}`);
  assert.match(whole.stdout, /finished: .*whole \(20 steps, held-out loss/);
  // The dashboard's fine-tuning charts (and the shared loss and speed charts) plot keys this run wrote.
  const defs = (await import(pathToFileURL(join(ROOT, "src/dashboard/static/chart-defs.js")).href)) as {
    CHARTS: { id: string; kind: "train" | "eval"; runKind?: string; series: { key: string }[] }[];
  };
  for (const chart of defs.CHARTS.filter((c) => c.runKind === "sft" || ["loss", "tps"].includes(c.id)))
    for (const s of chart.series)
      assert.ok(
        m.some((r) => r.kind === chart.kind && typeof r[s.key] === "number"),
        `chart ${chart.id}: ${s.key} (${chart.kind}) missing from an SFT run`,
      );

  // The same run, killed with SIGKILL once a few checkpoints exist, then resumed.
  const run = join(dir, "killed");
  const child = spawn(process.execPath, SFT_ARGS(data, dir, "killed"), { env: ENV, stdio: "ignore" });
  await new Promise<void>((resolve, reject) => {
    const t0 = Date.now();
    const poll = setInterval(() => {
      const latest = join(run, "checkpoints", "latest");
      if (existsSync(latest) && readFileSync(latest, "utf8").trim() >= "step-000007") {
        clearInterval(poll);
        child.kill("SIGKILL");
        resolve();
      } else if (Date.now() - t0 > 300_000) {
        clearInterval(poll);
        reject(new Error("no checkpoint in 5 minutes"));
      }
    }, 50);
  });
  await new Promise((r) => child.once("exit", r));
  const resumed = spawnSync(process.execPath, [ERL, "sft", "--resume", run], { env: ENV, encoding: "utf8" });
  assert.equal(resumed.status, 0, resumed.stderr + resumed.stdout);
  const strip = (recs: Record<string, number | string>[]) =>
    recs.map((r) =>
      Object.fromEntries(Object.entries(r).filter(([k]) => !k.startsWith("time") && k !== "tokens_per_s")),
    );
  assert.deepEqual(strip(metrics(run)), strip(m));

  // A resume on changed data is refused; an already finished run says so.
  const again = spawnSync(process.execPath, [ERL, "sft", "--resume", run], { env: ENV, encoding: "utf8" });
  assert.equal(again.status, 0);
  assert.match(again.stdout, /already finished/);
  writeFileSync(data, readFileSync(data, "utf8") + readFileSync(data, "utf8").split("\n")[0] + "\n");
  const changed = spawnSync(process.execPath, [ERL, "sft", "--resume", run], { env: ENV, encoding: "utf8" });
  assert.equal(changed.status, 2);
  assert.match(changed.stderr, /train\.jsonl: the train data changed since the run started/);

  // export: an HF directory that transformers loads.
  const out = join(dir, "exported");
  const ex = spawnSync(process.execPath, [ERL, "export", join(dir, "whole"), out], {
    env: ENV,
    encoding: "utf8",
  });
  assert.equal(ex.status, 0, ex.stderr + ex.stdout);
  assert.ok(existsSync(join(out, "config.json")));
});

test("a conversation longer than data.maxTokens: skipped and counted, or an error naming its line", () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-sft-long-"));
  const data = chatFile(dir, 6);
  writeFileSync(
    data,
    readFileSync(data, "utf8") +
      JSON.stringify({
        messages: [
          { role: "user", content: "x ".repeat(400) },
          { role: "assistant", content: "y" },
        ],
      }) +
      "\n",
  );
  const base = [
    ERL,
    "sft",
    "--data",
    data,
    "--model",
    TINY,
    "--runs-dir",
    dir,
    "--set",
    "steps=1",
    "--set",
    "data.maxTokens=128",
    "--set",
    "data.evalFraction=0",
    "--set",
    "packing=off",
  ];
  const skip = spawnSync(process.execPath, [...base, "--name", "skip"], { env: ENV, encoding: "utf8" });
  assert.equal(skip.status, 0, skip.stderr + skip.stdout);
  assert.match(skip.stdout, /train: 1 conversations longer than 128 tokens were skipped \(lines 7\)/);
  const err = spawnSync(process.execPath, [...base, "--name", "err", "--set", "data.tooLong=error"], {
    env: ENV,
    encoding: "utf8",
  });
  assert.equal(err.status, 2);
  assert.match(err.stderr, /train\.jsonl:7: the conversation is \d+ tokens, longer than data\.maxTokens 128/);
  assert.ok(!existsSync(join(dir, "err")), "a refused run leaves no directory");
});
