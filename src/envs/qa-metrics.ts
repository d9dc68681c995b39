/**
 * Answer scoring for HotpotQA, following the SQuAD/HotpotQA evaluation conventions: answers are
 * normalised (lower case, ASCII punctuation removed, the articles a/an/the removed, whitespace
 * collapsed) before exact match and token F1; a yes/no/noanswer answer that differs from the gold one
 * scores 0. The episode reward is EM → 1, else F1 if ≥ 0.3, else 0.
 */

// Python's string.punctuation, which the official scripts strip.
const PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
// Word boundaries that, like Python 3's `\b`, treat letters of any script as word characters.
const ARTICLES = /(?<![\p{L}\p{N}_])(a|an|the)(?![\p{L}\p{N}_])/gu;

export function normalizeAnswer(text: string): string {
  const lower = text.toLowerCase();
  let noPunct = "";
  for (const ch of lower) if (!PUNCTUATION.has(ch)) noPunct += ch;
  return noPunct.replace(ARTICLES, " ").split(/\s+/).filter(Boolean).join(" ");
}

export function exactMatch(prediction: string, gold: string): boolean {
  return normalizeAnswer(prediction) === normalizeAnswer(gold);
}

export interface F1 {
  f1: number;
  precision: number;
  recall: number;
}

const SPECIAL = new Set(["yes", "no", "noanswer"]);

/** Token-level F1 of the normalised answers, with HotpotQA's rule for yes/no/noanswer. */
export function f1Score(prediction: string, gold: string): F1 {
  const zero = { f1: 0, precision: 0, recall: 0 };
  const p = normalizeAnswer(prediction);
  const g = normalizeAnswer(gold);
  if ((SPECIAL.has(p) || SPECIAL.has(g)) && p !== g) return zero;
  const pt = p.split(" ").filter(Boolean);
  const gt = g.split(" ").filter(Boolean);
  const counts = new Map<string, number>();
  for (const t of gt) counts.set(t, (counts.get(t) ?? 0) + 1);
  let common = 0;
  for (const t of pt) {
    const n = counts.get(t) ?? 0;
    if (n > 0) {
      common++;
      counts.set(t, n - 1);
    }
  }
  if (common === 0) return zero;
  const precision = common / pt.length;
  const recall = common / gt.length;
  return { f1: (2 * precision * recall) / (precision + recall), precision, recall };
}

/** Minimum F1 that earns partial credit. */
export const F1_THRESHOLD = 0.3;

export interface AnswerScore {
  reward: number;
  exactMatch: boolean;
  f1: number;
}

/** The episode reward for an answer (null: no answer given → 0). */
export function scoreAnswer(prediction: string | null, gold: string): AnswerScore {
  if (prediction === null) return { reward: 0, exactMatch: false, f1: 0 };
  const em = exactMatch(prediction, gold);
  const { f1 } = f1Score(prediction, gold);
  return { reward: em ? 1 : f1 >= F1_THRESHOLD ? f1 : 0, exactMatch: em, f1 };
}

/**
 * The content of the last `\boxed{…}` in a reply (braces balanced), or null. A `\text{…}` wrapper
 * inside is unwrapped, since math-trained models often write `\boxed{\text{Paris}}`.
 */
export function extractBoxed(text: string): string | null {
  const start = text.lastIndexOf("\\boxed{");
  if (start < 0) return null;
  let depth = 0;
  const from = start + "\\boxed{".length;
  for (let i = from; i < text.length; i++) {
    const ch = text[i];
    if (ch === "{") depth++;
    else if (ch === "}") {
      if (depth === 0) return unwrapText(text.slice(from, i)).trim();
      depth--;
    }
  }
  return null;
}

function unwrapText(s: string): string {
  return s.replace(/\\text\{([^{}]*)\}/g, "$1");
}
