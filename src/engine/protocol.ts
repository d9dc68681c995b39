/**
 * The engine wire protocol, TypeScript side: envelopes, packed numeric arrays, errors, and runtime
 * validation of everything the engine sends back. Its twin is `engine/erl_engine/protocol.py`, which
 * validates every request; docs/engine.md describes both.
 *
 *   request:  {"v": 1, "id": 7, "method": "forward", "params": {...}}
 *   answer:   {"v": 1, "id": 7, "ok": true, "result": {...}}
 *          |  {"v": 1, "id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}
 *
 * Numeric arrays may travel packed: {"dtype": "i32" | "f32" | "f64", "b64": "<little-endian bytes>"}.
 */
import { UserError } from "../util/errors.ts";
import type { EngineInfo, ForwardBackwardResult, SampledSequence } from "./api.ts";

export const PROTOCOL_VERSION = 1;

export type ErrorCode =
  | "bad_request"
  | "protocol_version"
  | "unknown_method"
  | "no_model"
  | "not_found"
  | "checkpoint"
  | "unauthorized"
  | "internal"
  /** Client-side codes: the engine process died, could not be reached, or sent something invalid. */
  | "engine_exited"
  | "unreachable"
  | "bad_response";

/** An error reported by the engine (or about it). A `UserError`, so the CLI prints it as one line. */
export class EngineError extends UserError {
  constructor(
    readonly code: ErrorCode,
    /** The problem without the "engine <method>:" prefix. */
    readonly detail: string,
    readonly method?: string,
  ) {
    super(method ? `engine ${method}: ${detail}` : `engine: ${detail}`);
    this.name = "EngineError";
  }
}

export type PackedDType = "i32" | "f32" | "f64";
export interface PackedArray {
  dtype: PackedDType;
  b64: string;
}
export type NumArray = number[] | PackedArray;

export interface WireRequest {
  v: number;
  id: number;
  method: string;
  params: Record<string, unknown>;
}

export type WireAnswer =
  | { v: number; id: number | null; ok: true; result: unknown }
  | { v: number; id: number | null; ok: false; error: { code: string; message: string } };

/** Token ids as packed i32; falls back to a plain array when a value is not an int32 so that the
 * engine's validator can name the offending element instead of it being silently truncated. */
export function packIds(ids: readonly number[]): NumArray {
  for (const x of ids) if (!Number.isInteger(x) || x < -2147483648 || x > 2147483647) return [...ids];
  return { dtype: "i32", b64: Buffer.from(Int32Array.from(ids).buffer).toString("base64") };
}

/** Floats as packed f32 (NaN and infinities survive packing, and the engine rejects them). */
export function packF32(values: readonly number[]): PackedArray {
  return { dtype: "f32", b64: Buffer.from(Float32Array.from(values).buffer).toString("base64") };
}

export function unpack(v: unknown, path: string): number[] {
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      if (typeof x !== "number") throw badResponse(`${path}[${i}]: expected a number`);
    });
    return v as number[];
  }
  if (isRecord(v) && typeof v.b64 === "string" && typeof v.dtype === "string") {
    const buf = Buffer.from(v.b64, "base64");
    const bytes = new Uint8Array(buf.byteLength);
    bytes.set(buf);
    const size = v.dtype === "f64" ? 8 : 4;
    if (bytes.byteLength % size !== 0) throw badResponse(`${path}: packed length not a multiple of ${size}`);
    if (v.dtype === "i32") return Array.from(new Int32Array(bytes.buffer));
    if (v.dtype === "f32") return Array.from(new Float32Array(bytes.buffer));
    if (v.dtype === "f64") return Array.from(new Float64Array(bytes.buffer));
  }
  throw badResponse(`${path}: expected a numeric array`);
}

// ---- validation of answers ----------------------------------------------------------------------

function badResponse(problem: string): EngineError {
  return new EngineError("bad_response", `invalid answer from the engine: ${problem}`);
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

type Check<T> = (v: unknown, path: string) => T;

const num: Check<number> = (v, path) => {
  if (typeof v !== "number") throw badResponse(`${path}: expected a number`);
  return v;
};
const int: Check<number> = (v, path) => {
  if (typeof v !== "number" || !Number.isInteger(v)) throw badResponse(`${path}: expected an integer`);
  return v;
};
const str: Check<string> = (v, path) => {
  if (typeof v !== "string") throw badResponse(`${path}: expected a string`);
  return v;
};
function arr<T>(of: Check<T>): Check<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) throw badResponse(`${path}: expected an array`);
    return v.map((x, i) => of(x, `${path}[${i}]`));
  };
}
function rec(v: unknown, path: string): Record<string, unknown> {
  if (!isRecord(v)) throw badResponse(`${path}: expected an object`);
  return v;
}
function numRecord(v: unknown, path: string): Record<string, number> {
  const r = rec(v, path);
  for (const [k, x] of Object.entries(r)) num(x, `${path}.${k}`);
  return r as Record<string, number>;
}

export function checkEnvelope(v: unknown, version: number): WireAnswer {
  const r = rec(v, "answer");
  if (r.v !== version)
    throw new EngineError(
      "protocol_version",
      `the engine answered in protocol version ${String(r.v)} but this client speaks version ${version}`,
    );
  if (r.id !== null && typeof r.id !== "number") throw badResponse("answer.id: expected a number or null");
  if (r.ok === true) return { v: version, id: r.id as number | null, ok: true, result: r.result };
  if (r.ok === false) {
    const e = rec(r.error, "answer.error");
    return {
      v: version,
      id: r.id as number | null,
      ok: false,
      error: { code: str(e.code, "answer.error.code"), message: str(e.message, "answer.error.message") },
    };
  }
  throw badResponse("answer.ok: expected a boolean");
}

export function checkInfo(v: unknown, path = "result"): EngineInfo {
  const r = rec(v, path);
  const params = rec(r.parameters, `${path}.parameters`);
  const memory = rec(r.memory, `${path}.memory`);
  const dtype = str(r.dtype, `${path}.dtype`);
  if (dtype !== "float32" && dtype !== "bfloat16") throw badResponse(`${path}.dtype: unknown dtype ${dtype}`);
  const info: EngineInfo = {
    protocolVersion: int(r.protocolVersion, `${path}.protocolVersion`),
    engineVersion: str(r.engineVersion, `${path}.engineVersion`),
    torch: str(r.torch, `${path}.torch`),
    transformers: str(r.transformers, `${path}.transformers`),
    device: str(r.device, `${path}.device`),
    dtype,
    parameters: {
      total: int(params.total, `${path}.parameters.total`),
      trainable: int(params.trainable, `${path}.parameters.trainable`),
    },
    memory: { rssBytes: num(memory.rssBytes, `${path}.memory.rssBytes`) },
  };
  if (memory.deviceBytes !== undefined)
    info.memory.deviceBytes = num(memory.deviceBytes, `${path}.memory.deviceBytes`);
  if (r.peft !== undefined) info.peft = str(r.peft, `${path}.peft`);
  if (r.dtypeReason !== undefined) info.dtypeReason = str(r.dtypeReason, `${path}.dtypeReason`);
  if (r.threads !== undefined) info.threads = int(r.threads, `${path}.threads`);
  if (r.threadsReason !== undefined) info.threadsReason = str(r.threadsReason, `${path}.threadsReason`);
  if (r.cpu !== undefined) {
    const c = rec(r.cpu, `${path}.cpu`);
    info.cpu = { model: str(c.model, `${path}.cpu.model`), flags: arr(str)(c.flags, `${path}.cpu.flags`) };
    if (c.capability !== undefined) info.cpu.capability = str(c.capability, `${path}.cpu.capability`);
    if (c.logicalCpus !== undefined) info.cpu.logicalCpus = int(c.logicalCpus, `${path}.cpu.logicalCpus`);
  }
  if (r.model !== undefined) {
    const m = rec(r.model, `${path}.model`);
    info.model = {
      vocabSize: int(m.vocabSize, `${path}.model.vocabSize`),
      eosTokenIds: arr(int)(m.eosTokenIds, `${path}.model.eosTokenIds`),
    };
    if (m.path !== undefined) info.model.path = str(m.path, `${path}.model.path`);
    if (m.maxPositions !== undefined)
      info.model.maxPositions = int(m.maxPositions, `${path}.model.maxPositions`);
  }
  return info;
}

export function checkIds(v: unknown, path = "result"): number[] {
  return arr(int)(rec(v, path).ids, `${path}.ids`);
}

export function checkIdLists(v: unknown, n: number, path = "result"): number[][] {
  const lists = arr(arr(int))(rec(v, path).ids, `${path}.ids`);
  if (lists.length !== n) throw badResponse(`${path}.ids: asked for ${n} renders, got ${lists.length}`);
  return lists;
}

export function checkTexts(v: unknown, n: number, path = "result"): string[] {
  const texts = arr(str)(rec(v, path).texts, `${path}.texts`);
  if (texts.length !== n) throw badResponse(`${path}.texts: asked for ${n} decodes, got ${texts.length}`);
  return texts;
}

export function checkText(v: unknown, path = "result"): string {
  return str(rec(v, path).text, `${path}.text`);
}

export function checkSample(v: unknown, path = "result"): SampledSequence[] {
  const seqs = rec(v, path).sequences;
  return arr((s, p): SampledSequence => {
    const r = rec(s, p);
    const tokens = arr(int)(r.tokens, `${p}.tokens`);
    const logprobs = unpack(r.logprobs, `${p}.logprobs`);
    if (logprobs.length !== tokens.length)
      throw badResponse(`${p}: ${tokens.length} tokens but ${logprobs.length} log-probs`);
    const stopReason = r.stopReason;
    if (stopReason !== "stop" && stopReason !== "length") throw badResponse(`${p}.stopReason: unknown value`);
    return { promptIndex: int(r.promptIndex, `${p}.promptIndex`), tokens, logprobs, stopReason };
  })(seqs, `${path}.sequences`);
}

export function checkForward(v: unknown, expectLengths: number[], path = "result"): number[][] {
  const lps = rec(v, path).logprobs;
  if (!Array.isArray(lps) || lps.length !== expectLengths.length)
    throw badResponse(`${path}.logprobs: expected ${expectLengths.length} arrays`);
  return lps.map((x, i) => {
    const out = unpack(x, `${path}.logprobs[${i}]`);
    if (out.length !== expectLengths[i])
      throw badResponse(`${path}.logprobs[${i}]: wrong length ${out.length}`);
    return out;
  });
}

export function checkForwardBackward(v: unknown, path = "result"): ForwardBackwardResult {
  const r = rec(v, path);
  return { loss: num(r.loss, `${path}.loss`), metrics: numRecord(r.metrics, `${path}.metrics`) };
}

export function checkOptimStep(
  v: unknown,
  path = "result",
): { gradNorm: number; metrics: Record<string, number> } {
  const r = rec(v, path);
  return { gradNorm: num(r.gradNorm, `${path}.gradNorm`), metrics: numRecord(r.metrics, `${path}.metrics`) };
}

export function checkHello(v: unknown, path = "result"): { protocolVersion: number; engineVersion: string } {
  const r = rec(v, path);
  return {
    protocolVersion: int(r.protocolVersion, `${path}.protocolVersion`),
    engineVersion: str(r.engineVersion, `${path}.engineVersion`),
  };
}

export function toErrorCode(code: string): ErrorCode {
  const known: ErrorCode[] = [
    "bad_request",
    "protocol_version",
    "unknown_method",
    "no_model",
    "not_found",
    "checkpoint",
    "unauthorized",
    "internal",
  ];
  return (known as string[]).includes(code) ? (code as ErrorCode) : "internal";
}
