/**
 * The text protocol for tool calls. It needs no native function calling: a tool call is one JSON
 * object between tags, which any chat template carries as plain assistant text:
 *
 *   <tool_call>{"name": "search", "arguments": {"query": "...", "top_k": 5}}</tool_call>
 *
 * A sampler should stop at `TOOL_CALL_STOP` (and keep it in the text) so that generation ends right
 * after a call; the environment answers with an observation whose role is "tool". A turn without a
 * `<tool_call>` tag is the final answer.
 */

export const TOOL_CALL_OPEN = "<tool_call>";
export const TOOL_CALL_CLOSE = "</tool_call>";
/** Where a sampler should stop generating: the end of a tool call. */
export const TOOL_CALL_STOP = TOOL_CALL_CLOSE;
export const SEARCH_TOOL = "search";

export interface ToolCall {
  name: string;
  arguments: Record<string, unknown>;
}

/** Either a parsed call or the reason the text between the tags is not one. */
export type ParsedToolCall = { ok: true; call: ToolCall } | { ok: false; error: string };

/** Whether a reply attempts a tool call at all (an unclosed tag at the end counts: the sampler stopped there). */
export function hasToolCall(text: string): boolean {
  return text.includes(TOOL_CALL_OPEN);
}

/**
 * Every tool call in a reply, in order. A call left unclosed at the very end of the reply is read to
 * the end, since a sampler stopping at `TOOL_CALL_STOP` may drop the stop string.
 */
export function parseToolCalls(text: string): ParsedToolCall[] {
  const out: ParsedToolCall[] = [];
  let at = 0;
  for (;;) {
    const open = text.indexOf(TOOL_CALL_OPEN, at);
    if (open < 0) break;
    const bodyStart = open + TOOL_CALL_OPEN.length;
    const close = text.indexOf(TOOL_CALL_CLOSE, bodyStart);
    const body = text.slice(bodyStart, close < 0 ? text.length : close).trim();
    out.push(parseOne(body));
    if (close < 0) break;
    at = close + TOOL_CALL_CLOSE.length;
  }
  return out;
}

function parseOne(body: string): ParsedToolCall {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return { ok: false, error: "the text inside <tool_call> is not valid JSON" };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    return { ok: false, error: "a tool call must be a JSON object" };
  const rec = value as Record<string, unknown>;
  if (typeof rec.name !== "string") return { ok: false, error: 'a tool call needs a string "name"' };
  const args = rec.arguments ?? {};
  if (args === null || typeof args !== "object" || Array.isArray(args))
    return { ok: false, error: '"arguments" must be a JSON object' };
  return { ok: true, call: { name: rec.name, arguments: args as Record<string, unknown> } };
}

/** Writes a call in the protocol's form (used by scripted players, the CLI and tests). */
export function formatToolCall(name: string, args: Record<string, unknown>): string {
  return `${TOOL_CALL_OPEN}${JSON.stringify({ name, arguments: args })}${TOOL_CALL_CLOSE}`;
}

/** A JSON-schema style description of the search tool, for chat templates with native tool support. */
export const SEARCH_TOOL_SCHEMA = {
  name: SEARCH_TOOL,
  description: "Search the Wikipedia paragraph collection; returns the best-matching paragraphs.",
  parameters: {
    type: "object",
    properties: {
      query: { type: "string", description: "what to look for" },
      top_k: { type: "integer", description: "number of results (1 to 50, default 5)" },
    },
    required: ["query"],
  },
} as const;
