// End-to-end scenarios in a real headless browser (Debian's chromium,
// driven by playwright-core) against a real mlq and Postgres.
//
//   node e2e/dashboard.mjs <mlq base URL> <screenshot folder>
//
// The Rust test `dashboard_e2e` (tests/api/dashboard.rs) starts mlq on a
// fresh database and runs this; `make test` runs that. Exits non-zero on
// the first failed check, printing what the page showed.

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, shots = 'e2e-results'] = process.argv.slice(2);
if (!base) {
  console.error('usage: node e2e/dashboard.mjs <mlq base URL> [screenshot folder]');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Requests this script makes itself, outside the browser, use alice's token.
const bearer = { authorization: `Bearer ${process.env.MLQ_TOKEN}` };

/** Two well-separated blobs in 4 dimensions: a model learns them easily. */
function blobsCsv(rows) {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const normal = () => Math.sqrt(-2 * Math.log(random() + 1e-12)) * Math.cos(2 * Math.PI * random());
  const lines = ['x1,x2,x3,x4,label'];
  for (let i = 0; i < rows; i++) {
    const label = i % 2;
    const centre = label ? 2 : -2;
    lines.push([0, 1, 2, 3].map(() => (centre + normal()).toFixed(4)).join(',') + `,${label}`);
  }
  return Buffer.from(lines.join('\n') + '\n');
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
// Refusals the scenarios provoke on purpose (logged out, a forged write)
// are the server answering as it should, not page errors.
const provoked = /Failed to load resource: the server responded with a status of 40[13]/;
page.on('console', (m) => m.type() === 'error' && !provoked.test(m.text()) && problems.push(`console: ${m.text()}`));

const sockets = [];
// Every feed connection goes through here, so the test can cut them.
await page.routeWebSocket(/\/api\/v1\/.*events/, (ws) => {
  ws.connectToServer();
  sockets.push(ws);
});

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    await page.screenshot({ path: join(shots, `${name}-failed.png`), fullPage: true }).catch(() => {});
    console.error(`FAIL ${name}: ${e.message}`);
    console.error((await page.locator('main').innerText().catch(() => '')).slice(0, 2000));
    await browser.close();
    process.exit(1);
  }
}

let modelTask;

await step('00-login', async () => {
  // A fresh browser is shown the login page, wherever it goes.
  await page.goto(`${base}/models`);
  await page.getByRole('heading', { name: 'Log in to mlq' }).waitFor();
  // A token that is not one is refused, in words.
  await page.getByLabel('API token').fill('mlq_not_a_token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').getByText('invalid, revoked or expired').waitFor();
  // The one-time link `mlq serve` prints logs in by itself...
  await page.goto(`${base}/login#code=${process.env.LOGIN_CODE}`);
  await page.getByRole('link', { name: /alice/ }).waitFor();
  check(!page.url().includes('code='), 'the spent code leaves the address bar');
  // ...once: a second use of it is refused.
  const again = await page.evaluate(async (code) => (await fetch('/api/v1/session', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ code }),
  })).status, process.env.LOGIN_CODE);
  check(again === 401, `a spent login code answered ${again}`);
  // The session cookie is HttpOnly: page scripts cannot read it.
  check(!(await page.evaluate(() => document.cookie)).includes('mlq_session'), 'the session cookie is readable by scripts');
  const cookie = (await context.cookies()).find((c) => c.name === 'mlq_session');
  check(cookie?.httpOnly && cookie.sameSite === 'Strict', `session cookie flags: ${JSON.stringify(cookie)}`);
  // A write with the cookie but without the CSRF token is refused.
  const forged = await page.evaluate(async () => (await fetch('/api/v1/tasks', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ command: 'sleep', params: { ms: 1 } }),
  })).status);
  check(forged === 403, `a write without the CSRF token answered ${forged}`);
});

await step('01-train-live', async () => {
  await page.goto(`${base}/new`);
  await page.getByLabel('Files to upload').setInputFiles({ name: 'blobs.csv', mimeType: 'text/csv', buffer: blobsCsv(4000) });
  await page.getByLabel('Target column').selectOption('label');
  await page.getByLabel('Epochs').fill('60');
  await page.getByRole('button', { name: 'Start train' }).click();
  await page.waitForURL(/\/tasks\/[0-9a-f-]{36}$/, { timeout: 30_000 });
  modelTask = page.url().split('/').pop();

  // Watch the progress bar move while the task runs, with no reload.
  const bar = page.getByRole('progressbar', { name: 'Task progress' });
  const seen = new Set();
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    seen.add(Number(await bar.getAttribute('aria-valuenow')));
    if ((await page.locator('section[data-status]').getAttribute('data-status')) === 'succeeded') break;
    await page.waitForTimeout(50);
  }
  check(
    (await page.locator('section[data-status]').getAttribute('data-status')) === 'succeeded',
    'the train task did not succeed in time',
  );
  const between = [...seen].filter((v) => v > 0 && v < 100);
  check(between.length >= 2, `the progress bar did not advance live (values seen: ${[...seen].join(', ')})`);
  check(Number(await bar.getAttribute('aria-valuenow')) === 100, 'progress ends at 100%');
  // The loss chart has a point per epoch.
  const charts = page.getByTestId('charts');
  await charts.waitFor();
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=charts]')?.getAttribute('data-epochs')) === 60);
  check((await charts.locator('svg .recharts-line').count()) >= 2, 'the charts draw lines');
  await page.getByRole('log').getByText('epoch 60/60').waitFor();
  await page.getByRole('link', { name: 'model.safetensors' }).waitFor();
});

await step('02-predict-download', async () => {
  await page.getByRole('link', { name: 'predict with it' }).click();
  await page.waitForURL(/\/new\?model=/);
  await page.getByLabel('Files to upload').setInputFiles({ name: 'new.csv', mimeType: 'text/csv', buffer: blobsCsv(200) });
  await page.getByRole('button', { name: 'Start predict' }).click();
  await page.waitForURL(/\/tasks\/[0-9a-f-]{36}$/);
  await page.locator('section[data-status=succeeded]').waitFor({ timeout: 60_000 });
  await page.getByRole('table', { name: 'First predictions' }).waitFor();
  // The task view re-renders as the live feed settles; a click that lands
  // on a link being replaced starts no download, so it is tried again.
  let download;
  for (let attempt = 1; !download; attempt++) {
    try {
      [download] = await Promise.all([
        page.waitForEvent('download', { timeout: 10_000 }),
        page.getByRole('link', { name: 'predictions.csv' }).click(),
      ]);
    } catch (e) {
      if (attempt === 3) throw e;
    }
  }
  const file = await download.path();
  const text = readFileSync(file, 'utf8');
  const lines = text.trim().split('\n');
  check(lines.length === 201, `predictions.csv has a header and 200 rows, got ${lines.length} lines`);
  check(/prediction/.test(lines[0]), `predictions.csv header: ${lines[0]}`);
});

await step('03-feed-recovers', async () => {
  await page.getByRole('navigation').getByRole('link', { name: 'Tasks' }).click();
  await page.getByRole('table').waitFor();
  await page.getByText('live', { exact: true }).waitFor();
  // Cut every feed connection, as a network failure would.
  for (const ws of sockets.splice(0)) await ws.close({ code: 4001, reason: 'cut by the test' });
  await page.getByRole('status').filter({ hasText: 'Connection to mlq lost' }).waitFor({ timeout: 10_000 });
  await page.screenshot({ path: join(shots, '03-feed-lost.png'), fullPage: true });
  // The page reconnects by itself, and live updates flow again.
  await page.getByText('live', { exact: true }).waitFor({ timeout: 20_000 });
  check((await page.getByRole('status').filter({ hasText: 'Connection to mlq lost' }).count()) === 0, 'the banner goes away');
  const res = await fetch(`${base}/api/v1/tasks/${modelTask}`, { headers: bearer });
  check(res.ok, 'the train task is still there');
  const created = await fetch(`${base}/api/v1/tasks`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer },
    body: JSON.stringify({ command: 'sleep', params: { ms: 300 } }),
  });
  check(created.status === 202, `a new task is accepted (${created.status})`);
  const { id } = await created.json();
  await page.locator(`tr[data-task="${id}"][data-status=succeeded]`).waitFor({ timeout: 30_000 });
});

await step('04-models', async () => {
  await page.getByRole('navigation').getByRole('link', { name: 'Models' }).click();
  await page.getByRole('table').getByText('label').first().waitFor();
  // Trained from blobs.csv: registered as "blobs", version 1.
  check((await page.getByRole('table').getByText('blobs@1', { exact: true }).count()) === 1, 'the model is listed as blobs@1');
});

await step('05-tokens-and-logout', async () => {
  // Mint a token in the dashboard, log out, and log back in with it.
  await page.getByRole('link', { name: /alice/ }).click();
  await page.getByLabel('Name').fill('e2e');
  await page.getByRole('button', { name: 'Create token' }).click();
  const token = (await page.getByTestId('minted-token').innerText()).trim();
  check(token.startsWith('mlq_'), `minted token: ${token}`);
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('heading', { name: 'Log in to mlq' }).waitFor();
  const after = await page.evaluate(async () => (await fetch('/api/v1/tasks')).status);
  check(after === 401, `after logging out the API answered ${after}`);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('link', { name: /alice/ }).waitFor();
  await page.getByRole('heading', { name: 'Tasks' }).waitFor();
});

await step('05b-api-reference', async () => {
  // The API page renders mlq's own OpenAPI document.
  await page.getByRole('navigation').getByRole('link', { name: 'API' }).click();
  await page.getByRole('heading', { name: 'API', exact: true }).waitFor();
  const submit = page.locator('details.operation', { hasText: 'Submits a task' });
  await submit.locator('summary').click();
  await submit.getByText('multipart/form-data').first().waitFor();
  check((await page.locator('details.operation').count()) > 20, 'the API page lists every operation');
});

await step('06-upload-draw-region-predict', async () => {
  const model = process.env.MODEL_FIXTURE;
  const image = process.env.IMAGE_FIXTURE;
  check(model && image, 'MODEL_FIXTURE and IMAGE_FIXTURE name the TorchScript model and the image');
  // Upload the model with its spec, and watch it validate.
  await page.getByRole('navigation').getByRole('link', { name: 'Models' }).click();
  await page.getByText('Upload a TorchScript model').click();
  await page.getByLabel('Model file').setInputFiles(model);
  await page.getByLabel('Name').fill('colours');
  await page.getByLabel('Input width').fill('16');
  await page.getByLabel('Input height').fill('16');
  await page.getByLabel('Class labels').fill('red\ngreen\nblue');
  await page.getByRole('button', { name: 'Upload and validate' }).click();
  const row = page.getByTestId('model-colours@1');
  await row.waitFor();
  await row.getByTestId('model-status').filter({ hasText: 'ready' }).waitFor({ timeout: 60_000 });

  // Predict with it on an image whose left half is red and right half blue,
  // drawing the region over the blue half with the mouse.
  await row.getByRole('button', { name: 'Predict' }).click();
  await page.waitForURL(/\/new\?model=/);
  await page.getByLabel('Files to upload').setInputFiles(image);
  const frame = page.getByRole('application');
  await page.getByText(/No region: the whole 40 × 20 image is used/).waitFor();
  const box = await frame.boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.1);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.8, box.y + box.height * 0.5, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.95, box.y + box.height * 0.9, { steps: 5 });
  await page.mouse.up();
  const value = await page.locator('#region-value').innerText();
  check(/^From \(2[3-5], [12]\) to \(3[7-9], 1[7-9]\)/.test(value), `the drawn region reads back: ${value}`);
  // The keyboard adjusts it too.
  await frame.focus();
  await page.keyboard.press('ArrowLeft');
  await page.getByRole('button', { name: 'Start predict' }).click();
  await page.waitForURL(/\/tasks\/[0-9a-f-]{36}$/);
  await page.locator('section[data-status=succeeded]').waitFor({ timeout: 60_000 });
  const result = page.getByTestId('image-result').first();
  await result.waitFor();
  const text = await result.innerText();
  check(/blue/.test(text.split('\n').find((l) => /%/.test(l)) ?? ''), `the top class is blue: ${text}`);
  check((await result.getByRole('img', { name: /^region / }).count()) === 1, 'the region is drawn over the image');
});

await browser.close();
if (problems.length) {
  console.error(`FAIL the page reported errors:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('all dashboard scenarios passed');
