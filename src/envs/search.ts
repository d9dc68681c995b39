/**
 * Keyword search over a paragraph corpus, for HotpotQA's search tool. Scoring is BM25+ through the
 * `minisearch` library over a title and a text field, with our own analyser (HTML-entity decoding,
 * diacritics folding, possessives, digit grouping, stop words, a light suffix stripper), followed by
 * a re-ranking step that rewards passages whose title appears as a phrase in the query (questions
 * name their entities, and in a Wikipedia corpus entities are titles). The tuned defaults and the
 * numbers behind them are in docs/decisions/0012-envs-search.md; `bench/search-quality.ts` measures them.
 * Built indexes are cached per process and per corpus file, since every episode shares one.
 */
import MiniSearch from "minisearch";
import { resolve } from "node:path";
import { readJsonl } from "../util/jsonl.ts";
import { inputError, UserError } from "../util/errors.ts";
import { ownEntry } from "../util/own.ts";
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

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

/** The short list the first version used; kept so the benchmark can compare against it. */
const SHORT_STOP_WORDS = (
  "a an and are as at be but by for from had has have he her his in is it its of on or she that the their " +
  "there they this to was were which who whom with what when where why how did does do"
).split(" ");

// Question words and function words that carry no topical signal in a question. Only words that
// are never a useful query on their own are here: "first" or "American" stay, since they
// often distinguish the gold paragraph.
const FULL_STOP_WORDS = new Set([
  ...SHORT_STOP_WORDS,
  ..."am been being also any both can could each either else ever i if into just may me might more most much must my no nor not now only other our ours out over own so some such than then these those through too under until up upon very we while whose will would you your yet s about after against all among another because before below between during further here him hers itself many same once per theirs them themselves what's which whichever whoever whereas whether".split(
    " ",
  ),
]);

const HTML_ENTITIES: Readonly<Record<string, string>> = {
  amp: "&",
  quot: '"',
  apos: "'",
  lt: "<",
  gt: ">",
  nbsp: " ",
};

/** Decodes the few HTML entities that appear in Wikipedia-derived titles (`&quot;Q&quot; Is for Quarry`). */
export function decodeEntities(s: string): string {
  return s.replace(/&(#\d+|#x[0-9a-f]+|[a-z]+);/gi, (whole, name: string) => {
    if (name[0] === "#") {
      const code =
        name[1] === "x" || name[1] === "X" ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return Number.isFinite(code) && code > 0 && code < 0x110000 ? String.fromCodePoint(code) : whole;
    }
    return ownEntry(HTML_ENTITIES, name.toLowerCase()) ?? whole;
  });
}

export interface Token {
  /** Lower-cased, folded surface form (before stemming). */
  word: string;
  /** Whether the word started with a capital letter or a digit in the original text. */
  cap: boolean;
}

/**
 * Splits text into word tokens: decodes HTML entities, folds diacritics (Beyoncé → beyonce, since
 * questions and paragraphs spell names both ways), drops possessive 's, joins digit groups (1,000 →
 * 1000) and splits on anything that is not a letter or digit.
 */
export function tokenize(text: string): Token[] {
  const folded = decodeEntities(text)
    .normalize("NFKD")
    .replace(/\p{M}+/gu, "")
    // ß, æ, ø and friends do not decompose; spell them the way English Wikipedia usually does.
    .replace(/ß/g, "ss")
    .replace(/[æÆ]/g, "ae")
    .replace(/[øØ]/g, "o")
    .replace(/[łŁ]/g, "l")
    .replace(/(\p{L})['’]s\b/gu, "$1")
    .replace(/(\d),(?=\d{3}\b)/g, "$1");
  const out: Token[] = [];
  for (const m of folded.matchAll(/[\p{L}\p{N}]+/gu)) {
    const w = m[0];
    out.push({ word: w.toLowerCase(), cap: /^[\p{Lu}\p{N}]/u.test(w) });
  }
  return out;
}

// The first version's tokeniser (split on spaces and punctuation), kept for comparison.
const defaultTokenize = MiniSearch.getDefault("tokenize") as (text: string) => string[];

/**
 * A light English suffix stripper (plural and a few verb endings), deliberately weaker than Porter:
 * names dominate this corpus and aggressive stemming conflates them (Williams → william is fine,
 * but Jones → jone and Lewis → lewi are not worth the recall). Short words and words ending in
 * "ss"/"us"/"is" are left alone.
 */
export function stem(word: string): string {
  if (word.length <= 3 || /\d/.test(word)) return word;
  if (word.endsWith("ies") && word.length > 4) return word.slice(0, -3) + "y";
  if (/(?:ss|us|is|ous)$/.test(word)) return word;
  if (/(?:ches|shes|sses|xes|zes)$/.test(word)) return word.slice(0, -2);
  if (word.endsWith("s") && !word.endsWith("'s")) return word.slice(0, -1);
  return word;
}

// ---------------------------------------------------------------------------------------------
// Index
// ---------------------------------------------------------------------------------------------

export interface SearchIndexOptions {
  /** Weight of a title match relative to a text match in BM25 (default: tuned, see DEFAULTS). */
  titleBoost?: number;
  /** BM25 term-frequency saturation k1. */
  k1?: number;
  /** BM25 length normalisation b. */
  b?: number;
  /** BM25+ lower bound d. */
  d?: number;
  /**
   * "folded" is our analyser (entities, diacritics, possessives, digit groups); "plain" is what the
   * first version used: minisearch's default split on spaces and punctuation, lower-cased.
   */
  tokenizer?: "folded" | "plain";
  /** Apply the suffix stripper to index and query terms. */
  stem?: boolean;
  /** Which stop-word list to drop: the first version's short one, the fuller one, or none. */
  stopWords?: "none" | "short" | "full";
  /**
   * Bonus added to the normalised BM25 score (best hit = 1) of a passage whose title (without a
   * trailing "(…)" disambiguator) occurs as a phrase in the query. 0 turns re-ranking off.
   */
  titleMatchBonus?: number;
  /** Only title phrases that start with a capital letter (or digit) in the query earn the bonus. */
  titleMatchNeedsCapital?: boolean;
  /** How many first-stage hits the re-ranking considers (at least top_k). */
  rerankDepth?: number;
  /**
   * Bonus for a passage whose title is mentioned (capitalised) in the text of one of the
   * `linkParents` best passages, times that passage's normalised score: the second hop of a
   * bridge question is usually named in the first hop's paragraph. 0 turns it off.
   */
  linkBonus?: number;
  /** How many of the best re-ranked passages pass a bonus on to the passages they mention. */
  linkParents?: number;
}

/** The tuned settings (on the 400 training questions only; see docs/decisions/0012-envs-search.md). */
export const SEARCH_DEFAULTS: Readonly<Required<SearchIndexOptions>> = {
  titleBoost: 2,
  k1: 1.2,
  b: 0.7,
  d: 0.5,
  tokenizer: "folded",
  stem: true,
  stopWords: "full",
  titleMatchBonus: 0.5,
  titleMatchNeedsCapital: false,
  rerankDepth: 100,
  linkBonus: 0.5,
  linkParents: 2,
};

/** What the first version did: plain BM25+, short stop list, no stemming, no re-ranking. */
export const SEARCH_BASELINE: Readonly<Required<SearchIndexOptions>> = {
  titleBoost: 2,
  k1: 1.2,
  b: 0.7,
  d: 0.5,
  tokenizer: "plain",
  stem: false,
  stopWords: "short",
  titleMatchBonus: 0,
  titleMatchNeedsCapital: false,
  rerankDepth: 0,
  linkBonus: 0,
  linkParents: 0,
};

// Titles longer than this many tokens are not looked up as query phrases (none in the shipped
// corpus is; the cap bounds the n-gram loop for long queries).
const MAX_TITLE_TOKENS = 12;

/** A title with its trailing disambiguator removed: "Kiss and Tell (1945 film)" → "Kiss and Tell". */
function titleCore(title: string): string {
  return title.replace(/\s*\([^()]*\)\s*$/, "").trim();
}

export class SearchIndex {
  private readonly mini: MiniSearch<Passage>;
  private readonly byId = new Map<string, Passage>();
  /** Joined title tokens (full title and title core) → passage ids. */
  private readonly titleKeys = new Map<string, string[]>();
  private readonly opts: Required<SearchIndexOptions>;
  private readonly stopWords: ReadonlySet<string>;
  /** Passage id → ids of the passages its text mentions by title, computed on first need. */
  private readonly links = new Map<string, readonly string[]>();

  constructor(passages: readonly Passage[], opts: SearchIndexOptions = {}) {
    if (passages.length === 0) throw new UserError("search: the corpus is empty");
    this.opts = { ...SEARCH_DEFAULTS, ...opts };
    for (const [key, v] of Object.entries(this.opts))
      if (typeof v === "number" && !(Number.isFinite(v) && v >= 0))
        throw new UserError(`search: option ${key} must be a finite number ≥ 0, got ${v}`);
    const sw = this.opts.stopWords;
    this.stopWords = new Set(sw === "full" ? FULL_STOP_WORDS : sw === "short" ? SHORT_STOP_WORDS : []);
    const doStem = this.opts.stem;
    const stopWords = this.stopWords;
    // Tokenising is ours (it needs the original text for entities and possessives). Stop words
    // and stemming go through processTerm, so that minisearch's field lengths (which it counts
    // before processTerm) still include the stop words, as in the first version.
    const tokenizeField =
      this.opts.tokenizer === "plain"
        ? (text: string) => defaultTokenize(text)
        : (text: string) => tokenize(text).map((t) => t.word);
    const processTerm = (term: string): string | null => {
      const w = term.toLowerCase();
      return w === "" || stopWords.has(w) ? null : doStem ? stem(w) : w;
    };
    this.mini = new MiniSearch<Passage>({
      fields: ["title", "text"],
      storeFields: [],
      tokenize: tokenizeField,
      processTerm,
      searchOptions: {
        boost: { title: this.opts.titleBoost },
        bm25: { k: this.opts.k1, b: this.opts.b, d: this.opts.d },
        tokenize: tokenizeField,
        processTerm,
      },
    });
    for (const p of passages) {
      if (this.byId.has(p.id)) throw new UserError(`search: duplicate passage id "${p.id}"`);
      this.byId.set(p.id, p);
      for (const form of new Set([p.title, titleCore(p.title)])) {
        const key = tokenize(form)
          .map((t) => t.word)
          .join(" ");
        if (key === "") continue;
        const ids = this.titleKeys.get(key);
        if (ids) ids.push(p.id);
        else this.titleKeys.set(key, [p.id]);
      }
    }
    this.mini.addAll(passages as Passage[]);
  }

  get size(): number {
    return this.byId.size;
  }

  get options(): Readonly<Required<SearchIndexOptions>> {
    return this.opts;
  }

  /** Every passage, in corpus order. */
  passages(): IterableIterator<Passage> {
    return this.byId.values();
  }

  get(id: string): Passage | undefined {
    return this.byId.get(id);
  }

  /** Passage ids whose title occurs as a phrase in the query. */
  titleMatches(query: string): Set<string> {
    return this.phraseTitles(tokenize(query), this.opts.titleMatchNeedsCapital);
  }

  /**
   * Ids of passages whose title (or title core) occurs as a phrase in a token sequence, longest
   * match first: a title inside a longer matched title ("Tell" in "Kiss and Tell") does not count.
   */
  private phraseTitles(toks: readonly Token[], needsCap: boolean): Set<string> {
    const found = new Set<string>();
    for (let i = 0; i < toks.length;) {
      let match: { end: number; ids: readonly string[] } | undefined;
      if (!needsCap || toks[i]!.cap) {
        let key = "";
        for (let j = i; j < Math.min(toks.length, i + MAX_TITLE_TOKENS); j++) {
          key = j === i ? toks[j]!.word : `${key} ${toks[j]!.word}`;
          const ids = this.titleKeys.get(key);
          // A phrase made only of stop words ("The", "It") names nothing.
          if (ids && !toks.slice(i, j + 1).every((t) => this.stopWords.has(t.word) || t.word.length < 2))
            match = { end: j, ids };
        }
      }
      if (match) {
        for (const id of match.ids) found.add(id);
        i = match.end + 1;
      } else i++;
    }
    return found;
  }

  /** The passages a passage's text mentions by (capitalised) title, itself excluded. */
  private linksOf(id: string): readonly string[] {
    let out = this.links.get(id);
    if (!out) {
      const found = this.phraseTitles(tokenize(this.byId.get(id)!.text), true);
      found.delete(id);
      out = [...found];
      this.links.set(id, out);
    }
    return out;
  }

  /** The `topK` best passages for a query, best first (empty for a query with no known words). */
  search(query: string, topK = 5): SearchHit[] {
    const hits = this.mini.search(query);
    if (hits.length === 0) return [];
    const { titleMatchBonus, linkBonus, linkParents } = this.opts;
    let ranked: { id: string; score: number }[];
    if (titleMatchBonus > 0 || linkBonus > 0) {
      const depth = Math.max(topK, this.opts.rerankDepth);
      const top = hits[0]!.score;
      const matches = titleMatchBonus > 0 ? this.titleMatches(query) : new Set<string>();
      const byScore = (x: { id: string; score: number }, y: { id: string; score: number }) =>
        y.score - x.score || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0);
      ranked = hits.slice(0, depth).map((h) => {
        const id = String(h.id);
        return { id, score: h.score / top + (matches.has(id) ? titleMatchBonus : 0) };
      });
      ranked.sort(byScore);
      if (linkBonus > 0 && linkParents > 0) {
        // Second hop: passages named in the best passages' text. Their own BM25 score counts
        // too, so among the several names a paragraph mentions, the one the query fits wins.
        const first = new Map(hits.map((h) => [String(h.id), h.score / top]));
        const scored = new Map(ranked.map((r) => [r.id, r.score]));
        const best = ranked[0]!.score;
        const extra = new Map<string, number>();
        for (const parent of ranked.slice(0, linkParents))
          for (const child of this.linksOf(parent.id)) {
            const b = (linkBonus * parent.score) / best;
            if (b > (extra.get(child) ?? 0)) extra.set(child, b);
          }
        for (const [id, b] of extra) scored.set(id, (scored.get(id) ?? first.get(id) ?? 0) + b);
        ranked = [...scored].map(([id, score]) => ({ id, score }));
        ranked.sort(byScore);
      }
    } else {
      ranked = hits.map((h) => ({ id: String(h.id), score: h.score }));
    }
    const out: SearchHit[] = [];
    for (const h of ranked.slice(0, topK)) {
      const p = this.byId.get(h.id)!;
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
