/**
 * Fine-tuning data: chat JSONL in the OpenAI fine-tuning format, the format people already have
 * (also read by TRL and tinker-cookbook). One conversation per line:
 *
 *   {"messages": [{"role": "system", "content": "..."},
 *                 {"role": "user", "content": "..."},
 *                 {"role": "assistant", "content": "...", "weight": 1}]}
 *
 * - roles: system, user, assistant, tool; `content` is a string (or a list of `{"type": "text",
 *   "text": ...}` parts, joined);
 * - `weight` (0 or 1) is read on assistant messages only; an assistant message without one weighs 1,
 *   so by default the loss is on every assistant reply and nothing else;
 * - other top-level keys (an id, a "kind") are kept aside and never rendered.
 *
 * Bad input is an error naming the file, the line and the field. Blank lines are skipped; a
 * conversation with no assistant message of weight 1 trains nothing and is counted as skipped.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import type { ChatMessage, Role } from "../engine/api.ts";
import { inputError, UserError } from "../util/errors.ts";
import { parseJsonl } from "../util/jsonl.ts";

export const CHAT_ROLES: readonly Role[] = ["system", "user", "assistant", "tool"];

/** One conversation of a chat JSONL file. */
export interface ChatExample {
  /** 1-based line in its file (for messages). */
  line: number;
  messages: ChatMessage[];
  /** Per message: 1 = train on it (assistant messages only), 0 = context. */
  weights: (0 | 1)[];
  /** The line's top-level keys other than `messages` (e.g. a document kind), untouched. */
  extra: Record<string, unknown>;
}

export interface ChatFile {
  file: string;
  examples: ChatExample[];
  /** Lines skipped because no assistant message has weight 1, with their line numbers. */
  skippedNoTarget: number[];
}

const MESSAGE_KEYS = new Set(["role", "content", "weight"]);

function contentText(value: unknown, where: { file: string; line: number; key: string }): string {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    return value
      .map((part, j) => {
        const key = `${where.key}[${j}]`;
        if (
          part === null ||
          typeof part !== "object" ||
          (part as { type?: unknown }).type !== "text" ||
          typeof (part as { text?: unknown }).text !== "string"
        )
          throw inputError(
            { ...where, key },
            'expected a text part {"type": "text", "text": "..."} (only text content is supported)',
          );
        return (part as { text: string }).text;
      })
      .join("");
  }
  throw inputError(where, `expected a string, got ${value === null ? "null" : typeof value}`);
}

/** Validates one parsed line; errors name file, line and field. */
export function parseChatLine(value: unknown, file: string, line: number): ChatExample {
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw inputError({ file, line }, 'expected a JSON object with a "messages" list');
  const { messages: raw, ...extra } = value as Record<string, unknown>;
  if (!Array.isArray(raw))
    throw inputError(
      { file, line, key: "messages" },
      raw === undefined ? 'missing (each line needs a "messages" list)' : "expected a list of messages",
    );
  if (raw.length === 0) throw inputError({ file, line, key: "messages" }, "the list is empty");
  const messages: ChatMessage[] = [];
  const weights: (0 | 1)[] = [];
  raw.forEach((m, i) => {
    const at = (k?: string) => ({ file, line, key: `messages[${i}]${k ? `.${k}` : ""}` });
    if (m === null || typeof m !== "object" || Array.isArray(m))
      throw inputError(at(), 'expected an object with "role" and "content"');
    const msg = m as Record<string, unknown>;
    for (const k of Object.keys(msg))
      if (!MESSAGE_KEYS.has(k))
        throw inputError(
          at(k),
          `not supported (a message has "role", "content" and, on assistant messages, "weight")`,
        );
    const role = msg.role;
    if (typeof role !== "string" || !(CHAT_ROLES as readonly string[]).includes(role))
      throw inputError(
        at("role"),
        `unknown role ${JSON.stringify(role)} (expected one of ${CHAT_ROLES.join(", ")})`,
      );
    if (!Object.hasOwn(msg, "content")) throw inputError(at("content"), "missing");
    const content = contentText(msg.content, at("content"));
    let weight: 0 | 1 = role === "assistant" ? 1 : 0;
    if (Object.hasOwn(msg, "weight")) {
      if (role !== "assistant")
        throw inputError(at("weight"), `is read on assistant messages only (this one is "${role}")`);
      if (msg.weight !== 0 && msg.weight !== 1)
        throw inputError(at("weight"), `expected 0 or 1, got ${JSON.stringify(msg.weight)}`);
      weight = msg.weight;
    }
    if (weight === 1 && content.trim() === "")
      throw inputError(at("content"), "an assistant message with weight 1 is empty: nothing to learn");
    messages.push({ role: role as Role, content });
    weights.push(weight);
  });
  return { line, messages, weights, extra };
}

/** Reads and validates a whole chat JSONL file. */
export function readChatFile(file: string): ChatFile {
  if (!existsSync(file)) throw inputError({ file }, "file not found");
  if (!statSync(file).isFile()) throw inputError({ file }, "is not a file");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UserError(`${file}: cannot read (${(e as Error).message})`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a byte-order mark is not data
  const examples: ChatExample[] = [];
  const skippedNoTarget: number[] = [];
  const parsed = parseJsonl(text, file, (value, line) => ({ ex: parseChatLine(value, file, line), line }));
  for (const { ex, line } of parsed) {
    if (ex.weights.some((w) => w === 1)) examples.push(ex);
    else skippedNoTarget.push(line);
  }
  if (examples.length === 0)
    throw inputError(
      { file },
      skippedNoTarget.length > 0
        ? `no conversation has an assistant message with weight 1 (${skippedNoTarget.length} lines read): nothing to train on`
        : "no conversations (the file is empty)",
    );
  return { file, examples, skippedNoTarget };
}
