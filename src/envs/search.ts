/**
 * Keyword search over a paragraph corpus, for HotpotQA's search tool. Scoring is BM25+ through the
 * `minisearch` library (see docs/decisions/envs-search.md for why); the title field is weighted
 * above the text. Built indexes are cached per process and per corpus file, since building one over
 * the shipped 4,858 paragraphs takes a second or two and every episode shares it.
 */
import MiniSearch from "minisearch";
import { resolve } from "node:path";
import { readJsonl } from "../util/jsonl.ts";
import { inputError, UserError } from "../util/errors.ts";
import { asRecord } from "./common.ts";

export interface Passage {
  id: string;
  title: string;
  text: string;
}

export interface SearchHit {
  id: string;
  title: string;
  score: number;
  text: string;
}

// Very common English words carry no signal for BM25 but slow every query down.
const STOP_WORDS = new Set(
  (
    "a an and are as at be but by for from had has have he her his in is it its of on or she that the their " +
    "there they this to was were which who whom with what when where why how did does do"
  ).split(" "),
);

export interface SearchIndexOptions {
  /** Weight of a title match relative to a text match (default 2). */
  titleBoost?: number;
}

export class SearchIndex {
  private readonly mini: MiniSearch<Passage>;
  private readonly byId = new Map<string, Passage>();

  constructor(passages: readonly Passage[], opts: SearchIndexOptions = {}) {
    if (passages.length === 0) throw new UserError("search: the corpus is empty");
    const processTerm = (term: string): string | null => {
      const t = term.toLowerCase();
      return STOP_WORDS.has(t) ? null : t;
    };
    this.mini = new MiniSearch<Passage>({
      fields: ["title", "text"],
      storeFields: [],
      processTerm,
      searchOptions: { boost: { title: opts.titleBoost ?? 2 }, processTerm },
    });
    for (const p of passages) {
      if (this.byId.has(p.id)) throw new UserError(`search: duplicate passage id "${p.id}"`);
      this.byId.set(p.id, p);
    }
    this.mini.addAll(passages as Passage[]);
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: string): Passage | undefined {
    return this.byId.get(id);
  }

  /** The `topK` best passages for a query, best first (empty for a query with no known words). */
  search(query: string, topK = 5): SearchHit[] {
    const hits = this.mini.search(query);
    const out: SearchHit[] = [];
    for (const h of hits.slice(0, topK)) {
      const p = this.byId.get(String(h.id))!;
      out.push({ id: p.id, title: p.title, score: h.score, text: p.text });
    }
    return out;
  }
}

/** Reads a JSONL corpus of `{id, title, text}` records; a bad line names file, line and key. */
export function loadCorpusJsonl(file: string): Passage[] {
  const passages = readJsonl(file, (value, line) => {
    const rec = asRecord(value, file, line);
    for (const key of ["id", "title", "text"] as const)
      if (typeof rec[key] !== "string" || (key !== "text" && rec[key] === ""))
        throw inputError({ file, line, key }, "expected a non-empty string");
    return { id: rec.id as string, title: rec.title as string, text: rec.text as string };
  });
  if (passages.length === 0) throw inputError({ file }, "the corpus is empty");
  return passages;
}

const indexCache = new Map<string, SearchIndex>();

/** The index over a corpus file, built once per process. */
export function corpusIndex(file: string): SearchIndex {
  const key = resolve(file);
  let index = indexCache.get(key);
  if (!index) {
    index = new SearchIndex(loadCorpusJsonl(key));
    indexCache.set(key, index);
  }
  return index;
}
