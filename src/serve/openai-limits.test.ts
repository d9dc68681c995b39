// `erl engine serve --openai --max-body N --header-timeout S`: the real CLI passes its limits to the
// server: a body over N bytes is refused with 413 before it is read, and a request head that does not
// arrive within S seconds is cut, however slowly it trickles in.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { spawnOpenAIServe, stopServe } from "./spawn.ts";

test("--max-body and --header-timeout reach the OpenAI-compatible server", async () => {
  const token = randomBytes(16).toString("hex");
  const s = await spawnOpenAIServe("test/fixtures/tiny-model", token, [
    "--dtype",
    "float32",
    "--max-body",
    "300",
    "--header-timeout",
    "1",
  ]);
  try {
    const post = (content: string) =>
      fetch(`${s.url}/chat/completions`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ model: "tiny-model", messages: [{ role: "user", content }], max_tokens: 2 }),
      });
    assert.equal((await post("hi")).status, 200);
    const big = await post("x".repeat(400));
    assert.equal(big.status, 413);
    assert.match(((await big.json()) as { error: { message: string } }).error.message, /limit is 300/);
    // A head sent a byte every 100 ms: cut at about 1 s (Node checks its timers once a second).
    const { port } = new URL(s.url);
    const t0 = performance.now();
    await new Promise<void>((done) => {
      const sock = net.connect(Number(port), "127.0.0.1");
      const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + "y".repeat(200);
      let i = 0;
      const timer = setInterval(() => sock.write(head[i++ % head.length]!), 100);
      sock.on("error", () => undefined);
      sock.on("close", () => {
        clearInterval(timer);
        done();
      });
    });
    const held = (performance.now() - t0) / 1000;
    assert.ok(held > 0.9 && held < 5, `the slow head was held ${held.toFixed(1)} s`);
  } finally {
    await stopServe(s.child);
  }
});
