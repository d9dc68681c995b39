/**
 * Sokoban documents of the erl-tiny corpus. Like the FrozenLake documents, every document draws fresh
 * letters for every role — a uniformly random assignment of the seven reference letters (A a B b C D
 * E) to the seven roles — and plays through the environment's own `SokobanEpisode` and the `compact`
 * prompt profile, so the texts are what the model sees in training runs.
 *
 * Document kinds:
 * - `sokoban-play`: a correct "table" rulebook in the system prompt; each reply is a think that
 *   locates the player, the box and the goal (row and column, counted from 0 at the top left) and
 *   names the direction the box must go next, then the teacher's move (the first move of a shortest
 *   solution, from the BFS solver).
 * - `sokoban-free`: the rule-free initial prompt; uniformly random moves after `no rulebook: guess`.
 * - `sokoban-reflection`: a failed attempt → what its trace shows about the letters, then a table
 *   rulebook with only those roles.
 * - `sokoban-lookup`: a rulebook, then the role of each letter (the FrozenLake look-up drill's shape).
 *
 * Layouts come from the reference generator's rules (`generateSokobanTasks`) with the shipped test
 * layouts excluded, so the corpus never shows a test board.
 */
import { compactProfile, RULEBOOK_CLOSE, RULEBOOK_OPEN } from "../agent/prompts.ts";
import type { ChatMessage } from "../engine/api.ts";
import type { Direction } from "../envs/common.ts";
import { GridGameEpisode } from "../envs/grid-game.ts";
import {
  generateSokobanTasks,
  isWall,
  sokobanInitialState,
  sokobanLayoutName,
  sokobanMove,
  sokobanPrompt,
  solveSokoban,
  SOKOBAN,
  SokobanFamily,
  SOKOBAN_SYMBOLS,
  type Pos,
  type SokobanEpisode,
  type SokobanState,
  type SokobanSymbols,
  type SokobanTask,
} from "../envs/sokoban.ts";
import type { Rng } from "../util/rng.ts";
import { cell, FREE_THINK, randomMove, reply, rulebookSystemPrompt } from "./frozenlake-corpus.ts";

export const SK_ROLES = ["player", "playerOnGoal", "box", "boxOnGoal", "goal", "wall", "floor"] as const;
export type SkRole = (typeof SK_ROLES)[number];

/** A uniformly random assignment of the seven reference letters to the seven roles. */
export function drawSokobanSymbols(rng: Rng): SokobanSymbols {
  const letters = rng.shuffle(Object.values(SOKOBAN_SYMBOLS));
  const out = {} as Record<SkRole, string>;
  SK_ROLES.forEach((role, i) => {
    out[role] = letters[i] as string;
  });
  return out;
}

/** Role words of the table rulebook, the look-up drill and the think. */
export const SK_ROLE_WORD: Readonly<Record<SkRole, string>> = {
  player: "you",
  playerOnGoal: "you on goal",
  box: "box",
  boxOnGoal: "box on goal",
  goal: "goal",
  wall: "wall",
  floor: "floor",
};

const SK_ROLE_WHAT: Readonly<Record<SkRole, string>> = {
  player: "the player you move",
  playerOnGoal: "you standing on the goal",
  box: "push it onto the goal",
  boxOnGoal: "the box on the goal (solved)",
  goal: "where the box must go",
  wall: "blocks you and the box",
  floor: "empty, walk on it",
};

/**
 * The Sokoban "table" rulebook: one line per known letter, written as a board cell then its role
 * word, then the rules. With every role known it is the correct rulebook for the episode's letters.
 */
export function sokobanTableRulebook(roles: Partial<Record<SkRole, string>>, budget = 8): string {
  const lines = ["Sokoban rules. Symbols:"];
  for (const role of SK_ROLES) {
    const letter = roles[role];
    if (letter !== undefined) lines.push(`${cell(letter)}${SK_ROLE_WORD[role]} - ${SK_ROLE_WHAT[role]}`);
  }
  lines.push("- up/down/left/right move you one cell; walking into the box pushes it one cell the same way.");
  lines.push("- You cannot pull the box. Moving into a wall, or pushing the box into a wall, does nothing.");
  lines.push(`- The game ends when the box is on the goal (reward 1) or after ${budget} moves (reward 0).`);
  lines.push("- Strategy: stand on the far side of the box from the goal, then push it there.");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Layouts

let testNames: Set<string> | null = null;

/** The shipped test layouts' names (never drawn for the corpus). */
function testLayoutNames(): Set<string> {
  testNames ??= new SokobanFamily().testLayoutNames();
  return testNames;
}

/** Sides drawn for corpus layouts: the test split's 7 and 8 twice as often as 6. */
const SIDES = [6, 7, 7, 8, 8] as const;

/**
 * One fresh layout (reference rules: solvable in ≤ 8 moves), never a test layout; or one drawn from
 * `boards` (a train split) when given.
 */
export function drawSokobanTask(rng: Rng, boards?: readonly SokobanTask[]): SokobanTask {
  if (boards) return rng.pick(boards);
  const size = rng.pick(SIDES);
  const [task] = generateSokobanTasks(rng, 1, { sizes: [size], exclude: testLayoutNames() });
  return task!;
}

export function isTestLayout(task: SokobanTask): boolean {
  return testLayoutNames().has(sokobanLayoutName(task.size, task.goal, task.box, task.player));
}

// ---------------------------------------------------------------------------------------------
// The teacher and the think

/** The first move of a shortest solution from `state`, and the direction of the first push in it. */
export function sokobanTeacher(task: SokobanTask, state: SokobanState): { move: Direction; push: Direction } {
  const path = solveSokoban({ ...task, player: state.player, box: state.box });
  if (path === null || path.length === 0) return { move: "down", push: "down" };
  let s = state;
  let push: Direction = path[0]!;
  for (const d of path) {
    const next = sokobanMove(task, s, d);
    if (next.pushed) {
      push = d;
      break;
    }
    s = next.state;
  }
  return { move: path[0]!, push };
}

const at = (p: Pos): string => ` ${p[0]} ${p[1]}`;

/**
 * The think before a move under a rulebook: the player's, the box's and the goal's letter with row
 * and column (0 at the top left), then the direction the box must go next. When the player stands on
 * the goal, "you" names the player-on-goal letter and the goal is at the player's cell.
 */
export function sokobanThink(
  task: SokobanTask,
  state: SokobanState,
  sym: SokobanSymbols,
  push: Direction,
): string {
  const onGoal = state.player[0] === task.goal[0] && state.player[1] === task.goal[1];
  const you = onGoal ? sym.playerOnGoal : sym.player;
  const goal = onGoal ? sym.playerOnGoal : sym.goal;
  return `you${cell(you)}${at(state.player)}, box${cell(sym.box)}${at(state.box)}, goal${cell(goal)}${at(task.goal)}; push ${push}`;
}

// ---------------------------------------------------------------------------------------------
// Documents

export type SokobanDocKind = "sokoban-play" | "sokoban-free" | "sokoban-reflection" | "sokoban-lookup";

export interface SokobanClaim {
  role: SkRole;
  letter: string;
  /** "moved": the letter that moved when you did; "left-behind": shown where you stood; "border":
   *  the letter all around the board's edge; "pushed": the letter that moved ahead of you;
   *  "under-you": shown where you stepped before you stood there; "stood-on-goal": your letter while
   *  there; "elimination": the only letter left; "shown": kept from the rulebook shown. */
  basis:
    "moved" | "left-behind" | "border" | "pushed" | "under-you" | "stood-on-goal" | "elimination" | "shown";
}

export interface SokobanDoc {
  kind: SokobanDocKind;
  messages: ChatMessage[];
  observationWeight: number;
  meta: { symbols: SokobanSymbols; task?: SokobanTask; claims?: SokobanClaim[] };
}

interface Played {
  messages: ChatMessage[];
  episode: SokobanEpisode;
  /** State before each step, and after the last. */
  states: SokobanState[];
}

function play(
  task: SokobanTask,
  sym: SokobanSymbols,
  system: string,
  choose: (s: SokobanState) => string,
): Played {
  const episode = new GridGameEpisode(SOKOBAN, task, sym);
  const messages: ChatMessage[] = [
    { role: "system", content: system },
    { role: "user", content: episode.initialObservation },
  ];
  let state = sokobanInitialState(task);
  const states: SokobanState[] = [state];
  while (!episode.done) {
    const text = choose(state);
    messages.push({ role: "assistant", content: text });
    const res = episode.step(text);
    const info = res.info as { player: Pos; box: Pos };
    state = { player: [info.player[0], info.player[1]], box: [info.box[0], info.box[1]] };
    states.push(state);
    if (!res.done) messages.push({ role: res.observationRole, content: res.observation });
  }
  return { messages, episode, states };
}

const allRoles = (sym: SokobanSymbols): Partial<Record<SkRole, string>> => ({ ...sym });

/** The correct table rulebook, sometimes without the two "on goal" letters (a first board never shows them). */
function correctRulebook(rng: Rng, sym: SokobanSymbols): string {
  const roles = allRoles(sym);
  if (rng.next() < 0.4) {
    delete roles.playerOnGoal;
    delete roles.boxOnGoal;
  }
  return sokobanTableRulebook(roles);
}

export function sokobanPlayDoc(rng: Rng, boards?: readonly SokobanTask[]): SokobanDoc {
  const sym = drawSokobanSymbols(rng);
  const task = drawSokobanTask(rng, boards);
  const parts = sokobanPrompt(sym);
  const played = play(task, sym, rulebookSystemPrompt(correctRulebook(rng, sym), parts), (s) => {
    const t = sokobanTeacher(task, s);
    return reply(sokobanThink(task, s, sym, t.push), t.move);
  });
  return {
    kind: "sokoban-play",
    messages: played.messages,
    observationWeight: 0.1,
    meta: { symbols: sym, task },
  };
}

export function sokobanFreeDoc(rng: Rng, boards?: readonly SokobanTask[]): SokobanDoc {
  const sym = drawSokobanSymbols(rng);
  const task = drawSokobanTask(rng, boards);
  const parts = sokobanPrompt(sym);
  const played = play(task, sym, compactProfile.initialSystemPrompt(parts), () =>
    reply(FREE_THINK, randomMove(rng)),
  );
  return {
    kind: "sokoban-free",
    messages: played.messages,
    observationWeight: 0.1,
    meta: { symbols: sym, task },
  };
}

/** Letters on the first board with their counts (what the trace's first observation shows). */
function firstBoardLetters(task: SokobanTask, sym: SokobanSymbols): Map<string, number> {
  const counts = new Map<string, number>();
  for (let r = 0; r < task.size; r++)
    for (let c = 0; c < task.size; c++) {
      const here = (p: Pos) => p[0] === r && p[1] === c;
      const l = here(task.player)
        ? sym.player
        : here(task.box)
          ? sym.box
          : isWall(task, r, c)
            ? sym.wall
            : here(task.goal)
              ? sym.goal
              : sym.floor;
      counts.set(l, (counts.get(l) ?? 0) + 1);
    }
  return counts;
}

/**
 * What a failed attempt's states show about the letters. The border letter is the wall (every
 * layout is a walled room); once the player has moved, its letter and the floor it left are known;
 * a push shows the box; standing on the goal shows both the goal (the letter stepped onto) and the
 * player-on-goal letter; with the box known, the goal is the one letter left on the first board.
 */
export function sokobanTraceClaims(
  task: SokobanTask,
  sym: SokobanSymbols,
  states: readonly SokobanState[],
): SokobanClaim[] {
  const claims: SokobanClaim[] = [{ role: "wall", letter: sym.wall, basis: "border" }];
  const first = states[0]!;
  const moved = states.some((s) => s.player[0] !== first.player[0] || s.player[1] !== first.player[1]);
  if (!moved) return claims;
  claims.push({ role: "player", letter: sym.player, basis: "moved" });
  claims.push({ role: "floor", letter: sym.floor, basis: "left-behind" });
  const pushed = states.some((s) => s.box[0] !== first.box[0] || s.box[1] !== first.box[1]);
  if (pushed) claims.push({ role: "box", letter: sym.box, basis: "pushed" });
  const stoodOnGoal = states.some((s) => s.player[0] === task.goal[0] && s.player[1] === task.goal[1]);
  if (stoodOnGoal) {
    claims.push({ role: "goal", letter: sym.goal, basis: "under-you" });
    claims.push({ role: "playerOnGoal", letter: sym.playerOnGoal, basis: "stood-on-goal" });
  } else if (pushed) {
    const rest = [...firstBoardLetters(task, sym).keys()].filter(
      (l) => l !== sym.player && l !== sym.floor && l !== sym.wall && l !== sym.box,
    );
    if (rest.length === 1) claims.push({ role: "goal", letter: rest[0]!, basis: "elimination" });
  }
  return claims;
}

const BASIS_WORDS: Readonly<Record<SokobanClaim["basis"], string>> = {
  moved: "it moved",
  "left-behind": "it was under you",
  border: "it lines the edge",
  pushed: "you pushed it",
  "under-you": "you stepped on it",
  "stood-on-goal": "you on it",
  elimination: "the letter left",
  shown: "kept from the prompt",
};

export function sokobanReflectionDoc(rng: Rng, boards?: readonly SokobanTask[]): SokobanDoc {
  const sym = drawSokobanSymbols(rng);
  const parts = sokobanPrompt(sym);
  const underRules = rng.next() < 0.3;
  for (;;) {
    const task = drawSokobanTask(rng, boards);
    const shown = underRules
      ? rulebookSystemPrompt(correctRulebook(rng, sym), parts)
      : compactProfile.initialSystemPrompt(parts);
    const played = play(task, sym, shown, (s) => {
      if (!underRules) return reply(FREE_THINK, randomMove(rng));
      const t = sokobanTeacher(task, s);
      return reply(sokobanThink(task, s, sym, t.push), rng.next() < 0.4 ? randomMove(rng) : t.move);
    });
    if (played.episode.success) continue;
    const claims = sokobanTraceClaims(task, sym, played.states);
    if (underRules)
      for (const role of ["player", "box", "goal", "wall", "floor"] as const)
        if (!claims.some((c) => c.role === role)) claims.push({ role, letter: sym[role], basis: "shown" });
    const roles: Partial<Record<SkRole, string>> = {};
    for (const c of claims) roles[c.role] = c.letter;
    const analysis = claims.map((c) => `${SK_ROLE_WORD[c.role]}${cell(c.letter)}(${BASIS_WORDS[c.basis]})`);
    const messages = compactProfile.reflectionMessages(parts, underRules ? shown : null, {
      trace: played.episode.trace,
      reward: played.episode.totalReward,
      feedback: played.episode.feedback(),
    });
    const rulebook = rulebookSystemPrompt(sokobanTableRulebook(roles), parts);
    messages.push({
      role: "assistant",
      content: `${analysis.join("\n")}\n${RULEBOOK_OPEN}\n${rulebook}\n${RULEBOOK_CLOSE}`,
    });
    return {
      kind: "sokoban-reflection",
      messages,
      observationWeight: 0,
      meta: { symbols: sym, task, claims },
    };
  }
}

export function sokobanLookupDoc(rng: Rng): SokobanDoc {
  const sym = drawSokobanSymbols(rng);
  const roles = allRoles(sym);
  const system = rulebookSystemPrompt(sokobanTableRulebook(roles), sokobanPrompt(sym));
  const asked = rng.shuffle(SK_ROLES.map((r) => sym[r]));
  const word = (l: string) => SK_ROLE_WORD[SK_ROLES.find((r) => sym[r] === l)!];
  return {
    kind: "sokoban-lookup",
    messages: [
      { role: "system", content: system },
      { role: "user", content: `Roles of:${asked.map(cell).join("")}` },
      { role: "assistant", content: asked.map((l) => `${cell(l)}${word(l)}`).join("") },
    ],
    observationWeight: 0,
    meta: { symbols: sym },
  };
}
