/**
 * What ERL's reflections did in a run: how often a second attempt (under the reflection's rulebook)
 * succeeded after a failed first attempt, whether the rulebooks' role claims were right (where the
 * environment can check them, `EnvFamily.checkClaims`: FrozenLake), examples of reflections that
 * helped and that misled, and how the cross-episode memory evolved. Read from the run's
 * rollouts.jsonl and memory.jsonl (docs/run-format.md); `erl reflections <run-dir>` prints it as
 * Markdown.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { MemoryWrite, RolloutRecord } from "../algo/types.ts";
import type { ClaimCheck } from "../envs/types.ts";
import { getEnv, knownEnvs } from "../envs/registry.ts";
import { UserError } from "../util/errors.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";

export interface RetryExample {
  step: number;
  task: string;
  episode: string;
  /** The rulebook the second attempt ran under. */
  rulebook: string;
  claims?: ClaimCheck;
  firstActions: string[];
  secondActions: string[];
  firstFeedback: string;
  secondFeedback: string;
}

export interface MemoryPoint {
  step: number;
  task: string;
  claims?: ClaimCheck;
  rulebook: string;
}

export interface ReflectionSummary {
  env: string;
  /** Second attempts (one per failed first attempt that was reflected on). */
  retries: number;
  retriesSucceeded: number;
  /** Per training step: first-attempt and second-attempt success rates. */
  byStep: { step: number; first: number; firstN: number; second: number; secondN: number }[];
  /** Where the environment checks claims (FrozenLake): role claims in the rulebooks, and retry success split by them. */
  claims?: {
    total: number;
    correct: number;
    completeRulebooks: number;
    successWithAllCorrect: [number, number];
    successWithSomeWrong: [number, number];
  };
  helped: RetryExample[];
  misled: RetryExample[];
  memory: MemoryPoint[];
}

/** The move a reply made: the last fenced block's content, else the reply itself, on one line. */
export function moveOf(reply: string): string {
  const blocks = [...reply.matchAll(/```[^\n]*\n?([\s\S]*?)```/g)];
  const text = blocks.length ? blocks[blocks.length - 1]![1]! : reply;
  const one = text.replace(/\s+/g, " ").trim();
  return one.length > 40 ? `${one.slice(0, 39)}…` : one;
}

const actionsOf = (r: RolloutRecord): string[] => r.trace.map((t) => moveOf(t.action));

type ClaimChecker = ((rulebook: string) => ClaimCheck) | null;

/** The claim check of a run's environment, where the environment offers one (`EnvFamily.checkClaims`). */
function claimCheckerFor(env: string): ClaimChecker {
  if (!knownEnvs().includes(env)) return null;
  const family = getEnv(env);
  return family.checkClaims ? (rulebook) => family.checkClaims!(rulebook) : null;
}

function example(r: RolloutRecord, first: RolloutRecord | undefined, check: ClaimChecker): RetryExample {
  const rulebook = r.reflection?.rulebook ?? r.system;
  return {
    step: r.step,
    task: r.task,
    episode: r.episode,
    rulebook,
    ...(check ? { claims: check(rulebook) } : {}),
    firstActions: first ? actionsOf(first) : [],
    secondActions: actionsOf(r),
    firstFeedback: first?.feedback ?? "",
    secondFeedback: r.feedback,
  };
}

/** Summarises a run directory's reflections; `examples` caps each example list. */
export function summarizeReflections(runDir: string, examples = 3): ReflectionSummary {
  const file = join(runDir, "rollouts.jsonl");
  if (!existsSync(file)) throw new UserError(`${file}: no rollouts.jsonl (is ${runDir} a run directory?)`);
  const rollouts = readJsonlTolerant<RolloutRecord>(file);
  const memFile = join(runDir, "memory.jsonl");
  const writes = existsSync(memFile) ? readJsonlTolerant<MemoryWrite>(memFile) : [];
  const env = rollouts.find((r) => r.env)?.env ?? "unknown";
  const check = claimCheckerFor(env);
  // A second attempt's first attempt: same step, task and attempt index, stage "first".
  const key = (r: RolloutRecord) => `${r.step}|${r.task}|${r.attempt}`;
  const firsts = new Map<string, RolloutRecord>();
  for (const r of rollouts) if (r.stage === "first") firsts.set(key(r), r);
  const seconds = rollouts.filter((r) => r.stage === "second");
  const steps = new Map<number, { f: number; fn: number; s: number; sn: number }>();
  for (const r of rollouts) {
    if (r.stage === "eval") continue;
    const e = steps.get(r.step) ?? { f: 0, fn: 0, s: 0, sn: 0 };
    if (r.stage === "first") {
      e.fn++;
      e.f += r.success ? 1 : 0;
    } else {
      e.sn++;
      e.s += r.success ? 1 : 0;
    }
    steps.set(r.step, e);
  }
  const summary: ReflectionSummary = {
    env,
    retries: seconds.length,
    retriesSucceeded: seconds.filter((r) => r.success).length,
    byStep: [...steps.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([step, e]) => ({
        step,
        first: e.fn ? e.f / e.fn : 0,
        firstN: e.fn,
        second: e.sn ? e.s / e.sn : 0,
        secondN: e.sn,
      })),
    helped: [],
    misled: [],
    memory: writes.map((w) => ({
      step: w.step,
      task: w.task,
      rulebook: w.rulebook,
      ...(check ? { claims: check(w.rulebook) } : {}),
    })),
  };
  const withFirst = seconds.map((r) => ({ r, first: firsts.get(key(r)) }));
  const failedFirst = withFirst.filter((x) => x.first === undefined || !x.first.success);
  summary.helped = failedFirst
    .filter((x) => x.r.success)
    .slice(0, examples)
    .map((x) => example(x.r, x.first, check));
  summary.misled = failedFirst
    .filter((x) => !x.r.success)
    .map((x) => example(x.r, x.first, check))
    .filter((e) => !check || (e.claims !== undefined && e.claims.correct < e.claims.claims))
    .slice(0, examples);
  if (check) {
    const c = { total: 0, correct: 0, completeRulebooks: 0 };
    const allRight: [number, number] = [0, 0];
    const someWrong: [number, number] = [0, 0];
    for (const r of seconds) {
      const k = check(r.reflection?.rulebook ?? r.system);
      c.total += k.claims;
      c.correct += k.correct;
      c.completeRulebooks += k.complete ? 1 : 0;
      const bucket = k.claims > 0 && k.correct === k.claims ? allRight : someWrong;
      bucket[0] += r.success ? 1 : 0;
      bucket[1]++;
    }
    summary.claims = { ...c, successWithAllCorrect: allRight, successWithSomeWrong: someWrong };
  }
  return summary;
}

const pct = (a: number, b: number) => (b ? `${((100 * a) / b).toFixed(0)}% (${a}/${b})` : "–");

function exampleMd(e: RetryExample): string {
  const claims = e.claims ? `, role claims ${e.claims.correct}/${e.claims.claims} correct` : "";
  return [
    `- step ${e.step}, task ${e.task}${claims}`,
    `  - first attempt: ${e.firstActions.join(" ") || "–"} → ${e.firstFeedback || "–"}`,
    `  - second attempt: ${e.secondActions.join(" ") || "–"} → ${e.secondFeedback}`,
    "  - rulebook:",
    "",
    "    ~~~~text",
    ...e.rulebook.split("\n").map((l) => `    ${l}`),
    "    ~~~~",
    "",
  ].join("\n");
}

/** The summary as Markdown. */
export function reflectionsMarkdown(s: ReflectionSummary, runDir: string): string {
  const out: string[] = [`# Reflections in ${runDir}`, ""];
  out.push(
    `Environment: ${s.env}. Second attempts after a reflection: ${s.retries}, ` +
      `succeeded ${pct(s.retriesSucceeded, s.retries)}.`,
    "",
  );
  if (s.claims) {
    const c = s.claims;
    out.push(
      `Role claims in the retries' rulebooks: ${pct(c.correct, c.total)} correct; complete and correct ` +
        `rulebooks (all four roles): ${pct(c.completeRulebooks, s.retries)}.`,
      `Retry success when every claim was correct: ${pct(...c.successWithAllCorrect)}; ` +
        `when some claim was wrong or none was made: ${pct(...c.successWithSomeWrong)}.`,
      "",
    );
  }
  out.push(
    "| step | first-attempt success | n | second-attempt success | n |",
    "| --- | --- | --- | --- | --- |",
  );
  for (const b of s.byStep)
    out.push(
      `| ${b.step} | ${b.first.toFixed(2)} | ${b.firstN} | ${b.secondN ? b.second.toFixed(2) : "–"} | ${b.secondN} |`,
    );
  out.push("", "## Reflections that helped (failed first attempt, successful retry)", "");
  out.push(s.helped.length ? s.helped.map(exampleMd).join("\n") : "None.", "");
  out.push("## Reflections that misled (failed retry; on FrozenLake, with a wrong role claim)", "");
  out.push(s.misled.length ? s.misled.map(exampleMd).join("\n") : "None.", "");
  out.push("## Memory", "");
  if (s.memory.length === 0) out.push("No memory writes (memory disabled, or no retry succeeded).");
  else {
    out.push("| write | step | task | role claims correct |", "| --- | --- | --- | --- |");
    s.memory.forEach((m, i) =>
      out.push(
        `| ${i + 1} | ${m.step} | ${m.task} | ${m.claims ? `${m.claims.correct}/${m.claims.claims}` : "–"} |`,
      ),
    );
    out.push("", "Last rulebook in memory:", "", "~~~~text", s.memory[s.memory.length - 1]!.rulebook, "~~~~");
  }
  return out.join("\n") + "\n";
}
