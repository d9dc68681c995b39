/**
 * Looks a name up in a constant table by the table's own keys only. A plain `table[name]` also finds
 * the members every object inherits, so a user's (or a model's) "constructor", "toString" or
 * "__proto__" would come back as a function or an object instead of "not found".
 */
export function ownEntry<T>(table: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}
