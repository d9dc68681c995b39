/**
 * Symbol letters for the pretraining corpus. Every episode draws its own letters for every role, so
 * no letter (in particular none of the reference letters A, B, C, D, X, √) carries a learned meaning:
 * the model has to read the roles from a rulebook in its context, or infer them from what it sees.
 */
import type { Rng } from "../util/rng.ts";
import { FROZENLAKE_SYMBOLS } from "../envs/frozenlake.ts";

/** Everything a board may show: A–Z, a–z and √ (the reference "agent on goal" mark). */
export const SYMBOL_POOL: readonly string[] = [
  ..."ABCDEFGHIJKLMNOPQRSTUVWXYZ",
  ..."abcdefghijklmnopqrstuvwxyz",
  "√",
];

/** FrozenLake roles in the order the reference rulebook lists them. */
export const FL_ROLES = ["agent", "goal", "hole", "frozen", "agentInHole", "agentOnGoal"] as const;
export type FlRole = (typeof FL_ROLES)[number];
export type FlSymbols = Readonly<Record<FlRole, string>>;

/** The reference FrozenLake letters (the evaluation environment's own symbol map). */
export const REFERENCE_FL_SYMBOLS: FlSymbols = FROZENLAKE_SYMBOLS;

/**
 * Draws distinct letters for the FrozenLake roles from `pool` (the whole alphabet by default;
 * a small pool is the early-curriculum warm-up). Uniform over ordered draws, so every letter is
 * equally likely to get every role.
 */
export function drawFlSymbols(rng: Rng, pool: readonly string[] = SYMBOL_POOL): FlSymbols {
  if (pool.length < FL_ROLES.length) throw new RangeError(`symbol pool too small: ${pool.length}`);
  const letters = rng.shuffle(pool).slice(0, FL_ROLES.length);
  const out = {} as Record<FlRole, string>;
  FL_ROLES.forEach((role, i) => {
    out[role] = letters[i] as string;
  });
  return out;
}

/**
 * The reduced-hiding draw the shipped recipe uses for most documents: the four board roles get a
 * uniformly random permutation of the reference letters A, B, C, D, and the two end-of-game marks a
 * random order of X and √. Every letter is equally likely to have every role, so the reference
 * letters still carry no meaning of their own; what is easier than the full-alphabet draw is the
 * look-up (4 candidate letters instead of 53).
 */
export function drawPermutedReference(rng: Rng): FlSymbols {
  const [agent, goal, hole, frozen] = rng.shuffle(["A", "B", "C", "D"]) as [string, string, string, string];
  const [agentInHole, agentOnGoal] = rng.shuffle(["X", "√"]) as [string, string];
  return { agent, goal, hole, frozen, agentInHole, agentOnGoal };
}
