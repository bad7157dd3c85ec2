// The room page: /r/{room}#t=TOKEN.
//
// The wasm client (balint-client's RoomClient) holds the board and speaks the room protocol;
// this module only renders what it reports and turns clicks into its commands. The rules (who may
// write or raise a hand, which leader actions apply to whom, a template's phases and durations,
// whether to reconnect) come from the client, which has them from balint-proto's rules module,
// the same code the server enforces; here they only become sentences and enabled controls. It renders each
// state snapshot whole, updating list rows in place (keyed by member or card id) so that focus
// and the textareas bound to the board survive.
//
// Storage: the resume token (and the name it goes with) lives in this tab's sessionStorage, so a
// reload rejoins as the same member. Nothing goes to localStorage or IndexedDB. When the
// meeting ends, the token is forgotten, the client wipes its board and the board leaves the DOM.

import init, { RoomClient, templatePhases } from './pkg/balint_client.js';

const PHASES = {
  gathering: { label: 'Gathering', hint: 'The leader asks who has a case and picks the presenter.' },
  presentation: { label: 'Presentation', hint: 'The presenter tells the case. Only the presenter has the floor.' },
  questions: { label: 'Questions', hint: 'Raise your hand to ask a factual question. The presenter answers.' },
  reflection: {
    label: 'Reflection',
    hint: 'The presenter listens from outside the circle. The group shares thoughts, feelings and fantasies.',
  },
  response: { label: 'Response', hint: 'The presenter comes back and speaks first.' },
  closing: { label: 'Closing', hint: 'A short reflection on the session itself.' },
  discussion: { label: 'Discussion', hint: 'Raise your hand to speak.' },
};
const STATUS = { here: 'here', reconnecting: 'reconnecting…', away: 'away', outside_circle: 'outside the circle' };
// Why something was refused: the server's (and the client's) reason code, the page a sentence.
// One entry per reason of balint-proto's rules::Reason (a test checks that none is missing).
const REFUSALS = {
  bad_message: 'That did not work: the request was not understood.',
  not_joined: 'You are not in the room yet.',
  in_lobby: 'You are still waiting to be let in.',
  observer: 'Observers read along: they do not write, raise a hand or take the floor.',
  observer_cannot_present: 'An observer cannot present a case. Make them a member first.',
  presenter_in_reflection:
    'During reflection the presenter listens from outside the circle: no hand, no floor and no writing until the response.',
  board_locked: 'A leader has locked the board: only leaders can write now.',
  board_full: 'The board is full. A leader can end the meeting and start a new room.',
  not_leader: 'Only a leader can do that.',
  only_presenter_during_presentation: 'During the presentation only the presenter holds the floor.',
  reconnecting: 'That person is reconnecting. Give them the floor when they are back.',
  queue_empty: 'Nobody in the queue can take the floor right now.',
  not_floor_holder: 'You do not hold the floor.',
  floor_free: 'Nobody holds the floor.',
  floor_changed: 'Someone changed the floor just before you. Have a look and try again.',
  own_role: 'A leader cannot change their own role; another leader can.',
  remove_self: 'A leader cannot remove themselves from the meeting.',
  unknown_member: 'That person is no longer in the room.',
  not_waiting: 'That person is no longer waiting in the lobby.',
  phase_not_in_template: 'That phase is not part of this session.',
  phase_duration: 'A phase lasts at most 24 hours.',
  speaking_limit: 'A speaking limit must be at least one second.',
  unavailable: 'The room is briefly unavailable. Try again in a moment.',
  rate_limited: 'You are sending changes very fast; the room is slowing you down.',
};
// Said after a refusal only when the server refused an edit this page had sent.
const LOST_EDIT = 'Your last change was not kept.';
// Why one's own controls are off, as the panel beside them says it.
const STANDING = {
  observer: 'You are observing: you can read the board, not write or take the floor.',
  presenter_in_reflection: 'You are outside the circle during reflection.',
};
const BOARD_NOTES = {
  observer: 'You are observing: the board is read-only for you.',
  presenter_in_reflection: 'You are outside the circle: the board is read-only for you until the response.',
  board_locked: 'The leader has locked the board: only leaders can write now.',
};

/** The sentence of a refusal: by its reason, else (an older server) by its message. */
function refusalText(reason, message) {
  return REFUSALS[reason] || message || 'That was not possible just now.';
}

// Why the connection stands where it does: the client gives a reason code, the page a sentence.
const REASONS = {
  connection_lost: 'The connection was lost.',
  no_answer: 'No answer from the server: the network may have stalled.',
  unreachable: 'The server cannot be reached. Check the network.',
  server_restart: 'The server is restarting.',
  too_slow: 'The connection could not keep up with the room.',
  room_full: 'The room is full.',
  rate_limited: 'Changes were sent too fast for too long; the room asked to wait a moment.',
  server_busy: 'The server is busy.',
  malformed: 'This browser sent something the room could not read. Reload the page to join again.',
  board_full: 'The board is full: nothing more can be written in this room.',
};
const ROLES = { leader: 'co-leader', member: 'member', observer: 'observer' };

const $ = (id) => document.getElementById(id);

const roomId = decodeURIComponent(location.pathname.split('/')[2] || '');
const token = new URLSearchParams(location.hash.slice(1)).get('t');
const storageKey = `balint.room.${roomId}`;

let client = null;
let joining = false;
let name = '';
let me = null;
let state = null;
let canWrite = false;
let actions = null;
let ephemeral = true;
let finished = false;
let lastAnnounced = {};
let connected = false;

/** The page's RoomClient, or null before joining. For tests and the browser console. */
export function roomClient() {
  return client;
}

// ---------------------------------------------------------------------------------------------
// Joining

function stored() {
  try {
    return JSON.parse(sessionStorage.getItem(storageKey) || 'null');
  } catch {
    return null;
  }
}

function show(screen) {
  for (const id of ['join-screen', 'waiting-screen', 'message-screen', 'room']) {
    const el = $(id);
    if (el) el.hidden = id !== screen;
  }
}

function wsUrls(displayName) {
  const query = `token=${encodeURIComponent(token)}&name=${encodeURIComponent(displayName)}`;
  const path = `/ws/${encodeURIComponent(roomId)}?${query}`;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return { ws: `${scheme}//${location.host}${path}`, probe: `${location.origin}${path}` };
}

async function join(displayName, resume) {
  name = displayName;
  setConnection('Connecting…');
  try {
    await init();
  } catch (error) {
    showMessage('The room could not be loaded', [
      'This browser could not start the room client (it needs WebAssembly). Try a current browser.',
    ]);
    return;
  }
  const urls = wsUrls(displayName);
  client = new RoomClient(urls.ws, urls.probe, resume || undefined, onEvent);
  client.bindNotes($('notes'));
  client.start();
}

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('name').value.trim();
  if (!value) {
    $('name').focus();
    return;
  }
  if (joining) return;
  joining = true;
  $('join-form').querySelector('button').disabled = true;
  join(value, null);
});

// ---------------------------------------------------------------------------------------------
// Events from the client

function onEvent(event) {
  switch (event.type) {
    case 'connection':
      onConnection(event);
      break;
    case 'welcome':
      me = event.member_id;
      break;
    case 'state':
      me = event.me;
      state = event.state;
      canWrite = event.can_write;
      actions = event.actions;
      ephemeral = state.ephemeral;
      render();
      break;
    case 'board':
      renderCards();
      break;
    case 'time_up': {
      const who = memberName(event.member);
      announce(`${who} has passed the speaking limit of ${duration(event.limit_secs * 1000)}.`);
      $('floor-timer').classList.add('over');
      break;
    }
    case 'error': {
      const why = refusalText(event.reason, event.message);
      alertUser(event.lost_edit ? `${why} ${LOST_EDIT}` : why);
      break;
    }
    case 'released':
      showReleased(event);
      break;
    case 'resume':
      if (event.token) {
        sessionStorage.setItem(storageKey, JSON.stringify({ name, resume: event.token }));
      } else {
        sessionStorage.removeItem(storageKey);
      }
      break;
  }
}

function onConnection(event) {
  setAvailable(event.status === 'online');
  $('offline').hidden = event.status !== 'reconnecting';
  switch (event.status) {
    case 'connecting':
      setConnection('Connecting…');
      break;
    case 'waiting':
      setConnection('In the lobby');
      show('waiting-screen');
      break;
    case 'online':
      setConnection('Connected');
      show('room');
      break;
    case 'reconnecting': {
      const why = REASONS[event.reason] || REASONS.connection_lost;
      const when = event.retry_in_ms == null ? 'Reconnecting…'
        : `Reconnecting in ${Math.max(1, Math.round(event.retry_in_ms / 1000))} s…`;
      setConnection(`Reconnecting…`, true);
      $('offline-reason').textContent = why;
      $('offline-retry').textContent = when;
      break;
    }
    case 'link_renewed':
      finish();
      showMessage('This link was replaced', [
        'This link was replaced by a newer one; ask the leader for the new link.',
        'This page kept no copy of the board.',
      ]);
      break;
    case 'refused':
      finish();
      showMessage('The room closed this connection', [
        REASONS[event.reason] || 'The room refused this connection. Reload the page to try again.',
        'This page kept no copy of the board.',
      ]);
      break;
    case 'ended':
      finish();
      showMessage(
        event.reason === 'deleted' ? 'This room was deleted' : 'The meeting has ended',
        event.reason === 'deleted'
          ? ['A leader deleted the room: its board is erased from the server, and this page kept no copy.']
          : ephemeral
          ? [
            'Everything on the board was discarded: the server has erased it, and this page kept no copy.',
            'Nothing of the meeting is stored in this browser. You can close this tab.',
          ]
          : ['This page kept no copy of the board. You can close this tab.'],
      );
      break;
    case 'removed':
      finish();
      showMessage('You are no longer in the meeting', [
        'A leader removed you from the meeting, or did not let you in. This page kept no copy of the board.',
      ]);
      break;
    case 'invalid_link':
      finish();
      if (event.reason === 'origin_refused') {
        showMessage('This page may not open the room', [
          'The server does not accept connections from this address of the page. Open the link exactly as the leader sent it.',
        ]);
      } else if (event.reason === 'bad_name') {
        showMessage('That name was not accepted', ['Use 1 to 64 letters, digits or spaces, then open the link again.']);
      } else {
        showMessage('This link does not open a room', [
          'It may be incomplete or expired. Ask the leader of your group for a new link.',
        ]);
      }
      break;
    case 'left':
      setConnection('Left');
      break;
  }
}

/**
 * Enables the room's controls when connected; otherwise disables them, and the offline bar says
 * why. Board editors stay as they are: edits made meanwhile are kept and sent on reconnect.
 */
function setAvailable(available) {
  connected = available;
  for (const control of document.querySelectorAll('#room .side button, #room .side input, #room .side select')) {
    if (!available && !control.disabled) {
      control.disabled = true;
      control.dataset.offline = '1';
    } else if (available && control.dataset.offline) {
      control.disabled = false;
      delete control.dataset.offline;
    }
  }
  // Controls whose state depends on the room are set again from it.
  if (available) render();
}

/** A member back after the grace period is told what the old membership lost. */
function showReleased(released) {
  const lost = [];
  if (released.hand) lost.push('your raised hand was lowered');
  if (released.floor) lost.push('your turn on the floor ended');
  if (released.presenter) lost.push('you are no longer the presenter');
  if (released.role) lost.push(`you had been made ${ROLES[released.role] || released.role}, and now have the role of your link`);
  const what = lost.length ? `: ${lost.join('; ')}.` : '.';
  $('released-text').textContent =
    `You were away longer than the room keeps a place (2 minutes unless the server is set otherwise), so you rejoined as a new member${what}`;
  $('released-notice').hidden = false;
  announce($('released-text').textContent);
}
$('released-ok').addEventListener('click', () => { $('released-notice').hidden = true; });

/** Takes the board out of the page and forgets everything about the meeting. */
function finish() {
  finished = true;
  $('offline').hidden = true;
  sessionStorage.removeItem(storageKey);
  const dialog = $('end-dialog');
  if (dialog.open) dialog.close();
  $('room')?.remove();
  $('room-title').textContent = '';
  document.title = 'Balint Room';
  state = null;
  setConnection('Not connected');
}

function showMessage(title, paragraphs) {
  $('message-title').textContent = title;
  $('message-body').replaceChildren(...paragraphs.map((text) => el('p', {}, text)));
  show('message-screen');
  $('message-screen').focus();
}

function setConnection(text, warn = false) {
  const pill = $('connection');
  pill.textContent = text;
  pill.classList.toggle('warn', warn);
}

function announce(text) {
  // Clearing first makes a repeated message be read again.
  const announcer = $('announcer');
  announcer.textContent = '';
  setTimeout(() => { announcer.textContent = text; }, 50);
}

let alertTimer = null;
function alertUser(text) {
  const box = $('alert');
  box.textContent = text;
  box.hidden = false;
  clearTimeout(alertTimer);
  alertTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, '');
    else if (value !== false && value != null) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/**
 * Makes `container`'s children match `items`, reusing the element of each key so that focus
 * and bound editors stay; `create` makes a new one, `update` refreshes one.
 */
function reconcile(container, items, keyOf, create, update) {
  const wanted = new Map(items.map((item) => [keyOf(item), item]));
  for (const child of [...container.children]) {
    if (!wanted.has(child.dataset.key)) child.remove();
  }
  const existing = new Map([...container.children].map((child) => [child.dataset.key, child]));
  items.forEach((item, index) => {
    const key = keyOf(item);
    let node = existing.get(key);
    if (!node) {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item, index);
    const at = container.children[index];
    if (at !== node) container.insertBefore(node, at || null);
  });
}

function memberName(id) {
  return state?.members.find((m) => m.id === id)?.name || 'Someone';
}

function isLeader() {
  return Boolean(actions?.lead);
}

function ordinal(n) {
  const rem100 = n % 100;
  if (rem100 >= 11 && rem100 <= 13) return `${n}th`;
  return `${n}${{ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] || 'th'}`;
}

function duration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
}

function render() {
  if (!state || finished) return;
  const leader = isLeader();
  const phase = PHASES[state.phase.name] || { label: state.phase.name, hint: '' };
  const presenterName = state.presenter ? memberName(state.presenter) : null;
  const iAmPresenter = state.presenter === me;

  const title = state.title || 'Meeting room';
  $('room-title').textContent = title;
  document.title = `${title} · Balint Room`;

  $('ephemeral-notice').textContent = state.ephemeral
    ? 'Ephemeral meeting: the board exists only during the meeting and is erased for everyone when it ends. ' +
      'It cannot stop anyone from taking screenshots or copying text, so write as if it could be kept.'
    : 'Persistent room: the board is kept after the meeting for the group. Write nothing you would not keep.';
  $('ephemeral-notice').classList.toggle('persistent', !state.ephemeral);

  // Reflection: the presenter is pushed back.
  const reflection = state.phase.name === 'reflection';
  const banner = $('reflection-banner');
  banner.hidden = !reflection;
  if (reflection) {
    banner.textContent = iAmPresenter
      ? 'Presenter is outside the circle: that is you. Listen to the group; you can read the board but not write ' +
        'or take the floor until the response.'
      : `Presenter is outside the circle${presenterName ? ` (${presenterName})` : ''}: listening, not taking part.`;
  }

  // Phase.
  $('phase-name').textContent = phase.label;
  $('phase-hint').textContent = phase.hint;
  if (lastAnnounced.phase !== undefined && lastAnnounced.phase !== state.phase.name) {
    announce(`Phase: ${phase.label}.`);
  }
  lastAnnounced.phase = state.phase.name;

  renderFloor();
  renderQueue(leader);
  renderMembers(leader);
  renderLeaderPanel(leader);
  renderBoardAccess();
  if (!connected) setAvailable(false);
  tick();
}

function renderFloor() {
  const floor = state.floor;
  const holder = floor ? (floor.member === me ? 'You have the floor.' : `${memberName(floor.member)} has the floor.`)
    : 'Nobody has the floor.';
  if ($('floor-holder').textContent !== holder) $('floor-holder').textContent = holder;
  $('floor-timer').classList.remove('over');
  $('yield').hidden = !actions?.yield_floor;

  const position = state.queue.findIndex((entry) => entry.member === me);
  const hand = $('hand');
  const raise = actions?.raise_hand || { allowed: false };
  hand.hidden = !actions?.hand_shown;
  hand.textContent = position >= 0 ? 'Lower my hand' : 'Raise hand';
  hand.disabled = !raise.allowed && position < 0;

  let text = '';
  if (!raise.allowed && STANDING[raise.reason]) text = STANDING[raise.reason];
  else if (position >= 0) text = `Your hand is up: you are ${ordinal(position + 1)} in the queue.`;
  if ($('my-position').textContent !== text) $('my-position').textContent = text;
}

function renderQueue(leader) {
  const queue = $('queue');
  $('queue-empty').hidden = state.queue.length > 0;
  reconcile(
    queue,
    state.queue,
    (entry) => entry.member,
    () => el('li', {},
      el('span', { class: 'name' }),
      el('span', { class: 'row-actions' },
        el('button', { type: 'button', dataset: { act: 'grant' } }, 'Give the floor', el('span', { class: 'visually-hidden' })),
        el('button', { type: 'button', dataset: { act: 'lower' } }, 'Lower hand', el('span', { class: 'visually-hidden' })))),
    (row, entry) => {
      const who = memberName(entry.member);
      row.querySelector('.name').textContent = entry.member === me ? `${who} (you)` : who;
      row.classList.toggle('me', entry.member === me);
      const actions = row.querySelector('.row-actions');
      actions.hidden = !leader;
      for (const hidden of actions.querySelectorAll('.visually-hidden')) hidden.textContent = ` to ${who}`;
      actions.querySelector('[data-act=lower] .visually-hidden').textContent = ` of ${who}`;
    },
  );
}

function renderMembers(leader) {
  // What we may do to each member, from the client (the row's own `actions` is its menu).
  const allowed = actions || {};
  reconcile(
    $('members'),
    state.members,
    (member) => member.id,
    () => el('li', {},
      el('span', { class: 'name' }),
      el('span', { class: 'badges' }),
      el('details', { class: 'member-actions' },
        el('summary', {}, 'Actions', el('span', { class: 'visually-hidden' })),
        el('div', { class: 'menu' },
          el('button', { type: 'button', dataset: { act: 'grant' } }, 'Give the floor'),
          el('button', { type: 'button', dataset: { act: 'presenter' } }, 'Make presenter'),
          el('button', { type: 'button', dataset: { act: 'unpresenter' } }, 'No longer presenter'),
          el('button', { type: 'button', dataset: { act: 'co-leader' } }, 'Make co-leader'),
          el('button', { type: 'button', dataset: { act: 'member' } }, 'Make member'),
          el('button', { type: 'button', dataset: { act: 'observer' } }, 'Make observer'),
          el('button', { type: 'button', dataset: { act: 'lower' } }, 'Lower hand'),
          el('button', { type: 'button', class: 'danger', dataset: { act: 'kick' } }, 'Remove from the meeting')))),
    (row, member) => {
      const self = member.id === me;
      row.querySelector('.name').textContent = self ? `${member.name} (you)` : member.name;
      const badges = [member.role];
      if (state.presenter === member.id) badges.push('presenter');
      if (member.status !== 'here') badges.push(STATUS[member.status] || member.status);
      if (state.floor?.member === member.id) badges.push('speaking');
      row.querySelector('.badges').textContent = badges.join(' · ');
      row.dataset.status = member.status;
      const actions = row.querySelector('.member-actions');
      actions.hidden = !leader;
      actions.querySelector('summary .visually-hidden').textContent = ` for ${member.name}`;
      const show = (act, visible) => { actions.querySelector(`[data-act="${act}"]`).hidden = !visible; };
      const may = allowed.members?.[member.id] || {};
      show('grant', may.grant_floor);
      show('presenter', may.make_presenter);
      show('unpresenter', may.clear_presenter);
      show('co-leader', may.make_leader);
      show('member', may.make_member);
      show('observer', may.make_observer);
      show('lower', may.lower_hand);
      show('kick', may.kick);
    },
  );
}

function renderLeaderPanel(leader) {
  $('leader-panel').hidden = !leader;
  if (!leader) return;
  $('keep-box').hidden = state.ephemeral;
  const phases = templatePhases(state.template);
  reconcile(
    $('phases'),
    phases,
    (plan) => plan.phase,
    (plan) => el('button', { type: 'button', dataset: { phase: plan.phase } }),
    (button, plan) => {
      const current = state.phase.name === plan.phase;
      button.textContent = PHASES[plan.phase]?.label || plan.phase;
      button.setAttribute('aria-pressed', String(current));
      button.title = current ? 'Current phase: click to restart its countdown'
        : `Suggested: ${plan.suggested_secs / 60} minutes`;
    },
  );

  const presenter = $('presenter');
  const options = [{ id: '', name: 'Nobody yet' }, ...state.members.filter((m) => m.role !== 'observer')];
  reconcile(
    presenter,
    options,
    (member) => member.id || '-',
    () => el('option'),
    (option, member) => {
      option.value = member.id;
      option.textContent = member.id === me ? `${member.name} (you)` : member.name;
    },
  );
  presenter.value = state.presenter || '';

  $('speaking-limit').value = state.speaking_limit_secs ? String(state.speaking_limit_secs) : '';
  if ($('speaking-limit').value !== (state.speaking_limit_secs ? String(state.speaking_limit_secs) : '')) {
    // A limit set elsewhere that is not one of the choices.
    const secs = state.speaking_limit_secs;
    $('speaking-limit').append(el('option', { value: String(secs) }, duration(secs * 1000)));
    $('speaking-limit').value = String(secs);
  }
  $('fair-order').checked = state.fair_order;
  $('lock-board').checked = state.board_locked;
  $('lobby').checked = state.lobby;
  $('revoke').disabled = !state.floor;
  $('lower-all').disabled = state.queue.length === 0;
  $('next-speaker').disabled = state.queue.length === 0;

  const waiting = state.waiting || [];
  $('waiting-box').hidden = waiting.length === 0;
  reconcile(
    $('waiting'),
    waiting,
    (person) => person.id,
    () => el('li', {},
      el('span', { class: 'name' }),
      el('span', { class: 'row-actions' },
        el('button', { type: 'button', class: 'primary', dataset: { act: 'admit' } }, 'Let in', el('span', { class: 'visually-hidden' })),
        el('button', { type: 'button', dataset: { act: 'decline' } }, 'Turn away', el('span', { class: 'visually-hidden' })))),
    (row, person) => {
      row.querySelector('.name').textContent = person.name;
      for (const hidden of row.querySelectorAll('.visually-hidden')) hidden.textContent = ` ${person.name}`;
    },
  );
  if (waiting.length && (lastAnnounced.waiting || 0) < waiting.length) {
    announce(`${waiting[waiting.length - 1].name} is waiting to come in.`);
  }
  lastAnnounced.waiting = waiting.length;
}

function renderParticipation() {
  if (!state?.participation || !isLeader()) return;
  const now = Date.now();
  reconcile(
    $('participation'),
    state.participation,
    (row) => row.member,
    () => el('tr', {}, el('th', { scope: 'row' }), el('td'), el('td')),
    (tr, row) => {
      const running = state.floor?.member === row.member ? Math.max(0, now - state.floor.since_ms) : 0;
      const cells = tr.children;
      cells[0].textContent = memberName(row.member);
      cells[1].textContent = String(row.turns);
      cells[2].textContent = duration(row.speaking_ms + running);
    },
  );
}

function renderBoardAccess() {
  let note = '';
  if (!canWrite) note = BOARD_NOTES[actions?.write?.reason] || 'The board is read-only for you right now.';
  $('board-readonly').textContent = note;
  $('board-readonly').hidden = !note;
  $('new-card').readOnly = !canWrite;
  $('add-card').querySelector('button').disabled = !canWrite;
}

function renderCards() {
  if (!client || finished) return;
  const cards = client.cards();
  $('cards-empty').hidden = cards.length > 0;
  reconcile(
    $('cards'),
    cards,
    (card) => card.id,
    (card) => {
      const body = el('textarea', { rows: '3', id: `card-${card.id}` });
      const article = el('article', { class: 'obs' },
        el('label', { class: 'obs-head', for: `card-${card.id}` }),
        body);
      client.bindCard(card.id, body);
      return article;
    },
    (article, card) => {
      const phase = PHASES[card.phase]?.label || card.phase || 'No phase';
      const time = card.created_ms
        ? new Date(card.created_ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
      article.querySelector('.obs-head').textContent = `${card.author || 'Someone'} · ${phase}${time ? ` · ${time}` : ''}`;
      article.dataset.phase = card.phase;
    },
  );
}

/** Once a second: the countdown, the speaking timer and the running participation. */
function tick() {
  if (!state || finished) return;
  const now = Date.now();
  const left = state.phase.started_at_ms + state.phase.duration_secs * 1000 - now;
  const countdown = $('phase-countdown');
  countdown.textContent = left >= 0 ? `${duration(left)} left` : `${duration(-left)} over time`;
  countdown.classList.toggle('over', left < 0);

  const timer = $('floor-timer');
  if (state.floor) {
    const spoken = now - state.floor.since_ms;
    const limit = state.floor.limit_secs;
    timer.textContent = limit ? `Speaking for ${duration(spoken)} of ${duration(limit * 1000)}`
      : `Speaking for ${duration(spoken)}`;
    timer.classList.toggle('over', Boolean(limit) && spoken > limit * 1000);
  } else {
    timer.textContent = '';
  }
  renderParticipation();
  announceChanges();
}
setInterval(tick, 1000);

/** Tells screen-reader users about a new speaker and about their own place in the queue. */
function announceChanges() {
  const floor = state.floor?.member || null;
  const position = state.queue.findIndex((entry) => entry.member === me);
  const messages = [];
  if ('floor' in lastAnnounced && lastAnnounced.floor !== floor) {
    messages.push(floor ? (floor === me ? 'You have the floor.' : `${memberName(floor)} has the floor.`)
      : 'The floor is free.');
  }
  if ('position' in lastAnnounced && lastAnnounced.position !== position && position >= 0) {
    messages.push(`You are ${ordinal(position + 1)} in the queue.`);
  }
  lastAnnounced.floor = floor;
  lastAnnounced.position = position;
  if (messages.length) announce(messages.join(' '));
}

// ---------------------------------------------------------------------------------------------
// Actions

/** Runs a client command; a refusal before sending (not connected) is shown to the user. */
function act(command) {
  try {
    command();
  } catch (error) {
    alertUser(`Not sent: ${error.message || error}. Wait until the room is connected again.`);
  }
}

$('hand').addEventListener('click', () => {
  const raised = state?.queue.some((entry) => entry.member === me);
  act(() => (raised ? client.lowerHand(undefined) : client.raiseHand()));
});
$('yield').addEventListener('click', () => act(() => client.yieldFloor()));
$('away').addEventListener('change', (event) => act(() => client.setAway(event.target.checked)));

$('queue').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-act]');
  if (!button) return;
  const member = button.closest('li').dataset.key;
  if (button.dataset.act === 'grant') act(() => client.grantFloor(member));
  if (button.dataset.act === 'lower') act(() => client.lowerHand(member));
});

$('members').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-act]');
  if (!button) return;
  const row = button.closest('li');
  const member = row.dataset.key;
  const who = memberName(member);
  switch (button.dataset.act) {
    case 'grant': act(() => client.grantFloor(member)); break;
    case 'presenter': act(() => client.pickPresenter(member)); break;
    case 'unpresenter': act(() => client.pickPresenter(undefined)); break;
    case 'co-leader': act(() => client.setRole(member, 'leader')); break;
    case 'member': act(() => client.setRole(member, 'member')); break;
    case 'observer': act(() => client.setRole(member, 'observer')); break;
    case 'lower': act(() => client.lowerHand(member)); break;
    case 'kick':
      kicking = member;
      $('kick-title').textContent = `Remove ${who} from the meeting?`;
      $('kick-renew').checked = false;
      $('kick-dialog').showModal();
      break;
  }
  row.querySelector('details').open = false;
});

// Removing someone: the confirmation offers to renew the invite link, so that they cannot come
// back through the link they have.
let kicking = null;
$('kick-dialog').addEventListener('close', async () => {
  const member = kicking;
  kicking = null;
  if ($('kick-dialog').returnValue !== 'kick' || !member) return;
  act(() => client.kick(member));
  if ($('kick-renew').checked) await issueLinks(true);
});

$('waiting').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-act]');
  if (!button) return;
  const member = button.closest('li').dataset.key;
  if (button.dataset.act === 'admit') act(() => client.admit(member));
  if (button.dataset.act === 'decline') act(() => client.decline(member));
});

$('next-speaker').addEventListener('click', () => act(() => client.nextSpeaker()));
$('revoke').addEventListener('click', () => act(() => client.revokeFloor()));
$('lower-all').addEventListener('click', () => act(() => client.lowerAllHands()));
$('phases').addEventListener('click', (event) => {
  const button = event.target.closest('button[data-phase]');
  if (!button) return;
  const minutes = parseInt($('phase-minutes').value, 10);
  act(() => client.setPhase(button.dataset.phase, minutes > 0 ? minutes * 60 : undefined));
  $('phase-minutes').value = '';
});
$('presenter').addEventListener('change', (event) => {
  act(() => client.pickPresenter(event.target.value || undefined));
});
$('speaking-limit').addEventListener('change', (event) => {
  const secs = parseInt(event.target.value, 10);
  act(() => client.setSpeakingLimit(secs > 0 ? secs : undefined));
});
$('fair-order').addEventListener('change', (event) => act(() => client.setFairOrder(event.target.checked)));
$('lock-board').addEventListener('change', (event) => act(() => client.lockBoard(event.target.checked)));
$('lobby').addEventListener('change', (event) => act(() => client.setLobby(event.target.checked)));

$('end-meeting').addEventListener('click', () => {
  $('end-text').textContent = ephemeral
    ? 'Everyone leaves the room, and everything on the board is erased for good. This cannot be undone.'
    : 'Everyone leaves the room. This cannot be undone.';
  $('end-dialog').showModal();
});
$('end-dialog').addEventListener('close', () => {
  if ($('end-dialog').returnValue === 'end') act(() => client.endMeeting());
});

// A persistent room's board, kept between meetings: the leader link may export it or delete the
// room. The server checks the token; a co-leader who came in through the invite link is told
// that only the leader link can.
function roomApi(suffix, method) {
  return fetch(`/api/rooms/${encodeURIComponent(roomId)}${suffix}`, {
    method,
    headers: { Authorization: `Bearer ${token}` },
  });
}

// Fresh links: POST /api/rooms/{room}/links with the leader link's token. With `renew`, the
// invite and observer links issued before stop letting newcomers in.
async function issueLinks(renew) {
  const status = $('links-status');
  status.textContent = renew ? 'Renewing the invite link…' : 'Issuing fresh links…';
  try {
    const response = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/links`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ renew }),
    });
    if (!response.ok) {
      status.textContent = '';
      alertUser(KEEP_ERRORS[response.status] || 'No links were issued. Try again in a moment.');
      return;
    }
    const links = await response.json();
    $('fresh-leader-link').value = links.leader_url;
    $('fresh-invite-link').value = links.invite_url;
    $('fresh-observer-link').value = links.observer_url;
    // expires_at is in Unix seconds.
    $('fresh-expiry').textContent = links.expires_at
      ? `These links work until ${new Date(links.expires_at * 1000).toLocaleDateString()}.` : '';
    $('fresh-box').hidden = false;
    status.textContent = renew
      ? 'The invite link was renewed: share the new links below. The old invite and observer links no longer let anyone in.'
      : 'Fresh links are ready below.';
  } catch {
    status.textContent = '';
    alertUser('No links were issued. Check the connection and try again.');
  }
}
$('fresh-links').addEventListener('click', () => issueLinks(false));

for (const copy of document.querySelectorAll('#fresh-box [data-copy]')) {
  copy.addEventListener('click', async () => {
    const input = $(copy.dataset.copy);
    const label = document.querySelector(`label[for="${input.id}"]`).firstChild.textContent.trim();
    try {
      await navigator.clipboard.writeText(input.value);
      $('links-status').textContent = `${label} copied.`;
    } catch {
      input.focus();
      input.select();
      $('links-status').textContent = `${label} selected: press Ctrl+C (or ⌘C) to copy it.`;
    }
  });
}

const KEEP_ERRORS = {
  401: 'This link has expired. Ask for a new leader link.',
  403: 'Only the leader link (the one the room was created with) can do that.',
  409: 'This room is ephemeral: nothing of it is kept, so there is nothing to export.',
  410: 'This room no longer exists.',
};

$('export-board').addEventListener('click', async () => {
  try {
    const response = await roomApi('/export.md', 'GET');
    if (!response.ok) {
      alertUser(KEEP_ERRORS[response.status] || 'The export did not work. Try again in a moment.');
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const title = (state?.title || 'balint-room').replace(/[^\p{L}\p{N}]+/gu, '-').replace(/^-|-$/g, '');
    const link = el('a', { href: url, download: `${title || 'balint-room'}.md` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch {
    alertUser('The export did not work. Check the connection and try again.');
  }
});

$('delete-room').addEventListener('click', () => $('delete-dialog').showModal());
$('delete-dialog').addEventListener('close', async () => {
  if ($('delete-dialog').returnValue !== 'delete') return;
  try {
    const response = await roomApi('', 'DELETE');
    // On success the server ends the meeting for everyone, this page included.
    if (!response.ok) alertUser(KEEP_ERRORS[response.status] || 'The room was not deleted. Try again in a moment.');
  } catch {
    alertUser('The room was not deleted. Check the connection and try again.');
  }
});

$('add-card').addEventListener('submit', (event) => {
  event.preventDefault();
  const body = $('new-card').value.trim();
  if (!body) {
    $('new-card').focus();
    return;
  }
  try {
    client.addCard(body);
    $('new-card').value = '';
  } catch (error) {
    // The client's rule refused it before sending: say why; nothing was lost.
    alertUser(refusalText(client.actions()?.write?.reason, null));
  }
});

// ---------------------------------------------------------------------------------------------
// Reconnecting at once when it can help: the client decides whether it does.

$('reconnect-now').addEventListener('click', () => client?.reconnectNow());
window.addEventListener('online', () => client?.reconnectNow());
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') client?.reconnectNow();
});

// ---------------------------------------------------------------------------------------------
// Start

if (!roomId || !token) {
  showMessage('This link is incomplete', [
    'A room link ends with "#t=" and a code. Copy the whole link from the leader\'s message and try again.',
  ]);
} else {
  const previous = stored();
  if (previous?.name && previous?.resume) {
    $('name').value = previous.name;
    join(previous.name, previous.resume);
  } else {
    show('join-screen');
    $('name').focus();
  }
}
