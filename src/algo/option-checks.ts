/**
 * Option checks: the step functions reject nonsense before spending any model time, with a
 * `UserError` naming the option and the value.
 */
import { PROMPT_PROFILES, type PromptProfileName } from "../agent/prompts.ts";
import { UserError } from "../util/errors.ts";
import type { AdvantageRules } from "./advantages.ts";
import { validateMemoryMode } from "./memory.ts";
import type { ErlOptions, EvalOptions, LoopOptions, RlvrOptions, SamplingOptions } from "./types.ts";

function fail(key: string, problem: string): never {
  throw new UserError(`option "${key}": ${problem}`);
}

export function checkPositiveInt(key: string, v: unknown): void {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
    fail(key, `expected an integer ≥ 1, got ${JSON.stringify(v)}`);
}

export function checkSampling(key: string, s: SamplingOptions): void {
  if (typeof s !== "object" || s === null) fail(key, "expected {temperature, topP?, topK?}");
  if (typeof s.temperature !== "number" || !(s.temperature >= 0))
    fail(`${key}.temperature`, `expected a number ≥ 0, got ${JSON.stringify(s.temperature)}`);
  if (s.topP !== undefined && (typeof s.topP !== "number" || !(s.topP > 0 && s.topP <= 1)))
    fail(`${key}.topP`, `expected a number in (0, 1], got ${JSON.stringify(s.topP)}`);
  if (s.topK !== undefined) checkPositiveInt(`${key}.topK`, s.topK);
}

export function checkLoopOptions(o: LoopOptions): void {
  checkPositiveInt("maxTokensPerTurn", o.maxTokensPerTurn);
  checkPositiveInt("maxContextTokens", o.maxContextTokens);
  if (o.contextOverflow !== "stop" && o.contextOverflow !== "shrink")
    fail("contextOverflow", `expected "stop" or "shrink", got ${JSON.stringify(o.contextOverflow)}`);
  if (o.turnTokenLimit !== "step" && o.turnTokenLimit !== "stop")
    fail("turnTokenLimit", `expected "step" or "stop", got ${JSON.stringify(o.turnTokenLimit)}`);
}

export function checkRules(o: AdvantageRules): void {
  if (o.singleton !== "reward-as-advantage" && o.singleton !== "zero")
    fail("singleton", `expected "reward-as-advantage" or "zero", got ${JSON.stringify(o.singleton)}`);
  if (o.allEqual !== "zero" && o.allEqual !== "drop")
    fail("allEqual", `expected "zero" or "drop", got ${JSON.stringify(o.allEqual)}`);
}

export function checkProfile(p: unknown): void {
  if (!PROMPT_PROFILES.includes(p as PromptProfileName))
    fail("profile", `expected ${PROMPT_PROFILES.map((x) => `"${x}"`).join(", ")}, got ${JSON.stringify(p)}`);
}

/** The checks every attempt-running function makes: n, its sampling, the loop settings, the profile. */
export function checkAttemptOptions(
  o: LoopOptions & { n: number; profile: unknown },
  samplingKey: string,
  sampling: SamplingOptions,
): void {
  checkPositiveInt("n", o.n);
  checkSampling(samplingKey, sampling);
  checkLoopOptions(o);
  checkProfile(o.profile);
}

export function validateEvalOptions(o: EvalOptions): void {
  checkAttemptOptions(o, "sampling", o.sampling);
}

export function validateRlvrOptions(o: RlvrOptions): void {
  checkAttemptOptions(o, "attemptSampling", o.attemptSampling);
  checkRules(o);
}

export function validateErlOptions(o: ErlOptions): void {
  checkAttemptOptions(o, "attemptSampling", o.attemptSampling);
  validateMemoryMode(o.memory);
  for (const key of ["noMemory", "noReflection", "noDistill"] as const)
    if (typeof o[key] !== "boolean") throw new UserError(`option "${key}": expected true or false`);
  checkRules(o);
  if (o.reflectionAdvantage !== "grpo" && o.reflectionAdvantage !== "reference-twice")
    throw new UserError(
      `option "reflectionAdvantage": expected "grpo" or "reference-twice", got ${JSON.stringify(o.reflectionAdvantage)}`,
    );
  checkSampling("reflectionSampling", o.reflectionSampling);
  checkPositiveInt("maxReflectionTokens", o.maxReflectionTokens);
}
