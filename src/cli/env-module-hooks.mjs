// Module loader hook for `erl --env-module <file>` (src/cli/main.ts): the TypeScript files of an
// environment module's folder load as ES modules wherever they are. Outside a package whose
// package.json says "type": "module", tsx would otherwise load a .ts file as CommonJS, and its import
// of erl's own (ES) modules would fail with "Cannot require() ES Module … in a cycle".
let folders = [];

/** @param {{ folders: string[] }} data file: URLs of the env modules' folders, each ending in "/". */
export function initialize(data) {
  folders = data.folders;
}

export async function load(url, context, nextLoad) {
  const path = url.split("?")[0];
  const own =
    /\.(ts|mts|tsx)$/.test(path) &&
    !path.includes("/node_modules/") &&
    folders.some((f) => path.startsWith(f));
  if (!own) return nextLoad(url, context);
  const loaded = await nextLoad(url, { ...context, format: "module" });
  return { ...loaded, format: "module" };
}
