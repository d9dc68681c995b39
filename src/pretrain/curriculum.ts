/**
 * erl-tiny's curriculum as chat JSONL for any model (`erl data curriculum`): the same document makers
 * (frozenlake-corpus.ts, sokoban-corpus.ts), written in the OpenAI fine-tuning format that `erl sft`
 * reads and renders with the target model's own chat template. The loss is on the assistant turns
 * (erl-tiny's small loss on observations is not part of the format).
 *
 * Boards come from the environments' train splits only (never a test task), and every document draws
 * its own letters (a random permutation of the reference letters), so no letter carries a learned
 * role: what a model learns here is how to play, read a rulebook and reflect, not which letter is
 * the agent in the evaluation games. docs/sft.md lists what each kind teaches and what it does not.
 */
import { writeFileSync, renameSync } from "node:fs";
import { FrozenLakeFamily, type FrozenLakeTask } from "../envs/frozenlake.ts";
import { SokobanFamily, type SokobanTask } from "../envs/sokoban.ts";
import { Rng } from "../util/rng.ts";
import { makeDirs } from "../util/dirs.ts";
import { dirname } from "node:path";
import type { Curriculum, CorpusBoards } from "./frozenlake-corpus.ts";
import { makeDoc, pickKind, type AnyDoc, type Mix } from "./generate.ts";

/** The mixes of the chat curriculum (relative document counts). */
export const CURRICULUM_MIXES: Readonly<Record<string, Mix>> = {
  /**
   * Both games for a pretrained LM that can already copy: no copy drills; play under a rulebook,
   * second attempts under a reflection's partial rulebook, rule-free play, reflections, and the
   * look-up and translation drills that bind letters to roles. FrozenLake 70% of the documents,
   * Sokoban 30% (a Sokoban document is about twice as long). Rule-free play is 18% of the
   * documents: every RL first attempt is rule-free, and at 6% a SmolLM2 adapter parsed no
   * rule-free reply (docs/experiment-log.md, 2026-12-07).
   */
  "real-lm": {
    rulePlay: 0.24,
    secondPlay: 0.1,
    freePlay: 0.12,
    reflection: 0.12,
    lookup: 0.04,
    translate: 0.06,
    copy: 0,
    sokobanPlay: 0.16,
    sokobanFree: 0.06,
    sokobanReflection: 0.07,
    sokobanLookup: 0.03,
  },
  /** FrozenLake only, the same kinds. */
  frozenlake: {
    rulePlay: 0.36,
    secondPlay: 0.12,
    freePlay: 0.06,
    reflection: 0.24,
    lookup: 0.1,
    translate: 0.12,
    copy: 0,
    sokobanPlay: 0,
    sokobanFree: 0,
    sokobanReflection: 0,
    sokobanLookup: 0,
  },
};

export interface CurriculumSpec {
  seed: number;
  docs: number;
  mix: Mix;
  /** Largest FrozenLake board side (2–9). */
  maxSize: number;
  /** Share of FrozenLake documents on boards of side 5–9 (the rest 2–4). */
  large: number;
}

/** The train splits' boards (FrozenLake maps, Sokoban layouts). */
export function trainBoards(): CorpusBoards {
  return {
    frozenlake: new FrozenLakeFamily().loadSplit("train") as FrozenLakeTask[],
    sokoban: new SokobanFamily().loadSplit("train") as SokobanTask[],
  };
}

/** One chat JSONL line: the messages (assistant turns are trained) and the document kind. */
export function chatLine(doc: AnyDoc): string {
  return JSON.stringify({ messages: doc.messages, kind: doc.kind });
}

/** The documents of a chat curriculum; document i depends only on (seed, i). */
export function* curriculumDocs(
  spec: CurriculumSpec,
  boards: CorpusBoards = trainBoards(),
): Generator<AnyDoc> {
  for (let i = 0; i < spec.docs; i++) {
    const rng = new Rng(`curriculum/${spec.seed}/${i}`);
    const large = rng.next() < spec.large;
    const cur: Curriculum = {
      pool: "permuted-reference",
      rulebook: "table",
      labelledTranslate: true,
      boards,
      ...(large ? { minSize: 5, maxSize: spec.maxSize } : { maxSize: Math.min(4, spec.maxSize) }),
    };
    yield makeDoc(pickKind(rng, spec.mix), rng, cur);
  }
}

/** Writes the curriculum to `file` (atomically) and returns the document count per kind. */
export function writeCurriculum(file: string, spec: CurriculumSpec): Record<string, number> {
  const counts: Record<string, number> = {};
  const lines: string[] = [];
  for (const doc of curriculumDocs(spec)) {
    counts[doc.kind] = (counts[doc.kind] ?? 0) + 1;
    lines.push(chatLine(doc));
  }
  makeDirs(dirname(file));
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, lines.join("\n") + "\n");
  renameSync(tmp, file);
  return counts;
}
