/**
 * `erl play <env>`: a person plays one episode in the terminal. Boards (or search results) are
 * printed, actions are typed one per line, and rewards, comments and the final feedback are shown.
 * When standard input is not a terminal the same lines are read from it, so a game can be scripted:
 *   printf 'down\nright\n' | erl play frozenlake --index 0
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { createInterface } from "node:readline";
import { UserError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import { getEnv, knownEnvs } from "../envs/registry.ts";
import type { EnvOptions } from "../envs/types.ts";
import type { EnvFamily, Split, Task } from "../envs/types.ts";
import { formatToolCall, SEARCH_TOOL, TOOL_CALL_OPEN } from "../envs/tool-protocol.ts";
import { ownEntry } from "../util/own.ts";
import { checkSeed } from "../train/limits.ts";

const HELP = `usage: erl play <env> [--split test|train] [--index N | --seed S] [options]

Plays one episode of an environment in the terminal; actions are read one per line (from standard
input too, when it is not a terminal, so play can be scripted).

  <env>               ${"one of the registered environments (frozenlake, sokoban, hotpotqa)"}
  --split test|train  which shipped split to take the task from (default: test)
  --index N           task number within the split (default: 0)
  --seed S            instead of --index: a freshly generated task (FrozenLake, Sokoban) or a
                      task drawn at random from the split (HotpotQA), from seed S
  --show-rules        also print the reference rulebook (what the symbols mean)
  --data-dir DIR      read the environment's data from DIR instead of data/<env>
  --corpus FILE       HotpotQA: search this JSONL corpus ({id,title,text}) instead
  --search bm25|dense HotpotQA: the search tool's retriever (default bm25; dense embeds the corpus
                      once, minutes, then reads it from .cache/dense)
  -h, --help          show this help

Typing actions:
  games     up | down | left | right, a digit 1-4 (1 left, 2 down, 3 right, 4 up), w/a/s/d,
            or a full reply with a fenced block
  hotpotqa  search: <query>     search the corpus (top 5)
            answer: <text>      give the final answer (sent as \\boxed{<text>})
            anything else is sent as typed (e.g. a raw <tool_call>…</tool_call>)`;

const WASD: Record<string, string> = { w: "up", a: "left", s: "down", d: "right" };

/** `parseArgs`, with its complaints about the command line turned into one-line user errors. */
export function parseArgsOrExplain<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS"))
      throw new UserError((e as Error).message);
    throw e;
  }
}

/** Builds environment options from the shared command-line flags. */
export function envOptionsFromFlags(
  env: string,
  flags: { "data-dir"?: string; corpus?: string; search?: string },
): EnvOptions {
  const opts: EnvOptions = {};
  if (flags["data-dir"]) opts.dataDir = flags["data-dir"];
  if (flags.corpus) {
    if (env !== "hotpotqa") throw new UserError("--corpus only applies to hotpotqa");
    opts.corpusFile = flags.corpus;
  }
  if (flags.search !== undefined) {
    if (env !== "hotpotqa") throw new UserError("--search only applies to hotpotqa");
    // The family checks the value and names the allowed ones.
    opts.search = flags.search;
  }
  return opts;
}

/** Parses a split name from the command line. */
export function parseSplit(value: string | undefined, fallback: Split): Split {
  if (value === undefined) return fallback;
  if (value !== "train" && value !== "test")
    throw new UserError(`--split must be "train" or "test", got "${value}"`);
  return value;
}

/** Parses a non-negative integer flag with an error naming it. */
export function parseCount(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) throw new UserError(`${flag} must be a non-negative integer, got "${value}"`);
  return Number(value);
}

/** The task at `index` of a split, with a clear error when out of range. */
export function taskAt(family: EnvFamily<Task>, split: Split, index: number): Task {
  const tasks = family.loadSplit(split);
  const task = tasks[index];
  if (!task)
    throw new UserError(
      `task index ${index} is out of range: the ${split} split of ${family.name} has ${tasks.length} tasks (0–${tasks.length - 1})`,
    );
  return task;
}

/** Turns what a person typed into the reply text an environment reads. */
export function translateInput(env: string, line: string): string {
  const text = line.trim();
  if (env === "hotpotqa") {
    const search = /^search\s*:\s*(.+)$/i.exec(text);
    if (search) return formatToolCall(SEARCH_TOOL, { query: search[1]!.trim(), top_k: 5 });
    const answer = /^answer\s*:\s*(.*)$/i.exec(text);
    if (answer) return `\\boxed{${answer[1]!.trim()}}`;
    return text;
  }
  if (text.includes("```") || text.includes(TOOL_CALL_OPEN)) return text;
  return "```\n" + (ownEntry(WASD, text.toLowerCase()) ?? text) + "\n```";
}

export interface PlayOptions {
  env: string;
  family: EnvFamily<Task>;
  task: Task;
  showRules: boolean;
  /** Whether a person is typing (prints a prompt before each line). */
  interactive: boolean;
}

/** Plays one episode reading actions from `lines`; returns the exit code (0 when the episode finished). */
export async function play(
  opts: PlayOptions,
  lines: AsyncIterable<string>,
  print: (text: string) => void,
): Promise<number> {
  const { family, task } = opts;
  const parts = family.prompt();
  print(`== ${family.name}, task ${task.id}`);
  print(parts.taskDescription);
  print(parts.formatReminder);
  if (opts.showRules && parts.referenceRulebook)
    print(`\n-- reference rulebook --\n${parts.referenceRulebook}`);
  const episode = family.makeEpisode(task);
  print(`\n${episode.initialObservation}`);
  const promptLine = () => {
    if (opts.interactive) process.stdout.write("> ");
  };
  promptLine();
  for await (const line of lines) {
    if (line.trim() === "") {
      promptLine();
      continue;
    }
    const result = await episode.step(translateInput(opts.env, line));
    print(`\n${result.observation}`);
    print(`[reward ${result.reward}, ${result.comment}${result.done ? `, done: ${result.stopReason}` : ""}]`);
    if (episode.done) break;
    promptLine();
  }
  if (!episode.done) {
    print("\nInput ended before the episode finished.");
    return 1;
  }
  print(`\n${episode.feedback()}`);
  print(`Total reward: ${episode.totalReward}. ${episode.success ? "Success." : "No success."}`);
  return 0;
}

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgsOrExplain({
    args,
    allowPositionals: true,
    options: {
      split: { type: "string" },
      index: { type: "string" },
      seed: { type: "string" },
      "show-rules": { type: "boolean", default: false },
      "data-dir": { type: "string" },
      corpus: { type: "string" },
      search: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const env = positionals[0];
  if (!env) throw new UserError(`name an environment to play (known: ${knownEnvs().join(", ")}); see --help`);
  if (positionals.length > 1) throw new UserError(`unexpected argument "${positionals[1]}"`);
  if (values.index !== undefined && values.seed !== undefined)
    throw new UserError("give --index or --seed, not both");
  const family = getEnv(env, envOptionsFromFlags(env, values));
  const split = parseSplit(values.split, "test");
  let task: Task;
  if (values.seed !== undefined) {
    const seed = parseCount("--seed", values.seed);
    checkSeed({ flags: { seed: "--seed" } }, "seed", seed);
    const rng = new Rng(seed);
    if (family.generate) task = family.generate(rng, 1)[0]!;
    else task = rng.pick(family.loadSplit(split));
  } else {
    task = taskAt(family, split, parseCount("--index", values.index ?? "0"));
  }
  const interactive = Boolean(process.stdin.isTTY);
  const rl = createInterface({ input: process.stdin, terminal: false });
  try {
    return await play({ env, family, task, showRules: values["show-rules"], interactive }, rl, (t) =>
      console.log(t),
    );
  } finally {
    rl.close();
  }
}
