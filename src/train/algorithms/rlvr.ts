/**
 * RLVR (GRPO on first attempts, the paper's baseline) as a run-config algorithm: `rlvrStep`
 * (src/algo/rlvr.ts) with 10 attempts per task by default, no memory, no keys of its own.
 */
import { rlvrStep } from "../../algo/rlvr.ts";
import type { RlvrOptions } from "../../algo/types.ts";
import { loopOptions, samplingOptions } from "../config/attempts.ts";
import type { RunConfig } from "../config/types.ts";
import type { Algorithm } from "./types.ts";

export function rlvrOptionsFrom(cfg: RunConfig, attemptsPerTask = RLVR.attemptsPerTask): RlvrOptions {
  const a = cfg.algo;
  return {
    ...loopOptions(cfg),
    n: a.n ?? attemptsPerTask,
    singleton: a.singleton,
    allEqual: a.allEqual,
    attemptSampling: samplingOptions(a.attemptSampling),
    profile: a.profile,
  };
}

export const RLVR: Algorithm<RlvrOptions> = {
  name: "rlvr",
  summary: "the RLVR baseline: GRPO on first attempts only",
  attemptsPerTask: 10,
  trains: true,
  usesMemory: false,
  deploysMemory: false,
  retries: false,
  schema: {},
  defaults: {},
  options: (cfg) => rlvrOptionsFrom(cfg),
  step: rlvrStep,
};
