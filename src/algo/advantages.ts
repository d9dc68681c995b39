/**
 * GRPO advantages (spec §2): within a group, A = (r − mean) / (std_unbiased + 1e-6).
 * A group whose rewards are all equal gets A = 0 ("zero", kept in the batch) or is dropped ("drop");
 * a group of one gets A = r ("reward-as-advantage", the reference's mean 0 / std 1) or A = 0.
 * Pure functions of rewards and group keys.
 */
import type { AllEqualRule, SingletonRule } from "./types.ts";

export const GRPO_EPS = 1e-6;

export interface AdvantageRules {
  singleton: SingletonRule;
  allEqual: AllEqualRule;
}

/** Advantages of one group's rewards; `null` entries mean "drop this sample". */
export function grpoGroup(rewards: readonly number[], rules: AdvantageRules): (number | null)[] {
  const n = rewards.length;
  if (n === 0) return [];
  for (const r of rewards) if (!Number.isFinite(r)) throw new RangeError(`grpo: reward ${r} is not finite`);
  if (n === 1) return [rules.singleton === "reward-as-advantage" ? rewards[0]! : 0];
  const first = rewards[0]!;
  if (rewards.every((r) => r === first)) return rewards.map(() => (rules.allEqual === "zero" ? 0 : null));
  const mean = rewards.reduce((a, b) => a + b, 0) / n;
  const variance = rewards.reduce((a, r) => a + (r - mean) * (r - mean), 0) / (n - 1);
  const std = Math.sqrt(variance);
  return rewards.map((r) => (r - mean) / (std + GRPO_EPS));
}

/** Advantages for items keyed by group, in the items' order. Groups are formed by equal keys. */
export function grpoAdvantages(
  items: readonly { group: string; reward: number }[],
  rules: AdvantageRules,
): (number | null)[] {
  const byGroup = new Map<string, number[]>();
  items.forEach((item, i) => {
    const list = byGroup.get(item.group);
    if (list) list.push(i);
    else byGroup.set(item.group, [i]);
  });
  const out: (number | null)[] = new Array<number | null>(items.length).fill(0);
  for (const indices of byGroup.values()) {
    const adv = grpoGroup(
      indices.map((i) => items[i]!.reward),
      rules,
    );
    indices.forEach((itemIndex, k) => (out[itemIndex] = adv[k]!));
  }
  return out;
}
