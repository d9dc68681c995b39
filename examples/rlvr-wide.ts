/**
 * A new algorithm in one file: RLVR with 16 attempts per task instead of 10, as `rlvr-wide`. The
 * descriptor (src/train/algorithms/types.ts) reuses RLVR's step and options and changes the default
 * n; the last line registers it. Load it into any command with `--env-module`:
 *
 *   npx erl --env-module examples/rlvr-wide.ts train --config frozenlake-tiny --set algo.name=rlvr-wide
 *   npx erl --env-module examples/rlvr-wide.ts compare --env frozenlake --algos rlvr,rlvr-wide --seeds 2
 *
 * A shipped algorithm is the same: its file in src/train/algorithms/ and one `registerAlgorithm`
 * line in registry.ts.
 */
import type { RlvrOptions } from "../src/algo/types.ts";
import { knownAlgorithms, registerAlgorithm } from "../src/train/algorithms/registry.ts";
import { RLVR, rlvrOptionsFrom } from "../src/train/algorithms/rlvr.ts";
import type { Algorithm } from "../src/train/algorithms/types.ts";

export const RLVR_WIDE: Algorithm<RlvrOptions> = {
  ...RLVR,
  name: "rlvr-wide",
  summary: "RLVR with 16 attempts per task",
  attemptsPerTask: 16,
  options: (cfg) => rlvrOptionsFrom(cfg, RLVR_WIDE.attemptsPerTask),
};

if (!knownAlgorithms().includes(RLVR_WIDE.name)) registerAlgorithm(RLVR_WIDE);
