import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { isLoopback } from "./net.ts";
import { isPid, processAlive } from "./process.ts";

test("isLoopback: only this machine's addresses, never a name that merely starts like one", () => {
  for (const h of ["localhost", "127.0.0.1", "127.4.5.6", "::1", "0:0:0:0:0:0:0:1"])
    assert.ok(isLoopback(h), h);
  for (const h of ["0.0.0.0", "::", "10.0.0.1", "127.example.com", "127.", "localhost.evil", "128.0.0.1"])
    assert.ok(!isLoopback(h), h);
});

test("processAlive: this process is alive, a finished child is not, non-pids are never asked", () => {
  assert.ok(processAlive(process.pid));
  const child = spawnSync(process.execPath, ["-e", "0"]);
  assert.equal(child.status, 0);
  assert.equal(processAlive(child.pid!), false);
  // 0 and -1 would address process groups (kill(-1, 0) succeeds for any user with processes).
  for (const v of [0, -1, 1.5, Number.NaN]) {
    assert.equal(isPid(v), false);
    assert.equal(processAlive(v), false, String(v));
  }
});
