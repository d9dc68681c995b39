/**
 * HotpotQA retrieval quality: for each question, search the corpus with the whole question and
 * check whether its gold paragraphs are among the top 1 / 5 / 10. Prints, per split, recall R@1 and
 * R@5 (gold paragraphs found in the top k over all gold paragraphs; 5 is the search tool's default
 * top_k), the share of questions with both gold / at least one gold in the top 5 and 10, index build
 * time and query latency, for the first version's settings ("baseline"), the tuned BM25 defaults
 * ("tuned") and, with --dense, dense search with both models (src/envs/dense.ts: E5, the default,
 * and MiniLM; the first run embeds the corpus, minutes, and caches it); or for a grid of BM25
 * settings on the train split.
 *
 *   node --import tsx bench/search-quality.ts              # baseline vs tuned, train split only
 *   node --import tsx bench/search-quality.ts --test       # … and the test split (report once, never tune on it)
 *   node --import tsx bench/search-quality.ts --dense --test   # … and dense search, both splits
 *   node --import tsx bench/search-quality.ts --grid       # the settings explored, train split only
 */
import { guard, parseFlags } from "./args.ts";
import { buildDenseIndex, DENSE_MODELS } from "../src/envs/dense.ts";
import { HotpotFamily, type HotpotTask } from "../src/envs/hotpotqa.ts";
import {
  loadCorpusJsonl,
  SEARCH_BASELINE,
  SEARCH_DEFAULTS,
  SearchIndex,
  type Passage,
  type SearchHit,
  type SearchIndexOptions,
} from "../src/envs/search.ts";

/** What is measured: BM25's index or the dense one (whose search is asynchronous). */
interface Searcher {
  search(query: string, topK: number): SearchHit[] | Promise<SearchHit[]>;
  passages(): Iterable<Passage>;
}

interface Quality {
  n: number;
  /** Gold paragraphs in all, and found in the top 1 / top 5. */
  gold: number;
  gold1: number;
  gold5: number;
  both5: number;
  any5: number;
  both10: number;
  any10: number;
  /** Mean query latency, ms. */
  msPerQuery: number;
  /** Searching a gold paragraph's title (without "(…)") returns that paragraph first. */
  titleTop1: number;
  titles: number;
}

export async function measure(index: Searcher, tasks: readonly HotpotTask[]): Promise<Quality> {
  const q: Quality = {
    n: 0,
    gold: 0,
    gold1: 0,
    gold5: 0,
    both5: 0,
    any5: 0,
    both10: 0,
    any10: 0,
    msPerQuery: 0,
    titleTop1: 0,
    titles: 0,
  };
  const t0 = performance.now();
  for (const t of tasks) {
    const gold = t.supportingTitles;
    if (!gold || gold.length === 0) continue;
    q.n++;
    const titles = (await index.search(t.question, 10)).map((h) => h.title);
    q.gold += gold.length;
    q.gold1 += gold.filter((g) => titles[0] === g).length;
    q.gold5 += gold.filter((g) => titles.slice(0, 5).includes(g)).length;
    for (const k of [5, 10] as const) {
      const got = new Set(titles.slice(0, k));
      const found = gold.filter((g) => got.has(g)).length;
      if (found === gold.length) q[k === 5 ? "both5" : "both10"]++;
      if (found > 0) q[k === 5 ? "any5" : "any10"]++;
    }
  }
  q.msPerQuery = (performance.now() - t0) / Math.max(1, tasks.length);
  // The short entity queries the prompt tells agents to use must keep finding their paragraph.
  // Titles shared by several passages once "(…)" is dropped are ambiguous by nature and skipped.
  const cores = new Map<string, number>();
  const core = (title: string) => title.replace(/\s*\([^()]*\)\s*$/, "");
  for (const p of index.passages()) cores.set(core(p.title), (cores.get(core(p.title)) ?? 0) + 1);
  for (const title of new Set(tasks.flatMap((t) => t.supportingTitles ?? []))) {
    if (cores.get(core(title)) !== 1) continue;
    q.titles++;
    if ((await index.search(core(title), 1))[0]?.title === title) q.titleTop1++;
  }
  return q;
}

const pct = (a: number, n: number) => `${a}/${n} (${((100 * a) / n).toFixed(1)}%)`;

function row(label: string, q: Quality, buildMs?: number): string {
  return [
    label.padEnd(44),
    `R@1 ${pct(q.gold1, q.gold).padEnd(15)}`,
    `R@5 ${pct(q.gold5, q.gold).padEnd(15)}`,
    `both@5 ${pct(q.both5, q.n).padEnd(15)}`,
    `any@5 ${pct(q.any5, q.n).padEnd(15)}`,
    `both@10 ${pct(q.both10, q.n).padEnd(15)}`,
    `any@10 ${pct(q.any10, q.n).padEnd(15)}`,
    `title→top1 ${pct(q.titleTop1, q.titles).padEnd(16)}`,
    `${q.msPerQuery.toFixed(2)} ms/query`,
    buildMs === undefined ? "" : `build ${(buildMs / 1000).toFixed(2)} s`,
  ].join("  ");
}

function build(passages: readonly Passage[], opts: SearchIndexOptions): { index: SearchIndex; ms: number } {
  const t0 = performance.now();
  const index = new SearchIndex(passages, opts);
  return { index, ms: performance.now() - t0 };
}

async function main(): Promise<void> {
  const { values } = parseFlags({
    options: {
      test: { type: "boolean", default: false },
      grid: { type: "boolean", default: false },
      dense: { type: "boolean", default: false },
    },
    allowPositionals: false,
  });
  const fam = new HotpotFamily();
  const passages = loadCorpusJsonl(fam.corpusFile);
  const train = fam.loadSplit("train");
  const test = fam.loadSplit("test");

  if (values.grid) {
    // Each entry changes the tuned defaults in one or two places; build-time settings need a
    // fresh index, so the grid takes a while (about 1.5 s per entry).
    const grid: [string, SearchIndexOptions][] = [
      ["baseline (first version)", SEARCH_BASELINE],
      ["baseline + new tokeniser/stop list", { ...SEARCH_BASELINE, stopWords: "full" }],
      ["baseline + stemming", { ...SEARCH_BASELINE, stem: true }],
      ["baseline + stem + full stop", { ...SEARCH_BASELINE, stem: true, stopWords: "full" }],
      ["tuned defaults", {}],
      ["tuned, no title-match bonus", { titleMatchBonus: 0 }],
      ["tuned, bonus 0.25", { titleMatchBonus: 0.25 }],
      ["tuned, bonus 1", { titleMatchBonus: 1 }],
      ["tuned, bonus needs capital", { titleMatchNeedsCapital: true }],
      ["tuned, no links", { linkBonus: 0 }],
      ["tuned, link bonus 0.15", { linkBonus: 0.15 }],
      ["tuned, link bonus 0.3", { linkBonus: 0.3 }],
      ["tuned, link bonus 0.8", { linkBonus: 0.8 }],
      ["tuned, link parents 1", { linkParents: 1 }],
      ["tuned, link parents 3", { linkParents: 3 }],
      ["tuned, link parents 5", { linkParents: 5 }],
      ["tuned, no stemming", { stem: false }],
      ["tuned, short stop list", { stopWords: "short" }],
      ["tuned, no stop words", { stopWords: "none" }],
      ["tuned, title weight 1", { titleBoost: 1 }],
      ["tuned, title weight 3", { titleBoost: 3 }],
      ["tuned, k1 0.9", { k1: 0.9 }],
      ["tuned, k1 1.5", { k1: 1.5 }],
      ["tuned, b 0.5", { b: 0.5 }],
      ["tuned, b 0.9", { b: 0.9 }],
    ];
    for (const [label, opts] of grid) {
      const { index, ms } = build(passages, opts);
      console.log(row(label, await measure(index, train), ms));
    }
    return;
  }

  for (const [label, opts] of [
    ["baseline (first version)", SEARCH_BASELINE],
    ["tuned (SEARCH_DEFAULTS)", SEARCH_DEFAULTS],
  ] as const) {
    const { index, ms } = build(passages, opts);
    console.log(row(`${label}, train`, await measure(index, train), ms));
    if (values.test) console.log(row(`${label}, test`, await measure(index, test)));
  }
  if (values.dense) {
    // "build" here is loading the cached paragraph embeddings (or embedding the corpus the first
    // time); the model process starts with the first query and its start-up is not in ms/query.
    for (const model of ["e5", "minilm"] as const) {
      const t0 = performance.now();
      const index = await buildDenseIndex(fam.corpusFile, { model });
      const ms = performance.now() - t0;
      await index.search("warm-up", 1);
      const label = `dense (${DENSE_MODELS[model]})`;
      console.log(row(`${label}, train`, await measure(index, train), ms));
      if (values.test) console.log(row(`${label}, test`, await measure(index, test)));
      index.close();
    }
  }
}

await guard(main);
