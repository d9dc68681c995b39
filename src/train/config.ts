/**
 * The run config, one typed object describing a training run, in files by job:
 * - config/types.ts     the `RunConfig` type;
 * - config/schema.ts    its schema (fixed keys + the registered algorithms' and environments'
 *                       keys), validation and the constraints between keys;
 * - config/defaults.ts  the one table of defaults (CPU scale);
 * - config/load.ts      presets, config files, `--config` + `--set`, the model-path check;
 * - config/set.ts       `--set key.path=value`;
 * - config/options.ts   config → the options of evaluation, the learner and the optimiser.
 * Config files are JSON; a file gives only the keys it changes. An unknown key or a value of the
 * wrong type is a `UserError` naming the file (or `--set`), the key and the value, with the nearest
 * known key. This module re-exports what the rest of the system uses.
 */
export type { AlgoConfig, ApiEndpointConfig, RunConfig, SamplingConfig } from "./config/types.ts";
export { crossCheck, runSchema, validateConfig } from "./config/schema.ts";
export { defaultConfig } from "./config/defaults.ts";
export {
  buildConfig,
  checkModelPath,
  listPresets,
  loadConfigFile,
  presetsDir,
  resolveConfigPath,
} from "./config/load.ts";
export { applyOverrides } from "./config/set.ts";
export {
  envOptions,
  evalOptionsFrom,
  evalSamplesPerTask,
  learnerConfigFrom,
  optimConfigFrom,
} from "./config/options.ts";
export { attemptsPerTask, getAlgorithm, knownAlgorithms } from "./algorithms/registry.ts";
