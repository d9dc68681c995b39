/**
 * Rulebook memory (spec §1.5). `global` keeps one slot for the whole run; `perWorker(k)` keeps k
 * independent slots and an attempt's slot is its position in the batch modulo k (the reference
 * keeps one slot per rollout worker). A step only reads it and returns its writes; the runner applies
 * them after the step, so the order of episodes inside a batch never changes what they read.
 */
import { UserError } from "../util/errors.ts";
import type { MemoryJSON, MemoryMode, MemoryStore, MemoryWrite } from "./types.ts";

export class RulebookMemory implements MemoryStore {
  private readonly slots: (string | null)[];

  constructor(
    readonly mode: MemoryMode,
    slots?: readonly (string | null)[],
  ) {
    validateMemoryMode(mode);
    const count = mode.kind === "global" ? 1 : mode.k;
    if (slots && slots.length !== count)
      throw new UserError(
        `memory: ${slots.length} slots stored but mode ${describeMemoryMode(mode)} needs ${count}`,
      );
    this.slots = slots ? [...slots] : Array.from({ length: count }, () => null);
  }

  slotFor(position: number): number {
    if (!Number.isInteger(position) || position < 0)
      throw new RangeError(`memory: bad batch position ${position}`);
    return position % this.slots.length;
  }

  read(slot: number): string | null {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots.length)
      throw new RangeError(`memory: slot ${slot} out of range 0..${this.slots.length - 1}`);
    return this.slots[slot] ?? null;
  }

  apply(writes: readonly MemoryWrite[]): void {
    for (const w of writes) {
      const slot = w.worker ?? 0;
      this.read(slot); // range check
      this.slots[slot] = w.rulebook;
    }
  }

  toJSON(): MemoryJSON {
    return {
      mode: this.mode.kind === "global" ? { kind: "global" } : { kind: "perWorker", k: this.mode.k },
      slots: [...this.slots],
    };
  }

  static fromJSON(value: unknown): RulebookMemory {
    if (typeof value !== "object" || value === null)
      throw new UserError("memory: checkpoint entry is not an object");
    const v = value as Partial<MemoryJSON>;
    if (!v.mode || typeof v.mode !== "object") throw new UserError('memory: checkpoint entry lacks "mode"');
    if (!Array.isArray(v.slots) || !v.slots.every((s) => s === null || typeof s === "string"))
      throw new UserError('memory: "slots" must be an array of strings or nulls');
    return new RulebookMemory(v.mode, v.slots);
  }
}

export function createMemory(mode: MemoryMode): RulebookMemory {
  return new RulebookMemory(mode);
}

export function validateMemoryMode(mode: MemoryMode): void {
  if (mode.kind === "global") return;
  if (mode.kind === "perWorker") {
    if (!Number.isInteger(mode.k) || mode.k < 1)
      throw new UserError(`memory: perWorker needs an integer k >= 1, got ${String(mode.k)}`);
    return;
  }
  throw new UserError(`memory: unknown mode ${JSON.stringify(mode)} (expected global or perWorker)`);
}

export function describeMemoryMode(mode: MemoryMode): string {
  return mode.kind === "global" ? "global" : `perWorker(${mode.k})`;
}

export function sameMemoryMode(a: MemoryMode, b: MemoryMode): boolean {
  return a.kind === b.kind && (a.kind === "global" || (b.kind === "perWorker" && a.k === b.k));
}
