// The engine child process's life cycle over stdio: a protocol-version mismatch refused at the
// handshake, and a clean shutdown (exit code 0, no process left behind).
import { test } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { startEngine } from "./client.ts";
import { EngineError } from "./protocol.ts";

test("a client speaking another protocol version is refused at start-up", async () => {
  await assert.rejects(startEngine({ protocolVersion: 99 }), (e: unknown) => {
    assert.ok(e instanceof EngineError, String(e));
    assert.equal(e.code, "protocol_version");
    assert.match(e.message, /protocol version 1 but this client speaks version 99/);
    return true;
  });
});

test("close() shuts the engine down cleanly", async () => {
  const engine = await startEngine();
  const child = (engine.transport as unknown as { child: ChildProcess }).child;
  assert.equal((await engine.info()).protocolVersion, 1);
  await engine.close();
  assert.equal(child.exitCode, 0);
  assert.equal(child.signalCode, null);
  await assert.rejects(engine.info(), /engine info: the engine process exited with code 0/);
  await engine.close(); // idempotent
});
