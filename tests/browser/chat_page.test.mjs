// bitnetd's chat page (GET /, src/server/chat_page.html) in Debian's headless Chromium, driven by
// playwright-core (no browser download: executablePath is the system one). It starts two
// bitnetd on free loopback ports with a synthetic model (one open, one with api_keys), and
// drives the page as a user would: stream, Stop, a second turn, the errors, a phone screen.
//
//   node --test tests/browser/chat_page.test.mjs        (.ci/steps/40-browser.sh runs it)
//
// Env: BN_BITNETD, BN_BITNET (default: the in-tree binaries), BN_CHROMIUM (/usr/bin/chromium),
// BN_TOP (the checkout: the screenshot goes to $BN_TOP/tests/artifacts/chat_page.png).
//
// The model: `tiny,n_ctx_max=4096,n_layer=8` with weights seed 4 and temperature 0 (greedy, one
// thread: deterministic). With the built-in byte vocabulary, sampling at temperature 0.7 meets
// eos after a few hundred tokens, and greedy decoding from seed 1 after ~50; from seed 4 the
// greedy answers to these prompts run to 3000 tokens, so an answer is still streaming when the
// test presses Stop. No assertion depends on timing beyond "still streaming after ~1 s".
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const top = process.env.BN_TOP || resolve(here, '../..');
const bitnetd = process.env.BN_BITNETD || join(top, 'bitnetd');
const bitnet = process.env.BN_BITNET || join(top, 'bitnet');
const chromiumPath = process.env.BN_CHROMIUM || '/usr/bin/chromium';
const shot = join(top, 'tests/artifacts/chat_page.png');
const MODEL = 'bitnet-chat-test';
const KEY = 'secret-key-1';
const STEP = 30000;   // the bound on any one wait in the page

let tmp, ctx, open, locked;
const servers = [];   // every bitnetd started, as soon as it is spawned: all are stopped

// ---- servers ---------------------------------------------------------------------------------

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls fn() (every 50 ms, at most `ms`) until it returns a truthy value, which it returns.
async function until(what, fn, ms = STEP) {
  const end = Date.now() + ms;
  for (;;) {
    let v;
    try { v = await fn(); } catch (_) { v = undefined; }
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(50);
  }
}

// Starts one bitnetd (1 worker, 1 thread) with extra config lines; resolves once /ready is 200.
async function startServer(name, extra) {
  const port = await freePort();
  const conf = join(tmp, name + '.conf');
  writeFileSync(conf, [
    `listen = 127.0.0.1:${port}`, `model = ${join(tmp, 'model.bnpk')}`, `model_name = ${MODEL}`,
    'workers = 1', 'threads = 1', 'access_log = off', 'ping_interval = 1s', ...extra, '',
  ].join('\n'));
  const child = spawn(bitnetd, ['-c', conf, '--foreground'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks = [];
  child.stdout.on('data', (d) => chunks.push(d));
  child.stderr.on('data', (d) => chunks.push(d));
  const srv = { name, port, child, base: `http://127.0.0.1:${port}`, exited: false,
                log: () => Buffer.concat(chunks).toString() };
  servers.push(srv);
  child.on('exit', () => { srv.exited = true; });
  child.on('error', (e) => { srv.exited = true; chunks.push(Buffer.from(String(e))); });
  const end = Date.now() + 30000;
  for (;;) {
    if (srv.exited) throw new Error(`${name} bitnetd exited at start:\n${srv.log()}`);
    if (await fetch(srv.base + '/ready').then((r) => r.status === 200, () => false)) break;
    if (Date.now() > end) throw new Error(`${name} bitnetd not ready on ${port} in 30 s:\n${srv.log()}`);
    await sleep(50);
  }
  return srv;
}

// SIGTERM, then SIGKILL after 10 s; bitnetd's workers die with their master (PDEATHSIG).
async function stopServer(srv) {
  if (!srv || srv.exited) return;
  srv.child.kill('SIGTERM');
  const end = Date.now() + 10000;
  while (!srv.exited && Date.now() < end) await sleep(50);
  if (!srv.exited) srv.child.kill('SIGKILL');
  while (!srv.exited) await sleep(20);
}

async function abortCount(srv) {
  const text = await (await fetch(srv.base + '/metrics')).text();
  const m = text.match(/^vllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\} (\S+)$/m);
  assert.ok(m, 'no abort counter in /metrics');
  return Number(m[1]);
}

async function workerState(srv) {
  const st = await (await fetch(srv.base + '/v1/status', {
    headers: { Authorization: `Bearer ${KEY}` } })).json();
  return st.workers[0].state;
}

// ---- the page --------------------------------------------------------------------------------

// A page on srv that records every request it makes and fails the test on a script error.
async function openPage(srv) {
  const page = await ctx.newPage();
  page.requests = [];
  page.errors = [];
  page.on('request', (r) => page.requests.push(r));
  page.on('pageerror', (e) => page.errors.push(e.message));
  await page.goto(srv.base + '/');
  return page;
}

const answers = (page) => page.locator('#log .msg.assistant .text');
const lastAnswer = (page) => answers(page).last();
const textLen = async (loc) => (await loc.textContent()).length;

async function setField(page, id, value) {
  if (!(await page.locator('#' + id).isVisible())) await page.locator('#settings summary').click();
  await page.fill('#' + id, String(value));
}

async function say(page, text) {
  await page.fill('#input', text);
  await page.click('#send');
}

// The JSON bodies the page posted to /v1/chat/completions, in order.
const chatBodies = (page) => page.requests
  .filter((r) => r.url().endsWith('/v1/chat/completions') && r.method() === 'POST')
  .map((r) => r.postDataJSON());

// ---- set-up and tear-down --------------------------------------------------------------------

before(async () => {
  assert.ok(existsSync(bitnetd), `no bitnetd at ${bitnetd} (build it, or set BN_BITNETD)`);
  assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath} (apt-get install chromium)`);
  tmp = mkdtempSync(join(tmpdir(), 'bitnetd-browser-'));
  // Wide enough that a 3000-token answer streams for several seconds at 1 thread (the Stop
  // test must see it grow and cancel it): tiny's own width decodes 3000 tokens in about 1 s.
  execFileSync(bitnet, ['mkmodel', '-s', '4',
                        'tiny,n_ctx_max=4096,n_layer=8,n_embd=1024,n_head=8,n_head_kv=4,n_ff=2816',
                        join(tmp, 'model.bnpk')], { stdio: 'pipe' });
  [open, locked] = await Promise.all([
    startServer('open', []),
    startServer('locked', [`api_keys = ${KEY}`]),
  ]);
  // A fresh profile (user-data dir) in the temp dir, so nothing of another run is reused.
  ctx = await chromium.launchPersistentContext(join(tmp, 'chromium-profile'), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1024, height: 768 },
    timeout: 60000,
  });
  ctx.setDefaultTimeout(STEP);
});

after(async () => {
  // Always: the browser, both servers, the temp dir.
  await ctx?.close().catch(() => {});
  await Promise.all(servers.map(stopServer));
  // Their logs go next to the screenshot, for a failed CI run.
  mkdirSync(dirname(shot), { recursive: true });
  for (const s of servers) writeFileSync(join(dirname(shot), `bitnetd-${s.name}.log`), s.log());
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// A crash of the test runner must not leave a server behind.
process.on('exit', () => {
  for (const s of servers) if (!s.exited) s.child.kill('SIGKILL');
});

// ---- the tests (in order: they share the open server's page) ---------------------------------

let page;

test('GET / serves the embedded page, with no external assets', async () => {
  const res = await fetch(open.base + '/');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  const html = await res.text();
  assert.equal(html, readFileSync(join(here, '../../src/server/chat_page.html'), 'utf8'),
               'the page served is not src/server/chat_page.html');
  assert.doesNotMatch(html, /(src|href)\s*=\s*["']?(https?:)?\/\//i, 'an external asset');

  page = await openPage(open);
  await until('the model name', async () =>
    (await page.textContent('#model-name')).includes(MODEL));
  assert.match(await page.textContent('#model-name'), /context 4096/);
  for (const r of page.requests)
    assert.ok(r.url().startsWith(open.base + '/'), 'a request off the origin: ' + r.url());
});

test('an answer streams in, and Stop cancels its generation on the server', async () => {
  await setField(page, 'temperature', 0);
  await setField(page, 'max-tokens', 3000);
  const aborted = await abortCount(open);
  await say(page, 'Tell me a long story about the sea.');
  assert.equal(await page.locator('#log .msg.user .text').last().textContent(),
               'Tell me a long story about the sea.');
  assert.equal(await page.getAttribute('#log', 'aria-live'), 'polite');

  // Streaming: the answer's text is seen growing, three times, while Stop is offered.
  const answer = lastAnswer(page);
  const seen = [];
  for (let i = 0; i < 3; i++) {
    const prev = seen.length ? seen[seen.length - 1] : 0;
    seen.push(await until('the answer to grow past ' + prev, async () => {
      const n = await textLen(answer);
      return n > prev ? n : 0;
    }));
    await sleep(150);
  }
  if (!(await page.isVisible('#stop')))
    assert.fail('the answer ended before Stop could be pressed (eos?): ' +
                await page.locator('#log .msg.assistant .meta').last().textContent());
  assert.ok(await page.isHidden('#send'));
  assert.equal(await page.getAttribute('#log', 'aria-busy'), 'true');

  await page.click('#stop');
  await page.waitForSelector('#send', { state: 'visible' });
  const stoppedAt = await textLen(answer);
  assert.ok(stoppedAt >= seen[2]);

  // The server saw the disconnect: the request counts as aborted and the worker is free.
  await until('finished_reason="abort" to count the stop', async () =>
    (await abortCount(open)) > aborted, 10000);
  await until('the worker to be idle', async () => (await workerState(open)) === 'idle', 10000);

  // ... and the page shows no more text for it.
  await sleep(500);
  assert.equal(await textLen(answer), stoppedAt, 'the answer kept growing after Stop');
  assert.match(await page.locator('#log .msg.assistant .meta').last().textContent(), /stopped/);
  assert.equal(await page.getAttribute('#log', 'aria-busy'), 'false');
  assert.ok(await page.isHidden('#error'), 'Stop showed an error: ' + await page.textContent('#error'));
});

test('a second turn sends the whole conversation and the system prompt, and shows tok/s', async () => {
  await setField(page, 'system-prompt', 'You are a terse pirate.');
  await setField(page, 'max-tokens', 40);
  await say(page, 'And another one?');
  const meta = page.locator('#log .msg.assistant').nth(1).locator('.meta');
  await meta.waitFor();
  const label = await meta.textContent();
  // 40 tokens, unless greedy decoding meets eos first on another machine's kernels.
  assert.match(label, /^(40 tokens · \d+\.\d tok\/s · max tokens reached|([2-9]|[1-3]\d) tokens · \d+\.\d tok\/s)$/);
  assert.ok((await textLen(lastAnswer(page))) > 0);

  const bodies = chatBodies(page);
  assert.equal(bodies.length, 2);
  const [first, second] = bodies;
  assert.deepEqual(first.messages, [{ role: 'user', content: 'Tell me a long story about the sea.' }]);
  assert.equal(first.stream, true);
  assert.deepEqual(first.stream_options, { include_usage: true });
  assert.equal(first.temperature, 0);
  assert.equal(first.max_tokens, 3000);
  assert.equal(first.model, MODEL);
  // The stopped answer is part of the history, as far as it got.
  const stopped = await answers(page).first().textContent();
  assert.deepEqual(second.messages, [
    { role: 'system', content: 'You are a terse pirate.' },
    { role: 'user', content: 'Tell me a long story about the sea.' },
    { role: 'assistant', content: stopped },
    { role: 'user', content: 'And another one?' },
  ]);
  assert.equal(second.max_tokens, 40);
  assert.deepEqual(page.errors, []);
});

test('on a phone-sized screen: no sideways scrolling, large tap targets; screenshot', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => { document.getElementById('settings').open = false; });
  assert.equal(await page.getAttribute('meta[name=viewport]', 'content'),
               'width=device-width, initial-scale=1, viewport-fit=cover');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `the page is ${width}px wide on a 390px screen`);
  for (const sel of ['#send', '#new-chat', '#input', '#settings summary']) {
    const box = await page.locator(sel).boundingBox();
    assert.ok(box && box.height >= 44 && box.width >= 44, `${sel} is a small tap target`);
    assert.ok(box.x >= 0 && box.x + box.width <= 390, `${sel} is off screen`);
  }
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot });
  assert.ok(readFileSync(shot).length > 1000);
  await page.setViewportSize({ width: 1024, height: 768 });
});

test('New chat starts over: the next request carries only the new message', async () => {
  await page.click('#new-chat');
  assert.equal(await page.locator('#log .msg').count(), 0);
  await setField(page, 'system-prompt', '');
  await setField(page, 'max-tokens', 3);
  await say(page, 'Hi');
  await page.locator('#log .msg.assistant .meta').waitFor();
  assert.deepEqual(chatBodies(page).pop().messages, [{ role: 'user', content: 'Hi' }]);
});

test('a conversation longer than the context: "conversation too long: start a new chat"', async () => {
  await page.click('#new-chat');
  // Over 4096 tokens with the byte-level vocabulary, whatever it merges; under max_body_size.
  const long = Array.from({ length: 3000 }, (_, i) => 'w' + i.toString(36)).join(' ');
  await say(page, long);
  await page.waitForSelector('#error.shown');
  assert.match(await page.textContent('#error'), /^Conversation too long: start a new chat/);
  // The refused turn is taken back: no bubbles, its text is in the input again to edit.
  assert.equal(await page.locator('#log .msg').count(), 0);
  assert.equal(await page.inputValue('#input'), long);
  await page.fill('#input', '');
});

test('a busy server (503 + Retry-After) and an error inside the stream read plainly', async () => {
  // Queue-full and worker-crash are not reproducible on demand: the responses are bitnetd's
  // documented shapes, served by the browser's request interception.
  const url = open.base + '/v1/chat/completions';
  await page.route(url, (r) => r.fulfill({
    status: 503, headers: { 'Retry-After': '7' }, contentType: 'application/json',
    body: JSON.stringify({ error: { message: 'the queue is full', type: 'server_error',
                                    param: null, code: 'queue_full' } }),
  }));
  await say(page, 'Hello?');
  await page.waitForSelector('#error.shown');
  assert.match(await page.textContent('#error'), /^Server busy, retry in 7 s\./);
  await page.unroute(url);

  const chunk = (content) => 'data: ' + JSON.stringify({ object: 'chat.completion.chunk',
    choices: [{ index: 0, delta: { content }, finish_reason: null }] }) + '\n\n';
  await page.route(url, (r) => r.fulfill({
    status: 200, contentType: 'text/event-stream',
    body: ': ping\n\n' + chunk('Hel') + ': ping\n\n' + chunk('lo') +
          'data: {"error": {"message": "the worker died", "type": "server_error", ' +
          '"param": null, "code": null}}\n\ndata: [DONE]\n\n',
  }));
  await page.fill('#input', '');
  await say(page, 'Hello?');
  await page.waitForSelector('#error.shown');
  assert.match(await page.textContent('#error'), /the worker died/);
  assert.equal(await lastAnswer(page).textContent(), 'Hello');
  await page.unroute(url);
  assert.deepEqual(page.errors, []);
});

test('a server with api_keys: 401 asks for the key, which is then sent as a Bearer token', async () => {
  const p = await openPage(locked);
  await until('the page to see the 401', async () =>
    (await p.textContent('#model-name')) === 'API key needed');
  assert.ok(await p.isVisible('#api-key'), 'no API key field after a 401');
  assert.match(await p.textContent('#error'), /needs an API key/);

  await setField(p, 'api-key', 'wrong');
  await p.locator('#api-key').press('Tab');            // "change": stored, models retried
  await setField(p, 'max-tokens', 3);
  const refused = p.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await say(p, 'Hi');
  assert.equal((await refused).status(), 401);
  await until('the refused message back in the input', async () =>
    (await p.inputValue('#input')) === 'Hi');
  assert.match(await p.textContent('#error'), /API key was refused/);
  assert.equal(await p.locator('#log .msg').count(), 0);

  await setField(p, 'api-key', KEY);
  await p.locator('#api-key').press('Tab');
  await until('the model name', async () => (await p.textContent('#model-name')).includes(MODEL));
  assert.equal(await p.evaluate(() => sessionStorage.getItem('bitnetd.apiKey')), KEY);
  await p.click('#send');
  await p.locator('#log .msg.assistant .meta').waitFor();
  assert.ok(await p.isHidden('#error'));
  const sent = p.requests.filter((r) => r.url().endsWith('/v1/chat/completions')).pop();
  assert.equal(await sent.headerValue('authorization'), `Bearer ${KEY}`);
  assert.deepEqual(p.errors, []);
  await p.close();
});
