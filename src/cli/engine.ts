// Placeholder until the `erl engine` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl engine` is not available in this build yet");
}
