// The front page: creates a room with POST /api/rooms and shows its links.
// Nothing is stored in the browser but the language picked in the header (sessionStorage): the
// links are shown once, to be copied.
//
// Words: every sentence of the page is in the catalogue below, and in German and French in
// i18n/de.js and i18n/fr.js (`front`); the HTML names them with data-i18n="key"
// (data-i18n-label for an aria-label). The header's picker changes the language at once.

import init, { sealTitle } from './pkg/balint_client.js';
import { chooseLanguage, mountPicker } from './i18n/i18n.js';
import * as de from './i18n/de.js';
import * as fr from './i18n/fr.js';

/** The English catalogue: key → sentence; `{name}` marks a value given to `t`. */
const en = {
  brand: 'Balint Room',
  skip: 'Skip to the form',
  language: 'Language',
  page_title: 'Balint Room: create a room',
  heading: 'Create a room for your group',
  lead: 'A room opens beside your video call. It gives the group a shared board for observations, '
    + 'a hand queue that everyone sees in the same order, and the phases of a Balint session.',
  title: 'Title',
  optional: '(optional)',
  title_placeholder: 'For example: Tuesday group',
  title_help: 'Everyone in the room sees it. Do not put patient details here.',
  keep_legend: 'What happens to the board',
  ephemeral: 'Ephemeral',
  ephemeral_text: 'Recommended for a case. The board exists only during the meeting; when it ends, everything written '
    + 'is erased for everyone.',
  persistent: 'Persistent',
  persistent_text: 'The board is kept after the meeting, for groups that keep a shared log.',
  template_legend: 'How the session runs',
  balint: 'Balint session',
  balint_text: 'Gathering, presentation, questions, reflection (the presenter sits outside the circle), response '
    + 'and closing.',
  open: 'Open discussion',
  open_text: 'One discussion phase, without the Balint structure.',
  seal_legend: 'Encryption',
  sealed: 'Sealed (end-to-end encrypted)',
  sealed_text: 'The board, the names and the title are encrypted in the browsers with a key that travels only '
    + 'in the links, so the server never reads them.',
  sealed_title_failed: 'The room is ready, but its title could not be set: it has none.',
  sealed_kept: 'Kept sealed, the board can be read only with the room’s links: if they are all lost, nobody can read it again.',
  entry_legend: 'Coming in',
  lobby: 'Lobby',
  lobby_text: 'People who open the invite link wait until a leader lets them in. They see nothing of the board before.',
  create: 'Create the room',
  creating: 'Creating the room…',
  create_failed: 'The room could not be created: {error}. Please try again.',
  server_answered: 'the server answered {status}',
  network_failed: 'the server could not be reached',
  // The server's refusals, by the `error` code of its JSON answer (its `message` is English
  // for API users and is not shown).
  error_bad_title: 'the title is too long or contains control characters',
  error_bad_json: 'the request was not understood',
  error_too_many_rooms_created: 'too many rooms were created from this address in the last minute',
  error_too_many_rooms: 'this server holds as many rooms as it may',
  error_unavailable: 'the room service is briefly unavailable',
  error_server_busy: 'the server is busy',
  error_sealed_unsupported: 'this server does not offer sealed rooms yet; untick “Sealed” and try again',
  created_title: 'Your room is ready',
  created_text: 'These links are shown only once. Copy them now. Anyone who has a link can join with its role.',
  leader_link: 'Leader link',
  leader_link_help: '(keep it for yourself and co-leaders)',
  invite_link: 'Invite link',
  invite_link_help: '(send it to the members of the group)',
  observer_link: 'Observer link',
  observer_link_help: '(can read the board, cannot write or speak)',
  copy: 'Copy',
  copy_leader: 'Copy the leader link',
  copy_invite: 'Copy the invite link',
  copy_observer: 'Copy the observer link',
  copied: '{link} copied.',
  selected: '{link} selected: press Ctrl+C (or ⌘C) to copy it.',
  open_leader: 'Open the room as leader',
};

/** The catalogues by language; the page speaks the tab's pick, else the browser's first it has. */
const CATALOGUES = { en, de: de.front, fr: fr.front };
let lang = chooseLanguage(CATALOGUES);
let words = CATALOGUES[lang];

/** The sentence of `key` in the page's language, with `{name}`-style `vars` filled in. */
function t(key, vars = {}) {
  const entry = words[key] ?? en[key];
  if (entry === undefined) return key;
  const shown = (value) => (typeof value === 'number' ? new Intl.NumberFormat(lang).format(value) : String(value));
  return entry.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? shown(vars[name]) : whole));
}

/** Fills the page's texts in its language; again when the picker changes it. */
function translatePage() {
  document.documentElement.lang = lang;
  document.title = t('page_title');
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-label]')) node.setAttribute('aria-label', t(node.dataset.i18nLabel));
  document.getElementById('title').placeholder = t('title_placeholder');
}
translatePage();
// A new pick re-renders at once (a reload would lose the links shown only once).
mountPicker(document.getElementById('language'), CATALOGUES, lang, (code) => {
  lang = code;
  words = CATALOGUES[code];
  translatePage();
  document.getElementById('create-status').textContent = '';
});

/** The sentence for a refused creation: by the server's `error` code, never its English message. */
function refusal(status, answer) {
  const key = `error_${answer?.error}`;
  return key in en ? t(key) : t('server_answered', { status });
}

const form = document.getElementById('create');
const button = document.getElementById('create-button');
const status = document.getElementById('create-status');
const created = document.getElementById('created');
const sealedBox = document.getElementById('sealed');

/**
 * Sealed is on by default for an ephemeral room and off for a persistent one: the box follows
 * the kind of room until the user ticks or unticks it. A sealed persistent room says that its
 * kept board can be read only with its links.
 */
let sealedChosen = false;
function syncSealed() {
  const persistent = form.elements.keep.value === 'persistent';
  if (!sealedChosen) sealedBox.checked = !persistent;
  document.getElementById('sealed-kept').hidden = !(persistent && sealedBox.checked);
}
for (const radio of form.elements.keep) radio.addEventListener('change', syncSealed);
sealedBox.addEventListener('change', () => {
  sealedChosen = true;
  syncSealed();
});
syncSealed();

/** A fresh 256-bit room key, base64url without padding (docs/PROTOCOL.md §13). */
function roomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const title = String(data.get('title') || '').trim();
  const body = {
    ephemeral: data.get('keep') !== 'persistent',
    template: data.get('template') === 'open' ? 'open' : 'balint',
    lobby: data.get('lobby') === 'on',
    sealed: data.get('sealed') === 'on',
  };
  // A sealed room's title travels sealed: it is set once the room exists (below), since it is
  // sealed with the room's id.
  if (title && !body.sealed) body.title = title;

  button.disabled = true;
  status.textContent = t('creating');
  try {
    const response = await fetch('/api/rooms', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.status !== 201) {
      status.textContent = t('create_failed', { error: refusal(response.status, answer) });
      return;
    }
    // The key is drawn here and only ever appended to the links' fragment: it never
    // reaches the server.
    const key = body.sealed ? roomKey() : null;
    status.textContent = '';
    document.getElementById('created-warning').hidden = !(key && title && !(await setSealedTitle(answer, key, title)));
    show(answer, key);
  } catch {
    status.textContent = t('create_failed', { error: t('network_failed') });
  } finally {
    button.disabled = false;
  }
});

/** Seals the title with the room key and sets it with the leader link; whether it was set. */
async function setSealedTitle(room, key, title) {
  try {
    await init();
    const response = await fetch(`/api/rooms/${encodeURIComponent(room.room)}/title`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${room.leader_token}` },
      body: JSON.stringify({ sealed_title: sealTitle(key, room.room, title) }),
    });
    return response.status === 204;
  } catch {
    return false;
  }
}

function show(room, key) {
  const link = (url) => (key ? `${url}&k=${key}` : url);
  document.getElementById('leader-link').value = link(room.leader_url);
  document.getElementById('invite-link').value = link(room.invite_url);
  document.getElementById('observer-link').value = link(room.observer_url);
  document.getElementById('open-leader').href = link(room.leader_url);
  form.hidden = true;
  created.hidden = false;
  created.focus();
}

const copyStatus = document.getElementById('copy-status');
for (const copy of document.querySelectorAll('[data-copy]')) {
  copy.addEventListener('click', async () => {
    const input = document.getElementById(copy.dataset.copy);
    const link = document.querySelector(`label[for="${input.id}"] [data-i18n]`).textContent.trim();
    try {
      await navigator.clipboard.writeText(input.value);
      copyStatus.textContent = t('copied', { link });
    } catch {
      // Without clipboard access, select the text so that the user can copy it by hand.
      input.focus();
      input.select();
      copyStatus.textContent = t('selected', { link });
    }
  });
}
