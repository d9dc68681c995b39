// Placeholder until the `erl demo` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl demo` is not available in this build yet");
}
