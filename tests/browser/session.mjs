// A whole Balint session in headless Chromium: a leader and two members, each in their own
// browser context, against a running balint-room at BASE_URL.
//
//   node session.mjs BASE_URL [SCREENSHOT_DIR]
//
// Run by the Rust test tests/tests/browser.rs, which starts the server. Exits 0 when every step
// passed; otherwise prints the failed step and exits 1. A screenshot of every page at every step
// goes to SCREENSHOT_DIR (default: target/browser-screenshots). Every wait has a deadline; no
// request may leave the loopback interface. The server's Content-Security-Policy is in force: every
// page reports its violations (securitypolicyviolation) and console errors, and any violation fails
// the run. Every screenshot is also checked with axe-core (pinned in package.json): an accessibility
// violation on any screen fails the run. The room is looked at in three sizes (a laptop, a window
// beside the call, a phone): the essentials of the meeting must be in view without scrolling, and
// the keyboard shortcuts (Alt+Y the hand, Alt+N the next speaker, Escape, ?) must work. Last, a
// German session with a French member who picks her language in the header.

import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  TIMEOUT, accessible as axeCheck, check, launchChromium, loopbackOnly, waitIn, watchPolicy as watchContextPolicy,
} from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.argv[2];
const shotDir = process.argv[3] || path.join(here, '..', '..', 'target', 'browser-screenshots');
// The three sizes the room must work at: a laptop, a window beside the video call, a phone.
const SIZES = [
  { name: 'laptop', width: 1440, height: 900 },
  { name: 'beside-call', width: 480, height: 900 },
  { name: 'phone', width: 390, height: 844 },
];

if (!base || !/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(base)) {
  console.error('usage: node session.mjs http://127.0.0.1:PORT [screenshot-dir] (loopback only)');
  process.exit(2);
}

const pages = {};
const problems = [];
/** Every WebSocket URL a page asked for, and every frame it sent, for the sealed-room checks. */
const socketUrls = [];
const framesSent = [];
const consoleErrors = [];
let step = 'launch';

// Ben's WebSockets go through a relay that can stall like a real network: it stops forwarding in
// both directions without closing either side, for the sockets open at that moment and for those
// opened while stalled. After `heal`, new sockets are forwarded again; stalled ones stay dead.
const relay = { stalled: false, links: [] };

function relayWebSocket(ws) {
  const link = { frozen: relay.stalled };
  relay.links.push(link);
  if (link.frozen) return; // Opened into a dead network: nothing ever answers.
  const server = ws.connectToServer();
  ws.onMessage((message) => { if (!link.frozen) server.send(message); });
  server.onMessage((message) => { if (!link.frozen) ws.send(message); });
  ws.onClose((code, reason) => { if (!link.frozen) server.close({ code, reason }); });
  server.onClose((code, reason) => { if (!link.frozen) ws.close({ code, reason }); });
}

function stallRelay() {
  relay.stalled = true;
  for (const link of relay.links) link.frozen = true;
}

function healRelay() {
  relay.stalled = false;
}

async function shoot(name) {
  for (const [who, page] of Object.entries(pages)) {
    if (page.url() === 'about:blank') continue;
    await page.screenshot({ path: path.join(shotDir, `${name}-${who}.png`), fullPage: true });
    await accessible(page, `${name}-${who}`);
  }
}

/** Runs axe-core on the page as it stands; any violation fails the run. */
function accessible(page, screen) {
  return axeCheck(page, screen, problems);
}

/** Opens the leader tools panel if it is closed. */
async function openTools(page) {
  if (await page.isHidden('#tools')) await page.getByRole('button', { name: 'Leader tools' }).click();
  await waitIn(page, 'the leader tools are open', () => !document.getElementById('tools').hidden);
}

/**
 * Checks that each selector's element is inside the viewport with the page scrolled to the top,
 * and that Tab would visit the page's controls in the order they are seen: top to bottom in one
 * column; on a wide screen the meeting's column first, then the board's.
 */
async function inView(page, who, size, selectors) {
  const report = await page.evaluate((wanted) => {
    window.scrollTo(0, 0);
    const out = { missing: [], outside: [], order: [], positiveTabindex: [] };
    for (const selector of wanted) {
      const node = document.querySelector(selector);
      const box = node?.getBoundingClientRect();
      if (!node || !box || box.width === 0 || box.height === 0) out.missing.push(selector);
      else if (box.top < 0 || box.left < 0 || box.bottom > innerHeight || box.right > innerWidth) {
        out.outside.push(`${selector} at ${Math.round(box.left)},${Math.round(box.top)}-${Math.round(box.right)},${Math.round(box.bottom)}`);
      }
    }
    out.positiveTabindex = [...document.querySelectorAll('[tabindex]')].filter((n) => n.tabIndex > 0).map((n) => n.id || n.tagName);
    const tabbable = [...document.querySelectorAll('a[href], button, input, select, textarea, summary, [tabindex]')]
      .filter((n) => n.tabIndex >= 0 && !n.disabled && n.checkVisibility({ visibilityProperty: true })
        && !n.closest('[hidden], dialog:not([open]), #tools')
        && !(n.closest('details:not([open])') && n.tagName !== 'SUMMARY'));
    const board = document.getElementById('board');
    const wide = innerWidth >= 1024;
    let last = null;
    for (const node of tabbable) {
      const box = node.getBoundingClientRect();
      const column = wide && board.contains(node) ? 1 : 0;
      const at = { column, top: box.top + scrollY, name: node.id || node.textContent.trim().slice(0, 20) || node.tagName };
      if (last && (at.column < last.column || (at.column === last.column && at.top < last.top - 8))) {
        out.order.push(`${last.name} (${Math.round(last.top)}) before ${at.name} (${Math.round(at.top)})`);
      }
      last = at;
    }
    return out;
  }, selectors);
  const where = `${who} at ${size.width}×${size.height}`;
  check(report.missing.length === 0, `${where}: not shown: ${report.missing.join(', ')}`);
  check(report.outside.length === 0, `${where}: not in view without scrolling: ${report.outside.join('; ')}`);
  check(report.positiveTabindex.length === 0, `${where}: positive tabindex on ${report.positiveTabindex.join(', ')}`);
  check(report.order.length === 0, `${where}: the tab order leaves the visual order: ${report.order.join('; ')}`);
}

/** The focused element's id, or its tag. */
function focused(page) {
  return page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
}

/** The names in the hand queue, as a page shows them. */
function queueOf(page) {
  return page.$$eval('#queue li .name', (items) => items.map((li) => li.textContent.replace(/ \(you\)$/, '')));
}

async function sameQueueEverywhere(expected) {
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the queue ${JSON.stringify(expected)}`, (names) => {
      const shown = [...document.querySelectorAll('#queue li .name')]
        .map((li) => li.textContent.replace(/ \(you\)$/, ''));
      return JSON.stringify(shown) === JSON.stringify(names);
    }, expected);
    check(JSON.stringify(await queueOf(page)) === JSON.stringify(expected), `${who}'s queue`);
  }
}

async function join(page, url, name) {
  if (url) await page.goto(url);
  await page.getByLabel('Your name').fill(name);
  await page.getByRole('button', { name: 'Join' }).click();
  await waitIn(page, `${name} is in the room`, () => {
    const room = document.getElementById('room');
    return room && !room.hidden && document.getElementById('connection').textContent === 'Connected';
  });
}

/** What the page keeps: storage, IndexedDB, the DOM's board and the wasm client's board. */
function leftovers(page) {
  return page.evaluate(async () => {
    const { roomClient } = await import('/assets/room.js');
    const client = roomClient();
    const databases = indexedDB.databases ? await indexedDB.databases() : [];
    return {
      localStorage: localStorage.length,
      sessionStorage: sessionStorage.length,
      indexedDB: databases.length,
      boardInDom: Boolean(document.getElementById('board') || document.getElementById('notes')
        || document.querySelector('.obs')),
      clientBoardEmpty: client ? client.boardIsEmpty() : true,
      clientNotes: client ? client.notes() : '',
      clientCards: client ? client.cards().length : 0,
      clientState: client ? client.state() : null,
    };
  });
}

/** Reports every Content-Security-Policy violation of the context's pages as a problem. */
function watchPolicy(context, who) {
  return watchContextPolicy(context, who, problems);
}

/** Uncaught errors are problems; console errors are kept, and a CSP one is a problem too. */
function watchPage(page, who) {
  page.on('websocket', (ws) => {
    socketUrls.push(ws.url());
    ws.on('framesent', (frame) => framesSent.push(Buffer.from(frame.payload)));
  });
  page.on('pageerror', (error) => problems.push(`${who}: uncaught error in the page: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    consoleErrors.push(`${who}: ${text}`);
    if (/Content Security Policy/i.test(text)) problems.push(`${who}: CSP violation in the console: ${text}`);
  });
}

const browser = await launchChromium();

try {
  // A laptop for the leader, a tablet in portrait for Ann, a small laptop for Ben.
  const viewports = {
    leader: { width: 1366, height: 900 },
    ann: { width: 834, height: 1194 },
    ben: { width: 1280, height: 800 },
  };
  for (const [who, viewport] of Object.entries(viewports)) {
    const context = await browser.newContext({ viewport });
    context.setDefaultTimeout(TIMEOUT);
    await loopbackOnly(context, who, problems);
    await watchPolicy(context, who);
    if (who === 'ben') await context.routeWebSocket(/\/ws\//, relayWebSocket);
    const page = await context.newPage();
    watchPage(page, who);
    pages[who] = page;
  }
  const { leader, ann, ben } = pages;
  await mkdir(shotDir, { recursive: true });

  // 1. The leader creates a room on the front page and gets the links.
  step = 'create a room on /';
  const front = await leader.goto(`${base}/`);
  const policy = front.headers()['content-security-policy'] || '';
  for (const directive of ["script-src 'self' 'wasm-unsafe-eval'", "frame-ancestors 'none'", "base-uri 'none'"]) {
    check(policy.includes(directive), `the page is served with the CSP directive ${directive}: ${policy}`);
  }
  await leader.getByRole('textbox', { name: /^Title/ }).fill('Tuesday group');
  check(await leader.getByLabel(/Ephemeral/).isChecked(), 'ephemeral is the default');
  check(await leader.getByLabel(/Balint session/).isChecked(), 'the Balint template is the default');
  check(await leader.getByRole('checkbox', { name: /Sealed/ }).isChecked(), 'a new ephemeral room is sealed by default');
  await leader.getByRole('button', { name: 'Create the room' }).click();
  await waitIn(leader, 'the links are shown', () => !document.getElementById('created').hidden);
  const leaderLink = await leader.getByLabel(/^Leader link/).inputValue();
  const inviteLink = await leader.getByLabel(/^Invite link/).inputValue();
  check(leaderLink.startsWith(`${base}/r/`) && leaderLink.includes('#t='), `leader link: ${leaderLink}`);
  check(inviteLink.startsWith(`${base}/r/`) && inviteLink.includes('#t='), `invite link: ${inviteLink}`);
  check(leaderLink !== inviteLink, 'two different links');
  // The room key, drawn in the browser, rides in the links' fragment: the same on each link.
  const key = /#t=[^&]+&k=([A-Za-z0-9_-]{43})$/.exec(leaderLink)?.[1];
  check(key && inviteLink.endsWith(`&k=${key}`), `the links carry the room key: ${leaderLink} ${inviteLink}`);
  await shoot('01-created');

  // 2. Everyone joins through their link.
  step = 'join through both links';
  await leader.getByRole('link', { name: 'Open the room as leader' }).click();
  await join(leader, null, 'Lea');
  await join(ann, inviteLink, 'Ann');
  await join(ben, inviteLink, 'Ben');
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees three people`, () => document.querySelectorAll('#members li').length === 3);
    check((await page.textContent('#room-title')) === 'Tuesday group', `${who} sees the title`);
    const notice = await page.textContent('#ephemeral-notice');
    check(/screenshots/.test(notice) && /copying/.test(notice), `${who} is told what ephemeral cannot prevent`);
    check(await page.isVisible('#sealed-notice'), `${who} is told the room is sealed`);
  }
  check(await leader.isVisible('#next-speaker'), 'the leader has the leader controls');
  check(!(await ann.isVisible('#lead-row')), 'a member has no leader controls');
  await shoot('02-joined');

  // 3. A member types in the notes; the leader sees it. A card travels too.
  step = 'a member writes in the notes';
  const typed = 'Dr K. dreads the Monday visits. ';
  await ann.getByLabel('Running notes').click();
  await ann.keyboard.type(typed);
  for (const who of ['leader', 'ben']) {
    await waitIn(pages[who], `${who} sees Ann's notes`, (text) => document.getElementById('notes').value === text, typed);
  }
  // The leader types at the start while Ann keeps typing at her caret: both edits survive and
  // Ann's caret stays with her text.
  await leader.getByLabel('Running notes').focus();
  await leader.evaluate(() => document.getElementById('notes').setSelectionRange(0, 0));
  await leader.keyboard.type('Case 1: ');
  await ann.keyboard.type('She feels guilty.');
  const expectedNotes = `Case 1: ${typed}She feels guilty.`;
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} has both edits`, (text) => document.getElementById('notes').value === text, expectedNotes);
  }
  // Sealed: nothing any page sent carried the notes in clear, and no socket was asked for with
  // the key (nor does any frame carry it).
  check(framesSent.length > 0 && socketUrls.length >= 3, `the pages' sockets were watched (${framesSent.length})`);
  for (const marker of ['dreads the Monday', 'feels guilty', 'Case 1', 'Tuesday group', key]) {
    check(!framesSent.some((frame) => frame.includes(marker)), `no frame sent carries "${marker}" in clear`);
  }
  check(socketUrls.every((url) => url.includes('sealed=1') && !url.includes('k=') && !url.includes(key)),
    `no socket URL carries the key: ${socketUrls.join(' ')}`);
  // Names travel sealed too: never in a socket's URL.
  check(socketUrls.every((url) => !url.includes('name=')), `no socket URL carries a name: ${socketUrls.join(' ')}`);
  const annCaret = await ann.evaluate(() => document.getElementById('notes').selectionEnd);
  check(annCaret === expectedNotes.length, `Ann's caret stayed at the end of her text (at ${annCaret})`);
  // Who is writing where: while both type, each sees the other's name at their caret (on the
  // first line of the notes, where both are), and in words under the notes.
  for (const [who, other] of [['leader', 'Ann'], ['ann', 'Lea']]) {
    await waitIn(pages[who], `${who} sees ${other}'s name at the caret in the notes`, (name) => {
      const notes = document.getElementById('notes').getBoundingClientRect();
      const at = [...document.querySelectorAll('#notes ~ .carets .caret')].some((caret) => {
        const box = caret.getBoundingClientRect();
        return caret.textContent === name && caret.checkVisibility()
          && box.top >= notes.top && box.top < notes.top + 48 && box.left > notes.left && box.left < notes.right;
      });
      return at && document.getElementById('notes-writers').textContent.includes(`${name} is writing in the notes.`);
    }, other);
  }

  await ann.getByLabel('New observation').fill('I felt tired just listening.');
  await ann.getByRole('button', { name: 'Add observation' }).click();
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the observation card`, () => {
      const card = document.querySelector('#cards .obs');
      return card && card.querySelector('textarea').value === 'I felt tired just listening.'
        && /Ann · Gathering/.test(card.querySelector('.obs-head').textContent);
    });
  }
  // Ben clicks into the card: the others see his name on it.
  await ben.locator('#cards .obs textarea').first().click();
  for (const who of ['leader', 'ann']) {
    await waitIn(pages[who], `${who} sees Ben writing in the card`, () =>
      /Ben is writing/.test(document.querySelector('#cards .obs .obs-writers').textContent));
  }
  await shoot('03-notes');

  // 4. Hands go up; everyone sees the same queue, and each their own place.
  step = 'raise hands';
  await ann.getByRole('button', { name: 'Raise hand' }).click();
  await sameQueueEverywhere(['Ann']);
  // Ben uses the keyboard only.
  await ben.getByRole('button', { name: 'Raise hand' }).focus();
  await ben.keyboard.press('Enter');
  await sameQueueEverywhere(['Ann', 'Ben']);
  await waitIn(ben, 'Ben is told he is 2nd', () => /you are 2nd/.test(document.getElementById('my-position').textContent));
  await waitIn(ann, 'Ann is told she is 1st', () => /you are 1st/.test(document.getElementById('my-position').textContent));
  await shoot('04-hands');

  // A reload (or a dropped connection) rejoins as the same member, hand still up.
  step = 'reload and resume';
  const benBefore = await ben.evaluate(async () => (await import('/assets/room.js')).roomClient().memberId());
  await ben.reload();
  await waitIn(ben, 'Ben is back without the join form', () => {
    const room = document.getElementById('room');
    return room && !room.hidden && document.getElementById('connection').textContent === 'Connected';
  });
  const benAfter = await ben.evaluate(async () => (await import('/assets/room.js')).roomClient().memberId());
  check(benBefore && benBefore === benAfter, `Ben resumed as the same member (${benBefore} → ${benAfter})`);
  await sameQueueEverywhere(['Ann', 'Ben']);
  await waitIn(ben, 'Ben is still 2nd', () => /you are 2nd/.test(document.getElementById('my-position').textContent));
  await waitIn(ben, 'Ben has the board again', (text) => document.getElementById('notes').value === text, expectedNotes);
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} still sees three people`, () => document.querySelectorAll('#members li').length === 3);
  }

  // A stalled network: Ben's sockets stop forwarding without closing. His page notices the
  // silence within the limit (15 s), says why, makes the room's controls unavailable, keeps what
  // he writes meanwhile, and "Reconnect now" brings him back at once when the network is back.
  step = 'a stalled connection';
  stallRelay();
  await waitIn(ben, 'Ben is told that the server does not answer', () => {
    const bar = document.getElementById('offline');
    return !bar.hidden && /No answer from the server/.test(bar.textContent);
  }, undefined, 15_000 + TIMEOUT);
  check(/Unavailable while reconnecting/.test(await ben.textContent('#offline')), 'Ben is told what is unavailable');
  check(await ben.getByRole('button', { name: 'Lower my hand' }).isDisabled(), "Ben's hand is unavailable");
  check(await ben.getByRole('button', { name: 'Reconnect now' }).isVisible(), 'a Reconnect now button');
  await shoot('05a-stalled');
  const offlineCard = 'Written while the network was down.';
  await ben.getByLabel('New observation').fill(offlineCard);
  await ben.getByRole('button', { name: 'Add observation' }).click();
  healRelay();
  try {
    await ben.getByRole('button', { name: 'Reconnect now' }).click({ timeout: 3_000 });
  } catch (e) {
    // Once the network is back, the page's own retry may come first: then the bar and its
    // button are gone, and there is nothing left to click.
    check(await ben.evaluate(() => document.getElementById('offline').hidden),
      `"Reconnect now" could not be clicked, and Ben is still offline: ${e.message.split('\n')[0]}`);
  }
  // An attempt stuck on the dead network would take up to 15 s to give up: the button does not wait.
  await waitIn(ben, 'Ben is back at once', () => document.getElementById('connection').textContent === 'Connected'
    && document.getElementById('offline').hidden, undefined, 5_000);
  check(!(await ben.getByRole('button', { name: 'Lower my hand' }).isDisabled()), "Ben's hand is available again");
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the card Ben wrote while reconnecting`, (text) =>
      [...document.querySelectorAll('#cards .obs textarea')].some((t) => t.value === text), offlineCard);
  }
  await sameQueueEverywhere(['Ann', 'Ben']);
  // The browser going online again, or the page becoming visible after sleep, reconnects at
  // once too, without waiting out the stuck attempt (up to 15 s) or the backoff.
  for (const [how, wake] of [
    ['the browser goes online', () => window.dispatchEvent(new Event('online'))],
    ['the page becomes visible', () => document.dispatchEvent(new Event('visibilitychange'))],
  ]) {
    step = `a stall, then ${how}`;
    stallRelay();
    await waitIn(ben, `Ben notices the stall before ${how}`, () => {
      const bar = document.getElementById('offline');
      return !bar.hidden && /No answer from the server/.test(bar.textContent);
    }, undefined, 15_000 + TIMEOUT);
    // Heal only once the page's next attempt went into the dead network: left alone, that
    // attempt would hang until the silence limit (15 s) before the page tried again.
    const opened = relay.links.length;
    const deadline = Date.now() + TIMEOUT;
    while (relay.links.length === opened) {
      check(Date.now() < deadline, `Ben's page tried again while the network was stalled (${how})`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    healRelay();
    await ben.evaluate(wake);
    await waitIn(ben, `Ben is back at once when ${how}`, () => document.getElementById('connection').textContent === 'Connected'
      && document.getElementById('offline').hidden, undefined, 5_000);
  }
  await sameQueueEverywhere(['Ann', 'Ben']);

  // 5. The leader gives the floor with "Next speaker".
  step = 'next speaker';
  await leader.getByRole('button', { name: 'Next speaker' }).click();
  await sameQueueEverywhere(['Ben']);
  for (const [who, page] of Object.entries(pages)) {
    const expected = who === 'ann' ? 'You have the floor.' : 'Ann has the floor.';
    await waitIn(page, `${who} sees Ann on the floor`, (text) => document.getElementById('floor-holder').textContent === text, expected);
    await waitIn(page, `${who} sees the speaking timer`, () => /Speaking for \d+:\d\d/.test(document.getElementById('floor-timer').textContent));
  }
  await waitIn(ben, 'Ben is now 1st', () => /you are 1st/.test(document.getElementById('my-position').textContent));
  await shoot('05-floor');

  // The keyboard: Alt+Y raises and lowers the hand, even while typing on the board (it changes
  // nothing there); Alt+N gives leaders the next speaker; "?" opens the help except in a text
  // field; Escape closes the help and the leader tools, and focus goes back where it was.
  step = 'the keyboard';
  await ann.getByLabel('Running notes').focus();
  await ann.keyboard.press('Alt+y');
  await sameQueueEverywhere(['Ben', 'Ann']);
  await waitIn(ann, 'Ann is told she is 2nd', () => /you are 2nd/.test(document.getElementById('my-position').textContent));
  await ann.keyboard.press('Alt+y');
  await sameQueueEverywhere(['Ben']);
  await ann.keyboard.press('Alt+y');
  await sameQueueEverywhere(['Ben', 'Ann']);
  check((await ann.inputValue('#notes')) === expectedNotes, 'the shortcut typed nothing on the board');
  await ann.keyboard.press('?');
  check(!(await ann.evaluate(() => document.getElementById('keys-dialog').open)), '"?" in the notes does not open the help');
  await ann.keyboard.press('Backspace');
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} has the notes as before`, (text) => document.getElementById('notes').value === text, expectedNotes);
  }
  await ann.locator('#hand').focus();
  await ann.keyboard.press('Shift+?');
  await waitIn(ann, 'the keyboard help opens', () => document.getElementById('keys-dialog').open);
  check(/Alt\s*\+\s*Y/.test(await ann.textContent('#keys-dialog')), 'the help names Alt+Y');
  await shoot('05b-keys');
  await ann.keyboard.press('Escape');
  await waitIn(ann, 'Escape closes the help', () => !document.getElementById('keys-dialog').open);
  check((await focused(ann)) === 'hand', `focus is back on the hand button (on ${await focused(ann)})`);

  await leader.getByLabel('Running notes').focus();
  await leader.keyboard.press('Alt+n');
  await sameQueueEverywhere(['Ann']);
  await waitIn(ann, 'Ben has the floor', () => document.getElementById('floor-holder').textContent === 'Ben has the floor.');
  await leader.keyboard.press('Alt+n');
  await sameQueueEverywhere([]);
  await waitIn(ben, 'Ann has the floor again', () => document.getElementById('floor-holder').textContent === 'Ann has the floor.');
  await ben.getByLabel('Running notes').focus();
  await ben.keyboard.press('Alt+y');
  await sameQueueEverywhere(['Ben']);
  check((await leader.inputValue('#notes')) === expectedNotes, "the leader's shortcut typed nothing on the board");

  await leader.locator('#tools-button').focus();
  await leader.keyboard.press('Enter');
  await waitIn(leader, 'the leader tools open', () => !document.getElementById('tools').hidden);
  check(await leader.evaluate(() => document.getElementById('tools').contains(document.activeElement)), 'focus moves into the tools');
  check((await leader.getAttribute('#tools-button', 'aria-expanded')) === 'true', 'the tools button says it is expanded');
  await leader.keyboard.press('Tab');
  await leader.keyboard.press('Escape');
  await waitIn(leader, 'Escape closes the leader tools', () => document.getElementById('tools').hidden);
  check((await focused(leader)) === 'tools-button', `focus is back on the tools button (on ${await focused(leader)})`);

  // A phase change lowers the hands and releases the floor (the leader setting, on by default).
  // In the new phase fair order puts Ben, who has not spoken in it, ahead of Ann, and each row
  // says why; beside "Next speaker" the leader sees whom it would give the floor to.
  step = 'phase reset, fair order and the next speaker preview';
  await openTools(leader);
  check(await leader.getByLabel('Lower hands and release the floor when the phase changes').isChecked(),
    'the phase reset is on by default');
  await leader.getByLabel(/Fair order/).check();
  await leader.getByRole('button', { name: 'Questions' }).click();
  await leader.getByRole('button', { name: 'Close' }).click();
  await sameQueueEverywhere([]);
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the floor released in the new phase`, () =>
      document.getElementById('phase-name').textContent === 'Questions'
      && document.getElementById('floor-holder').textContent === 'Nobody has the floor.');
  }
  await ann.getByRole('button', { name: 'Raise hand' }).click();
  await sameQueueEverywhere(['Ann']);
  await waitIn(leader, 'the preview names Ann', () => document.getElementById('next-preview').textContent.includes('Next: Ann'));
  await leader.getByRole('button', { name: 'Next speaker' }).click();
  await waitIn(ann, 'Ann has the floor', () => document.getElementById('floor-holder').textContent === 'You have the floor.');
  await ann.getByRole('button', { name: 'Raise hand' }).click();
  await sameQueueEverywhere(['Ann']);
  await ben.getByRole('button', { name: 'Raise hand' }).click();
  await sameQueueEverywhere(['Ben', 'Ann']);
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees why fair order moved the hands`, () => {
      const why = [...document.querySelectorAll('#queue li')].map((li) =>
        (li.querySelector('.why').checkVisibility() ? li.querySelector('.why').textContent : ''));
      return why[0] === 'ahead: has not spoken in this phase yet' && why[1] === 'after others: has spoken in this phase';
    });
    await waitIn(page, `${who} sees everyone here in the queue`, () =>
      [...document.querySelectorAll('#queue li .badges')].every((b) => b.textContent === '· here'));
  }
  await waitIn(leader, 'the preview names Ben', () => document.getElementById('next-preview').textContent.includes('Next: Ben'));
  await shoot('05c-fair-order');

  // 6. Ben presents; in reflection he is outside the circle and his editor is read-only.
  step = 'reflection';
  await openTools(leader);
  await leader.getByLabel('Presenter').selectOption({ label: 'Ben' });
  await waitIn(leader, 'Ben is the presenter', () => /presenter/.test(
    [...document.querySelectorAll('#members li')].find((li) => li.querySelector('.name').textContent === 'Ben')
      ?.querySelector('.badges').textContent || ''));
  await leader.getByRole('button', { name: 'Reflection' }).click();
  await leader.getByRole('button', { name: 'Close' }).click();
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the reflection banner`, () => {
      const banner = document.getElementById('reflection-banner');
      return !banner.hidden && banner.textContent.startsWith('Presenter is outside the circle');
    });
    await waitIn(page, `${who} sees the phase`, () => document.getElementById('phase-name').textContent === 'Reflection');
  }
  // Picking Ben lowered his hand; the phase change lowered Ann's and ended her turn.
  await sameQueueEverywhere([]);
  await waitIn(ann, "Ann's turn ended with the phase", () =>
    document.getElementById('floor-holder').textContent === 'Nobody has the floor.');
  await waitIn(ben, "the presenter's notes are read-only", () => document.getElementById('notes').readOnly);
  await waitIn(ben, "the presenter's cards are read-only", () => document.querySelector('#cards .obs textarea').readOnly
    && document.getElementById('new-card').readOnly);
  check(await ben.getByRole('button', { name: 'Raise hand' }).isDisabled(), 'the presenter cannot raise a hand');
  check(/outside the circle: the board is read-only for you/.test(await ben.textContent('#board-readonly')),
    'the presenter is told why the board is read-only');
  // A refusal says why: Ben's page sends a raise_hand anyway (as a stale tab might), and the
  // server's reason becomes its specific sentence, without a "not kept" (no edit was refused).
  await ben.evaluate(async () => (await import('/assets/room.js')).roomClient().raiseHand());
  await waitIn(ben, 'Ben is told why he cannot raise a hand', () => {
    const alert = document.getElementById('alert');
    return !alert.hidden && /During reflection the presenter listens from outside the circle/.test(alert.textContent);
  });
  check(!/not kept/.test(await ben.textContent('#alert')), 'a refused command claims no lost change');
  check(!(await ann.evaluate(() => document.getElementById('notes').readOnly)), 'a member still writes');
  // Ben tries to type anyway: nothing changes, here or anywhere.
  await ben.getByLabel('Running notes').click();
  await ben.keyboard.type('not allowed');
  check((await ben.inputValue('#notes')) === expectedNotes, 'the read-only editor did not change');
  await leader.getByLabel('Running notes').click();
  await leader.keyboard.press('End');
  await leader.keyboard.type(' Group: anger?');
  await waitIn(ben, 'the presenter still reads the board', (text) => document.getElementById('notes').value === text,
    `${expectedNotes} Group: anger?`);
  await waitIn(ben, 'the presenter pushed back still sees who writes in the notes', () =>
    [...document.querySelectorAll('#notes ~ .carets .caret')].some((caret) => caret.textContent === 'Lea')
    && /Lea is writing in the notes/.test(document.getElementById('notes-writers').textContent));
  check(!(await ann.inputValue('#notes')).includes('not allowed'), "the presenter's keystrokes went nowhere");
  await waitIn(leader, 'the leader sees Ben outside the circle', () => /outside the circle/.test(
    [...document.querySelectorAll('#members li')].find((li) => li.querySelector('.name').textContent === 'Ben')
      ?.querySelector('.badges').textContent || ''));
  await shoot('06-reflection');

  // The lobby: with it on, a newcomer waits, sees nothing of the board, and comes in when let in.
  step = 'lobby';
  await openTools(leader);
  await leader.getByLabel(/Lobby: let newcomers in/).check();
  const dora = await ann.context().newPage();
  watchPage(dora, 'dora');
  await dora.goto(inviteLink);
  await dora.getByLabel('Your name').fill('Dora');
  await dora.getByRole('button', { name: 'Join' }).click();
  await waitIn(dora, 'Dora waits in the lobby', () => !document.getElementById('waiting-screen').hidden);
  check((await dora.inputValue('#notes')) === '', 'nothing of the board reaches the lobby');
  await waitIn(leader, 'the leader sees Dora waiting', () => /Dora/.test(document.getElementById('waiting').textContent));
  const eve = await ann.context().newPage();
  watchPage(eve, 'eve');
  await eve.goto(inviteLink);
  await eve.getByLabel('Your name').fill('Eve');
  await eve.getByRole('button', { name: 'Join' }).click();
  await waitIn(eve, 'Eve waits in the lobby', () => !document.getElementById('waiting-screen').hidden);
  await waitIn(leader, 'the leader sees two people waiting', () =>
    document.getElementById('lobby-count').textContent === '2 people are waiting to come in');
  pages.dora = dora;
  pages.eve = eve;
  await shoot('07-lobby');

  // The three sizes: with Dora waiting, a member and the leader each see the essentials of the
  // meeting without scrolling, and the leader the lobby alert with "Let in" and "Let everyone in".
  step = 'three sizes';
  delete pages.dora; // They are in the lobby: they see no queue.
  delete pages.eve;
  await leader.getByRole('button', { name: 'Close' }).click();
  // Ben's hand went down when he was picked to present, and the phase change released the
  // floor: the leader takes it through the queue, and Ann raises her hand, to have a place.
  await leader.evaluate(async () => (await import('/assets/room.js')).roomClient().raiseHand());
  await ann.getByRole('button', { name: 'Raise hand' }).click();
  await sameQueueEverywhere(['Lea', 'Ann']);
  await leader.getByRole('button', { name: 'Next speaker' }).click();
  await sameQueueEverywhere(['Ann']);
  await waitIn(ann, 'Lea has the floor', () => document.getElementById('floor-holder').textContent === 'Lea has the floor.');
  const memberEssentials = ['#phase-name', '#phase-countdown', '#floor-holder', '#floor-timer', '#hand', '#my-position',
    '#queue li:first-child'];
  const leaderEssentials = [...memberEssentials.filter((s) => s !== '#my-position' && s !== '#hand'),
    '#next-speaker', '#next-preview', '#lobby-alert', '#waiting li:first-child button[data-act=admit]', '#admit-all'];
  const before = { leader: leader.viewportSize(), ann: ann.viewportSize() };
  for (const size of SIZES) {
    for (const page of [leader, ann]) await page.setViewportSize({ width: size.width, height: size.height });
    await waitIn(ann, 'the layout settles', () => new Promise((done) => requestAnimationFrame(() => done(true))));
    await inView(ann, 'a member', size, memberEssentials);
    await inView(leader, 'the leader', size, leaderEssentials);
    if (size.width >= 1024) {
      const tall = await leader.evaluate(() => document.documentElement.scrollHeight - innerHeight);
      check(tall <= 1, `the leader's page on a laptop needs no scrolling (it is ${tall} px taller than the window)`);
    }
    for (const [who, page] of [['leader', leader], ['ann', ann]]) {
      await page.screenshot({ path: path.join(shotDir, `07-size-${size.name}-${who}.png`) });
      await accessible(page, `07-size-${size.name}-${who}`);
    }
    await openTools(leader);
    await leader.screenshot({ path: path.join(shotDir, `07-size-${size.name}-leader-tools.png`) });
    await accessible(leader, `07-size-${size.name}-leader-tools`);
    await leader.keyboard.press('Escape');
    await waitIn(leader, 'Escape closes the tools', () => document.getElementById('tools').hidden);
    check((await focused(leader)) === 'tools-button', 'focus is back on the tools button');
  }
  await leader.setViewportSize(before.leader);
  await ann.setViewportSize(before.ann);
  await ann.getByRole('button', { name: 'Lower my hand' }).click();
  await sameQueueEverywhere([]);
  await leader.getByRole('button', { name: 'Yield the floor' }).click();
  await waitIn(ann, 'the floor is free again', () => document.getElementById('floor-holder').textContent === 'Nobody has the floor.');
  pages.dora = dora;
  pages.eve = eve;
  // One click lets both in.
  await leader.getByRole('button', { name: 'Let everyone in' }).click();
  for (const [who, page] of [['Dora', dora], ['Eve', eve]]) {
    await waitIn(page, `${who} is let in and gets the board`, (text) => {
      const room = document.getElementById('room');
      return room && !room.hidden && document.getElementById('notes').value === text;
    }, `${expectedNotes} Group: anger?`);
  }
  await waitIn(leader, 'the lobby alert is gone', () => document.getElementById('lobby-alert').hidden);
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees five people`, () => document.querySelectorAll('#members li').length === 5);
  }
  await shoot('08-admitted');

  // Fresh links from the leader panel; then Dora is removed and the invite link renewed: her old
  // link no longer lets her in, and says why.
  step = 'fresh links, remove and renew';
  await openTools(leader);
  await leader.getByRole('button', { name: 'Issue fresh links' }).click();
  await waitIn(leader, 'the fresh links are shown', () => !document.getElementById('fresh-box').hidden);
  const fresh = {};
  for (const kind of ['leader', 'invite', 'observer']) {
    fresh[kind] = await leader.inputValue(`#fresh-${kind}-link`);
    check(fresh[kind].startsWith(`${base}/r/`) && fresh[kind].includes('#t='), `fresh ${kind} link: ${fresh[kind]}`);
  }
  const doraRow = leader.locator('#members li', { hasText: 'Dora' });
  await doraRow.locator('summary').click();
  await doraRow.getByRole('button', { name: 'Remove from the meeting' }).click();
  await waitIn(leader, 'the remove confirmation is shown', () => document.getElementById('kick-dialog').open);
  check(/can rejoin with the current invite link unless you renew it/.test((await leader.textContent('#kick-text')).replace(/\s+/g, ' ')),
    'the confirmation says what is true');
  await leader.getByLabel(/Remove and renew the invite link/).check();
  await shoot('08a-remove');
  await leader.getByRole('button', { name: 'Remove', exact: true }).click();
  await waitIn(dora, 'Dora is told she was removed', () =>
    document.getElementById('message-title').textContent === 'You are no longer in the meeting');
  await waitIn(leader, 'the renewed links are shown', (old) => {
    const invite = document.getElementById('fresh-invite-link').value;
    return invite && invite !== old && /renewed/.test(document.getElementById('links-status').textContent);
  }, fresh.invite);
  const renewedInvite = await leader.inputValue('#fresh-invite-link');
  for (const [who, page] of Object.entries(pages)) {
    if (who === 'dora') continue;
    await waitIn(page, `${who} sees four people again`, () => document.querySelectorAll('#members li').length === 4);
  }
  await dora.goto('about:blank');
  await dora.goto(inviteLink);
  await dora.getByLabel('Your name').fill('Dora');
  await dora.getByRole('button', { name: 'Join' }).click();
  await waitIn(dora, 'the old invite link says it was replaced', () =>
    document.getElementById('message-title').textContent === 'This link was replaced'
    && /ask the leader for the new link/.test(document.getElementById('message-screen').textContent));
  await shoot('08b-renewed');
  check(renewedInvite !== inviteLink, 'a new invite link');
  await dora.close();
  delete pages.dora;

  // 7. The attendance sheet, then end for all, with confirmation. The leader tools preview the
  // sheet and say whose the file is; the confirmation offers to download it before ending.
  step = 'attendance and end for all';
  await openTools(leader);
  check(/^5 people so far · \d+ minutes? since /.test(await leader.textContent('#attendance-summary')),
    `the attendance preview: ${await leader.textContent('#attendance-summary')}`);
  check(await leader.getByText('This file holds names: it is yours to keep safe; Balint Room keeps no copy.').first().isVisible(),
    'the leader is told the file is theirs to keep safe');
  await leader.getByRole('button', { name: /End the meeting for everyone/ }).click();
  await waitIn(leader, 'the confirmation is shown', () => document.getElementById('end-dialog').open);
  check(await leader.isVisible('#end-attendance'), 'the confirmation offers the attendance');
  check(/before ending/.test(await leader.textContent('#end-attendance')), 'the confirmation says to download it first');
  const [sheet] = await Promise.all([
    leader.waitForEvent('download', { timeout: TIMEOUT }),
    leader.locator('#end-dialog').getByRole('button', { name: 'Download attendance (CSV)' }).click(),
  ]);
  const sheetName = sheet.suggestedFilename();
  check(/^attendance-\d{4}-\d{2}-\d{2}\.csv$/.test(sheetName), `the sheet's file name: ${sheetName}`);
  const csv = (await readFile(await sheet.path(), 'utf8')).replace(/^\ufeff/, '');
  const rows = csv.trim().split(/\r?\n/);
  check(rows[0] === 'meeting,date,name,role,joined_at_utc,left_at_utc,minutes_present', `the sheet's header: ${rows[0]}`);
  for (const person of ['Lea', 'Ann', 'Ben', 'Dora', 'Eve']) {
    check(rows.some((row) => row.startsWith(`Tuesday group,${sheetName.slice(11, 21)},${person},`)), `${person} is on the sheet:\n${csv}`);
  }
  check(await leader.evaluate(() => document.getElementById('end-dialog').open), 'the download leaves the confirmation open');
  await shoot('09-confirm');
  await leader.getByRole('button', { name: 'End the meeting', exact: true }).click();
  for (const [who, page] of Object.entries(pages)) {
    await waitIn(page, `${who} sees the ended screen`, () => {
      const screen = document.getElementById('message-screen');
      return !screen.hidden && document.getElementById('message-title').textContent === 'The meeting has ended'
        && /discarded/.test(screen.textContent);
    });
    const left = await leftovers(page);
    check(!left.boardInDom, `${who}: the board is gone from the DOM`);
    check(left.clientBoardEmpty && left.clientNotes === '' && left.clientCards === 0 && left.clientState === null,
      `${who}: the client wiped its board: ${JSON.stringify(left)}`);
    check(left.localStorage === 0, `${who}: localStorage is empty`);
    check(left.indexedDB === 0, `${who}: IndexedDB is empty`);
    check(left.sessionStorage === 0, `${who}: the resume token is forgotten`);
  }
  await shoot('10-ended');

  // 8. Opening the link again after the end says so, without a board.
  step = 'reopen after the end';
  await ann.goto('about:blank');
  await ann.goto(inviteLink);
  await ann.getByLabel('Your name').fill('Ann');
  await ann.getByRole('button', { name: 'Join' }).click();
  await waitIn(ann, 'a late visitor is told the meeting ended', () => {
    const screen = document.getElementById('message-screen');
    return !screen.hidden && document.getElementById('message-title').textContent === 'The meeting has ended';
  });
  await shoot('11-reopened');

  // 9. A persistent room: the leader exports the board, then deletes the room.
  step = 'export and delete a persistent room';
  await leader.goto(`${base}/`);
  await leader.getByRole('textbox', { name: /^Title/ }).fill('Thursday log');
  await leader.getByLabel(/Persistent/).check();
  await leader.getByRole('button', { name: 'Create the room' }).click();
  await waitIn(leader, 'the links are shown', () => !document.getElementById('created').hidden);
  await leader.getByRole('link', { name: 'Open the room as leader' }).click();
  await join(leader, null, 'Lea');
  await openTools(leader);
  check(await leader.isVisible('#keep-box'), 'the leader of a persistent room can export and delete it');
  await leader.getByRole('button', { name: 'Close' }).click();
  await leader.getByLabel('Running notes').click();
  await leader.keyboard.type('Kept for next week.');
  // The export reads the server's copy: wait until the edit is there.
  await waitIn(leader, 'the server holds the edit', async () => {
    const token = new URLSearchParams(location.hash.slice(1)).get('t');
    const room = location.pathname.split('/')[2];
    const response = await fetch(`/api/rooms/${room}/export.md`, { headers: { Authorization: `Bearer ${token}` } });
    return (await response.text()).includes('Kept for next week.');
  });
  await openTools(leader);
  const [download] = await Promise.all([
    leader.waitForEvent('download', { timeout: TIMEOUT }),
    leader.getByRole('button', { name: 'Export the notes (Markdown)' }).click(),
  ]);
  check(download.suggestedFilename() === 'Thursday-log.md', `the file's name: ${download.suggestedFilename()}`);
  const markdown = await readFile(await download.path(), 'utf8');
  check(markdown.includes('# Thursday log') && markdown.includes('Kept for next week.'), `the export: ${markdown}`);
  await shoot('12-persistent');
  await leader.getByRole('button', { name: /Delete this room for good/ }).click();
  await waitIn(leader, 'the delete confirmation is shown', () => document.getElementById('delete-dialog').open);
  await leader.getByRole('button', { name: 'Delete the room', exact: true }).click();
  await waitIn(leader, 'the leader is told the room was deleted', () => {
    const screen = document.getElementById('message-screen');
    return !screen.hidden && document.getElementById('message-title').textContent === 'This room was deleted';
  });
  await shoot('13-deleted');

  // 9b. A persistent sealed room: the server keeps a log it cannot read and refuses to export
  // it; the leader's page builds the same Markdown from the board it decrypted, and sends it
  // nowhere.
  step = 'export a persistent sealed room';
  await leader.goto(`${base}/`);
  await leader.getByRole('textbox', { name: /^Title/ }).fill('Friday log');
  const sealedBox = leader.getByRole('checkbox', { name: /Sealed/ });
  await leader.getByLabel(/Persistent/).check();
  check(!(await sealedBox.isChecked()), 'a new persistent room is not sealed by default');
  check(await sealedBox.isEnabled(), 'a persistent room may be sealed');
  check(!(await leader.isVisible('#sealed-kept')), 'the sentence on sealed kept boards waits for the tick');
  await sealedBox.check();
  check(await leader.isVisible('#sealed-kept'), 'a sealed persistent room says its board is read only with its links');
  await leader.getByLabel(/Ephemeral/).check();
  await leader.getByLabel(/Persistent/).check();
  check(await sealedBox.isChecked(), "the user's tick holds when the kind of room changes");
  await leader.getByRole('button', { name: 'Create the room' }).click();
  await waitIn(leader, 'the links are shown', () => !document.getElementById('created').hidden);
  const keptInvite = await leader.getByLabel(/^Invite link/).inputValue();
  check(/&k=[A-Za-z0-9_-]{43}$/.test(keptInvite), `the links of a sealed persistent room carry its key: ${keptInvite}`);
  await leader.getByRole('link', { name: 'Open the room as leader' }).click();
  await join(leader, null, 'Lea');
  check(await leader.isVisible('#sealed-notice'), 'the leader is told the room is sealed');
  await join(ann, keptInvite, 'Ann');
  const keptNotes = 'Frau K. again: the night calls.';
  await ann.getByLabel('Running notes').click();
  await ann.keyboard.type(keptNotes);
  await waitIn(leader, "the leader's page decrypted Ann's notes", (text) => document.getElementById('notes').value === text,
    keptNotes);
  const refused = await leader.evaluate(async () => {
    const token = new URLSearchParams(location.hash.slice(1)).get('t');
    const room = location.pathname.split('/')[2];
    const response = await fetch(`/api/rooms/${room}/export.md`, { headers: { Authorization: `Bearer ${token}` } });
    return [response.status, (await response.json()).error];
  });
  check(refused[0] === 409 && refused[1] === 'sealed', `the server does not export a board it cannot read: ${refused}`);
  await openTools(leader);
  check(await leader.isVisible('#keep-box'), 'the leader of a persistent sealed room can export and delete it');
  const [sealedDownload] = await Promise.all([
    leader.waitForEvent('download', { timeout: TIMEOUT }),
    leader.getByRole('button', { name: 'Export the notes (Markdown)' }).click(),
  ]);
  check(sealedDownload.suggestedFilename() === 'Friday-log.md', `the file's name: ${sealedDownload.suggestedFilename()}`);
  const sealedMarkdown = await readFile(await sealedDownload.path(), 'utf8');
  check(sealedMarkdown === `# Friday log\n\n## Notes\n\n${keptNotes}\n\n## Observations\n\n(no observations)\n`,
    `the export, built in the page: ${sealedMarkdown}`);
  check(!framesSent.some((frame) => frame.includes('night calls')), 'no frame sent carries the notes in clear');
  await shoot('13b-sealed-export');
  await leader.getByRole('button', { name: 'Close' }).click();

  // 10. A German session: Greta's browser speaks German, so both pages do; Chloé's speaks
  // English and she picks Français in the header. Sentences, the server's refusal and the end
  // of the meeting come in each one's language; the compact layouts hold with the longer words.
  step = 'a German session';
  /** A page in a new context, watched like the others, with `options` (locale, viewport). */
  async function newPage(who, options) {
    const context = await browser.newContext(options);
    context.setDefaultTimeout(TIMEOUT);
    await loopbackOnly(context, who, problems);
    await watchPolicy(context, who);
    const page = await context.newPage();
    watchPage(page, who);
    return page;
  }
  /** A screenshot of one page (the viewport, as the person sees it), checked by axe-core. */
  async function shootOne(page, name) {
    await page.screenshot({ path: path.join(shotDir, `${name}.png`) });
    await accessible(page, name);
  }
  const besideCall = SIZES.find((size) => size.name === 'beside-call');
  const phone = SIZES.find((size) => size.name === 'phone');
  const greta = await newPage('greta', { viewport: { width: besideCall.width, height: besideCall.height }, locale: 'de-DE' });
  const chloe = await newPage('chloe', { viewport: { width: phone.width, height: phone.height }, locale: 'en-GB' });
  // Only these two from here on (a failure's screenshots show them).
  for (const who of Object.keys(pages)) delete pages[who];
  Object.assign(pages, { greta, chloe });
  await greta.goto(`${base}/`);
  await greta.getByRole('heading', { name: 'Einen Raum für Ihre Gruppe anlegen' }).waitFor();
  check((await greta.evaluate(() => document.documentElement.lang)) === 'de', 'the front page says it is in German');
  check((await greta.getByLabel('Sprache').inputValue()) === 'de', 'the picker shows Deutsch');
  await greta.getByRole('textbox', { name: /^Titel/ }).fill('Balintgruppe Dienstag');
  await greta.getByRole('button', { name: 'Raum anlegen' }).click();
  await waitIn(greta, 'the links are shown', () => !document.getElementById('created').hidden);
  const germanInvite = await greta.inputValue('#invite-link');
  await shootOne(greta, '14-de-created');
  await greta.getByRole('link', { name: 'Raum als Leitung öffnen' }).click();
  await greta.getByLabel('Ihr Name').fill('Greta');
  await greta.getByRole('button', { name: 'Teilnehmen' }).click();
  await waitIn(greta, 'Greta is in the room', () => !document.getElementById('room').hidden
    && document.getElementById('connection').textContent === 'Verbunden');

  step = 'a French pick';
  await chloe.goto(germanInvite);
  await waitIn(chloe, 'the join form, in English first', () => document.documentElement.lang === 'en'
    && !document.getElementById('join-screen').hidden);
  await Promise.all([chloe.waitForEvent('load'), chloe.getByLabel('Language').selectOption('fr')]);
  await waitIn(chloe, 'the page in French', () => document.documentElement.lang === 'fr'
    && document.getElementById('join-title').textContent === 'Rejoindre la séance');
  await chloe.getByLabel('Votre nom').fill('Chloé');
  await chloe.getByRole('button', { name: 'Rejoindre' }).click();
  await waitIn(chloe, 'Chloé is in the room', () => !document.getElementById('room').hidden
    && document.getElementById('connection').textContent === 'Connecté');

  step = 'German and French in the room';
  for (const [page, words] of [
    [greta, { hand: 'Hand heben', phase: 'Ankommen', countdown: /^noch \d+:\d\d$/, floor: 'Niemand hat das Wort.' }],
    [chloe, { hand: 'Lever la main', phase: 'Accueil', countdown: /^reste \d+:\d\d$/, floor: 'Personne n’a la parole.' }],
  ]) {
    await waitIn(page, `${words.phase}: two people`, () => document.querySelectorAll('#members li').length === 2);
    check((await page.textContent('#hand .text')) === words.hand, `the hand button says ${words.hand}`);
    check((await page.textContent('#phase-name')) === words.phase, `the phase is ${words.phase}`);
    check(words.countdown.test(await page.textContent('#phase-countdown')), `the countdown in ${words.phase}'s language`);
    check((await page.textContent('#floor-holder')) === words.floor, `the floor: ${words.floor}`);
  }
  await chloe.getByRole('button', { name: 'Lever la main' }).click();
  await waitIn(chloe, 'Chloé is told her place in French', () =>
    /vous êtes en 1re position/.test(document.getElementById('my-position').textContent));
  await waitIn(greta, 'Greta sees Chloé in the queue', () =>
    document.querySelector('#queue li .name')?.textContent === 'Chloé');
  // The server refuses a yield from someone without the floor; its reason is shown in German,
  // and none of the server's English message.
  await greta.evaluate(async () => (await import('/assets/room.js')).roomClient().yieldFloor());
  await waitIn(greta, 'the refusal in German', () => {
    const alert = document.getElementById('alert');
    return !alert.hidden && alert.textContent === 'Sie haben nicht das Wort.';
  });
  await greta.getByRole('button', { name: 'Nächste Wortmeldung' }).click();
  await waitIn(chloe, 'Chloé has the floor, in French', () =>
    document.getElementById('floor-holder').textContent === 'Vous avez la parole.'
    && /^Parle depuis \d+:\d\d$/.test(document.getElementById('floor-timer').textContent));
  await waitIn(greta, 'Greta sees it in German', () =>
    document.getElementById('floor-holder').textContent === 'Chloé hat das Wort.'
    && /^Spricht seit \d+:\d\d$/.test(document.getElementById('floor-timer').textContent));
  const essentials = ['#phase-name', '#phase-countdown', '#floor-holder', '#floor-timer', '#hand', '#next-speaker'];
  await inView(greta, 'a German leader', besideCall, essentials);
  await inView(chloe, 'a French member', phone, ['#phase-name', '#phase-countdown', '#floor-holder', '#floor-timer', '#hand']);
  // No line may run wider than the window with the longer words.
  for (const [who, page] of [['greta', greta], ['chloe', chloe]]) {
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    check(overflow <= 0, `${who}'s page is ${overflow} px wider than the window`);
  }
  await shootOne(greta, '14-de-room-480x900');
  await shootOne(chloe, '14-fr-room-390x844');
  await greta.setViewportSize({ width: phone.width, height: phone.height });
  await inView(greta, 'a German leader', phone, essentials);
  await shootOne(greta, '14-de-room-390x844');

  step = 'the German leader ends the meeting';
  await greta.getByRole('button', { name: 'Leitungswerkzeuge' }).click();
  await greta.getByRole('button', { name: 'Sitzung für alle beenden…' }).click();
  await waitIn(greta, 'the confirmation in German', () => document.getElementById('end-dialog').open);
  await greta.getByRole('button', { name: 'Sitzung beenden', exact: true }).click();
  await waitIn(chloe, 'Chloé is told in French why the meeting ended', () => {
    const screen = document.getElementById('message-screen');
    return !screen.hidden && document.getElementById('message-title').textContent === 'La séance est terminée'
      && screen.textContent.includes('L’animateur·rice a mis fin à la séance.');
  });
  await waitIn(greta, 'Greta sees the end in German', () =>
    document.getElementById('message-title').textContent === 'Die Sitzung ist beendet');
  const chloeKeeps = await chloe.evaluate(() => ({ local: localStorage.length, session: Object.keys(sessionStorage) }));
  check(chloeKeeps.local === 0 && JSON.stringify(chloeKeeps.session) === '["balint.lang"]',
    `only the language pick stays, in the tab: ${JSON.stringify(chloeKeeps)}`);
  await shootOne(chloe, '15-fr-ended');

  check(problems.length === 0, problems.join('\n'));
  console.log(JSON.stringify({ ok: true, screenshots: shotDir }));
} catch (error) {
  console.error(`FAILED at step "${step}": ${error.message}`);
  for (const problem of problems) console.error(problem);
  for (const line of consoleErrors) console.error(`console error: ${line}`);
  try {
    await mkdir(shotDir, { recursive: true });
    await shoot('failure');
    console.error(`screenshots of the failure: ${shotDir}/failure-*.png`);
  } catch {
    // The browser may be gone; the message above is what matters.
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
