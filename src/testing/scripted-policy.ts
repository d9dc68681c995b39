/**
 * A scripted FrozenLake policy for tests and engine-free smoke runs. It plays well only when its
 * system prompt contains a key phrase (the "rulebook" it needs); otherwise it replies with an
 * invalid move every turn and runs out of steps — unless the test marks that episode as lucky.
 * Asked to reflect, it writes a rulebook containing the key (a good reflection) or a reply with no
 * <prompt> tag (a bad one), as the test decides. Everything it does is deterministic.
 */
import type { ChatMessage } from "../engine/api.ts";
import { DELTA, DIRECTIONS, formatAction, type Direction } from "../envs/common.ts";
import { RULEBOOK_CLOSE, RULEBOOK_OPEN } from "../agent/prompts.ts";
import type { Script, ScriptInput } from "./scripted.ts";

export const INVALID_MOVE_REPLY = "I am not sure.\n```\njump\n```";

export interface FrozenLakePolicyOptions {
  /** The phrase whose presence in the system prompt lets the policy play well. */
  key: string;
  /**
   * Episodes that play well without the key: for the n-th sample call (0-based), the prompt
   * indices whose first reply is a good move. Later turns keep to the first reply's quality.
   */
  lucky?: (callIndex: number, promptIndex: number) => boolean;
  /** For the k-th reflection asked for (0-based, in call order), whether it is good. Default: all good. */
  goodReflection?: (reflectionIndex: number) => boolean;
}

/** Reads a FrozenLake board (paper letters) from an observation: the lines made of tab-ended cells. */
export function parseBoard(observation: string): string[][] {
  return observation
    .split("\n")
    .filter((line) => line.includes("\t"))
    .map((line) =>
      line
        .split("\t")
        .map((c) => c.trim())
        .filter((c) => c !== ""),
    );
}

/** The first move of a shortest path from A to B avoiding C, or null. */
export function nextMove(board: string[][]): Direction | null {
  const n = board.length;
  let start: [number, number] | null = null;
  for (let r = 0; r < n; r++)
    for (let c = 0; c < (board[r]?.length ?? 0); c++) if (board[r]![c] === "A") start = [r, c];
  if (!start) return null;
  const first = new Map<number, Direction>();
  const seen = new Set([start[0] * 100 + start[1]]);
  const queue: [number, number][] = [start];
  for (let head = 0; head < queue.length; head++) {
    const [r, c] = queue[head]!;
    for (const dir of DIRECTIONS) {
      const nr = r + DELTA[dir][0];
      const nc = c + DELTA[dir][1];
      const cell = board[nr]?.[nc];
      const k = nr * 100 + nc;
      if (cell === undefined || cell === "C" || seen.has(k)) continue;
      seen.add(k);
      const via = head === 0 ? dir : first.get(r * 100 + c)!;
      if (cell === "B") return via;
      first.set(k, via);
      queue.push([nr, nc]);
    }
  }
  return null;
}

function isReflection(messages: readonly ChatMessage[]): boolean {
  return (messages[0]?.content ?? "").includes(RULEBOOK_OPEN);
}

export class FrozenLakePolicy {
  /** Reflections asked for so far. */
  reflections = 0;
  /** Every rulebook written, in order. */
  readonly rulebooks: string[] = [];

  constructor(private readonly opts: FrozenLakePolicyOptions) {}

  /** The script to hand to a `ScriptedBackend`. */
  get script(): Script {
    return (input: ScriptInput) => this.reply(input.messages, input.callIndex, input.promptIndex);
  }

  reply(messages: readonly ChatMessage[], callIndex: number, promptIndex: number): string {
    if (isReflection(messages)) {
      const k = this.reflections++;
      if (this.opts.goodReflection && !this.opts.goodReflection(k)) return "I cannot tell what went wrong.";
      const rulebook = `${this.opts.key} #${k}: A is you, B is the goal, C is a hole, D is ice. Walk to B avoiding C.`;
      this.rulebooks.push(rulebook);
      return `Here is the new prompt.\n${RULEBOOK_OPEN}\n${rulebook}\n${RULEBOOK_CLOSE}`;
    }
    const system = messages[0]?.content ?? "";
    const replies = messages.filter((m) => m.role === "assistant");
    const playsWell =
      system.includes(this.opts.key) ||
      (replies.length === 0
        ? (this.opts.lucky?.(callIndex, promptIndex) ?? false)
        : replies[0]!.content !== INVALID_MOVE_REPLY);
    if (!playsWell) return INVALID_MOVE_REPLY;
    const last = [...messages].reverse().find((m) => m.role === "user");
    const move = nextMove(parseBoard(last?.content ?? ""));
    return move ? `Going ${move}.\n${formatAction(move)}` : INVALID_MOVE_REPLY;
  }
}
