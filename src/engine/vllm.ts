/**
 * `sampler: "vllm"`: an `Engine` whose `sample` runs in vLLM (its own process and virtualenv,
 * engine/erl_engine/vllm_sampler.py) while every other call goes to the trainer engine. After each
 * `optimStep` (and `loadState`) the trainer's weights are exported to a directory and vLLM reloads
 * them: the LoRA adapter as a new adapter, full fine-tuning through vLLM's `reload_weights`. So the
 * next `sample` always uses the weights just trained. Sampled tokens and log-probs come back in the
 * protocol's `sample` shape.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type {
  AdamWConfig,
  ChatMessage,
  ChatRender,
  Datum,
  Engine,
  EngineInfo,
  ForwardBackwardResult,
  ScoreOptions,
  LoadModelRequest,
  LossConfig,
  SampledSequence,
  SampleRequest,
} from "./api.ts";
import { startEngine, type EngineClient } from "./client.ts";
import { REPO_ROOT } from "../util/paths.ts";
import { UserError } from "../util/errors.ts";

export function defaultVllmPython(): string {
  return process.env.ERL_VLLM_PYTHON || join(REPO_ROOT, ".venv-vllm", "bin", "python");
}

export interface VllmOptions {
  /** Interpreter of the vLLM virtualenv (default $ERL_VLLM_PYTHON, else .venv-vllm/bin/python). */
  python?: string;
  /** Receives the vLLM process's stderr lines. */
  onStderr?: (line: string) => void;
}

export class VllmSampledEngine implements Engine {
  private lora = false;
  private readonly syncDir = mkdtempSync(join(tmpdir(), "erl-vllm-sync-"));
  /** Weight syncs done so far (each after an optimStep or loadState). */
  syncs = 0;

  private constructor(
    readonly trainer: Engine,
    readonly vllm: EngineClient,
  ) {}

  /** Starts the vLLM sampler process next to an existing trainer engine. */
  static async start(trainer: Engine, opts: VllmOptions = {}): Promise<VllmSampledEngine> {
    const python = opts.python ?? defaultVllmPython();
    if (!existsSync(python))
      throw new UserError(
        `the vLLM sampler's Python is not at ${python}: run \`bash scripts/setup-vllm.sh\` (about 5 minutes, 3.5 GB) or set ERL_VLLM_PYTHON`,
      );
    const vllm = await startEngine({
      python,
      args: ["-m", "erl_engine.vllm_sampler"],
      // Its own GPUs when split from the trainer's (docs/scaling.md).
      ...(process.env.ERL_VLLM_DEVICES
        ? { env: { CUDA_VISIBLE_DEVICES: process.env.ERL_VLLM_DEVICES } }
        : {}),
      ...(opts.onStderr ? { onStderr: opts.onStderr } : {}),
    });
    return new VllmSampledEngine(trainer, vllm);
  }

  async info(): Promise<EngineInfo> {
    return this.trainer.info();
  }

  async loadModel(req: LoadModelRequest): Promise<EngineInfo> {
    if (!req.path)
      throw new UserError('sampler "vllm" loads the model from a directory: set model.path (no randomInit)');
    const info = await this.trainer.loadModel(req);
    // The sampler computes in the dtype the trainer resolved ("auto" is measured there).
    await this.vllm.loadModel({ ...req, dtype: info.dtype });
    this.lora = req.lora !== undefined;
    return info;
  }

  renderChat(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): Promise<number[]> {
    return this.trainer.renderChat(messages, opts);
  }
  renderChats(chats: ChatRender[]): Promise<number[][]> {
    if (this.trainer.renderChats) return this.trainer.renderChats(chats);
    return Promise.all(chats.map((c) => this.trainer.renderChat(c.messages, c)));
  }
  encode(text: string, opts?: { addSpecialTokens?: boolean }): Promise<number[]> {
    return this.trainer.encode(text, opts);
  }
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): Promise<string> {
    return this.trainer.decode(ids, opts);
  }
  decodeMany(seqs: number[][], opts?: { skipSpecialTokens?: boolean }): Promise<string[]> {
    if (this.trainer.decodeMany) return this.trainer.decodeMany(seqs, opts);
    return Promise.all(seqs.map((ids) => this.trainer.decode(ids, opts)));
  }

  sample(req: SampleRequest): Promise<SampledSequence[]> {
    return this.vllm.sample(req);
  }

  /** The trainer scores (at the temperature asked: distill rows are scored at the loss's T). */
  forward(datums: Datum[], opts?: ScoreOptions & { temperature?: number }): Promise<number[][]> {
    return this.trainer.forward(datums, opts);
  }
  forwardBackward(datums: Datum[], loss: LossConfig, opts?: ScoreOptions): Promise<ForwardBackwardResult> {
    return this.trainer.forwardBackward(datums, loss, opts);
  }

  async optimStep(cfg: AdamWConfig): Promise<{ gradNorm: number; metrics: Record<string, number> }> {
    const res = await this.trainer.optimStep(cfg);
    const t0 = performance.now();
    await this.syncWeights();
    return { ...res, metrics: { ...res.metrics, "time/weight_sync": (performance.now() - t0) / 1000 } };
  }

  /** Exports the trainer's weights and makes vLLM use them. */
  async syncWeights(): Promise<void> {
    // A fresh directory per sync: vLLM may still read the previous adapter while this one is written.
    const dir = join(this.syncDir, `w${this.syncs + 1}`);
    await this.trainer.export(dir, { mergeLora: false });
    await this.vllm.transport.call("syncWeights", { dir, lora: this.lora });
    if (this.syncs > 0) rmSync(join(this.syncDir, `w${this.syncs}`), { recursive: true, force: true });
    this.syncs++;
  }

  saveState(dir: string): Promise<void> {
    return this.trainer.saveState(dir);
  }
  async loadState(dir: string): Promise<void> {
    await this.trainer.loadState(dir);
    await this.syncWeights();
  }
  export(dir: string, opts?: { mergeLora?: boolean }): Promise<void> {
    return this.trainer.export(dir, opts);
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.vllm.close(), this.trainer.close()]);
    rmSync(this.syncDir, { recursive: true, force: true });
  }
}
