/**
 * The episode loop: many episodes at once, multi-turn with full history. Each turn, the replies of
 * all running episodes are sampled with one `sample` call per distinct sampling setting, then every
 * episode steps its environment (HotpotQA tool calls run here, between turns) and appends the next
 * observation. Trajectories are built token by token as it goes (trajectory.ts).
 *
 * Also `sampleReplies`, the single-turn version used for reflections.
 */
import type { ChatMessage, SampleRequest, SampleStopReason, SampledSequence } from "../engine/api.ts";
import type { EnvFamily, Episode, StopReason, Task, TraceStep } from "../envs/types.ts";
import type { Rng } from "../util/rng.ts";
import type { ModelBackend } from "./backend.ts";
import { TrajectoryBuilder, type Trajectory } from "./trajectory.ts";

export interface SamplingSettings {
  temperature: number;
  topP?: number;
  topK?: number;
}

export interface LoopSettings {
  /** Temperature of the log-probs the engine returns with sampled tokens (default 1). */
  logprobTemperature?: number;
  maxTokensPerTurn: number;
  maxContextTokens: number;
  contextOverflow: "stop" | "shrink";
  turnTokenLimit: "step" | "stop";
}

/** Below this many free tokens a "shrink" turn is pointless and the episode stops. */
export const MIN_TURN_TOKENS = 8;

export interface EpisodeRequest {
  /** Unique id (run files, logs). */
  id: string;
  task: Task;
  system: string;
  sampling: SamplingSettings;
}

export interface AssistantTurn {
  tokens: number[];
  logprobs: number[];
  text: string;
  stop: SampleStopReason;
}

export interface EpisodeOutcome {
  request: EpisodeRequest;
  /** The whole conversation, system prompt first. */
  messages: ChatMessage[];
  trace: TraceStep[];
  turns: AssistantTurn[];
  trajectory: Trajectory;
  reward: number;
  success: boolean;
  stopReason: StopReason;
  feedback: string;
  sampledTokens: number;
}

export interface LoopTiming {
  /** Seconds inside sample calls. */
  sample: number;
  /** Seconds inside environment steps. */
  env: number;
  /** Seconds rendering and decoding. */
  render: number;
  sampleCalls: number;
}

export function emptyTiming(): LoopTiming {
  return { sample: 0, env: 0, render: 0, sampleCalls: 0 };
}

export function addTiming(into: LoopTiming, t: LoopTiming): void {
  into.sample += t.sample;
  into.env += t.env;
  into.render += t.render;
  into.sampleCalls += t.sampleCalls;
}

export interface LoopDeps {
  env: EnvFamily;
  model: ModelBackend;
  /** Each sample call takes its seed from here, in a fixed order. */
  rng: Rng;
  settings: LoopSettings;
  /** Extra stop strings, e.g. the end of a tool call. */
  stopStrings?: readonly string[];
  timing?: LoopTiming;
  onEpisodeDone?: (done: number, total: number) => void;
  /** Called as each turn starts, with the episodes finished so far. */
  onTurn?: (turn: number, maxTurns: number, done: number, total: number) => void;
}

interface Running {
  request: EpisodeRequest;
  episode: Episode;
  builder: TrajectoryBuilder;
  turns: AssistantTurn[];
  stop: StopReason | null;
  turnLimit: number;
  pending: SampledSequence | null;
}

function now(): number {
  return performance.now() / 1000;
}

function samplingKey(s: SamplingSettings, maxTokens: number): string {
  return JSON.stringify([s.temperature, s.topP ?? null, s.topK ?? null, maxTokens]);
}

/**
 * Samples one sequence for each item with one engine call per sampling key (items keep their order
 * inside a call, and calls go in order of first appearance, so seeds are drawn deterministically).
 */
async function sampleGrouped(
  model: ModelBackend,
  rng: Rng,
  items: readonly { prompt: number[]; sampling: SamplingSettings; maxTokens: number }[],
  stopStrings: readonly string[] | undefined,
  timing: LoopTiming,
  logprobTemperature = 1,
): Promise<SampledSequence[]> {
  const groups = new Map<string, number[]>();
  items.forEach((it, i) => {
    const key = samplingKey(it.sampling, it.maxTokens);
    const list = groups.get(key);
    if (list) list.push(i);
    else groups.set(key, [i]);
  });
  const out: SampledSequence[] = new Array<SampledSequence>(items.length);
  for (const indices of groups.values()) {
    const first = items[indices[0]!]!;
    const req: SampleRequest = {
      prompts: indices.map((i) => items[i]!.prompt),
      n: 1,
      maxTokens: first.maxTokens,
      temperature: first.sampling.temperature,
      stopTokenIds: [...model.eosTokenIds],
      seed: rng.seed(),
    };
    if (first.sampling.topP !== undefined) req.topP = first.sampling.topP;
    if (first.sampling.topK !== undefined) req.topK = first.sampling.topK;
    if (stopStrings && stopStrings.length > 0) req.stopStrings = [...stopStrings];
    if (logprobTemperature !== 1) req.logprobTemperature = logprobTemperature;
    const t0 = now();
    const seqs = await model.sample(req);
    timing.sample += now() - t0;
    timing.sampleCalls += 1;
    if (seqs.length !== indices.length)
      throw new Error(`sample: asked for ${indices.length} sequences, got ${seqs.length}`);
    for (const seq of seqs) {
      const itemIndex = indices[seq.promptIndex];
      if (itemIndex === undefined || out[itemIndex] !== undefined)
        throw new Error(`sample: bad or repeated promptIndex ${seq.promptIndex}`);
      if (seq.logprobs.length !== seq.tokens.length)
        throw new Error(`sample: ${seq.tokens.length} tokens but ${seq.logprobs.length} log-probs`);
      out[itemIndex] = seq;
    }
  }
  return out;
}

function contextLimit(model: ModelBackend, settings: LoopSettings): number {
  return Math.min(settings.maxContextTokens, model.maxPositions ?? Number.POSITIVE_INFINITY);
}

function loopFeedback(run: Running, why: string): string {
  const steps = run.episode.trace.length;
  return `Outcome: stopped, ${why}. Reward ${run.episode.totalReward}. Actions taken: ${steps}.`;
}

/** Runs every request to the end. Outcomes come back in request order. */
export async function runEpisodes(
  requests: readonly EpisodeRequest[],
  deps: LoopDeps,
): Promise<EpisodeOutcome[]> {
  const { env, model, settings } = deps;
  const timing = deps.timing ?? emptyTiming();
  const limit = contextLimit(model, settings);
  let finished = 0;

  const t0 = now();
  const runs: Running[] = await Promise.all(
    requests.map(async (request) => {
      const episode = env.makeEpisode(request.task);
      const builder = await TrajectoryBuilder.start(model, [
        { role: "system", content: request.system },
        { role: "user", content: episode.initialObservation },
      ]);
      return {
        request,
        episode,
        builder,
        turns: [],
        stop: null,
        turnLimit: settings.maxTokensPerTurn,
        pending: null,
      };
    }),
  );
  timing.render += now() - t0;

  const end = (run: Running, reason: StopReason) => {
    run.stop = reason;
    finished += 1;
    deps.onEpisodeDone?.(finished, runs.length);
  };

  // An episode that starts out too long for the context never samples.
  for (let turn = 0; ; turn++) {
    const active: Running[] = [];
    for (const run of runs) {
      if (run.stop !== null) continue;
      if (turn >= env.maxTurns) {
        end(run, "budget");
        continue;
      }
      const free = limit - run.builder.length;
      if (free < settings.maxTokensPerTurn) {
        if (settings.contextOverflow === "stop" || free < MIN_TURN_TOKENS) {
          end(run, "context");
          continue;
        }
        run.turnLimit = free;
      } else run.turnLimit = settings.maxTokensPerTurn;
      active.push(run);
    }
    if (active.length === 0) break;
    deps.onTurn?.(turn + 1, env.maxTurns, finished, runs.length);

    const seqs = await sampleGrouped(
      model,
      deps.rng,
      active.map((r) => ({
        prompt: r.builder.ids.slice(),
        sampling: r.request.sampling,
        maxTokens: r.turnLimit,
      })),
      deps.stopStrings,
      timing,
      settings.logprobTemperature,
    );
    active.forEach((r, i) => (r.pending = seqs[i]!));

    await Promise.all(
      active.map(async (run) => {
        const seq = run.pending!;
        run.pending = null;
        let t0 = now();
        const text = await model.decode(seq.tokens);
        timing.render += now() - t0;
        run.builder.appendSampled(seq.tokens, seq.logprobs, text);
        run.turns.push({ tokens: seq.tokens, logprobs: seq.logprobs, text, stop: seq.stopReason });
        if (seq.stopReason === "length" && settings.turnTokenLimit === "stop") {
          end(run, "context");
          return;
        }
        t0 = now();
        const result = await run.episode.step(text);
        timing.env += now() - t0;
        if (result.done) {
          end(run, result.stopReason ?? (run.episode.success ? "goal" : "failure"));
          return;
        }
        t0 = now();
        await run.builder.appendMessages([{ role: result.observationRole, content: result.observation }]);
        timing.render += now() - t0;
      }),
    );
  }

  return runs.map((run) => {
    const stopReason = run.stop!;
    const feedback = run.episode.done
      ? run.episode.feedback()
      : loopFeedback(
          run,
          stopReason === "context"
            ? "the conversation reached the context or reply limit"
            : "the turn limit was reached",
        );
    return {
      request: run.request,
      messages: run.builder.messages.slice(),
      trace: [...run.episode.trace],
      turns: run.turns,
      trajectory: run.builder.finish(),
      reward: run.episode.totalReward,
      success: run.episode.success,
      stopReason,
      feedback,
      sampledTokens: run.turns.reduce((a, t) => a + t.tokens.length, 0),
    };
  });
}

export interface ReplyRequest {
  messages: ChatMessage[];
  sampling: SamplingSettings;
  maxTokens: number;
}

export interface Reply {
  text: string;
  turn: AssistantTurn;
  trajectory: Trajectory;
}

/** One reply per request (reflections), batched like episode turns. Requests too long for the context get an empty reply. */
export async function sampleReplies(
  requests: readonly ReplyRequest[],
  deps: Pick<LoopDeps, "model" | "rng" | "timing"> & {
    maxContextTokens: number;
    logprobTemperature?: number;
  },
): Promise<Reply[]> {
  const { model } = deps;
  const timing = deps.timing ?? emptyTiming();
  const limit = Math.min(deps.maxContextTokens, model.maxPositions ?? Number.POSITIVE_INFINITY);
  const t0 = now();
  const builders = await Promise.all(requests.map((r) => TrajectoryBuilder.start(model, r.messages)));
  timing.render += now() - t0;
  const fits = builders.map((b, i) => limit - b.length >= Math.min(MIN_TURN_TOKENS, requests[i]!.maxTokens));
  const items = requests
    .map((r, i) => ({
      prompt: builders[i]!.ids.slice(),
      sampling: r.sampling,
      maxTokens: Math.min(r.maxTokens, limit - builders[i]!.length),
      i,
    }))
    .filter((it) => fits[it.i]);
  const seqs = await sampleGrouped(model, deps.rng, items, undefined, timing, deps.logprobTemperature);
  const byRequest = new Map<number, SampledSequence>();
  items.forEach((it, k) => byRequest.set(it.i, seqs[k]!));
  const out: Reply[] = [];
  for (let i = 0; i < requests.length; i++) {
    const seq = byRequest.get(i) ?? {
      promptIndex: 0,
      tokens: [],
      logprobs: [],
      stopReason: "length" as const,
    };
    const t1 = now();
    const text = seq.tokens.length > 0 ? await model.decode(seq.tokens) : "";
    timing.render += now() - t1;
    const b = builders[i]!;
    b.appendSampled(seq.tokens, seq.logprobs, text);
    out.push({
      text,
      turn: { tokens: seq.tokens, logprobs: seq.logprobs, text, stop: seq.stopReason },
      trajectory: b.finish(),
    });
  }
  return out;
}

/**
 * The trajectory of a finished episode's replies under a different system prompt (the distill
 * context): the same sampled ids, the same observations, re-rendered around them. Log-probs are
 * left 0; the caller scores the sequence under the current policy.
 */
export async function replayWithSystem(
  model: ModelBackend,
  outcome: Pick<EpisodeOutcome, "messages" | "turns">,
  system: string,
): Promise<Trajectory> {
  const [sys, ...rest] = outcome.messages;
  if (!sys || sys.role !== "system")
    throw new Error("replay: the conversation must start with a system message");
  const firstUser = rest[0];
  if (!firstUser) throw new Error("replay: the conversation has no first observation");
  const b = await TrajectoryBuilder.start(model, [{ role: "system", content: system }, firstUser]);
  let at = 1;
  for (const turn of outcome.turns) {
    const msg = rest[at];
    if (!msg || msg.role !== "assistant") throw new Error("replay: turns and messages disagree");
    b.appendSampled(
      turn.tokens,
      turn.tokens.map(() => 0),
      turn.text,
    );
    at += 1;
    const follow: ChatMessage[] = [];
    while (at < rest.length && rest[at]!.role !== "assistant") follow.push(rest[at++]!);
    if (follow.length > 0) await b.appendMessages(follow);
  }
  return b.finish();
}
