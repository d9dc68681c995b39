/**
 * Splits text arriving in chunks (a child process's stdout) into lines: the returned function takes
 * each chunk and calls `onLine` for every complete, non-blank line, keeping a partial last line for
 * the next chunk.
 */
export function lineSplitter(onLine: (line: string) => void): (chunk: string) => void {
  let buffer = "";
  return (chunk) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line.trim()) onLine(line);
    }
  };
}
