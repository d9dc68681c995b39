/**
 * Test doubles for the run machinery (tests only): an in-process "engine" whose whole state is a
 * step counter and a running checksum, and algorithms whose outputs depend on that state, the run
 * RNG, the tasks and the memory — so a resumed run reproduces an uninterrupted one only if every
 * piece of state (engine, RNG, cursor, memory, files) was restored exactly. Optional delays make
 * the phases take real time, giving a `kill -9` in a test somewhere to land.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Engine, EngineInfo } from "../engine/api.ts";
import type { EnvFamily, Episode, Task } from "../envs/types.ts";
import type { ModelBackend, RolloutRecord, StepResult, MemoryWrite, TrainSample } from "../algo/types.ts";
import type { Trainer, TrainDeps } from "../train/deps.ts";
import type { Algorithm } from "../train/algorithms/types.ts";
import { getAlgorithm } from "../train/algorithms/registry.ts";
import type { AlgoContext } from "../algo/types.ts";
import { Progress } from "../train/progress.ts";
import { UserError } from "../util/errors.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class CounterEngine {
  updates = 0;
  checksum = 0;
  closed = false;
  /** Fail the n-th optimStep (1-based) as a dead engine would. */
  failAtUpdate: number | null = null;

  constructor(private readonly delayMs = 0) {}

  asEngine(): Engine {
    const info = async (): Promise<EngineInfo> => ({
      protocolVersion: 1,
      engineVersion: "counter",
      torch: "-",
      transformers: "-",
      device: "cpu",
      dtype: "float32",
      parameters: { total: 1, trainable: 1 },
      memory: { rssBytes: 0 },
      model: { vocabSize: 1, eosTokenIds: [0] },
    });
    const unsupported = async (): Promise<never> => {
      throw new Error("CounterEngine: not supported");
    };
    return {
      info,
      loadModel: info,
      renderChat: unsupported,
      encode: unsupported,
      decode: unsupported,
      sample: unsupported,
      forward: unsupported,
      forwardBackward: async (datums) => {
        await sleep(this.delayMs);
        for (const d of datums) this.checksum = (this.checksum * 31 + d.inputIds.length) % 1_000_003;
        return { loss: this.checksum / 1_000_003, metrics: {} };
      },
      optimStep: async () => {
        if (this.failAtUpdate !== null && this.updates + 1 >= this.failAtUpdate)
          throw new Error("engine process exited unexpectedly (code null, signal SIGKILL)");
        this.updates++;
        return { gradNorm: this.updates, metrics: {} };
      },
      saveState: async (dir) => {
        mkdirSync(dir, { recursive: true });
        await sleep(this.delayMs);
        writeFileSync(
          join(dir, "state.json"),
          JSON.stringify({ updates: this.updates, checksum: this.checksum }),
        );
      },
      loadState: async (dir) => {
        // Like the real engine, a damaged state is a clear error naming the file, before any change.
        const file = join(dir, "state.json");
        let s: { updates: number; checksum: number };
        try {
          s = JSON.parse(readFileSync(file, "utf8")) as typeof s;
        } catch (e) {
          throw new UserError(`${file}: corrupted (${(e as Error).message})`);
        }
        this.updates = s.updates;
        this.checksum = s.checksum;
      },
      export: async (dir) => {
        mkdirSync(dir, { recursive: true });
        writeFileSync(
          join(dir, "weights.json"),
          JSON.stringify({ updates: this.updates, checksum: this.checksum }),
        );
      },
      close: async () => {
        this.closed = true;
      },
    };
  }
}

/** A tiny environment family: tasks "t0".."tN-1", nothing playable (the fake algorithms never play). */
export function counterEnv(tasks = 12): EnvFamily {
  const make = (prefix: string): Task[] =>
    Array.from({ length: tasks }, (_, i) => ({ id: `${prefix}${i}`, env: "counter" }));
  return {
    name: "counter",
    maxTurns: 1,
    loadSplit: (split) => make(split === "train" ? "t" : "e"),
    makeEpisode: (): Episode => {
      throw new Error("counter env: not playable");
    },
    prompt: () => ({ taskDescription: "", formatReminder: "" }),
  };
}

/**
 * A step whose records depend on the engine state, the RNG, the tasks and the memory, and the
 * trainer and evaluation to go with it.
 */
export function counterAlgorithms(
  engine: CounterEngine,
  delayMs = 0,
): Trainer & {
  step: (ctx: AlgoContext, tasks: readonly Task[], n: number, withMemory: boolean) => Promise<StepResult>;
} {
  const step = async (
    ctx: AlgoContext,
    tasks: readonly Task[],
    n: number,
    withMemory: boolean,
  ): Promise<StepResult> => {
    const rollouts: RolloutRecord[] = [];
    const samples: TrainSample[] = [];
    const memoryWrites: MemoryWrite[] = [];
    let total = 0;
    for (const [i, task] of tasks.entries()) {
      await sleep(delayMs);
      for (let a = 0; a < n; a++) {
        const reward = (ctx.rng.int(100) + engine.updates + engine.checksum) % 2;
        total += reward;
        const episode = `s${ctx.step}-${task.id}-${a}`;
        rollouts.push({
          step: ctx.step,
          task: task.id,
          episode,
          group: `t${i}:${task.id}|first`,
          stage: "first",
          attempt: a,
          reward,
          success: reward === 1,
          stopReason: reward ? "goal" : "budget",
          system: `memory: ${withMemory ? ctx.memory.read(0) : "-"}`,
          messages: [{ role: "user", content: `task ${task.id}` }],
          trace: [],
          feedback: "",
          env: "counter",
        });
        samples.push({
          stage: "first",
          taskId: task.id,
          episode,
          group: `t${i}:${task.id}|first`,
          ids: Array.from({ length: 1 + ((i + a + ctx.step) % 5) }, () => 1),
          mask: [1],
          logprobs: [0],
          reward,
          advantage: reward,
        });
      }
      if (withMemory && i === 0)
        memoryWrites.push({
          step: ctx.step,
          episode: `s${ctx.step}-${task.id}-0`,
          task: task.id,
          rulebook: `rulebook after step ${ctx.step} (${engine.updates})`,
          previous: ctx.memory.read(0),
        });
    }
    ctx.onProgress?.({ phase: "first", done: tasks.length, total: tasks.length });
    return {
      samples,
      rollouts,
      memoryWrites,
      metrics: { "reward/first": total / (tasks.length * n), "time/sample": 0, "time/env": 0 },
    };
  };
  return {
    step,
    trainOnSamples: async (eng, samples) => {
      const fb = await eng.forwardBackward(
        samples.map((s) => ({ inputIds: s.ids, targetIds: s.ids, weights: s.mask })),
        { name: "ppo" },
      );
      const o = await eng.optimStep({ lr: 1 });
      return { loss: fb.loss, grad_norm: o.gradNorm };
    },
    evaluate: async (ctx, tasks, o) => {
      await sleep(delayMs);
      const reward = ((engine.checksum % 97) + ctx.rng.int(3)) / 100;
      return {
        reward,
        passAt1: reward,
        passAtN: reward,
        n: tasks.length * o.n,
        rollouts: tasks.map((t, i) => ({
          step: ctx.step,
          task: t.id,
          episode: `eval${ctx.step}-${t.id}`,
          group: "",
          stage: "eval" as const,
          attempt: i,
          reward,
          success: false,
          stopReason: "budget" as const,
          system: "",
          messages: [],
          trace: [],
          feedback: "",
          env: "counter",
        })),
      };
    },
  };
}

/** Run dependencies backed by the doubles above. `engine` is created fresh per run. */
export function counterDeps(
  opts: { delayMs?: number; failAtUpdate?: number; tasks?: number } = {},
): TrainDeps & {
  engines: CounterEngine[];
} {
  const engines: CounterEngine[] = [];
  const counter = () => {
    const e = engines[engines.length - 1];
    if (!e) throw new UserError("counterDeps: no engine started");
    return counterAlgorithms(e, opts.delayMs ?? 0);
  };
  return {
    engines,
    startEngine: async () => {
      const e = new CounterEngine(opts.delayMs ?? 0);
      if (opts.failAtUpdate !== undefined) e.failAtUpdate = opts.failAtUpdate;
      engines.push(e);
      return e.asEngine();
    },
    makeBackend: async (): Promise<ModelBackend> => ({
      eosTokenIds: [0],
      renderChat: async () => [],
      sample: async () => [],
      decode: async () => "",
      forward: async () => [],
    }),
    // The registered algorithm with its step replaced: the counter step, with memory where the
    // algorithm keeps one and its options do not switch it off (erl-no-memory).
    algorithm: (name): Algorithm => {
      const real = getAlgorithm(name);
      return {
        ...real,
        step: (ctx, tasks, o) =>
          counter().step(ctx, tasks, o.n, real.usesMemory && !(o as { noMemory?: boolean }).noMemory),
      };
    },
    trainer: async () => counter(),
    getEnv: () => counterEnv(opts.tasks),
  };
}

// ---------------------------------------------------------------------------------------------
// Reading a run back, shared by the resume tests and the fault suite (scripts/faults.ts)

/** Progress output that goes nowhere. */
export const quietProgress = (): Progress => new Progress({ write: () => undefined });

/** A run's JSONL records without wall-clock fields, for comparing two runs; a torn last line throws. */
export function runRecords(dir: string): string {
  return ["metrics", "rollouts", "memory"]
    .map((n) => {
      const text = readFileSync(join(dir, `${n}.jsonl`), "utf8");
      if (text !== "" && !text.endsWith("\n")) throw new Error(`${n}.jsonl ends with a torn line`);
      return text
        .split("\n")
        .filter(Boolean)
        .map((l) => {
          const r = JSON.parse(l) as Record<string, unknown>;
          for (const k of Object.keys(r))
            if (k === "time" || k.startsWith("time/") || k === "tokens_per_s") delete r[k];
          return JSON.stringify(r);
        })
        .join("\n");
    })
    .join("\n--\n");
}

/** The steps of a run's train records, in file order (a torn last line is skipped). */
export function trainSteps(dir: string): number[] {
  return readJsonlTolerant<{ kind: string; step: number }>(join(dir, "metrics.jsonl"))
    .filter((r) => r.kind === "train")
    .map((r) => r.step);
}
