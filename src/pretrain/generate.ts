/**
 * The corpus writer: shards of JSONL documents (one chat per line) drawn from the FrozenLake
 * and Sokoban document makers in five phases — copy drills, look-up drills, the FrozenLake games on
 * boards growing from 4×4 to 9×9, a consolidation on mostly large boards, then Sokoban with FrozenLake
 * kept in the mix. Shard `i` depends only on (seed, i,
 * planned shards), so shards can be written ahead of a training run or on demand while it runs, and
 * any shard can be regenerated identically.
 */
import { renameSync, writeFileSync } from "node:fs";
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
import {
  sokobanFreeDoc,
  sokobanLookupDoc,
  sokobanPlayDoc,
  sokobanReflectionDoc,
  type SokobanDoc,
} from "./sokoban-corpus.ts";
import { makeDirs } from "../util/dirs.ts";

/** Any corpus document: FrozenLake or Sokoban. */
export type AnyDoc = CorpusDoc | SokobanDoc;

type Maker = (rng: Rng, cur: Curriculum) => AnyDoc;

/** Document mix (relative weights by document count). */
export interface Mix {
  rulePlay: number;
  secondPlay: number;
  freePlay: number;
  reflection: number;
  lookup: number;
  translate: number;
  copy: number;
  /** Sokoban kinds (see sokoban-corpus.ts); listed last so that mixes without them draw as before. */
  sokobanPlay: number;
  sokobanFree: number;
  sokobanReflection: number;
  sokobanLookup: number;
}

/** A mix of only the given kinds (the rest weigh 0). */
function only(weights: Partial<Mix>): Mix {
  return {
    rulePlay: 0,
    secondPlay: 0,
    freePlay: 0,
    reflection: 0,
    lookup: 0,
    translate: 0,
    copy: 0,
    sokobanPlay: 0,
    sokobanFree: 0,
    sokobanReflection: 0,
    sokobanLookup: 0,
    ...weights,
  };
}

/** Every weight of `mix` times `f`. */
function scaled(mix: Mix, f: number): Mix {
  const out = { ...mix };
  for (const k of Object.keys(out) as (keyof Mix)[]) out[k] *= f;
  return out;
}

/** Phase 1: copy drills alone — the mechanism every look-up needs, learned in minutes when alone. */
export const COPY_MIX: Mix = only({ copy: 1 });
/** Phase 2: look-up and translation drills, with copy drills kept so copying is not forgotten. */
export const LOOKUP_MIX: Mix = only({ lookup: 0.5, translate: 0.3, copy: 0.2 });
/** Phase 3: the games (play, reflection), with the drills still 53% of the documents. */
export const GAME_MIX: Mix = only({
  rulePlay: 0.22,
  secondPlay: 0.05,
  freePlay: 0.06,
  reflection: 0.14,
  lookup: 0.2,
  translate: 0.13,
  copy: 0.2,
});

/**
 * Phase 4: the games again with fewer drills (copy and look-up are learned by then; the relabelled
 * translation drill stays), mostly on boards of side 5–9, where phase 3 left the model weakest.
 */
export const CONSOLIDATE_MIX: Mix = only({
  rulePlay: 0.34,
  secondPlay: 0.08,
  freePlay: 0.06,
  reflection: 0.2,
  lookup: 0.08,
  translate: 0.14,
  copy: 0.1,
});
/**
 * Phase 5: Sokoban (60% of the documents: mostly play under a correct rulebook, plus rule-free play,
 * reflections and the look-up drill for its seven letters), with phase 4's FrozenLake mix as the
 * other 40% so that FrozenLake is not forgotten.
 */
export const SOKOBAN_MIX: Mix = {
  ...scaled(CONSOLIDATE_MIX, 0.4),
  sokobanPlay: 0.38,
  sokobanFree: 0.04,
  sokobanReflection: 0.12,
  sokobanLookup: 0.06,
};
/** Phase 4's share of documents on boards of side 5–9 (the rest are 2–4). */
export const CONSOLIDATE_LARGE = 0.8;

/** Where phases 2–5 begin, as fractions of the planned shards. */
export const LOOKUP_AT = 1 / 6;
export const GAMES_AT = 2 / 6;
export const CONSOLIDATE_AT = 4 / 6;
export const SOKOBAN_AT = 5 / 6;

/** Planned shards by default: 100 per drill phase, 200 of games, 100 of consolidation, 100 of Sokoban. */
export const DEFAULT_SHARDS = 600;

export interface Phase {
  name: "copy" | "lookup" | "games" | "consolidate" | "sokoban";
  mix: Mix;
  curriculum: Curriculum;
}

/**
 * The recipe's phase and curriculum at `progress` ∈ [0, 1] of the planned corpus ("drill-first",
 * see docs/erl-tiny.md and the experiment log for why). Letters are always a random permutation of
 * the reference letters, drawn per document (`drawPermutedReference`), and rulebooks are "table"
 * rulebooks (`tableRulebookText`). Boards stay at side ≤ 4 through the drills and the first 30% of
 * the games, then ≤ 6 until 55% of the games, then up to 9 (the test split's largest). The
 * consolidation phase draws 80% of its boards at side 5–9 (`large`), and its translation drills
 * ask with a "Translate:" line so that they no longer open like a game (`labelledTranslate`).
 *
 * Phase 5 draws Sokoban documents (`SOKOBAN_MIX`) and keeps phase 4's FrozenLake curriculum for
 * its FrozenLake share.
 *
 * Each phase added later keeps the earlier phases on the same shard numbers (boundaries scaled with
 * the plan: 400 → 500 → 600 shards), so a model trained on the earlier shards continues into the new
 * phase on the very corpus a from-scratch run would see.
 */
export function phaseAt(progress: number): Phase {
  const small: Curriculum = { pool: "permuted-reference", maxSize: 4, rulebook: "table" };
  if (progress < LOOKUP_AT) return { name: "copy", mix: COPY_MIX, curriculum: small };
  if (progress < GAMES_AT) return { name: "lookup", mix: LOOKUP_MIX, curriculum: small };
  if (progress < CONSOLIDATE_AT) {
    // Rounded so that shards on a size boundary fall on the same side in any plan length.
    const g = Math.round(((progress - GAMES_AT) / (CONSOLIDATE_AT - GAMES_AT)) * 1e9) / 1e9;
    const maxSize = g < 0.3 ? 4 : g < 0.55 ? 6 : 9;
    return { name: "games", mix: GAME_MIX, curriculum: { ...small, maxSize } };
  }
  const consolidate: Curriculum = { ...small, maxSize: 9, large: CONSOLIDATE_LARGE, labelledTranslate: true };
  if (progress < SOKOBAN_AT) return { name: "consolidate", mix: CONSOLIDATE_MIX, curriculum: consolidate };
  return { name: "sokoban", mix: SOKOBAN_MIX, curriculum: consolidate };
}

const MAKERS: Readonly<Record<keyof Mix, Maker>> = {
  rulePlay: rulePlayDoc,
  secondPlay: secondPlayDoc,
  freePlay: freePlayDoc,
  reflection: reflectionDoc,
  lookup: lookupDoc,
  translate: translateDoc,
  copy: copyDoc,
  sokobanPlay: (rng, cur) => sokobanPlayDoc(rng, cur.boards?.sokoban),
  sokobanFree: (rng, cur) => sokobanFreeDoc(rng, cur.boards?.sokoban),
  sokobanReflection: (rng, cur) => sokobanReflectionDoc(rng, cur.boards?.sokoban),
  sokobanLookup: (rng) => sokobanLookupDoc(rng),
};

/** One document of a kind. */
export function makeDoc(kind: keyof Mix, rng: Rng, cur: Curriculum): AnyDoc {
  return MAKERS[kind](rng, cur);
}

export function pickKind(rng: Rng, mix: Mix): keyof Mix {
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

/**
 * A phase with a `large` share draws, per document, either a large board (side 5–9) or a small one
 * (2–4); other phases pass through untouched (and draw nothing, so their shards are unchanged).
 */
function sizedCurriculum(rng: Rng, cur: Curriculum): Curriculum {
  if (cur.large === undefined) return cur;
  return rng.next() < cur.large ? { ...cur, minSize: 5, maxSize: 9 } : { ...cur, maxSize: 4 };
}

/** The documents of one shard. */
export function shardDocs(spec: ShardSpec): AnyDoc[] {
  const rng = new Rng(`erl-tiny/${spec.seed}/shard/${spec.index}`);
  const out: AnyDoc[] = [];
  for (let i = 0; i < spec.docs; i++) {
    const phase = phaseAt((spec.index + i / spec.docs) / Math.max(1, spec.total));
    const kind = pickKind(rng, spec.mix ?? phase.mix);
    out.push(MAKERS[kind](rng, sizedCurriculum(rng, phase.curriculum)));
  }
  return out;
}

/** The JSONL line the Python trainer reads: kind, messages, observation weight (meta stays here). */
export function docLine(doc: AnyDoc): string {
  return JSON.stringify({ kind: doc.kind, messages: doc.messages, observationWeight: doc.observationWeight });
}

export function shardPath(dir: string, index: number): string {
  return join(dir, `shard-${String(index).padStart(5, "0")}.jsonl`);
}

/** Writes one shard atomically (temp file + rename) so a reader never sees half a shard. */
export function writeShard(dir: string, spec: ShardSpec): string {
  makeDirs(dir);
  const path = shardPath(dir, spec.index);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, shardDocs(spec).map(docLine).join("\n") + "\n");
  renameSync(tmp, path);
  return path;
}
