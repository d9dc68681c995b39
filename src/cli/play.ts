// Placeholder until the `erl play` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl play` is not available in this build yet");
}
