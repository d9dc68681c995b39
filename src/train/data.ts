/**
 * Which tasks each training step gets. The order is a pure function of the run seed: the train
 * split (or its seeded subset) is shuffled once per pass with an RNG derived from the seed and the
 * pass number. The cursor is just (pass, index), so it checkpoints as two numbers and every
 * algorithm run with the same seed sees exactly the same tasks in the same order.
 */
import type { Task } from "../envs/types.ts";
import { Rng } from "../util/rng.ts";

export interface CursorState {
  epoch: number;
  index: number;
}

export class TaskCursor<T extends Task = Task> {
  private readonly pool: readonly T[];
  private order: readonly T[];
  private state: CursorState;

  constructor(
    tasks: readonly T[],
    private readonly seed: number,
    private readonly shuffle: boolean,
    limit: number | null,
    state: CursorState = { epoch: 0, index: 0 },
  ) {
    if (tasks.length === 0) throw new RangeError("TaskCursor: no tasks");
    const subset = shuffle ? new Rng(`${seed}/subset`).shuffle(tasks) : [...tasks];
    this.pool = limit === null ? subset : subset.slice(0, limit);
    this.state = { ...state };
    this.order = this.orderFor(this.state.epoch);
  }

  private orderFor(epoch: number): readonly T[] {
    return this.shuffle ? new Rng(`${this.seed}/epoch/${epoch}`).shuffle(this.pool) : this.pool;
  }

  get size(): number {
    return this.pool.length;
  }

  /** The next `count` tasks, wrapping into a freshly shuffled pass when one runs out. */
  next(count: number): T[] {
    const out: T[] = [];
    while (out.length < count) {
      if (this.state.index >= this.order.length) {
        this.state = { epoch: this.state.epoch + 1, index: 0 };
        this.order = this.orderFor(this.state.epoch);
      }
      out.push(this.order[this.state.index]!);
      this.state.index++;
    }
    return out;
  }

  save(): CursorState {
    return { ...this.state };
  }
}
