// Placeholder until the `erl pretrain` command lands; replaced by its implementation.
import { UserError } from "../util/errors.ts";

export async function run(_args: string[]): Promise<number> {
  throw new UserError("`erl pretrain` is not available in this build yet");
}
