// The charts of the Curves view and the metrics.jsonl keys behind them (docs/run-format.md). Kept
// apart from the drawing code (which needs a browser) so that tests can check these keys against
// what training really writes.

/**
 * The charts and the metrics.jsonl keys behind them (see docs/run-format.md). `runKind: "sft"` marks a
 * chart only fine-tuning runs fill; the others are the RL runs' (a chart with no data draws nothing).
 */
export const CHARTS = [
  {
    id: "eval",
    title: "Eval reward (test split)",
    kind: "eval",
    range: [0, 1],
    series: [{ key: "eval/reward" }],
  },
  {
    id: "reward",
    title: "Training reward: post-reflection (solid) vs first attempt (dashed)",
    kind: "train",
    range: [0, 1],
    series: [
      { key: "reward/post_reflection", label: "post-refl." },
      { key: "reward/first", label: "first", dash: [6, 4] },
    ],
  },
  {
    id: "gate",
    title: "Gate rate (first attempts that failed → reflection)",
    kind: "train",
    range: [0, 1],
    series: [{ key: "gate_rate" }],
  },
  // Training writes the number of memory writes of each step; the chart sums them up.
  {
    id: "memory",
    title: "Memory updates (cumulative)",
    kind: "train",
    cumulative: true,
    range: [0, 1],
    series: [{ key: "memory/updates" }],
  },
  { id: "loss", title: "Loss", kind: "train", series: [{ key: "loss" }] },
  // Supervised fine-tuning runs (erl sft) write these; RL runs do not.
  {
    id: "sft-eval-loss",
    title: "Held-out loss (fine-tuning)",
    kind: "eval",
    runKind: "sft",
    series: [{ key: "eval/loss" }],
  },
  { id: "lr", title: "Learning rate", kind: "train", runKind: "sft", series: [{ key: "lr" }] },
  { id: "kl", title: "KL to the reference policy", kind: "train", series: [{ key: "kl" }] },
  { id: "clip", title: "Clip fraction", kind: "train", range: [0, 1], series: [{ key: "clip_frac" }] },
  {
    id: "mismatch",
    title: "Rollout–trainer mismatch: |log π_trainer − log π_sampler| mean (solid), k3 KL (dashed)",
    kind: "train",
    series: [
      { key: "mismatch/abs_mean", label: "|gap| mean" },
      { key: "mismatch/k3", label: "k3 KL", dash: [6, 4] },
    ],
  },
  { id: "tps", title: "Tokens per second", kind: "train", series: [{ key: "tokens_per_s" }] },
];

export const CHART_KEYS = [...new Set(CHARTS.flatMap((c) => c.series.map((s) => s.key)))];
