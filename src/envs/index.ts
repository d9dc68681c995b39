/**
 * The environments' public surface: the interface, the registry, the three shipped families with
 * their dynamics, renderers, solvers and generators, the tool-call protocol and the QA metrics.
 */
export type * from "./types.ts";
export * from "./common.ts";
export * from "./registry.ts";
export * from "./frozenlake.ts";
export * from "./sokoban.ts";
export * from "./hotpotqa.ts";
export * from "./search.ts";
export * from "./qa-metrics.ts";
export * from "./tool-protocol.ts";
