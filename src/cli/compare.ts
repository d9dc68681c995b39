// Placeholder until the `erl compare` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl compare` is not available in this build yet");
}
