// bitnetd through the official OpenAI Node SDK (the `openai` package pinned in package.json).
// Run by tests/test_node_sdk.sh, which starts bitnetd with `api_keys = x`, n_ctx 256 and
// model_name bitnet-test, and passes its base URL in BITNETD_BASE_URL (http://127.0.0.1:PORT/v1).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const baseURL = process.env.BITNETD_BASE_URL;
assert.ok(baseURL, 'BITNETD_BASE_URL is not set (run tests/test_node_sdk.sh)');
const MODEL = process.env.BITNETD_MODEL ?? 'bitnet-test';
const N_CTX = Number(process.env.BITNETD_N_CTX ?? 256);

// No retries: a retried 5xx would hide a server bug behind the SDK's backoff.
const client = new OpenAI({ baseURL, apiKey: 'x', maxRetries: 0, timeout: 60_000 });
const messages = [{ role: 'user', content: 'Hello!' }];

function assertUsage(usage, completion) {
  assert.ok(usage, 'usage is present');
  assert.ok(usage.prompt_tokens > 0);
  assert.equal(usage.completion_tokens, completion);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

// Expects fn() to reject with an APIError of the given class and status.
async function assertApiError(fn, Klass, status) {
  await assert.rejects(fn, (err) => {
    assert.ok(err instanceof OpenAI.APIError, `an APIError, got ${err}`);
    assert.ok(err instanceof Klass, `a ${Klass.name}, got ${err.constructor.name}`);
    assert.equal(err.status, status);
    assert.equal(typeof err.message, 'string');
    return true;
  });
}

test('chat.completions.create, not streaming', async () => {
  // ignore_eos is not an OpenAI parameter: the SDK sends unknown fields as they are
  const r = await client.chat.completions.create({
    model: MODEL, messages, max_tokens: 20, ignore_eos: true, temperature: 0,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assertUsage(r.usage, 20);
});

test('chat.completions.create, the seeds\' request (any model name)', async () => {
  const r = await client.chat.completions.create({ model: 'bitnet', messages, max_tokens: 50 });
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 50);
});

test('chat.completions.create, streaming with include_usage', async () => {
  const stream = await client.chat.completions.create({
    model: MODEL, messages, max_tokens: 24, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length >= 3, `${chunks.length} chunks`);
  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1, 'one id across the chunks');
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, [], 'the usage chunk has no choices');
  assertUsage(last.usage, 24);
  const content = chunks.filter((c) => c.choices.length > 0);
  const finishes = content.map((c) => c.choices[0].finish_reason).filter((f) => f != null);
  assert.deepEqual(finishes, ['length'], 'finish_reason once, on the last content chunk');
  assert.equal(content.at(-1).choices[0].finish_reason, 'length');
  const text = content.map((c) => c.choices[0].delta.content ?? '').join('');
  assert.equal(typeof text, 'string');
});

test('completions.create, not streaming and streaming', async () => {
  const r = await client.completions.create({
    model: MODEL, prompt: 'Once upon a time', max_tokens: 10, ignore_eos: true,
  });
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assertUsage(r.usage, 10);

  const stream = await client.completions.create({
    model: MODEL, prompt: [72, 101, 108, 108, 111], max_tokens: 6, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const fr = chunk.choices.length ? chunk.choices[0].finish_reason : null;
    if (fr) finish = fr;
  }
  assert.equal(finish, 'length');
  assert.equal(usage.prompt_tokens, 5, 'token-id prompts are used as given');
  assertUsage(usage, 6);
});

test('models.list', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, MODEL);
  assert.equal(models[0].object, 'model');
  assert.equal(models[0].owned_by, 'bitnetd');
  assert.ok(Number.isInteger(models[0].created));
});

test('errors surface as APIError with their status', async () => {
  await assertApiError(
    () => client.chat.completions.create({ model: MODEL, messages, n: 2 }),
    OpenAI.BadRequestError, 400);
  await assertApiError(
    () => client.chat.completions.create({ model: MODEL, messages, max_tokens: 0 }),
    OpenAI.BadRequestError, 400);
  await assertApiError(
    () => client.chat.completions.create({ model: MODEL, messages, stream: true, n: 2 }),
    OpenAI.BadRequestError, 400);
  const long = Array.from({ length: N_CTX + 20 }, (_, i) => 65 + (i % 26));
  await assert.rejects(
    () => client.completions.create({ model: MODEL, prompt: long, max_tokens: 1 }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.status, 400);
      assert.equal(err.code, 'context_length_exceeded');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    });
  const bad = new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 });
  await assertApiError(() => bad.models.list(), OpenAI.AuthenticationError, 401);
  await assertApiError(() => client.models.retrieve('no-such-model'), OpenAI.NotFoundError, 404);
});
