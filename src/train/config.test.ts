import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  applyOverrides,
  attemptsPerTask,
  buildConfig,
  getAlgorithm,
  checkModelPath,
  defaultConfig,
  evalOptionsFrom,
  learnerConfigFrom,
  listPresets,
  loadConfigFile,
  optimConfigFrom,
  validateConfig,
} from "./config.ts";
import { erlOptionsFrom } from "./algorithms/erl.ts";
import { rlvrOptionsFrom } from "./algorithms/rlvr.ts";
import { UserError } from "../util/errors.ts";
import type { ErlOptions } from "../algo/types.ts";
import { loadModelRequest } from "./deps.ts";

function writeTmp(content: string): string {
  const file = join(mkdtempSync(join(tmpdir(), "erl-config-")), "cfg.json");
  writeFileSync(file, content);
  return file;
}

const userError = (re: RegExp) => (e: unknown) => e instanceof UserError && re.test(e.message);

test("an unknown key is an error naming the file and the full key, with a suggestion", () => {
  const file = writeTmp(JSON.stringify({ algo: { nmae: "rlvr" } }));
  assert.throws(
    () => loadConfigFile(file),
    userError(
      new RegExp(
        `^${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}, key "algo.nmae": unknown key \\(did you mean "algo.name"\\?\\)`,
      ),
    ),
  );
  assert.throws(() => validateConfig({ bogus: 1 }), userError(/key "bogus": unknown key/));
});

test("a wrong type names the key and says what was expected", () => {
  assert.throws(
    () => validateConfig({ steps: "ten" }),
    userError(/key "steps": expected an integer >= 1, got "ten"/),
  );
  assert.throws(
    () => validateConfig({ steps: 2.5 }),
    userError(/key "steps": expected an integer >= 1, got 2.5/),
  );
  assert.throws(
    () => validateConfig({ optim: { lr: -1 } }),
    userError(/key "optim.lr": expected a number >= 0, got -1/),
  );
  assert.throws(
    () => validateConfig({ algo: { name: "ppo" } }),
    userError(/key "algo.name": expected one of "erl", "rlvr"/),
  );
  assert.throws(
    () => validateConfig({ model: [] }),
    userError(/key "model": expected an object, got an array/),
  );
  assert.throws(
    () => validateConfig({ eval: { final: "yes" } }),
    userError(/key "eval.final": expected true or false/),
  );
  assert.throws(
    () => validateConfig({ model: { lora: { rank: 8 } } }),
    userError(/key "model.lora.alpha": missing/),
  );
  assert.throws(
    () => validateConfig({ model: { reference: "base" } }),
    userError(/key "model.reference".*needs LoRA/),
  );
});

test("malformed JSON and a missing file are errors naming the file", () => {
  const file = writeTmp("{ steps: 3 }");
  assert.throws(() => loadConfigFile(file), userError(/cfg\.json: not valid JSON/));
  assert.throws(() => loadConfigFile("/nonexistent/x.json"), userError(/x\.json: file not found/));
  assert.throws(
    () => buildConfig("no-such-preset", []),
    userError(/no such file and no preset.*frozenlake-tiny/),
  );
});

test("a file overrides only the keys it gives; nested objects merge with the defaults", () => {
  const cfg = validateConfig({ steps: 3, algo: { name: "rlvr" }, eval: { sampling: { topK: null } } });
  const d = defaultConfig();
  assert.equal(cfg.steps, 3);
  assert.equal(cfg.algo.name, "rlvr");
  assert.equal(cfg.algo.maxTokensPerTurn, d.algo.maxTokensPerTurn);
  assert.equal(cfg.eval.sampling.topK, null);
  assert.equal(cfg.eval.sampling.topP, d.eval.sampling.topP);
  assert.equal(attemptsPerTask(cfg), 10);
  assert.equal(attemptsPerTask(validateConfig({})), 4);
});

test("--set overrides are type-checked and name the key", () => {
  const base = defaultConfig();
  const cfg = applyOverrides(base, [
    "steps=7",
    "algo.name=erl-no-memory",
    "optim.lr=3e-6",
    "eval.final=false",
    'model.lora={"rank":4,"alpha":8,"dropout":0,"targetModules":"all-linear"}',
    "data.trainTasks=null",
    "name=my run",
  ]);
  assert.equal(cfg.steps, 7);
  assert.equal(cfg.algo.name, "erl-no-memory");
  assert.equal(cfg.optim.lr, 3e-6);
  assert.equal(cfg.eval.final, false);
  assert.deepEqual(cfg.model.lora, { rank: 4, alpha: 8, dropout: 0, targetModules: "all-linear" });
  assert.equal(cfg.data.trainTasks, null);
  assert.equal(cfg.name, "my run");
  assert.equal(base.steps, defaultConfig().steps, "the base config is not mutated");
  assert.throws(
    () => applyOverrides(base, ["steps=abc"]),
    userError(/^--set, key "steps": expected an integer >= 1, got "abc"/),
  );
  assert.throws(
    () => applyOverrides(base, ["steps=0"]),
    userError(/key "steps": expected an integer >= 1, got 0/),
  );
  assert.throws(() => applyOverrides(base, ["algo.lr=1"]), userError(/key "algo.lr": unknown key/));
  assert.throws(() => applyOverrides(base, ["optim.lrr=1"]), userError(/did you mean "optim.lr"/));
  assert.throws(
    () => applyOverrides(base, ["eval.final=maybe"]),
    userError(/key "eval.final": expected true or false/),
  );
  assert.throws(() => applyOverrides(base, ["steps"]), userError(/expected key.path=value/));
});

test("every preset validates; paper presets hold the spec's values", () => {
  const presets = listPresets();
  for (const env of ["frozenlake", "sokoban", "hotpotqa"])
    for (const scale of ["tiny", "paper"]) assert.ok(presets.includes(`${env}-${scale}`), `${env}-${scale}`);
  for (const p of presets) {
    const { config } = buildConfig(p, []);
    assert.ok(config.env === p.split("-")[0], p);
    assert.ok(config.description.length > 0, `${p} has a description`);
  }
  const paper = buildConfig("frozenlake-paper", []).config;
  assert.equal(paper.batchSize, 64);
  assert.equal(paper.optim.lr, 1e-6);
  assert.equal(paper.optim.weightDecay, 0.01);
  assert.equal(paper.optim.gradClip, 1);
  assert.deepEqual(
    [paper.loss.clipLow, paper.loss.clipHigh, paper.loss.dualClip, paper.loss.klCoef],
    [0.2, 0.28, 3, 0.001],
  );
  assert.equal(paper.algo.attemptSampling.temperature, 0.7);
  assert.deepEqual(paper.algo.reflectionSampling, { temperature: 0.5, topP: 0.9, topK: null });
  assert.deepEqual(paper.eval.sampling, { temperature: 0.7, topP: 0.8, topK: 20 });
  assert.equal(evalOptionsFrom(paper).n, 4);
  assert.equal(evalOptionsFrom(buildConfig("hotpotqa-paper", []).config).n, 1);
  // The reference's optimiser (verl): log-probs at T 0.7 everywhere, PPO mini-batches of 64 tasks × n
  // sequences on the games and 32 on HotpotQA, as the reference's scripts set them (ERL on the games:
  // 256, so a batch with retries takes several optimiser steps; RLVR: 640, one), clamps.
  for (const [env, miniBatch] of [
    ["frozenlake", 64],
    ["sokoban", 64],
    ["hotpotqa", 32],
  ] as const) {
    const p = buildConfig(`${env}-paper`, []).config;
    assert.deepEqual(
      [p.loss.temperature, p.loss.miniBatchTasks, p.loss.logRatioClamp, p.loss.klClamp],
      [0.7, miniBatch, 20, 10],
      env,
    );
  }
  const learner = learnerConfigFrom(paper);
  assert.deepEqual(
    [learner.temperature, learner.miniBatchSize, learner.logRatioClamp, learner.klClamp],
    [0.7, 256, 20, 10],
  );
  assert.equal(learnerConfigFrom(applyOverrides(paper, ["algo.name=rlvr"])).miniBatchSize, 640);
  assert.equal(erlOptionsFrom(paper).logprobTemperature, 0.7);
  // The CPU presets keep one optimiser step on T = 1 log-probs (docs/algorithms.md says why).
  const tiny = learnerConfigFrom(buildConfig("frozenlake-tiny", []).config);
  assert.deepEqual(
    [tiny.temperature, tiny.miniBatchSize, tiny.logRatioClamp, tiny.klClamp],
    [1, null, null, null],
  );
});

test("config maps onto the algorithm, optimiser and engine options", () => {
  const cfg = applyOverrides(defaultConfig(), [
    "algo.name=erl-no-reflection",
    "algo.memory=perWorker",
    "algo.memoryWorkers=3",
  ]);
  // The algorithm's descriptor maps the config, with its variant's flags.
  const erl = getAlgorithm(cfg.algo.name).options(cfg) as ErlOptions;
  assert.deepEqual([erl.noMemory, erl.noReflection, erl.noDistill], [false, true, false]);
  assert.deepEqual(erl.memory, { kind: "perWorker", k: 3 });
  assert.equal(erl.attemptSampling.topK, undefined);
  assert.equal(rlvrOptionsFrom(applyOverrides(cfg, ["algo.name=rlvr"])).n, 10);
  assert.deepEqual(optimConfigFrom(cfg), {
    lr: cfg.optim.lr,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: 0.01,
    gradClip: 1,
  });
  assert.equal(loadModelRequest(cfg, "/m").reference, "copy");
  const lora = applyOverrides(cfg, [
    'model.lora={"rank":4,"alpha":8,"dropout":0,"targetModules":"q_proj, v_proj"}',
  ]);
  const req = loadModelRequest(lora, "/m");
  assert.equal(req.reference, "base");
  assert.deepEqual(req.lora?.targetModules, ["q_proj", "v_proj"]);
  assert.equal(loadModelRequest(applyOverrides(cfg, ["loss.klCoef=0"]), "/m").reference, undefined);
});

test("a missing model directory is a clear error naming model.path", () => {
  const cfg = applyOverrides(defaultConfig(), ["model.path=/nonexistent/model"]);
  assert.throws(
    () => checkModelPath(cfg),
    userError(/key "model.path": model directory \/nonexistent\/model does not exist/),
  );
  const tiny = applyOverrides(defaultConfig(), ["model.path=/nonexistent/erl-tiny"]);
  assert.throws(() => checkModelPath(tiny), userError(/erl pretrain/));
  const notModel = applyOverrides(defaultConfig(), [`model.path=${tmpdir()}`]);
  assert.throws(() => checkModelPath(notModel), userError(/not an HF model directory/));
});

test("loss.temperature is 1 or the attempts' sampling temperature, and 1 with the vLLM sampler", () => {
  const paper = buildConfig("frozenlake-paper", []).config;
  assert.equal(paper.loss.temperature, paper.algo.attemptSampling.temperature);
  assert.throws(
    () => applyOverrides(paper, ["algo.attemptSampling.temperature=1.0"]),
    userError(/--set, key "loss.temperature": 0.7 is neither 1 .* \(algo.attemptSampling.temperature 1\)/),
  );
  // Changing both together is fine; T = 1 log-probs with any sampling temperature too.
  assert.equal(
    applyOverrides(paper, ["algo.attemptSampling.temperature=0.9", "loss.temperature=0.9"]).loss.temperature,
    0.9,
  );
  assert.equal(applyOverrides(paper, ["loss.temperature=1"]).loss.temperature, 1);
  // The vLLM sampler's log-probs are at T = 1: refused here, before any engine or model starts.
  assert.throws(
    () => applyOverrides(paper, ["engine.sampler=vllm"]),
    userError(/key "loss.temperature": 0.7: the vLLM sampler .* temperature 1 only/),
  );
  assert.equal(applyOverrides(paper, ["engine.sampler=vllm", "loss.temperature=1"]).engine.sampler, "vllm");
});
