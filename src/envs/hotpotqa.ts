/**
 * HotpotQA as a multi-turn tool-use task: the question is the first user message; the agent may
 * call a `search` tool over a local paragraph corpus (by default BM25+ with title-match and
 * linked-name re-ranking, src/envs/search.ts; with `search: "dense"` cosine similarity of E5
 * embeddings, src/envs/dense.ts) for at most 5 turns; the first turn without a tool call is the
 * answer, read from `\boxed{…}` and scored by
 * EM → 1, else F1 ≥ 0.3 → F1, else 0. Loaders read the shipped subset, the official HotpotQA JSON
 * format and any JSONL corpus, so the environment can be pointed at the full data set.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { readJsonFile, readJsonl } from "../util/jsonl.ts";
import { inputError, UserError } from "../util/errors.ts";
import type {
  EnvConfig,
  EnvFamily,
  Episode,
  EnvPromptParts,
  Split,
  StepResult,
  Task,
  TraceStep,
} from "./types.ts";
import { oneOf } from "../util/schema.ts";
import { asRecord, defaultDataDir, TracedEpisode } from "./common.ts";
import { extractBoxed, scoreAnswer, type AnswerScore } from "./qa-metrics.ts";
import { corpusIndex, type Passage, type SearchHit, type SearchIndex } from "./search.ts";
import { denseCorpusIndex, type DenseIndex } from "./dense.ts";
import {
  formatToolCall,
  parseToolCalls,
  SEARCH_TOOL,
  TOOL_CALL_CLOSE,
  TOOL_CALL_OPEN,
  TOOL_CALL_STOP,
  type ParsedToolCall,
} from "./tool-protocol.ts";

export interface HotpotTask extends Task {
  env: "hotpotqa";
  question: string;
  /** Gold answer: used for the reward only, never shown to the agent. */
  answer: string;
  /** Titles of the gold paragraphs, when known (for diagnostics and `erl data stats`). */
  supportingTitles?: string[];
  type?: string;
}

export const HOTPOT_MAX_TURNS = 5;
export const SEARCH_DEFAULT_TOP_K = 5;
export const SEARCH_MAX_TOP_K = 50;
/** How much of each paragraph a search result shows. */
export const SNIPPET_CHARS = 300;
/** Tool calls executed per turn at most; more are answered with an error. */
const MAX_CALLS_PER_TURN = 3;

// ---------------------------------------------------------------------------------------------
// Loaders

/** The corpus id the shipped data uses: "w" + the first 12 hex digits of sha256(title). */
export function passageId(title: string): string {
  return "w" + createHash("sha256").update(title, "utf8").digest("hex").slice(0, 12);
}

/** Reads the shipped question format (`questions.jsonl`: {id, question, answer, supporting_titles, type, …}). */
export function loadQuestionsJsonl(file: string): HotpotTask[] {
  return readJsonl(file, (value, line) => {
    const rec = asRecord(value, file, line);
    for (const key of ["id", "question", "answer"] as const)
      if (typeof rec[key] !== "string" || rec[key] === "")
        throw inputError({ file, line, key }, "expected a non-empty string");
    const task: HotpotTask = {
      id: rec.id as string,
      env: "hotpotqa",
      question: rec.question as string,
      answer: rec.answer as string,
    };
    if (Array.isArray(rec.supporting_titles)) task.supportingTitles = rec.supporting_titles.map(String);
    if (typeof rec.type === "string") task.type = rec.type;
    return task;
  });
}

/**
 * Reads the official HotpotQA JSON format: a list of {_id, question, answer, type, context:
 * [[title, [sentences…]]…], supporting_facts: [[title, sent_id]…]}. Returns the questions and the
 * paragraphs of their contexts (deduplicated by title), which can serve as a corpus.
 */
export function loadOfficialHotpot(file: string): { tasks: HotpotTask[]; passages: Passage[] } {
  const data = readJsonFile(file);
  if (!Array.isArray(data)) throw inputError({ file }, "expected a JSON list of questions");
  const tasks: HotpotTask[] = [];
  const passages = new Map<string, Passage>();
  data.forEach((value, i) => {
    const where = (key: string) => ({ file, key: `[${i}].${key}` });
    if (value === null || typeof value !== "object")
      throw inputError({ file, key: `[${i}]` }, "expected an object");
    const rec = value as Record<string, unknown>;
    for (const key of ["_id", "question", "answer"] as const)
      if (typeof rec[key] !== "string") throw inputError(where(key), "expected a string");
    const task: HotpotTask = {
      id: rec._id as string,
      env: "hotpotqa",
      question: rec.question as string,
      answer: rec.answer as string,
    };
    if (typeof rec.type === "string") task.type = rec.type;
    if (Array.isArray(rec.supporting_facts))
      task.supportingTitles = [
        ...new Set(rec.supporting_facts.map((f) => (Array.isArray(f) ? String(f[0]) : ""))),
      ].filter(Boolean);
    if (rec.context !== undefined) {
      if (!Array.isArray(rec.context))
        throw inputError(where("context"), "expected a list of [title, sentences]");
      for (const entry of rec.context) {
        if (!Array.isArray(entry) || typeof entry[0] !== "string" || !Array.isArray(entry[1]))
          throw inputError(where("context"), "expected a list of [title, sentences]");
        const title = entry[0];
        const text = (entry[1] as unknown[]).map(String).join("").replace(/\s+/g, " ").trim();
        if (!passages.has(title)) passages.set(title, { id: passageId(title), title, text });
      }
    }
    tasks.push(task);
  });
  return { tasks, passages: [...passages.values()] };
}

/** Reads either question format, by extension: `.json` official HotpotQA, otherwise our JSONL. */
export function loadQuestions(file: string): HotpotTask[] {
  return file.endsWith(".json") ? loadOfficialHotpot(file).tasks : loadQuestionsJsonl(file);
}

/** Reads `split.json` ({train_ids, test_ids}). */
export function loadSplitIds(file: string): Record<Split, string[]> {
  const data = readJsonFile(file);
  const rec = asRecord(data, file, 1);
  const ids = (key: string): string[] => {
    const v = rec[key];
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string"))
      throw inputError({ file, key }, "expected a list of question ids");
    return v as string[];
  };
  return { train: ids("train_ids"), test: ids("test_ids") };
}

// ---------------------------------------------------------------------------------------------
// Search tool

export interface SearchCallRecord {
  query: string;
  topK: number;
  hits: { id: string; title: string; score: number }[];
  error?: string;
}

/** One search result block: id, score, title and the paragraph's first ~300 characters. */
export function formatHits(query: string, hits: readonly SearchHit[]): string {
  if (hits.length === 0) return `No results for "${query}".`;
  const lines = [`Results for "${query}":`];
  hits.forEach((h, i) => {
    const snippet = h.text.length > SNIPPET_CHARS ? h.text.slice(0, SNIPPET_CHARS).trimEnd() + "…" : h.text;
    lines.push(`[${i + 1}] id=${h.id} score=${h.score.toFixed(2)} title: ${h.title}\n${snippet}`);
  });
  return lines.join("\n");
}

/** What an episode searches with: BM25's `SearchIndex`, or answers prepared for this turn. */
export interface Retriever {
  search(query: string, topK: number): SearchHit[];
}

/** The search a tool call asks for, or why it is refused. */
export function searchRequest(
  parsed: ParsedToolCall,
): { ok: true; query: string; topK: number } | { ok: false; error: string; query: string } {
  const fail = (error: string, query = "") => ({ ok: false as const, error, query });
  if (!parsed.ok) return fail(parsed.error);
  const { name, arguments: args } = parsed.call;
  if (name !== SEARCH_TOOL) return fail(`unknown tool "${name}"; the only tool is "${SEARCH_TOOL}"`);
  const query = args.query;
  if (typeof query !== "string" || query.trim() === "") return fail('"query" must be a non-empty string');
  let topK = SEARCH_DEFAULT_TOP_K;
  if (args.top_k !== undefined) {
    const k = Number(args.top_k);
    if (!Number.isInteger(k) || k < 1) return fail('"top_k" must be a positive integer', query);
    topK = Math.min(k, SEARCH_MAX_TOP_K);
  }
  return { ok: true, query, topK };
}

function runSearch(index: Retriever, parsed: ParsedToolCall): { text: string; record: SearchCallRecord } {
  const req = searchRequest(parsed);
  if (!req.ok)
    return {
      text: `Tool error: ${req.error}.`,
      record: { query: req.query, topK: 0, hits: [], error: req.error },
    };
  const { query, topK } = req;
  const hits = index.search(query, topK);
  return {
    text: formatHits(query, hits),
    record: { query, topK, hits: hits.map((h) => ({ id: h.id, title: h.title, score: h.score })) },
  };
}

// ---------------------------------------------------------------------------------------------
// Episodes

export class HotpotEpisode extends TracedEpisode {
  readonly initialObservation: string;
  private turns = 0;
  private searches = 0;
  private answer: string | null = null;
  private score: AnswerScore | null = null;
  private timedOut = false;

  constructor(
    readonly task: HotpotTask,
    private readonly index: Retriever,
    readonly maxTurns = HOTPOT_MAX_TURNS,
  ) {
    super();
    this.initialObservation = `Question: ${task.question}\nYou have ${maxTurns} turns.`;
  }

  get success(): boolean {
    return this.score?.exactMatch ?? false;
  }

  protected advance(actionText: string): StepResult {
    this.turns += 1;
    const calls = parseToolCalls(actionText);
    if (calls.length === 0) return this.finish(actionText);
    const left = this.maxTurns - this.turns;
    if (left <= 0) {
      this.timedOut = true;
      return {
        observation: `No turns left: the episode ended without an answer. Turns used: ${this.turns} of ${this.maxTurns}.`,
        observationRole: "tool",
        reward: 0,
        done: true,
        stopReason: "turn_limit",
        effective: false,
        valid: calls.every((c) => c.ok),
        comment: "tool call on the last turn; no answer",
        info: { turn: this.turns, calls: [] },
      };
    }
    const records: SearchCallRecord[] = [];
    const texts: string[] = [];
    calls.forEach((c, i) => {
      if (i >= MAX_CALLS_PER_TURN) {
        texts.push(`Tool error: at most ${MAX_CALLS_PER_TURN} tool calls per turn; this one was skipped.`);
        return;
      }
      const r = runSearch(this.index, c);
      records.push(r.record);
      texts.push(r.text);
    });
    const ok = records.filter((r) => !r.error);
    this.searches += ok.length;
    const turnsLine =
      `Turns used: ${this.turns} of ${this.maxTurns} (${left} left).` +
      (left === 1 ? " Your next turn is the last one: answer with \\boxed{} and no tool call." : "");
    const first = records[0];
    const comment =
      ok.length > 0
        ? ok.map((r) => `searched "${r.query}" (${r.hits.length} results)`).join("; ")
        : `tool call error: ${first?.error ?? "too many calls"}`;
    return {
      observation: `${texts.join("\n\n")}\n${turnsLine}`,
      observationRole: "tool",
      reward: 0,
      done: false,
      stopReason: null,
      effective: ok.length > 0,
      valid: records.length === calls.length && records.every((r) => !r.error),
      comment,
      info: { turn: this.turns, calls: records },
    };
  }

  private finish(text: string): StepResult {
    this.answer = extractBoxed(text);
    this.score = scoreAnswer(this.answer, this.task.answer);
    const given = this.answer === null ? "no \\boxed{} answer found" : `answer "${this.answer}"`;
    return {
      observation: `Your ${given} was recorded. The episode is over.`,
      observationRole: "user",
      reward: this.score.reward,
      done: true,
      stopReason: "answered",
      effective: this.answer !== null,
      valid: this.answer !== null,
      comment: this.answer === null ? "answered without \\boxed{}" : `answered "${this.answer}"`,
      info: {
        turn: this.turns,
        answer: this.answer,
        exactMatch: this.score.exactMatch,
        f1: this.score.f1,
      },
    };
  }

  feedback(): string {
    const used = `Turns used ${this.turns} of ${this.maxTurns}, searches ${this.searches}.`;
    if (this.timedOut)
      return `Result: timeout (every turn was a tool call; no answer given). Reward 0. ${used}`;
    if (this.score === null) return `Result: not finished. ${used}`;
    if (this.answer === null) return `Result: incorrect (no answer in \\boxed{}). Reward 0. ${used}`;
    const verdict = this.score.exactMatch
      ? "correct"
      : this.score.reward > 0
        ? "partially correct"
        : "incorrect";
    return (
      `Result: ${verdict}. Your answer: "${this.answer}". Reward ${round(this.score.reward)} ` +
      `(token F1 ${round(this.score.f1)}). ${used}`
    );
  }
}

const preparedKey = (query: string, topK: number) => `${topK}\u0000${query}`;

/**
 * A HotpotQA episode over dense search. Embedding a query is asynchronous (a child process), so
 * `step` first runs the turn's searches on the dense index and then hands the turn to an ordinary
 * `HotpotEpisode` whose retriever returns those results: turn logic, limits and messages are shared.
 */
export class DenseHotpotEpisode implements Episode {
  private readonly inner: HotpotEpisode;
  private readonly prepared = new Map<string, SearchHit[]>();

  constructor(
    readonly task: HotpotTask,
    private readonly dense: () => Promise<DenseIndex>,
    maxTurns = HOTPOT_MAX_TURNS,
  ) {
    this.inner = new HotpotEpisode(
      task,
      {
        search: (query, topK) => {
          const hits = this.prepared.get(preparedKey(query, topK));
          if (!hits) throw new Error(`dense search: no prepared results for "${query}" (top_k ${topK})`);
          return hits;
        },
      },
      maxTurns,
    );
  }

  get initialObservation(): string {
    return this.inner.initialObservation;
  }
  get done(): boolean {
    return this.inner.done;
  }
  get trace(): readonly TraceStep[] {
    return this.inner.trace;
  }
  get totalReward(): number {
    return this.inner.totalReward;
  }
  get success(): boolean {
    return this.inner.success;
  }
  feedback(): string {
    return this.inner.feedback();
  }

  async step(actionText: string): Promise<StepResult> {
    this.prepared.clear();
    if (!this.inner.done) {
      const wanted = parseToolCalls(actionText)
        .slice(0, MAX_CALLS_PER_TURN)
        .map(searchRequest)
        .filter((r) => r.ok);
      if (wanted.length > 0) {
        const index = await this.dense();
        for (const r of wanted)
          this.prepared.set(preparedKey(r.query, r.topK), await index.search(r.query, r.topK));
      }
    }
    return this.inner.step(actionText);
  }
}

function round(x: number): string {
  return String(Math.round(x * 100) / 100);
}

export function hotpotPrompt(maxTurns = HOTPOT_MAX_TURNS): EnvPromptParts {
  const example = formatToolCall(SEARCH_TOOL, { query: "your search words", top_k: SEARCH_DEFAULT_TOP_K });
  return {
    taskDescription:
      "Answer a question that may need facts from more than one Wikipedia paragraph. You can search " +
      "a collection of Wikipedia paragraphs; each search returns the best matches with their id, score, " +
      `title and opening text. You have at most ${maxTurns} turns (one reply is one turn). ` +
      "A reply without a tool call is your final answer and ends the episode.",
    formatReminder:
      `To search, write one tool call and stop:\n${example}\n` +
      `(top_k is optional: 1 to ${SEARCH_MAX_TOP_K}, default ${SEARCH_DEFAULT_TOP_K}.) ` +
      "To answer, reply without a tool call and put the short answer in \\boxed{}, e.g. \\boxed{Paris}.",
    referenceRulebook: [
      "HotpotQA rules:",
      `- Tool calls look like ${TOOL_CALL_OPEN}{"name": "search", "arguments": {"query": "...", "top_k": 5}}${TOOL_CALL_CLOSE}; results come back as a tool message.`,
      `- At most ${maxTurns} turns; a turn without a tool call is the final answer. A tool call on the last turn ends the episode with no answer.`,
      "- The answer is read from the last \\boxed{...}. Exact match (ignoring case, punctuation and a/an/the) scores 1; otherwise token F1 counts if it is at least 0.3; yes/no must match exactly.",
      "- Strategy: questions usually need two hops. Search for the entity named in the question, read which other entity it leads to, then search for that one. Use names as queries, not whole questions.",
      "- Answer with the shortest exact span: a name, date, number, or yes/no for comparison questions.",
    ].join("\n"),
  };
}

// ---------------------------------------------------------------------------------------------
// Family

export interface HotpotOptions {
  /** Folder with corpus.jsonl, questions.jsonl and split.json (default: data/hotpotqa). */
  dataDir?: string;
  /** A JSONL corpus of {id, title, text} (default: `${dataDir}/corpus.jsonl`). */
  corpusFile?: string;
  /** Questions for the split file to select from: our JSONL or official `.json` (default: `${dataDir}/questions.jsonl`). */
  questionsFile?: string;
  /** {train_ids, test_ids} (default: `${dataDir}/split.json`). */
  splitFile?: string;
  /** A whole file as the train split (our JSONL or official `.json`); overrides the split file. */
  trainFile?: string;
  /** A whole file as the test split; overrides the split file. */
  testFile?: string;
  /** Turn limit (default 5). */
  maxTurns?: number;
  /**
   * The search tool's retriever: "bm25" (default; src/envs/search.ts) or "dense" (E5
   * embeddings, src/envs/dense.ts; needs engine/requirements-dense.txt, which scripts/setup.sh installs).
   */
  search?: HotpotSearch;
}

export const HOTPOT_SEARCHES = ["bm25", "dense"] as const;
export type HotpotSearch = (typeof HOTPOT_SEARCHES)[number];

/**
 * What HotpotQA declares to the run config (envs/registry.ts): a `hotpotqa` block whose `search`
 * picks the retriever ("bm25", tuned BM25+, the default; "dense", E5 embeddings), and one evaluation
 * sample per task (its answers are scored, not sampled for variety: the paper's setting).
 */
export const HOTPOT_CONFIG = {
  options: { schema: { search: oneOf(HOTPOT_SEARCHES) }, defaults: { search: "bm25" } },
  evalSamples: 1,
} satisfies EnvConfig;

export class HotpotFamily implements EnvFamily<HotpotTask> {
  readonly name = "hotpotqa";
  readonly maxTurns: number;
  readonly stopStrings: readonly string[] = [TOOL_CALL_STOP];
  readonly corpusFile: string;
  readonly search: HotpotSearch;
  private readonly dataDir: string;
  private readonly opts: HotpotOptions;
  private readonly splits = new Map<Split, HotpotTask[]>();

  constructor(opts: HotpotOptions = {}) {
    this.opts = opts;
    this.dataDir = opts.dataDir ?? join(defaultDataDir(), "hotpotqa");
    this.corpusFile = opts.corpusFile ?? join(this.dataDir, "corpus.jsonl");
    this.maxTurns = opts.maxTurns ?? HOTPOT_MAX_TURNS;
    if (!Number.isInteger(this.maxTurns) || this.maxTurns < 1)
      throw new UserError(`hotpotqa: maxTurns must be a positive integer, got ${opts.maxTurns}`);
    const search = opts.search ?? "bm25";
    if (!(HOTPOT_SEARCHES as readonly unknown[]).includes(search))
      throw new UserError(
        `hotpotqa: option "search" must be ${HOTPOT_SEARCHES.map((s) => `"${s}"`).join(" or ")}, got ${JSON.stringify(search)}`,
      );
    this.search = search;
  }

  /** The BM25 search index over the corpus (built on first use, shared by the process). */
  index(): SearchIndex {
    return corpusIndex(this.corpusFile);
  }

  /** The dense index over the corpus (embeddings cached on disk; one per process). */
  denseIndex(): Promise<DenseIndex> {
    return denseCorpusIndex(this.corpusFile);
  }

  loadSplit(split: Split): HotpotTask[] {
    const cached = this.splits.get(split);
    if (cached) return cached;
    const whole = split === "train" ? this.opts.trainFile : this.opts.testFile;
    let tasks: HotpotTask[];
    if (whole) {
      tasks = loadQuestions(whole);
      if (tasks.length === 0) throw inputError({ file: whole }, "no questions in file");
    } else {
      const questionsFile = this.opts.questionsFile ?? join(this.dataDir, "questions.jsonl");
      const splitFile = this.opts.splitFile ?? join(this.dataDir, "split.json");
      const byId = new Map(loadQuestions(questionsFile).map((t) => [t.id, t]));
      tasks = loadSplitIds(splitFile)[split].map((id) => {
        const t = byId.get(id);
        if (!t)
          throw inputError(
            { file: splitFile, key: `${split}_ids` },
            `question id "${id}" is not in ${questionsFile}`,
          );
        return t;
      });
      if (tasks.length === 0)
        throw inputError({ file: splitFile, key: `${split}_ids` }, "no questions in this split");
    }
    this.splits.set(split, tasks);
    return tasks;
  }

  makeEpisode(task: HotpotTask): HotpotEpisode | DenseHotpotEpisode {
    if (this.search === "dense") return new DenseHotpotEpisode(task, () => this.denseIndex(), this.maxTurns);
    return new HotpotEpisode(task, this.index(), this.maxTurns);
  }

  prompt(): EnvPromptParts {
    return hotpotPrompt(this.maxTurns);
  }
}
