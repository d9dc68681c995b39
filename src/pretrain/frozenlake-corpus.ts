/**
 * FrozenLake documents of the erl-tiny corpus. Every document draws fresh letters for every role and
 * plays through the environment's own episodes (`FrozenLakeEpisode`, dynamics and renderer) and the
 * agent's `compact` prompt profile, so the texts are exactly what the model sees in training runs.
 *
 * Document kinds (each one chat, trained on its assistant turns):
 * - `rule-play`: a correct rulebook in the system prompt; replies are a short structured "think"
 *   (where you are, what lies on each side, where the goal is) then the teacher's move (first move
 *   of a shortest safe path).
 * - `free-play`: the rule-free initial prompt; the agent does not know the letters, so it guesses
 *   uniformly at random and says so. Nothing in these targets depends on the letters' roles, so they
 *   cannot teach the reference letters (nor any board statistic).
 * - `reflection`: the compact reflection prompt with a failed attempt → a short analysis of what the
 *   trace shows, then a rulebook in <prompt>…</prompt> that states only what the trace supports
 *   (plus the shown rulebook's claims that the trace does not contradict) and a within-task note.
 * - `lookup`, `translate`: binding drills (a rulebook, then "which role has this letter", one
 *   answer per letter; or a board translated cell by cell, letter then role).
 */
import { compactProfile, ensureFormatReminder, RULEBOOK_CLOSE, RULEBOOK_OPEN } from "../agent/prompts.ts";
import type { ChatMessage } from "../engine/api.ts";
import { DELTA, formatAction, type Direction } from "../envs/common.ts";
import { GridGameEpisode } from "../envs/grid-game.ts";
import {
  frozenLakeCell,
  FROZENLAKE,
  frozenLakePrompt,
  generateFrozenLakeMap,
  type FrozenLakeEpisode,
  type FrozenLakeSymbols,
  type FrozenLakeTask,
} from "../envs/frozenlake.ts";
import type { EnvPromptParts, TraceStep } from "../envs/types.ts";
import type { SokobanTask } from "../envs/sokoban.ts";
import type { Rng } from "../util/rng.ts";
import { drawFlSymbols, drawPermutedReference, type FlRole, type FlSymbols } from "./symbols.ts";

function drawSymbols(rng: Rng, cur: Curriculum): FlSymbols {
  return cur.pool === "permuted-reference" ? drawPermutedReference(rng) : drawFlSymbols(rng, cur.pool);
}

export type DocKind = "rule-play" | "free-play" | "reflection" | "lookup" | "translate" | "copy";

/** One corpus document: a chat plus how much its non-assistant turns weigh in the loss. */
export interface CorpusDoc {
  kind: DocKind;
  messages: ChatMessage[];
  /** Loss weight of user/tool turns (the next board: a small world-model signal); system turns weigh 0. */
  observationWeight: number;
  /** Facts a test can check the document against (letters, map, claims). */
  meta: DocMeta;
}

export interface DocMeta {
  symbols: FrozenLakeSymbols;
  task?: FrozenLakeTask;
  /** Reflection documents: the role claims in the rulebook and the trace evidence for each. */
  claims?: RoleClaim[];
}

export interface RoleClaim {
  role: Exclude<FlRole, "agentInHole" | "agentOnGoal">;
  letter: string;
  /** "moved": the letter that moved; "left-behind": shown where the agent stood; "fell": the agent
   *  stepped onto it and fell; "elimination": the only letter left for that role on the board;
   *  "shown": kept from the rulebook the reflector was shown. */
  basis: "moved" | "left-behind" | "fell" | "elimination" | "shown";
}

/** Curriculum knobs for one document. */
export interface Curriculum {
  /** Letters to draw roles from, or "permuted-reference" for a random permutation of A–D (and X/√). */
  pool: readonly string[] | "permuted-reference";
  /** Largest board side. */
  maxSize: number;
  /** Smallest board side (default 2). */
  minSize?: number;
  /** Share of documents drawn on boards of side 5–9 (the rest 2–4); resolved per document by the shard writer. */
  large?: number;
  /**
   * Translation drills ask with "Translate:" and the board instead of the bare board. The bare form
   * opens exactly like a game's first turn under a rulebook, which taught the model to answer a
   * game's first board with a translation.
   */
  labelledTranslate?: boolean;
  /**
   * How rulebooks name the letters: "prose" ("B is the goal", the environment's reference shape, or
   * that reference rulebook itself) or "table" (one line per letter: the letter as a board cell,
   * then its role word). Default "prose".
   */
  rulebook?: RulebookStyle;
  /**
   * Boards to draw from instead of generating fresh ones: the environments' train splits (the chat
   * curriculum for real models, `erl data curriculum`), so that no document can hold a test board.
   */
  boards?: CorpusBoards;
}

/** Train-split boards per game (see Curriculum.boards). */
export interface CorpusBoards {
  frozenlake: readonly FrozenLakeTask[];
  sokoban: readonly SokobanTask[];
}

export type RulebookStyle = "prose" | "table";

/** Role words used in thinks and drills (one short word each). */
export const ROLE_WORD: Readonly<Record<FlRole, string>> = {
  agent: "you",
  goal: "goal",
  hole: "hole",
  frozen: "ice",
  agentInHole: "lost",
  agentOnGoal: "won",
};

/** A letter written as a board cell (one token: ` X ⇥`). */
export const cell = (letter: string): string => ` ${letter} \t`;

// ---------------------------------------------------------------------------------------------
// Tasks and the teacher

/**
 * A task with side in [minSize, maxSize] (within 2–9): fresh from the reference generator (own seed),
 * or drawn from `boards` when given (a side is drawn first, then a board of that side).
 */
export function drawTask(
  rng: Rng,
  maxSize: number,
  minSize = 2,
  boards?: readonly FrozenLakeTask[],
): FrozenLakeTask {
  const hi = Math.max(2, Math.min(9, maxSize));
  const size = rng.intBetween(Math.min(hi, Math.max(2, minSize)), hi);
  if (boards) {
    const same = boards.filter((t) => t.size === size);
    const pool = same.length > 0 ? same : boards.filter((t) => t.size <= hi);
    if (pool.length === 0) throw new RangeError(`drawTask: no board of side ${minSize}-${hi} in the pool`);
    return rng.pick(pool);
  }
  const p = rng.uniform(0.6, 0.85);
  const { map, start, goal } = generateFrozenLakeMap(rng, size, p);
  return { id: `corpus-${size}`, env: "frozenlake", size, map, start, goal };
}

type Pos = readonly [number, number];

function inside(task: FrozenLakeTask, r: number, c: number): boolean {
  return r >= 0 && c >= 0 && r < task.size && c < task.size;
}

/** BFS distance to the goal over non-hole cells, per cell (Infinity where unreachable). */
export function goalDistances(task: FrozenLakeTask): number[][] {
  const dist = Array.from({ length: task.size }, () => Array<number>(task.size).fill(Infinity));
  dist[task.goal[0]]![task.goal[1]] = 0;
  const queue: Pos[] = [task.goal];
  for (let i = 0; i < queue.length; i++) {
    const [r, c] = queue[i]!;
    for (const d of Object.values(DELTA)) {
      const nr = r + d[0];
      const nc = c + d[1];
      if (!inside(task, nr, nc) || frozenLakeCell(task, nr, nc) === "H") continue;
      if (dist[nr]![nc] === Infinity) {
        dist[nr]![nc] = dist[r]![c]! + 1;
        queue.push([nr, nc]);
      }
    }
  }
  return dist;
}

/** The teacher prefers moves in this order among shortest-path moves: its choice is a function of the board. */
const TEACHER_ORDER: readonly Direction[] = ["down", "right", "up", "left"];

export function teacherMove(task: FrozenLakeTask, pos: Pos, dist: number[][]): Direction {
  const here = dist[pos[0]]![pos[1]]!;
  for (const m of TEACHER_ORDER) {
    const nr = pos[0] + DELTA[m][0];
    const nc = pos[1] + DELTA[m][1];
    if (inside(task, nr, nc) && dist[nr]![nc] === here - 1) return m;
  }
  // Unreachable goal (never for accepted maps): any move that does not fall.
  for (const m of TEACHER_ORDER) {
    const nr = pos[0] + DELTA[m][0];
    const nc = pos[1] + DELTA[m][1];
    if (inside(task, nr, nc) && frozenLakeCell(task, nr, nc) !== "H") return m;
  }
  return "down";
}

// ---------------------------------------------------------------------------------------------
// Rulebooks

/** What a rulebook says: letters for the roles it knows, plus optional within-task notes. */
export interface RulebookFacts {
  roles: Partial<Record<FlRole, string>>;
  notes: string[];
}

const ROLE_PHRASE: Readonly<Record<"agent" | "goal" | "hole" | "frozen", string>> = {
  agent: "is you (the agent)",
  goal: "is the goal",
  hole: "is a hole",
  frozen: "is safe frozen ice",
};

/**
 * A rulebook in the same shape as the environment's reference rulebook, with only the lines its
 * facts support. With all roles known and no notes it is the reference rulebook, word for word.
 */
export function rulebookText(facts: RulebookFacts, budget = 8, style: RulebookStyle = "prose"): string {
  if (style === "table") return tableRulebookText(facts, budget);
  const r = facts.roles;
  const lines = ["FrozenLake rules:"];
  const known = (["agent", "goal", "hole", "frozen"] as const)
    .filter((role) => r[role] !== undefined)
    .map((role) => `${r[role]} ${ROLE_PHRASE[role]}`);
  if (known.length > 0) lines.push(`- ${known.join("; ")}.`);
  const marks: string[] = [];
  if (r.agentOnGoal !== undefined) marks.push(`${r.agentOnGoal} means you are on the goal (you won)`);
  if (r.agentInHole !== undefined) marks.push(`${r.agentInHole} means you fell into a hole (you lost)`);
  if (marks.length > 0) lines.push(`- ${marks.join("; ")}.`);
  lines.push("- up/down/left/right move one cell; a move off the edge of the board does nothing.");
  lines.push(
    `- Reaching the goal gives reward 1 and ends the game; a hole ends it with reward 0; after ${budget} moves the game ends with reward 0.`,
  );
  lines.push("- Invalid replies do nothing but still use a move.");
  if (r.agent !== undefined && r.goal !== undefined) {
    const avoid = r.hole !== undefined ? `avoids every ${r.hole}` : "avoids every hole";
    lines.push(
      `- Strategy: find ${r.agent} and ${r.goal}, plan the shortest path that ${avoid}, then follow it.`,
    );
  }
  for (const note of facts.notes) lines.push(`- ${note}`);
  return lines.join("\n");
}

const TABLE_LINES: readonly [FlRole, string][] = [
  ["agent", "the agent you move"],
  ["goal", "reach it to win"],
  ["hole", "stepping on it loses"],
  ["frozen", "safe to walk on"],
  ["agentOnGoal", "you on the goal"],
  ["agentInHole", "you in a hole"],
];

/**
 * The "table" rulebook: one line per known letter, written exactly as a board cell (` B ⇥`) and
 * followed by its role word (`you`, `goal`, `hole`, `ice`, `won`, `lost`). A board cell is the same
 * token as its rulebook line's first token, so reading a cell's role is the plainest look-up a
 * transformer learns (find the same token earlier, copy what followed it).
 */
export function tableRulebookText(facts: RulebookFacts, budget = 8): string {
  const r = facts.roles;
  const lines = ["FrozenLake rules. Symbols:"];
  for (const [role, what] of TABLE_LINES) {
    const letter = r[role];
    if (letter !== undefined) lines.push(`${cell(letter)}${ROLE_WORD[role]} - ${what}`);
  }
  lines.push("- up/down/left/right move one cell; a move off the edge of the board does nothing.");
  lines.push(
    `- The game ends at the goal (reward 1), in a hole (reward 0) or after ${budget} moves (reward 0).`,
  );
  lines.push("- Strategy: take the shortest path to the goal that avoids every hole.");
  for (const note of facts.notes) lines.push(`- ${note}`);
  return lines.join("\n");
}

/** The system prompt that carries a rulebook: the rulebook, then the action-format reminder. */
export function rulebookSystemPrompt(rulebook: string, parts: EnvPromptParts): string {
  return ensureFormatReminder(rulebook, parts.formatReminder);
}

// ---------------------------------------------------------------------------------------------
// Thinks

function roleOfLetter(letter: string, roles: Partial<Record<FlRole, string>>): string {
  for (const [role, l] of Object.entries(roles) as [FlRole, string][])
    if (l === letter) return ROLE_WORD[role];
  return "?";
}

function letterAt(task: FrozenLakeTask, sym: FrozenLakeSymbols, r: number, c: number): string {
  if (r === task.goal[0] && c === task.goal[1]) return sym.goal;
  return frozenLakeCell(task, r, c) === "H" ? sym.hole : sym.frozen;
}

/**
 * The structured think before a move under a rulebook: the agent's letter, each neighbour (its letter
 * and the role the rulebook gives it, or "edge"), and the goal's direction. Each item is one short
 * hop: find a letter, look one cell away, look the letter up.
 */
export function ruleThink(
  task: FrozenLakeTask,
  pos: Pos,
  sym: FrozenLakeSymbols,
  roles: Partial<Record<FlRole, string>>,
): string {
  const parts: string[] = [];
  for (const m of ["up", "down", "left", "right"] as const) {
    const r = pos[0] + DELTA[m][0];
    const c = pos[1] + DELTA[m][1];
    if (!inside(task, r, c)) parts.push(`${m} edge`);
    else {
      const l = letterAt(task, sym, r, c);
      parts.push(`${m}${cell(l)}${roleOfLetter(l, roles)}`);
    }
  }
  const dirs: string[] = [];
  if (task.goal[0] > pos[0]) dirs.push("down");
  if (task.goal[0] < pos[0]) dirs.push("up");
  if (task.goal[1] > pos[1]) dirs.push("right");
  if (task.goal[1] < pos[1]) dirs.push("left");
  const goalLetter = roles.goal !== undefined ? cell(roles.goal) : " ? ";
  return `you${cell(sym.agent)}${parts.join(", ")}; goal${goalLetter}${dirs.join(" ")}`;
}

export const FREE_THINK = "no rulebook: guess";

export function reply(think: string, move: Direction): string {
  return `${think}\n${formatAction(move)}`;
}

// ---------------------------------------------------------------------------------------------
// Episodes

interface PlayedEpisode {
  messages: ChatMessage[];
  episode: FrozenLakeEpisode;
  /** Agent position before each step. */
  positions: Pos[];
}

/** Plays one episode through the environment with `choose`, writing the chat as the agent loop does. */
function play(
  task: FrozenLakeTask,
  sym: FrozenLakeSymbols,
  system: string,
  choose: (pos: Pos) => string,
): PlayedEpisode {
  const episode = new GridGameEpisode(FROZENLAKE, task, sym);
  const messages: ChatMessage[] = [
    { role: "system", content: system },
    { role: "user", content: episode.initialObservation },
  ];
  const positions: Pos[] = [];
  let pos: Pos = task.start;
  while (!episode.done) {
    positions.push(pos);
    const text = choose(pos);
    messages.push({ role: "assistant", content: text });
    const res = episode.step(text);
    const agent = res.info?.agent as [number, number] | undefined;
    if (agent) pos = [agent[0], agent[1]];
    if (!res.done) messages.push({ role: res.observationRole, content: res.observation });
  }
  return { messages, episode, positions };
}

export function randomMove(rng: Rng): Direction {
  return rng.pick(["up", "down", "left", "right"] as const);
}

/** Full, correct facts for an episode's letters (optionally dropping the two end-of-game marks). */
function allFacts(sym: FrozenLakeSymbols, withMarks: boolean): RulebookFacts {
  const roles: Partial<Record<FlRole, string>> = {
    agent: sym.agent,
    goal: sym.goal,
    hole: sym.hole,
    frozen: sym.frozen,
  };
  if (withMarks) {
    roles.agentOnGoal = sym.agentOnGoal;
    roles.agentInHole = sym.agentInHole;
  }
  return { roles, notes: [] };
}

export function rulePlayDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const task = drawTask(rng, cur.maxSize, cur.minSize, cur.boards?.frozenlake);
  const parts = frozenLakePrompt(sym);
  // Half the time the environment's reference rulebook (what diagnostics use), otherwise the shape a
  // reflection writes (sometimes without the end-of-game marks, which a failed trace never shows).
  const facts = allFacts(sym, rng.next() < 0.5);
  const rulebook =
    cur.rulebook === "table"
      ? tableRulebookText(facts)
      : rng.next() < 0.5
        ? (parts.referenceRulebook ?? rulebookText(facts))
        : rulebookText(facts);
  const dist = goalDistances(task);
  const played = play(task, sym, rulebookSystemPrompt(rulebook, parts), (pos) =>
    reply(ruleThink(task, pos, sym, facts.roles), teacherMove(task, pos, dist)),
  );
  return {
    kind: "rule-play",
    messages: played.messages,
    observationWeight: 0.1,
    meta: { symbols: sym, task },
  };
}

export function freePlayDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const task = drawTask(rng, cur.maxSize, cur.minSize, cur.boards?.frozenlake);
  const parts = frozenLakePrompt(sym);
  const played = play(task, sym, compactProfile.initialSystemPrompt(parts), () =>
    reply(FREE_THINK, randomMove(rng)),
  );
  return {
    kind: "free-play",
    messages: played.messages,
    observationWeight: 0.1,
    meta: { symbols: sym, task },
  };
}

// ---------------------------------------------------------------------------------------------
// Reflections

/** Letters on the initial board with their counts. */
function boardCounts(task: FrozenLakeTask, sym: FrozenLakeSymbols): Map<string, number> {
  const counts = new Map<string, number>();
  for (let r = 0; r < task.size; r++)
    for (let c = 0; c < task.size; c++) {
      const l = r === task.start[0] && c === task.start[1] ? sym.agent : letterAt(task, sym, r, c);
      counts.set(l, (counts.get(l) ?? 0) + 1);
    }
  return counts;
}

/**
 * What a failed attempt's trace shows about the letters, as claims with their basis. Uses only the
 * trace: positions before each step, the moves and their effects, and the initial board's letters.
 */
export function traceClaims(
  task: FrozenLakeTask,
  sym: FrozenLakeSymbols,
  trace: readonly TraceStep[],
  positions: readonly Pos[],
): RoleClaim[] {
  const claims: RoleClaim[] = [];
  const moved = trace.findIndex((s) => s.result.effective);
  if (moved >= 0) {
    claims.push({ role: "agent", letter: sym.agent, basis: "moved" });
    // The start cell is frozen in every map, and the board shows it once the agent has left.
    claims.push({ role: "frozen", letter: sym.frozen, basis: "left-behind" });
  }
  const last = trace[trace.length - 1];
  const fell = last?.result.stopReason === "failure";
  if (fell) claims.push({ role: "hole", letter: sym.hole, basis: "fell" });
  if (moved < 0) return claims;
  // Elimination: letters on the first board other than the agent's and the ice's.
  const others = [...boardCounts(task, sym).entries()].filter(([l]) => l !== sym.agent && l !== sym.frozen);
  if (fell) {
    const rest = others.filter(([l]) => l !== sym.hole);
    if (rest.length === 1) claims.push({ role: "goal", letter: rest[0]![0], basis: "elimination" });
  } else if (others.length === 1) {
    // No holes on this board: the only other letter is the goal.
    claims.push({ role: "goal", letter: others[0]![0], basis: "elimination" });
  } else if (others.length === 2) {
    // The goal appears exactly once; holes are told apart only when there are several of them.
    const single = others.filter(([, n]) => n === 1);
    if (single.length === 1) {
      claims.push({ role: "goal", letter: single[0]![0], basis: "elimination" });
      const hole = others.find(([, n]) => n > 1);
      if (hole) claims.push({ role: "hole", letter: hole[0], basis: "elimination" });
    }
  }
  void positions;
  return claims;
}

const BASIS_WORDS: Readonly<Record<RoleClaim["basis"], string>> = {
  moved: "it moved",
  "left-behind": "it was under you",
  fell: "you fell into it",
  elimination: "the letter left",
  shown: "kept from the prompt",
};

function analysisText(claims: readonly RoleClaim[], note: string | null): string {
  const lines = claims.map((c) => `${ROLE_WORD[c.role]}${cell(c.letter)}(${BASIS_WORDS[c.basis]})`);
  if (note) lines.push(`note: ${note}`);
  if (lines.length === 0) lines.push("nothing learned");
  return lines.join("\n");
}

export function reflectionDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const parts = frozenLakePrompt(sym);
  // A failed first attempt: rule-free random play, or (less often) a careless player under a correct
  // rulebook. Retry until the attempt fails (reflections only follow failures).
  const underRules = rng.next() < 0.3;
  for (;;) {
    const task = drawTask(rng, cur.maxSize, cur.minSize, cur.boards?.frozenlake);
    const dist = goalDistances(task);
    const facts = allFacts(sym, rng.next() < 0.5);
    const shown = underRules
      ? rulebookSystemPrompt(rulebookText(facts, 8, cur.rulebook), parts)
      : compactProfile.initialSystemPrompt(parts);
    const played = play(task, sym, shown, (pos) =>
      underRules
        ? reply(
            ruleThink(task, pos, sym, facts.roles),
            rng.next() < 0.4 ? randomMove(rng) : teacherMove(task, pos, dist),
          )
        : reply(FREE_THINK, randomMove(rng)),
    );
    if (played.episode.success) continue;
    const trace = played.episode.trace;
    const claims = traceClaims(task, sym, trace, played.positions);
    if (underRules) {
      // The shown rulebook is correct: keep its claims the trace did not already establish.
      for (const role of ["agent", "goal", "hole", "frozen"] as const)
        if (!claims.some((c) => c.role === role)) claims.push({ role, letter: sym[role], basis: "shown" });
    }
    const last = trace[trace.length - 1];
    let note: string | null = null;
    if (last?.result.stopReason === "failure") {
      const dir = last.result.info?.action as string | undefined;
      note = `On this board, moving ${dir} at step ${trace.length} fell into a hole; take another way there.`;
    }
    const roles: Partial<Record<FlRole, string>> = {};
    for (const c of claims) roles[c.role] = c.letter;
    const rulebook = rulebookText({ roles, notes: note ? [note] : [] }, 8, cur.rulebook);
    const delta = rulebookSystemPrompt(rulebook, parts);
    const messages = compactProfile.reflectionMessages(parts, underRules ? shown : null, {
      trace,
      reward: played.episode.totalReward,
      feedback: played.episode.feedback(),
    });
    messages.push({
      role: "assistant",
      content: `${analysisText(claims, note)}\n${RULEBOOK_OPEN}\n${delta}\n${RULEBOOK_CLOSE}`,
    });
    return { kind: "reflection", messages, observationWeight: 0, meta: { symbols: sym, task, claims } };
  }
}

/**
 * Play under a rulebook a reflection would write for this episode (partial roles plus a note), so
 * second attempts see the rulebooks they will really get.
 */
export function secondPlayDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const task = drawTask(rng, cur.maxSize, cur.minSize, cur.boards?.frozenlake);
  const parts = frozenLakePrompt(sym);
  const roles: Partial<Record<FlRole, string>> = { agent: sym.agent, goal: sym.goal, frozen: sym.frozen };
  if (rng.next() < 0.8) roles.hole = sym.hole;
  const notes: string[] = [];
  if (rng.next() < 0.5)
    notes.push(
      `On this board, moving ${randomMove(rng)} at step ${rng.intBetween(1, 6)} fell into a hole; take another way there.`,
    );
  const facts = { roles, notes };
  const dist = goalDistances(task);
  const played = play(task, sym, rulebookSystemPrompt(rulebookText(facts, 8, cur.rulebook), parts), (pos) =>
    reply(ruleThink(task, pos, sym, roles), teacherMove(task, pos, dist)),
  );
  return {
    kind: "rule-play",
    messages: played.messages,
    observationWeight: 0.1,
    meta: { symbols: sym, task },
  };
}

// ---------------------------------------------------------------------------------------------
// Binding drills

function drillRulebook(
  rng: Rng,
  sym: FrozenLakeSymbols,
  style: RulebookStyle | undefined,
): { system: string; roles: Partial<Record<FlRole, string>> } {
  const parts = frozenLakePrompt(sym);
  const facts = allFacts(sym, rng.next() < 0.7);
  const text =
    style === "table"
      ? tableRulebookText(facts)
      : rng.next() < 0.5
        ? (parts.referenceRulebook ?? rulebookText(facts))
        : rulebookText(facts);
  const roles = text === parts.referenceRulebook ? allFacts(sym, true).roles : facts.roles;
  return { system: rulebookSystemPrompt(text, parts), roles };
}

export function lookupDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const { system, roles } = drillRulebook(rng, sym, cur.rulebook);
  // Ask about the rulebook's letters and a few letters it does not mention ("?").
  const extra = cur.pool === "permuted-reference" ? [] : rng.shuffle(cur.pool).slice(0, 2);
  const asked = rng.shuffle([...Object.values(roles), ...extra]);
  const uniq = [...new Set(asked)];
  return {
    kind: "lookup",
    messages: [
      { role: "system", content: system },
      { role: "user", content: `Roles of:${uniq.map(cell).join("")}` },
      { role: "assistant", content: uniq.map((l) => `${cell(l)}${roleOfLetter(l, roles)}`).join("") },
    ],
    observationWeight: 0,
    meta: { symbols: sym },
  };
}

export function translateDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const task = drawTask(rng, cur.maxSize, cur.minSize, cur.boards?.frozenlake);
  const { system, roles } = drillRulebook(rng, sym, cur.rulebook);
  const episode = new GridGameEpisode(FROZENLAKE, task, sym);
  const rows: string[] = [];
  for (let r = 0; r < task.size; r++) {
    let line = "";
    for (let c = 0; c < task.size; c++) {
      const l = r === task.start[0] && c === task.start[1] ? sym.agent : letterAt(task, sym, r, c);
      line += `${cell(l)}${roleOfLetter(l, roles)}`;
    }
    rows.push(line);
  }
  return {
    kind: "translate",
    messages: [
      { role: "system", content: system },
      {
        role: "user",
        content: cur.labelledTranslate ? `Translate:\n${episode.board()}` : episode.initialObservation,
      },
      { role: "assistant", content: rows.join("\n") },
    ],
    observationWeight: 0,
    meta: { symbols: sym, task },
  };
}

/**
 * Copy drill: a random row of board cells to repeat verbatim. Repeating what came earlier (find the
 * token after the one just written) is the mechanism every look-up above is built from; this drill
 * gives it dense, role-free signal.
 */
export function copyDoc(rng: Rng, cur: Curriculum): CorpusDoc {
  const sym = drawSymbols(rng, cur);
  const letters = Object.values(sym);
  const n = rng.intBetween(4, 24);
  const cells = Array.from({ length: n }, () => cell(rng.pick(letters))).join("");
  return {
    kind: "copy",
    messages: [
      { role: "user", content: `Copy:${cells}` },
      { role: "assistant", content: cells },
    ],
    observationWeight: 0,
    meta: { symbols: sym },
  };
}
