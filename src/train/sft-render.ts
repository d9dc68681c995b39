/**
 * A conversation to training tokens, exactly as the RL path renders and samples it.
 *
 * The RL path (src/agent/trajectory.ts) renders everything the model did not write with the model's
 * chat template and keeps the model's own sampled tokens, which end with its end-of-turn token. So
 * for an assistant message i the trained tokens are the ones the model would have sampled after
 * the generation prompt:
 *
 *   P_i = render(messages[..i], generation prompt)      what the model was shown
 *   F_i = render(messages[..i+1])                        the conversation with reply i
 *   trained(i) = F_i[|P_i| .. |F_i| - |closing| + k]     the reply's tokens and the end-of-turn token
 *
 * where `closing` is what the template writes after a reply (e.g. `<|im_end|>\n`) and k is the
 * length of closing up to and including its first end-of-sequence id (the token sampling stops on;
 * all of closing when it has none). The whole sequence is render(messages up to the last reply);
 * every F_i must be a prefix of it (a template that rewrites earlier turns cannot be trained
 * token-exactly, and is an error naming the line).
 */
import type { ModelBackend } from "../agent/backend.ts";
import { assistantClosing, startsWith } from "../agent/trajectory.ts";
import { inputError } from "../util/errors.ts";
import type { ChatExample } from "./sft-data.ts";

/** A tokenised conversation: ids and the per-token loss mask (1 on trained tokens). */
export interface SftSequence {
  line: number;
  ids: number[];
  mask: (0 | 1)[];
}

/** What sampling stops on at the end of a reply: the closing tokens up to and including the first EOS. */
export function trainedClosing(closing: readonly number[], eosIds: readonly number[]): number {
  const i = closing.findIndex((t) => eosIds.includes(t));
  return i < 0 ? closing.length : i + 1;
}

/**
 * Renders one conversation. `trainOn`: "assistant" trains the assistant messages of weight 1;
 * "all" trains every token of the sequence (continued pretraining on chats).
 */
export async function renderExample(
  model: ModelBackend,
  ex: ChatExample,
  file: string,
  trainOn: "assistant" | "all" = "assistant",
): Promise<SftSequence> {
  const closing = await assistantClosing(model);
  const keep = trainedClosing(closing, model.eosTokenIds);
  // Messages after the last trained reply train nothing; the sequence ends with that reply.
  const last = ex.weights.lastIndexOf(1);
  const msgs = ex.messages.slice(0, last + 1);
  const replies = msgs.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
  const [full, ...parts] = await Promise.all([
    model.renderChat(msgs, { addGenerationPrompt: false }),
    ...replies.flatMap((i) => [
      model.renderChat(msgs.slice(0, i), { addGenerationPrompt: true }),
      model.renderChat(msgs.slice(0, i + 1), { addGenerationPrompt: false }),
    ]),
  ]);
  const mask: (0 | 1)[] = new Array<0 | 1>(full!.length).fill(trainOn === "all" ? 1 : 0);
  replies.forEach((i, j) => {
    const prompt = parts[2 * j]!;
    const withReply = parts[2 * j + 1]!;
    const where = { file, line: ex.line, key: `messages[${i}]` };
    if (!startsWith(withReply, prompt) || !startsWith(full!, withReply))
      throw inputError(
        where,
        "the model's chat template renders this conversation differently as it grows (it rewrites earlier turns), so its replies cannot be trained token-exactly",
      );
    const end = withReply.length;
    if (closing.length > 0 && !startsWith(withReply.slice(end - closing.length), closing))
      throw inputError(where, "the chat template does not end this reply with its usual closing tokens");
    if (trainOn === "assistant" && ex.weights[i] === 1)
      for (let t = prompt.length; t < end - closing.length + keep; t++) mask[t] = 1;
  });
  return { line: ex.line, ids: full!, mask };
}
