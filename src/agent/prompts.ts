/**
 * Prompt profiles: every piece of text the agent adds around what the environment provides.
 *
 * - `paper`: the structure of the ERL paper (spec §1, §5) in our own words, for instruct models
 *   with a long context.
 * - `reference`: `paper` plus a structured reasoning scaffold before each move (state, value, the two
 *   best candidates), as the reference's solver prompt has, in our own words.
 * - `compact`: the same structure in as few tokens as possible, for a small model with a short
 *   context. The erl-tiny model is pretrained on these exact texts: change them only together
 *   with its recipe.
 *
 * The initial system prompt is the environment's task description plus its action-format reminder;
 * it never explains the board symbols. A reflection asks the model for a complete replacement system
 * prompt (a rulebook) inside <prompt>…</prompt>, shown the memory's rulebook (or the initial prompt
 * when memory is empty), the attempt's trace, its reward and the feedback line. docs/algorithms.md lists the texts.
 */
import type { ChatMessage } from "../engine/api.ts";
import type { EnvPromptParts, TraceStep } from "../envs/types.ts";
import { UserError } from "../util/errors.ts";

export type PromptProfileName = "paper" | "compact" | "reference";
export const PROMPT_PROFILES: readonly PromptProfileName[] = ["paper", "compact", "reference"];

/** What a reflection (or the w/o-reflection second attempt) is shown about a finished attempt. */
export interface AttemptState {
  trace: readonly TraceStep[];
  reward: number;
  feedback: string;
}

export interface PromptProfile {
  readonly name: PromptProfileName;
  /** The rule-free system prompt of first attempts and evaluation. */
  initialSystemPrompt(parts: EnvPromptParts): string;
  /** The trace of an attempt as text: each observation before each action, the action, its effect. */
  traceText(trace: readonly TraceStep[]): string;
  /** The attempt block: trace, reward and feedback line. */
  attemptText(state: AttemptState): string;
  /**
   * The chat that asks for Δ, shown the memory rulebook (`null` when memory is empty or unused: the
   * initial prompt is shown instead) and the attempt, which was made under the initial prompt.
   */
  reflectionMessages(parts: EnvPromptParts, memory: string | null, state: AttemptState): ChatMessage[];
  /** Second-attempt system prompt of the w/o-reflection ablation. */
  noReflectionSystemPrompt(parts: EnvPromptParts, state: AttemptState): string;
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

export const RULEBOOK_OPEN = "<prompt>";
export const RULEBOOK_CLOSE = "</prompt>";

/**
 * The rulebook in a reflection: the content of the last complete <prompt>…</prompt> with non-blank
 * content. When there is none, the reflector's output is unusable and the prompt it was shown is kept.
 */
export function extractRulebook(reflectionText: string, shownPrompt: string): string {
  return findRulebook(reflectionText) ?? shownPrompt;
}

/** The last non-blank <prompt>…</prompt> body of a reflection, or null when there is none. */
export function findRulebook(reflectionText: string): string | null {
  const matches = [...reflectionText.matchAll(/<prompt>([\s\S]*?)<\/prompt>/g)];
  for (let i = matches.length - 1; i >= 0; i--) {
    const body = (matches[i]![1] ?? "").trim();
    if (body !== "") return body;
  }
  return null;
}

/** Makes the action-format reminder the last thing in a system prompt (appended if it is not already). */
export function ensureFormatReminder(systemPrompt: string, formatReminder: string): string {
  const prompt = systemPrompt.trim();
  const reminder = formatReminder.trim();
  if (reminder === "" || prompt.endsWith(reminder)) return prompt;
  return prompt === "" ? reminder : `${prompt}\n\n${reminder}`;
}

/** Δ as a system prompt: extracted from the reflection, format reminder ensured. */
export function rulebookFromReflection(
  reflectionText: string,
  shownPrompt: string,
  parts: EnvPromptParts,
): string {
  return ensureFormatReminder(extractRulebook(reflectionText, shownPrompt), parts.formatReminder);
}

function formatReward(r: number): string {
  return Number.isInteger(r) ? String(r) : r.toFixed(3).replace(/0+$/, "");
}

function effectWord(step: TraceStep): string {
  if (!step.result.valid) return "invalid";
  return step.result.effective ? "changed the state" : "no effect";
}

// ---------------------------------------------------------------------------------------------
// paper

const PAPER_REFLECTION_SYSTEM = [
  "You improve the system prompt that an agent follows in an interactive task.",
  "The agent has just made an attempt and did not succeed. Study the attempt: which symbols it saw,",
  "which actions it took, what each action did and how the episode ended.",
  "",
  "Then write a complete replacement system prompt for the agent's next attempt at this kind of task. It",
  "replaces the agent's prompt entirely, so it must stand on its own. Write it as a rulebook that covers:",
  "1. Symbols: what each symbol or element of the observation stands for.",
  "2. Mechanics: how each action changes the state, including actions that do nothing.",
  "3. Objective: what ends an episode and what earns reward.",
  "4. Strategy: a concrete procedure for choosing the next action.",
  "Keep what the evidence supports from the prompt or rulebook you are shown, correct what the attempt",
  "contradicts, and mark guesses as guesses. End the rulebook with the exact action-format instructions.",
  "",
  `Put the whole new system prompt between ${RULEBOOK_OPEN} and ${RULEBOOK_CLOSE}.`,
].join("\n");

/**
 * The reasoning scaffold of the `reference` profile (the reference's solver prompt asks for this
 * structure; the words are ours): the state, its value, and the two best candidate moves with their
 * outcome and reason, before the move itself.
 */
export const REASONING_SCAFFOLD = [
  "Before each move, reason in this order:",
  "1. State: where each piece of the board is now, as far as you can tell.",
  "2. Value: how close this state is to winning and what threatens it.",
  "3. Candidates: the two most promising moves; for each, the state it leads to and why it is good or bad.",
  "Then pick the better candidate.",
].join("\n");

/** A profile with the paper's texts; `reasoning` adds the scaffold (and the environment's hints). */
function paperStyleProfile(name: PromptProfileName, reasoning: boolean): PromptProfile {
  const guidance = (parts: EnvPromptParts): string[] =>
    reasoning ? [REASONING_SCAFFOLD, ...(parts.reasoningHints ? [parts.reasoningHints.trim()] : [])] : [];
  const profile: PromptProfile = {
    name,

    initialSystemPrompt(parts) {
      return [parts.taskDescription.trim(), ...guidance(parts), parts.formatReminder.trim()].join("\n\n");
    },

    traceText(trace) {
      if (trace.length === 0) return "(no actions were taken)";
      return trace
        .map((step, i) =>
          [
            `Step ${i + 1}`,
            "Observation before the action:",
            step.observation,
            `Action: ${step.action.trim()}`,
            `Effect: ${effectWord(step)} (${step.result.comment})`,
          ].join("\n"),
        )
        .join("\n\n");
    },

    attemptText(state) {
      return [
        "## The attempt",
        profile.traceText(state.trace),
        "",
        "## Result",
        `Reward: ${formatReward(state.reward)}`,
        `Feedback: ${state.feedback}`,
      ].join("\n");
    },

    reflectionMessages(parts, memory, state) {
      // First attempts always run under the initial prompt; a memory rulebook is only a starting point.
      const shown =
        memory === null
          ? ["## The system prompt the attempt was made under", profile.initialSystemPrompt(parts)]
          : [
              "## Rulebook from memory",
              "(It led to a success on an earlier task. The attempt below did not see it: it was made under",
              "the initial system prompt, which holds only the task description and the action format.)",
              memory.trim(),
            ];
      const user = [
        ...shown,
        "",
        profile.attemptText(state),
        "",
        `Write the improved system prompt now, inside ${RULEBOOK_OPEN}…${RULEBOOK_CLOSE}.`,
      ].join("\n");
      return [
        { role: "system", content: PAPER_REFLECTION_SYSTEM },
        { role: "user", content: user },
      ];
    },

    noReflectionSystemPrompt(parts, state) {
      return [
        parts.taskDescription.trim(),
        "",
        "You have tried this task before and did not succeed. Your past attempt is shown below; use what it",
        "reveals about the symbols and the rules to do better this time.",
        "",
        profile.attemptText(state),
        "",
        ...guidance(parts).flatMap((g) => [g, ""]),
        parts.formatReminder.trim(),
      ].join("\n");
    },
  };
  return profile;
}

export const paperProfile: PromptProfile = paperStyleProfile("paper", false);

/**
 * `reference`: the paper profile plus the reference's structured reasoning before each move (state,
 * its value, the two best candidates with outcome and reason) and the environment's reasoning hints
 * (Sokoban: push only when the cell beyond the box is free). For instruct models with a long context.
 */
export const referenceProfile: PromptProfile = paperStyleProfile("reference", true);

// ---------------------------------------------------------------------------------------------
// compact — keep these texts stable: erl-tiny is pretrained on them.

const COMPACT_REFLECTION_SYSTEM =
  "Rewrite the agent's system prompt as a rulebook: symbols, mechanics, goal, strategy. " +
  `Reply with the new prompt inside ${RULEBOOK_OPEN}${RULEBOOK_CLOSE}, ending with the action format.`;

export const compactProfile: PromptProfile = {
  name: "compact",

  initialSystemPrompt(parts) {
    return `${parts.taskDescription.trim()}\n${parts.formatReminder.trim()}`;
  },

  traceText(trace) {
    if (trace.length === 0) return "(none)";
    return trace
      .map(
        (step, i) =>
          `#${i + 1}\n${step.observation}\n> ${step.action.trim()}\n= ${effectWord(step)}: ${step.result.comment}`,
      )
      .join("\n");
  },

  attemptText(state) {
    return `Trace:\n${compactProfile.traceText(state.trace)}\nReward: ${formatReward(state.reward)}\n${state.feedback}`;
  },

  reflectionMessages(parts, memory, state) {
    const shown = memory ?? compactProfile.initialSystemPrompt(parts);
    return [
      { role: "system", content: COMPACT_REFLECTION_SYSTEM },
      { role: "user", content: `Prompt:\n${shown.trim()}\n${compactProfile.attemptText(state)}` },
    ];
  },

  noReflectionSystemPrompt(parts, state) {
    return [
      parts.taskDescription.trim(),
      "Past attempt (failed); learn from it:",
      compactProfile.attemptText(state),
      parts.formatReminder.trim(),
    ].join("\n");
  },
};

const PROFILES: Record<PromptProfileName, PromptProfile> = {
  paper: paperProfile,
  compact: compactProfile,
  reference: referenceProfile,
};

export function getPromptProfile(name: PromptProfileName): PromptProfile {
  const profile = PROFILES[name];
  if (!profile)
    throw new UserError(`unknown prompt profile "${String(name)}" (expected ${PROMPT_PROFILES.join(", ")})`);
  return profile;
}
