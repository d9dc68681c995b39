/**
 * Token-level trajectories built incrementally, with no re-tokenisation of sampled text.
 *
 * A trajectory is the token ids of a whole conversation, a per-token trainable mask and the
 * rollout log-probs. It grows in two ways:
 * - `appendSampled`: the ids the model sampled, appended exactly as returned (trainable);
 * - `appendMessages`: messages the model did not write (board, tool results). Their ids come from
 *   rendering the conversation with and without them and taking the suffix, after checking that
 *   the longer render extends the shorter one (a template that rewrites earlier turns would make
 *   the trained sequence differ from what the model saw, so that is an error).
 * Between the two, the template's end-of-turn tokens close the sampled reply; tokens the model
 * already produced (its end-of-turn token) are not repeated.
 *
 * When the sampled ids are the canonical tokenisation of their text, the finished trajectory is
 * exactly `renderChat(messages)` of the conversation up to its last reply (tested).
 */
import type { ChatMessage } from "../engine/api.ts";
import type { ModelBackend } from "./backend.ts";

export interface Trajectory {
  ids: number[];
  /** 1 where ids[i] was sampled by the policy in this context (trained), else 0. */
  mask: (0 | 1)[];
  /** Rollout log-prob of ids[i] (0 where mask is 0). */
  logprobs: number[];
}

export function startsWith(ids: readonly number[], prefix: readonly number[]): boolean {
  if (prefix.length > ids.length) return false;
  for (let i = 0; i < prefix.length; i++) if (ids[i] !== prefix[i]) return false;
  return true;
}

/** Thrown when the chat template does not render conversations as growing prefixes. */
export class TemplateError extends Error {
  override name = "TemplateError";
}

const closingCache = new WeakMap<ModelBackend, Promise<number[]>>();

/**
 * The tokens the chat template puts after an assistant message's content (e.g. end-of-turn and a
 * newline), found once per backend by rendering a probe conversation with an empty reply.
 */
export function assistantClosing(model: ModelBackend): Promise<number[]> {
  let cached = closingCache.get(model);
  if (!cached) {
    cached = (async () => {
      const probe: ChatMessage[] = [{ role: "user", content: "hi" }];
      const open = await model.renderChat(probe, { addGenerationPrompt: true });
      const closed = await model.renderChat([...probe, { role: "assistant", content: "" }], {
        addGenerationPrompt: false,
      });
      if (!startsWith(closed, open))
        throw new TemplateError("chat template: an assistant turn does not extend the generation prompt");
      return closed.slice(open.length);
    })();
    closingCache.set(model, cached);
  }
  return cached;
}

/** Length of the longest prefix of `closing` that `tokens` already ends with. */
function closingOverlap(tokens: readonly number[], closing: readonly number[]): number {
  for (let j = Math.min(closing.length, tokens.length); j > 0; j--) {
    let ok = true;
    for (let i = 0; i < j; i++)
      if (tokens[tokens.length - j + i] !== closing[i]) {
        ok = false;
        break;
      }
    if (ok) return j;
  }
  return 0;
}

export class TrajectoryBuilder implements Trajectory {
  readonly ids: number[] = [];
  readonly mask: (0 | 1)[] = [];
  readonly logprobs: number[] = [];
  readonly messages: ChatMessage[] = [];
  /** Closing tokens still owed by the last sampled reply (added before anything follows it). */
  private pendingClose: number[] = [];
  private lastRole: ChatMessage["role"] | null = null;
  /** Where the last reply (with its closing tokens) ends, once messages follow it. */
  private replyEnd: number | null = null;

  private constructor(
    private readonly model: ModelBackend,
    private readonly closing: readonly number[],
  ) {}

  /** A trajectory holding `messages` rendered with the generation prompt, ready for the first reply. */
  static async start(model: ModelBackend, messages: readonly ChatMessage[]): Promise<TrajectoryBuilder> {
    const b = new TrajectoryBuilder(model, await assistantClosing(model));
    const ids = await model.renderChat(messages, { addGenerationPrompt: true });
    b.push(ids, 0);
    b.messages.push(...messages);
    b.lastRole = messages[messages.length - 1]?.role ?? null;
    return b;
  }

  /** Appends the model's reply: its sampled ids (trainable) and the text they decode to. */
  appendSampled(tokens: readonly number[], logprobs: readonly number[], text: string): void {
    if (this.lastRole === "assistant") throw new Error("trajectory: two assistant turns in a row");
    if (logprobs.length !== tokens.length)
      throw new Error(`trajectory: ${tokens.length} tokens but ${logprobs.length} log-probs`);
    this.ids.push(...tokens);
    this.mask.push(...tokens.map(() => 1 as const));
    this.logprobs.push(...logprobs);
    this.messages.push({ role: "assistant", content: text });
    this.lastRole = "assistant";
    this.pendingClose = this.closing.slice(closingOverlap(tokens, this.closing));
  }

  /**
   * Appends messages after an assistant reply (the next board, tool results), ending with the
   * generation prompt for the next reply.
   */
  async appendMessages(messages: readonly ChatMessage[]): Promise<void> {
    if (messages.length === 0) return;
    if (this.lastRole !== "assistant") throw new Error("trajectory: appendMessages must follow a reply");
    const [before, after] = await Promise.all([
      this.model.renderChat(this.messages, { addGenerationPrompt: false }),
      this.model.renderChat([...this.messages, ...messages], { addGenerationPrompt: true }),
    ]);
    if (!startsWith(after, before))
      throw new TemplateError(
        "chat template: rendering a longer conversation changed the tokens of earlier turns, " +
          "so turns cannot be appended without re-tokenising",
      );
    const tail = before.slice(before.length - this.closing.length);
    if (this.closing.length > 0 && !startsWith(tail, this.closing))
      throw new TemplateError(
        "chat template: an assistant turn does not end with the template's closing tokens",
      );
    this.push(this.pendingClose, 0);
    this.pendingClose = [];
    this.replyEnd = this.ids.length;
    this.push(after.slice(before.length), 0);
    this.messages.push(...messages);
    this.lastRole = messages[messages.length - 1]!.role;
  }

  /**
   * The trajectory for training: up to the end of the last reply, closed with the template's
   * end-of-turn tokens. Messages after the last reply (an observation the episode never answered,
   * e.g. when the context ran out) are left out: they train nothing and would only cost context.
   * When the episode ends on a reply, this is the whole rendered conversation.
   */
  finish(): Trajectory {
    if (this.lastRole === "assistant") {
      this.push(this.pendingClose, 0);
      this.pendingClose = [];
      return { ids: this.ids.slice(), mask: this.mask.slice(), logprobs: this.logprobs.slice() };
    }
    const end = this.replyEnd ?? this.ids.length;
    return {
      ids: this.ids.slice(0, end),
      mask: this.mask.slice(0, end),
      logprobs: this.logprobs.slice(0, end),
    };
  }

  get length(): number {
    return this.ids.length;
  }

  private push(ids: readonly number[], mask: 0 | 1): void {
    for (const id of ids) {
      this.ids.push(id);
      this.mask.push(mask);
      this.logprobs.push(0);
    }
  }
}
