/**
 * The learning rate of optimizer step s (1-based) of S, with W warm-up steps, peak lr and floor
 * lr·m (m = minLrRatio):
 *
 *   warm-up   s <= W:  lr · s / W
 *   then, with p = (s − W) / max(1, S − W) in [0, 1]:
 *     constant         lr
 *     linear           lr · (m + (1 − m)(1 − p))
 *     cosine           lr · (m + (1 − m)(1 + cos(π p)) / 2)
 *
 * A pure function of the step, so a resumed run gets exactly the rates it would have had.
 */
export type ScheduleName = "cosine" | "linear" | "constant";

export interface Schedule {
  name: ScheduleName;
  lr: number;
  warmupSteps: number;
  minLrRatio: number;
  totalSteps: number;
}

export function learningRate(s: Schedule, step: number): number {
  const { lr, warmupSteps: w, minLrRatio: m, totalSteps: total } = s;
  if (w > 0 && step <= w) return (lr * step) / w;
  if (s.name === "constant") return lr;
  const p = Math.min(1, Math.max(0, (step - w) / Math.max(1, total - w)));
  const decay = s.name === "linear" ? 1 - p : (1 + Math.cos(Math.PI * p)) / 2;
  return lr * (m + (1 - m) * decay);
}
