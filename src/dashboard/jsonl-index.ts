/**
 * An incremental byte-offset index over a JSONL file that another process may still be appending to.
 *
 * The dashboard never loads a whole rollouts file into memory: each `refresh()` reads only the bytes
 * appended since the last one, parses each complete line once to pull out a small summary (`extract`),
 * and remembers where the line lies in the file so that the full record can be read back later with a
 * single positioned read. A last line without its newline is a record still being written and is left
 * for the next refresh (the rule of `readJsonlTolerant` in src/util/jsonl.ts). A complete line that is
 * not valid JSON is counted and skipped, never fatal: a damaged line must not take the page down.
 */
import { open, stat } from "node:fs/promises";

export interface IndexEntry<M> {
  /** Byte offset of the line's first byte. */
  offset: number;
  /** Length of the line in bytes, without its newline. */
  length: number;
  /** 1-based line number in the file. */
  line: number;
  meta: M;
}

export interface LineProblem {
  line: number;
  message: string;
}

/** Summarises one parsed record; returning null drops the line from the index. */
export type Extract<M> = (record: unknown, line: number) => M | null;

const CHUNK = 1 << 20;
/** The longest line indexed by default; a longer one is counted as a problem and passed over. */
export const MAX_LINE_BYTES = 16 << 20;

export class JsonlIndex<M> {
  readonly entries: IndexEntry<M>[] = [];
  /** Malformed complete lines (first few kept, all counted). */
  readonly problems: LineProblem[] = [];
  problemCount = 0;
  /** Bytes covered by the index: everything up to and including the last complete line's newline. */
  indexedBytes = 0;
  private linesSeen = 0;
  /** Inside a line longer than `maxLineBytes`: its bytes are passed over until its newline. */
  private skipping = false;
  private inode = -1;
  private running: Promise<boolean> | null = null;
  private again = false;

  constructor(
    readonly file: string,
    private readonly extract: Extract<M>,
    /** Called with each entry as it is added, so owners can keep their own lookup tables. */
    private readonly onEntry?: (entry: IndexEntry<M>, index: number) => void,
    /** Called when the file was replaced or truncated and the index starts over. */
    private readonly onReset?: () => void,
    /** When given and false for the file, the file is treated as missing (e.g. a link out of the runs directory). */
    private readonly guard?: (file: string) => boolean,
    /** Lines longer than this are skipped unread (counted in `problems`): they would hold the memory. */
    private readonly maxLineBytes = MAX_LINE_BYTES,
  ) {}

  /**
   * Indexes whatever was appended since the last call. Concurrent callers share one pass (and a call
   * arriving during a pass triggers one more pass, so nobody misses data written meanwhile).
   * Resolves to true when entries were added.
   */
  refresh(): Promise<boolean> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = async (): Promise<boolean> => {
      let added = false;
      do {
        this.again = false;
        added = (await this.pass()) || added;
      } while (this.again);
      return added;
    };
    this.running = run().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private reset(): void {
    this.entries.length = 0;
    this.problems.length = 0;
    this.problemCount = 0;
    this.indexedBytes = 0;
    this.linesSeen = 0;
    this.skipping = false;
    this.onReset?.();
  }

  private async pass(): Promise<boolean> {
    let info;
    try {
      if (this.guard && !this.guard(this.file)) throw new Error("refused");
      info = await stat(this.file);
    } catch {
      if (this.indexedBytes > 0) this.reset();
      return false;
    }
    // A different inode or a shorter file means the file was replaced or truncated: start over.
    if ((this.inode !== -1 && info.ino !== this.inode) || info.size < this.indexedBytes) this.reset();
    this.inode = info.ino;
    const size = info.size;
    if (size <= this.indexedBytes) return false;
    const before = this.entries.length;
    const fh = await open(this.file, "r");
    try {
      let pos = this.indexedBytes;
      // The start of an unfinished line, as the chunks it spans (joined once, when its newline comes).
      let carry: Buffer[] = [];
      let carryBytes = 0;
      while (pos < size) {
        const n = Math.min(CHUNK, size - pos);
        const buf = Buffer.allocUnsafe(n);
        const { bytesRead } = await fh.read(buf, 0, n, pos);
        if (bytesRead === 0) break;
        const chunk = bytesRead < n ? buf.subarray(0, bytesRead) : buf;
        const at = pos;
        pos += bytesRead;
        let start = 0;
        if (this.skipping) {
          const nl = chunk.indexOf(10);
          if (nl === -1) {
            this.indexedBytes = pos;
            continue;
          }
          this.skipping = false;
          this.tooLong();
          start = nl + 1;
          this.indexedBytes = at + start;
        }
        for (let nl = chunk.indexOf(10, start); nl !== -1; nl = chunk.indexOf(10, start)) {
          const offset = at + start - carryBytes;
          if (carryBytes + nl - start > this.maxLineBytes) this.tooLong();
          else if (carryBytes === 0) this.addLine(chunk, start, nl, offset);
          else {
            const line = Buffer.concat([...carry, chunk.subarray(start, nl)]);
            this.addLine(line, 0, line.length, offset);
          }
          carry = [];
          carryBytes = 0;
          start = nl + 1;
          this.indexedBytes = at + start;
        }
        if (start < chunk.length) {
          if (carryBytes + chunk.length - start > this.maxLineBytes) {
            // Too long to keep: pass over it (here and in later refreshes) up to its newline.
            this.skipping = true;
            carry = [];
            carryBytes = 0;
            this.indexedBytes = pos;
          } else {
            // Copied, so that the big chunk buffer can be freed.
            carry.push(Buffer.from(chunk.subarray(start)));
            carryBytes += chunk.length - start;
          }
        }
      }
    } finally {
      await fh.close();
    }
    return this.entries.length > before;
  }

  /** A line over `maxLineBytes` ended: counted as a problem, not parsed. */
  private tooLong(): void {
    this.linesSeen++;
    this.problemCount++;
    if (this.problems.length < 20)
      this.problems.push({
        line: this.linesSeen,
        message: `longer than ${this.maxLineBytes} bytes; skipped`,
      });
  }

  private addLine(data: Buffer, start: number, end: number, offset: number): void {
    this.linesSeen++;
    const line = this.linesSeen;
    const text = data.toString("utf8", start, end).trim();
    if (text === "") return;
    let record: unknown;
    try {
      record = JSON.parse(text);
    } catch (e) {
      this.problemCount++;
      if (this.problems.length < 20) this.problems.push({ line, message: (e as Error).message });
      return;
    }
    const meta = this.extract(record, line);
    if (meta === null) return;
    const entry: IndexEntry<M> = { offset, length: end - start, line, meta };
    this.entries.push(entry);
    this.onEntry?.(entry, this.entries.length - 1);
  }

  /** Reads and parses the full record of an entry with one positioned read. */
  async read(entry: IndexEntry<M>): Promise<unknown> {
    const fh = await open(this.file, "r");
    try {
      const buf = Buffer.allocUnsafe(entry.length);
      await fh.read(buf, 0, entry.length, entry.offset);
      return JSON.parse(buf.toString("utf8"));
    } finally {
      await fh.close();
    }
  }

  /** Reads several entries' records with one open file handle. */
  async readMany(entries: readonly IndexEntry<M>[]): Promise<unknown[]> {
    if (entries.length === 0) return [];
    const fh = await open(this.file, "r");
    try {
      const out: unknown[] = [];
      for (const e of entries) {
        const buf = Buffer.allocUnsafe(e.length);
        await fh.read(buf, 0, e.length, e.offset);
        out.push(JSON.parse(buf.toString("utf8")));
      }
      return out;
    } finally {
      await fh.close();
    }
  }
}
