// A member away longer than the room keeps a place, in headless Chromium: against a running
// balint-room at BASE_URL whose reconnect grace is GRACE_SECS, a leader on a laptop and a member
// in a window beside the video call. The member raises her hand, her browser goes offline past
// the grace, and when it is back online her page rejoins by itself and tells her, in words, how
// long the room keeps a place and what she lost (her raised hand); the leader's queue has let go
// of her hand meanwhile. Her network is dropped through a WebSocket relay, as Wi-Fi drops.
//
//   node released.mjs BASE_URL GRACE_SECS [SCREENSHOT_DIR]
//
// Run by the Rust test tests/tests/browser.rs, which starts the server. Exits 0 when every step
// passed; otherwise prints the failed step and exits 1. Every wait has a deadline; no request may
// leave the loopback interface; any Content-Security-Policy violation, uncaught error or axe-core
// violation fails the run.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TIMEOUT, accessible, check, launchChromium, loopbackOnly, waitIn, watchPolicy } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const [base, graceArg] = process.argv.slice(2, 4);
const shotDir = process.argv[4] || path.join(here, '..', '..', 'target', 'browser-screenshots');
const grace = Number(graceArg);

if (!base || !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(base) || !(grace > 0)) {
  console.error('usage: node released.mjs http://127.0.0.1:PORT GRACE_SECS [screenshot-dir] (loopback only)');
  process.exit(2);
}

const problems = [];
const pages = {};

// Dana's WebSockets go through a relay that can drop like Wi-Fi: `drop` closes her sockets on
// both ends, as a lost connection does, and leaves the ones opened while down unanswered;
// after `restore`, new sockets are forwarded again.
const network = { down: false, links: [] };

function relayWebSocket(ws) {
  const link = { ws, server: null, cut: network.down };
  network.links.push(link);
  if (link.cut) return;
  link.server = ws.connectToServer();
  ws.onMessage((message) => { if (!link.cut) link.server.send(message); });
  link.server.onMessage((message) => { if (!link.cut) ws.send(message); });
  ws.onClose((code, reason) => { if (!link.cut) link.server.close({ code, reason }); });
  link.server.onClose((code, reason) => { if (!link.cut) ws.close({ code, reason }); });
}

function dropNetwork() {
  network.down = true;
  for (const link of network.links.filter((l) => !l.cut)) {
    link.cut = true;
    link.server.close();
    link.ws.close({ code: 1001, reason: '' });
  }
}
let step = 'launch';
const browser = await launchChromium();

/** A page in a context of its own that may reach only loopback, its errors watched. */
async function newPage(who, options) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(TIMEOUT);
  await loopbackOnly(context, who, problems);
  await watchPolicy(context, who, problems);
  if (who === 'dana') await context.routeWebSocket(/\/ws\//, relayWebSocket);
  const page = await context.newPage();
  page.on('pageerror', (error) => problems.push(`${who}: uncaught error in the page: ${error.message}`));
  pages[who] = page;
  return page;
}

async function join(page, url, name) {
  await page.goto(url);
  await page.getByLabel('Your name').fill(name);
  await page.getByRole('button', { name: 'Join' }).click();
  await waitIn(page, `${name} is in the room`, () => !document.getElementById('room').hidden
    && document.getElementById('connection').textContent === 'Connected');
}

/** The names in the hand queue, as the page shows them. */
function queueOf(page) {
  return page.$$eval('#queue li .name', (items) => items.map((li) => li.textContent));
}

try {
  await mkdir(shotDir, { recursive: true });
  step = 'set up the room';
  const created = await fetch(`${base}/api/rooms`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ title: 'Thursday group' }),
  });
  check(created.status === 201, `POST /api/rooms answered ${created.status}`);
  const room = await created.json();
  const lea = await newPage('lea', { viewport: { width: 1366, height: 900 }, locale: 'en-GB' });
  const dana = await newPage('dana', { viewport: { width: 480, height: 900 }, locale: 'en-GB' });
  await join(lea, room.leader_url, 'Lea');
  await join(dana, room.invite_url, 'Dana');

  step = 'Dana raises her hand';
  await dana.getByRole('button', { name: 'Raise hand' }).click();
  await waitIn(lea, 'Lea sees Dana in the queue', () =>
    [...document.querySelectorAll('#queue li .name')].some((n) => n.textContent === 'Dana'));

  step = 'Dana is offline past the grace';
  const offlineAt = Date.now();
  // Her browser knows it is offline, as a laptop whose Wi-Fi dropped does.
  await dana.context().setOffline(true);
  dropNetwork();
  await waitIn(dana, 'Dana is told she is reconnecting', () => !document.getElementById('offline').hidden);
  // Her place is kept for the grace, then let go of: her hand leaves the queue.
  await waitIn(lea, 'the queue lets go of Dana\'s hand', () => document.querySelectorAll('#queue li').length === 0,
    undefined, grace * 1000 + TIMEOUT);
  check(Date.now() - offlineAt >= grace * 1000, `the hand went after ${Date.now() - offlineAt} ms, before the grace`);
  check(!dana.isClosed() && await dana.isHidden('#released-notice'), 'nothing is said before she is back');

  step = 'Dana is back';
  // Back online: the page tries again at once, without waiting out its backoff.
  network.down = false;
  await dana.context().setOffline(false);
  await waitIn(dana, 'Dana is connected again', () => document.getElementById('offline').hidden
    && document.getElementById('connection').textContent === 'Connected');
  await waitIn(dana, 'Dana is told what the room let go of', () => !document.getElementById('released-notice').hidden);
  const told = await dana.textContent('#released-text');
  const seconds = grace === 1 ? '1 second' : `${grace} seconds`;
  check(told === `You were away longer than the room keeps a place (${seconds}), so you rejoined as a new member: `
    + 'your raised hand was lowered.', `the notice: ${told}`);
  // Beside the call, the notice is in view as the page stands.
  const box = await dana.locator('#released-notice').boundingBox();
  check(box && box.y >= 0 && box.y + box.height <= 900 && box.x >= 0 && box.x + box.width <= 480,
    `the notice is in view at 480×900: ${JSON.stringify(box)}`);
  await dana.screenshot({ path: path.join(shotDir, '16-released-480x900.png') });
  await accessible(dana, '16-released-480x900', problems);
  check(JSON.stringify(await queueOf(lea)) === '[]', 'the queue stays empty');
  check(await dana.getByRole('button', { name: 'Raise hand' }).isEnabled(), 'Dana can raise her hand again');
  await waitIn(lea, 'Lea sees Dana back in the room', () =>
    [...document.querySelectorAll('#members li')].some((li) => li.textContent.includes('Dana')));

  step = 'Dana closes the notice';
  await dana.getByRole('button', { name: 'OK' }).click();
  await waitIn(dana, 'the notice is gone', () => document.getElementById('released-notice').hidden);

  check(problems.length === 0, problems.join('\n'));
  console.log(JSON.stringify({ ok: true, screenshots: shotDir }));
} catch (error) {
  console.error(`FAILED at step "${step}": ${error.message}`);
  for (const problem of problems) console.error(problem);
  try {
    for (const [who, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(shotDir, `released-failure-${who}.png`), fullPage: true });
    }
    console.error(`screenshots of the failure: ${shotDir}/released-failure-*.png`);
  } catch {
    // The browser may be gone; the message above is what matters.
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
