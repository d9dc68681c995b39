/**
 * erl-tiny's acceptance figures on the FrozenLake reference test split, through the real engine and
 * the agent loop, in the `compact` prompt profile:
 * - S0: first attempt under the rule-free initial prompt;
 * - S_rule: the same tasks with the environment's reference rulebook as the system prompt;
 * - S_refl: each failed S0 attempt → the model's own reflection (shown the initial prompt, the
 *   trace, reward, feedback) → a second attempt under the extracted rulebook; success on those
 *   retries, and how often the reflection's role claims are correct.
 * Each figure is measured greedily and sampled (attempts at temperature 0.7, top-p 0.8, top-k 20;
 * reflections at 0.5, top-p 0.9, as in the spec). Sokoban's S0 and S_rule (with the table rulebook
 * the recipe trains on, and with the environment's own reference rulebook) are measured the same
 * way on its test split.
 */
import { EngineBackend, type ModelBackend } from "../agent/backend.ts";
import { runEpisodes, sampleReplies, type LoopSettings, type SamplingSettings } from "../agent/loop.ts";
import { compactProfile, findRulebook, rulebookFromReflection } from "../agent/prompts.ts";
import { startEngine } from "../engine/client.ts";
import type { ChatMessage } from "../engine/api.ts";
import { checkClaims, FrozenLakeFamily, type FrozenLakeTask } from "../envs/frozenlake.ts";
import { defaultConfig, evalOptionsFrom } from "../train/config.ts";
import { SokobanFamily, type SokobanTask } from "../envs/sokoban.ts";
import { Rng } from "../util/rng.ts";
import { rulebookSystemPrompt, tableRulebookText } from "./frozenlake-corpus.ts";
import { sokobanTableRulebook } from "./sokoban-corpus.ts";

export interface ModeFigures {
  mode: "greedy" | "sampled";
  tasks: number;
  s0: number;
  sRule: number;
  /** S_rule with the environment's own prose reference rulebook instead. */
  sRuleReferenceProse: number;
  /** Successes and tasks by board side, for S0, S_rule (table rulebook) and S_refl. */
  bySize: {
    s0: Record<string, [number, number]>;
    sRule: Record<string, [number, number]>;
    sRefl: Record<string, [number, number]>;
  };
  /**
   * Replies that parse to a move (the environment's parser: the last fenced block holds one move), over
   * every reply of the S0, S_rule and S_refl attempts.
   */
  parse: number;
  replies: number;
  /** Retries after a failed S0 attempt. */
  retries: number;
  sRefl: number;
  /** Reflections whose text had a <prompt>…</prompt>. */
  rulebookFound: number;
  claims: number;
  claimsCorrect: number;
  rulebooksComplete: number;
  /** A few transcripts to read: S0 and S_rule conversations, reflections and second attempts. */
  examples: { kind: string; messages: ChatMessage[] }[];
}

/**
 * Sokoban: first attempts without a rulebook, with the correct rulebook in the shape the recipe
 * trains on (the "table" rulebook), and with the environment's own prose reference rulebook.
 */
export interface SokobanFigures {
  mode: "greedy" | "sampled";
  tasks: number;
  s0: number;
  sRule: number;
  sRuleReference: number;
  /** Replies that parse to a move, over every reply of the three conditions. */
  parse: number;
  replies: number;
  bySize: {
    s0: Record<string, [number, number]>;
    sRule: Record<string, [number, number]>;
    sRuleReference: Record<string, [number, number]>;
  };
}

export interface AcceptanceReport {
  model: string;
  split: "test";
  profile: "compact";
  seed: number;
  seconds: number;
  modes: ModeFigures[];
  sokoban: SokobanFigures[];
}

/**
 * The episode settings: 64 tokens a reply, and a context of the model's window up to 4,096 tokens
 * (erl-tiny: 2,048; SmolLM2 writes a board cell as three tokens, so a 9×9 game of 8 turns needs
 * about 2,500).
 */
function loopFor(model: ModelBackend): LoopSettings {
  return {
    maxTokensPerTurn: 64,
    maxContextTokens: Math.min(model.maxPositions ?? 2048, 4096),
    contextOverflow: "stop",
    turnTokenLimit: "step",
  };
}

/** Replies that parse to a move (valid actions), and all replies, over some episodes. */
export function parseCount(outcomes: readonly { trace: readonly { result: { valid: boolean } }[] }[]): {
  ok: number;
  all: number;
} {
  let ok = 0;
  let all = 0;
  for (const o of outcomes)
    for (const step of o.trace) {
      all++;
      if (step.result.valid) ok++;
    }
  return { ok, all };
}

const rate = (xs: readonly boolean[]): number =>
  xs.length === 0 ? 0 : xs.filter(Boolean).length / xs.length;

/** Success by board side: `{ "4": [successes, tasks], ... }`. */
export function bySize(
  outcomes: readonly { success: boolean; request: { task: unknown } }[],
): Record<string, [number, number]> {
  const out: Record<string, [number, number]> = {};
  for (const o of outcomes) {
    const e = (out[String((o.request.task as { size: number }).size)] ??= [0, 0]);
    e[0] += o.success ? 1 : 0;
    e[1]++;
  }
  return out;
}

async function measureMode(
  mode: "greedy" | "sampled",
  model: ModelBackend,
  env: FrozenLakeFamily,
  tasks: readonly FrozenLakeTask[],
  rng: Rng,
): Promise<ModeFigures> {
  const parts = env.prompt();
  const initial = compactProfile.initialSystemPrompt(parts);
  // The correct rulebook in the shape the model was trained to read (the shipped recipe's "table"
  // rulebooks); `referenceRule` below is the environment's own prose rulebook, for comparison.
  const ruled = rulebookSystemPrompt(tableRulebookText({ roles: { ...env.symbols }, notes: [] }), parts);
  const referenceRuled = rulebookSystemPrompt(parts.referenceRulebook ?? "", parts);
  const attempt = samplingFor(mode);
  const reflect: SamplingSettings = mode === "greedy" ? { temperature: 0 } : { temperature: 0.5, topP: 0.9 };
  const LOOP = loopFor(model);
  const deps = { env, model, rng, settings: LOOP };
  const first = await runEpisodes(
    tasks.map((task, i) => ({ id: `s0-${i}`, task, system: initial, sampling: attempt })),
    deps,
  );
  const withRules = await runEpisodes(
    tasks.map((task, i) => ({ id: `rule-${i}`, task, system: ruled, sampling: attempt })),
    deps,
  );
  const withReference = await runEpisodes(
    tasks.map((task, i) => ({ id: `ref-${i}`, task, system: referenceRuled, sampling: attempt })),
    deps,
  );
  const failed = first.filter((o) => !o.success);
  const replies = await sampleReplies(
    failed.map((o) => ({
      messages: compactProfile.reflectionMessages(parts, null, {
        trace: o.trace,
        reward: o.reward,
        feedback: o.feedback,
      }),
      sampling: reflect,
      maxTokens: 400,
    })),
    { model, rng, maxContextTokens: LOOP.maxContextTokens },
  );
  const deltas = replies.map((r) => rulebookFromReflection(r.text, initial, parts));
  const second = await runEpisodes(
    failed.map((o, i) => ({ id: `refl-${i}`, task: o.request.task, system: deltas[i]!, sampling: attempt })),
    deps,
  );
  const checks = replies.map((r) => checkClaims(findRulebook(r.text) ?? ""));
  const parsed = parseCount([...first, ...withRules, ...second]);
  const examples = [
    ...first.slice(0, 2).map((o) => ({ kind: "s0", messages: o.messages })),
    ...withRules.slice(0, 3).map((o) => ({ kind: "rule", messages: o.messages })),
    ...replies.slice(0, 3).map((r, i) => ({
      kind: "reflection",
      messages: [
        ...compactProfile.reflectionMessages(parts, null, {
          trace: failed[i]!.trace,
          reward: failed[i]!.reward,
          feedback: failed[i]!.feedback,
        }),
        { role: "assistant" as const, content: r.text },
      ],
    })),
    ...second.slice(0, 3).map((o) => ({ kind: "second", messages: o.messages })),
  ];
  return {
    mode,
    tasks: tasks.length,
    s0: rate(first.map((o) => o.success)),
    sRule: rate(withRules.map((o) => o.success)),
    sRuleReferenceProse: rate(withReference.map((o) => o.success)),
    bySize: { s0: bySize(first), sRule: bySize(withRules), sRefl: bySize(second) },
    parse: parsed.all === 0 ? 0 : parsed.ok / parsed.all,
    replies: parsed.all,
    retries: failed.length,
    sRefl: rate(second.map((o) => o.success)),
    rulebookFound: replies.filter((r) => findRulebook(r.text) !== null).length,
    claims: checks.reduce((s, c) => s + c.claims, 0),
    claimsCorrect: checks.reduce((s, c) => s + c.correct, 0),
    rulebooksComplete: checks.filter((c) => c.complete).length,
    examples,
  };
}

const samplingFor = (mode: "greedy" | "sampled"): SamplingSettings =>
  mode === "greedy" ? { temperature: 0 } : evalOptionsFrom(defaultConfig()).sampling;

async function measureSokoban(
  mode: "greedy" | "sampled",
  model: ModelBackend,
  env: SokobanFamily,
  tasks: readonly SokobanTask[],
  rng: Rng,
): Promise<SokobanFigures> {
  const parts = env.prompt();
  const deps = { env, model, rng, settings: loopFor(model) };
  const run = (kind: string, system: string) =>
    runEpisodes(
      tasks.map((task, i) => ({ id: `${kind}-${i}`, task, system, sampling: samplingFor(mode) })),
      deps,
    );
  const first = await run("sokoban-s0", compactProfile.initialSystemPrompt(parts));
  const withRules = await run(
    "sokoban-rule",
    rulebookSystemPrompt(sokobanTableRulebook({ ...env.symbols }, env.budget), parts),
  );
  const withReference = await run(
    "sokoban-reference-rule",
    rulebookSystemPrompt(parts.referenceRulebook ?? "", parts),
  );
  const parsed = parseCount([...first, ...withRules, ...withReference]);
  return {
    mode,
    tasks: tasks.length,
    s0: rate(first.map((o) => o.success)),
    sRule: rate(withRules.map((o) => o.success)),
    sRuleReference: rate(withReference.map((o) => o.success)),
    parse: parsed.all === 0 ? 0 : parsed.ok / parsed.all,
    replies: parsed.all,
    bySize: { s0: bySize(first), sRule: bySize(withRules), sRuleReference: bySize(withReference) },
  };
}

export async function measureAcceptance(opts: {
  modelDir: string;
  limit?: number;
  seed?: number;
  modes?: readonly ("greedy" | "sampled")[];
  threads?: number;
  dtype?: "auto" | "float32" | "bfloat16";
  /** Which games to measure (default both). */
  games?: readonly ("frozenlake" | "sokoban")[];
  log?: (line: string) => void;
}): Promise<AcceptanceReport> {
  const t0 = Date.now();
  const seed = opts.seed ?? 0;
  // One intra-op thread: on a busy 2-core machine two OpenMP threads spin-wait on each other and
  // run several times slower than one.
  const engine = await startEngine({ env: { OMP_NUM_THREADS: String(opts.threads ?? 1) } });
  try {
    // "auto": bf16 where this CPU runs it faster (AMX, AVX512-BF16), else fp32.
    await engine.loadModel({ path: opts.modelDir, dtype: opts.dtype ?? "auto", device: "cpu", seed });
    const model = await EngineBackend.create(engine);
    const env = new FrozenLakeFamily();
    const all = env.loadSplit("test");
    const tasks = all.slice(0, opts.limit ?? all.length);
    const sokobanEnv = new SokobanFamily();
    const sokobanAll = sokobanEnv.loadSplit("test");
    const sokobanTasks = sokobanAll.slice(0, opts.limit ?? sokobanAll.length);
    const modes: ModeFigures[] = [];
    const sokoban: SokobanFigures[] = [];
    const games = opts.games ?? ["frozenlake", "sokoban"];
    for (const mode of opts.modes ?? ["greedy", "sampled"]) {
      if (games.includes("frozenlake")) {
        const figures = await measureMode(mode, model, env, tasks, new Rng(`acceptance/${seed}/${mode}`));
        opts.log?.(JSON.stringify({ ...figures, examples: figures.examples.length }));
        modes.push(figures);
      }
      if (!games.includes("sokoban")) continue;
      const sk = await measureSokoban(
        mode,
        model,
        sokobanEnv,
        sokobanTasks,
        new Rng(`acceptance/${seed}/sokoban/${mode}`),
      );
      opts.log?.(JSON.stringify({ sokoban: sk }));
      sokoban.push(sk);
    }
    return {
      model: opts.modelDir,
      split: "test",
      profile: "compact",
      seed,
      seconds: Math.round((Date.now() - t0) / 1000),
      modes,
      sokoban,
    };
  } finally {
    await engine.close();
  }
}
