// `erl engine serve --openai` end to end: the real CLI serving erl-tiny on a random loopback port, and
// the official `openai` npm client talking to it (models, chat, completions, streaming, log-probs,
// errors), plus raw HTTP for what the client cannot send (oversized and unauthenticated bodies).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import OpenAI from "openai";
import { spawnOpenAIServe, stopServe } from "./spawn.ts";

const token = randomBytes(16).toString("hex");
let child: ChildProcess;
let baseURL: string;
let client: OpenAI;
let output = "";

before(async () => {
  const s = await spawnOpenAIServe("models/erl-tiny", token);
  child = s.child;
  baseURL = s.url;
  output = s.log();
  client = new OpenAI({ baseURL, apiKey: token, maxRetries: 0, timeout: 60_000 });
});

after(() => stopServe(child));

const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: "system", content: "You play FrozenLake. Reply with one action." },
  { role: "user", content: "P _ _\n_ O _\n_ _ G" },
];

test("serves on loopback and lists the model", async () => {
  assert.match(baseURL, /^http:\/\/127\.0\.0\.1:\d+\/v1$/, output);
  const list = await client.models.list();
  assert.deepEqual(
    list.data.map((m) => m.id),
    ["erl-tiny"],
  );
  const one = await client.models.retrieve("erl-tiny");
  assert.equal(one.id, "erl-tiny");
});

test("chat: reply, log-probs aligned with the text, usage, and a seed that reproduces", async () => {
  const req = {
    model: "erl-tiny",
    messages,
    max_tokens: 24,
    temperature: 0.8,
    seed: 7,
    logprobs: true,
  } as const;
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  const choice = a.choices[0]!;
  assert.equal(a.object, "chat.completion");
  assert.equal(choice.message.role, "assistant");
  const content = choice.message.content ?? "";
  assert.ok(content.length > 0);
  assert.equal(b.choices[0]!.message.content, content, "same seed, same reply");
  const lp = choice.logprobs?.content ?? [];
  assert.equal(lp.length, a.usage?.completion_tokens);
  assert.equal(lp.map((t) => t.token).join(""), content);
  for (const t of lp) {
    assert.ok(Number.isFinite(t.logprob) && t.logprob <= 0, `logprob ${t.logprob}`);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
  }
  assert.ok(["stop", "length"].includes(choice.finish_reason));
  if (choice.finish_reason === "length") assert.equal(lp.length, 24);
  assert.equal(a.usage!.total_tokens, a.usage!.prompt_tokens + a.usage!.completion_tokens);
  // Another seed gives a (almost surely) different sample; n gives several choices.
  const many = await client.chat.completions.create({ ...req, n: 3, seed: 8 });
  assert.equal(many.choices.length, 3);
  assert.deepEqual(
    many.choices.map((c) => c.index),
    [0, 1, 2],
  );
});

test("chat streaming: the deltas add up to the plain reply, log-probs per chunk, usage at the end", async () => {
  const req = {
    model: "erl-tiny",
    messages,
    max_tokens: 20,
    temperature: 0.9,
    seed: 11,
    logprobs: true,
  } as const;
  const plain = await client.chat.completions.create(req);
  const stream = await client.chat.completions.create({
    ...req,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  const lps: number[] = [];
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | undefined;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    text += c.delta.content ?? "";
    for (const t of c.logprobs?.content ?? []) lps.push(t.logprob);
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(text, plain.choices[0]!.message.content);
  assert.deepEqual(
    lps,
    plain.choices[0]!.logprobs!.content!.map((t) => t.logprob),
  );
  assert.equal(finish, plain.choices[0]!.finish_reason);
  assert.deepEqual(usage, plain.usage);
  assert.ok(chunks >= lps.length + 2);
});

test("completions: text, token log-probs with offsets, streaming, and stop strings", async () => {
  const req = { model: "erl-tiny", prompt: "The goal", max_tokens: 12, temperature: 1, seed: 5, logprobs: 0 };
  const a = await client.completions.create(req);
  const ch = a.choices[0]!;
  assert.equal(a.object, "text_completion");
  assert.equal(ch.logprobs!.tokens!.join(""), ch.text);
  assert.equal(ch.logprobs!.token_logprobs!.length, a.usage!.completion_tokens);
  const offs = ch.logprobs!.text_offset!;
  offs.forEach((o, i) => assert.equal(o, ch.logprobs!.tokens!.slice(0, i).join("").length));

  const stream = await client.completions.create({ ...req, stream: true });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
  assert.equal(text, ch.text);

  // A stop string taken from the reply itself: the text ends just before it.
  const probe = ch.text.trim().slice(0, 1);
  if (probe) {
    const cut = await client.completions.create({ ...req, stop: [probe] });
    const at = ch.text.indexOf(probe);
    assert.equal(cut.choices[0]!.text, ch.text.slice(0, at));
    assert.equal(cut.choices[0]!.finish_reason, "stop");
  }
});

test("errors come back in OpenAI's shape, as the client's typed errors", async () => {
  const expectErr = async (p: Promise<unknown>, status: number, param: string | null, code?: string) => {
    await assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof OpenAI.APIError, String(e));
      assert.equal(e.status, status, e.message);
      assert.equal(e.param ?? null, param);
      if (code) assert.equal(e.code, code);
      assert.equal(e.type, "invalid_request_error");
      return true;
    });
  };
  await expectErr(
    client.chat.completions.create({ model: "gpt-x", messages }),
    404,
    "model",
    "model_not_found",
  );
  await expectErr(client.chat.completions.create({ model: "erl-tiny", messages: [] }), 400, "messages");
  await expectErr(
    client.chat.completions.create({ model: "erl-tiny", messages, temperature: 5 }),
    400,
    "temperature",
  );
  await expectErr(
    client.chat.completions.create({ model: "erl-tiny", messages, logprobs: true, top_logprobs: 3 }),
    400,
    "top_logprobs",
    "unsupported_parameter",
  );
  await expectErr(
    client.chat.completions.create({ model: "erl-tiny", messages, max_tokens: 100_000 }),
    400,
    "max_tokens",
    "context_length_exceeded",
  );
  await expectErr(
    client.chat.completions.create({
      model: "erl-tiny",
      messages,
      tools: [{ type: "function", function: { name: "f" } }],
    }),
    400,
    "tools",
    "unsupported_parameter",
  );
  await expectErr(
    client.completions.create({ model: "erl-tiny", prompt: "x", logprobs: 2 }),
    400,
    "logprobs",
  );
  const wrong = new OpenAI({ baseURL, apiKey: "not-the-token", maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
});

/** Sends only the headers of a request that announces `length` body bytes; resolves with the answer. */
function headersOnly(path: string, length: number, auth?: string): Promise<{ status: number; body: string }> {
  const u = new URL(`${baseURL}${path}`);
  return new Promise((res, rej) => {
    const req = request(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname,
        method: "POST",
        headers: { "Content-Length": String(length), ...(auth ? { Authorization: auth } : {}) },
      },
      (r) => {
        let body = "";
        r.on("data", (d: Buffer) => (body += d.toString()));
        r.on("end", () => res({ status: r.statusCode ?? 0, body }));
      },
    );
    req.on("error", rej);
    req.flushHeaders();
    // The body never comes: an answer can only be given without reading it.
    setTimeout(() => req.destroy(), 20_000).unref();
  });
}

test("raw HTTP: no token means no body is read; oversized and malformed bodies are refused", async () => {
  const noAuth = await headersOnly("/chat/completions", 8 << 20);
  assert.equal(noAuth.status, 401);
  assert.equal((JSON.parse(noAuth.body) as { error: { code: string } }).error.code, "invalid_api_key");
  const tooBig = await headersOnly("/chat/completions", 8 << 20, `Bearer ${token}`);
  assert.equal(tooBig.status, 413);
  assert.match(tooBig.body, /too large/);
  const headers = { Authorization: `Bearer ${token}`, "Content-Type": "application/json" };
  const notJson = await fetch(`${baseURL}/chat/completions`, { method: "POST", headers, body: "{nope" });
  assert.equal(notJson.status, 400);
  const err = (await notJson.json()) as { error: { message: string; type: string } };
  assert.match(err.error.message, /not valid JSON/);
  const get = await fetch(`${baseURL}/chat/completions`, { headers });
  assert.equal(get.status, 405);
  const nowhere = await fetch(`${baseURL}/embeddings`, { method: "POST", headers, body: "{}" });
  assert.equal(nowhere.status, 404);
  // The server still answers after all that.
  const ok = await client.models.list();
  assert.equal(ok.data.length, 1);
});
