// Placeholder until the `erl dashboard` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl dashboard` is not available in this build yet");
}
