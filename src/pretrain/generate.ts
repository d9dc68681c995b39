/**
 * The corpus writer: shards of JSONL documents (one chat per line) drawn from the FrozenLake
 * document makers with a curriculum — few letters and small boards first, then the whole alphabet
 * and boards up to 9×9. Shard `i` depends only on (seed, i), so shards can be written ahead of a
 * training run or on demand while it runs, and any shard can be regenerated identically.
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Rng } from "../util/rng.ts";
import {
  freePlayDoc,
  lookupDoc,
  reflectionDoc,
  rulePlayDoc,
  secondPlayDoc,
  translateDoc,
  copyDoc,
  type CorpusDoc,
  type Curriculum,
} from "./frozenlake-corpus.ts";
import { drawPool, SYMBOL_POOL } from "./symbols.ts";

type Maker = (rng: Rng, cur: Curriculum) => CorpusDoc;

/** Document mix (relative weights by document count). */
export interface Mix {
  rulePlay: number;
  secondPlay: number;
  freePlay: number;
  reflection: number;
  lookup: number;
  translate: number;
  copy: number;
}

export const DEFAULT_MIX: Mix = {
  rulePlay: 0.3,
  secondPlay: 0.08,
  freePlay: 0.1,
  reflection: 0.2,
  lookup: 0.14,
  translate: 0.18,
  copy: 0,
};

/**
 * From DRILL_MIX_AT on, a mix heavy in short drills (copy and look-up): the shipped run's per-token
 * losses showed that after ~2,700 steps it still could not copy a cell from earlier in its context,
 * the mechanism every look-up needs.
 */
export const DRILL_MIX_AT = 68 / 240;
export const DRILL_MIX: Mix = {
  rulePlay: 0.22,
  secondPlay: 0.05,
  freePlay: 0.06,
  reflection: 0.14,
  lookup: 0.2,
  translate: 0.13,
  copy: 0.2,
};

const MAKERS: Readonly<Record<keyof Mix, Maker>> = {
  rulePlay: rulePlayDoc,
  secondPlay: secondPlayDoc,
  freePlay: freePlayDoc,
  reflection: reflectionDoc,
  lookup: lookupDoc,
  translate: translateDoc,
  copy: copyDoc,
};

/**
 * The curriculum at `progress` ∈ [0, 1] of the planned corpus.
 *
 * Phase 1 (progress < REFOCUS_AT): boards ≤ 4 for the first 5%, ≤ 6 until 15%, then up to 9.
 * Letters: with probability `alphabetShare` the roles are drawn from the whole alphabet (an 8-letter
 * warm-up pool, drawn per document, in the first 15%); otherwise they are a random permutation of
 * the reference letters (see `drawPermutedReference` and docs/erl-tiny.md for why the shipped recipe
 * hides the roles among 4 letters rather than 53).
 *
 * Phase 2 (from REFOCUS_AT, the point where the shipped run's losses had plateaued with the
 * rulebook still unread): back to small boards — side ≤ 4 until 40%, ≤ 6 until 55%, then up to 9 —
 * and only permuted reference letters, so that the look-ups and the board geometry are learned
 * where they are easiest (short boards, 4 candidate letters) before they have to scale.
 */
export const REFOCUS_AT = 44 / 240;
/**
 * From here on rulebooks are written as "table" rulebooks (see `tableRulebookText`): the letters
 * appear as the very tokens the board uses, followed by their role word. The shipped run switched at
 * this point because, after ~1,800 steps, it still had not learned to read the prose rulebooks.
 */
export const TABLE_RULEBOOKS_AT = 50 / 240;

export function curriculumAt(rng: Rng, progress: number, alphabetShare = 0.1): Curriculum {
  if (progress >= REFOCUS_AT) {
    const maxSize = progress < 0.4 ? 4 : progress < 0.55 ? 6 : 9;
    return {
      pool: "permuted-reference",
      maxSize,
      rulebook: progress >= TABLE_RULEBOOKS_AT ? "table" : "prose",
    };
  }
  const maxSize = progress < 0.05 ? 4 : progress < 0.15 ? 6 : 9;
  if (rng.next() >= alphabetShare) return { pool: "permuted-reference", maxSize };
  return { pool: progress < 0.15 ? drawPool(rng, 8) : SYMBOL_POOL, maxSize };
}

function pickKind(rng: Rng, mix: Mix): keyof Mix {
  const entries = Object.entries(mix) as [keyof Mix, number][];
  const total = entries.reduce((s, [, w]) => s + w, 0);
  let x = rng.next() * total;
  for (const [k, w] of entries) {
    x -= w;
    if (x < 0) return k;
  }
  return entries[entries.length - 1]![0];
}

export interface ShardSpec {
  seed: number;
  index: number;
  /** Shards planned in all (sets the curriculum position of this one). */
  total: number;
  docs: number;
  mix?: Mix;
}

/** The documents of one shard. */
export function shardDocs(spec: ShardSpec): CorpusDoc[] {
  const rng = new Rng(`erl-tiny/${spec.seed}/shard/${spec.index}`);
  const out: CorpusDoc[] = [];
  for (let i = 0; i < spec.docs; i++) {
    const progress = (spec.index + i / spec.docs) / Math.max(1, spec.total);
    const cur = curriculumAt(rng, progress);
    const mix = spec.mix ?? (progress >= DRILL_MIX_AT ? DRILL_MIX : DEFAULT_MIX);
    out.push(MAKERS[pickKind(rng, mix)](rng, cur));
  }
  return out;
}

/** The JSONL line the Python trainer reads: kind, messages, observation weight (meta stays here). */
export function docLine(doc: CorpusDoc): string {
  return JSON.stringify({ kind: doc.kind, messages: doc.messages, observationWeight: doc.observationWeight });
}

export function shardPath(dir: string, index: number): string {
  return join(dir, `shard-${String(index).padStart(5, "0")}.jsonl`);
}

/** Writes one shard atomically (temp file + rename) so a reader never sees half a shard. */
export function writeShard(dir: string, spec: ShardSpec): string {
  mkdirSync(dir, { recursive: true });
  const path = shardPath(dir, spec.index);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, shardDocs(spec).map(docLine).join("\n") + "\n");
  renameSync(tmp, path);
  return path;
}
