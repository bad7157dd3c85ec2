// The room page: /r/{room}#t=TOKEN.
//
// The wasm client (balint-client's RoomClient) holds the board and speaks the room protocol;
// this module only renders what it reports and turns clicks and shortcuts into its commands. The
// rules (who may write or raise a hand, which leader actions apply to whom, a template's phases
// and durations, whether to reconnect) come from the client, which has them from balint-proto's
// rules module, the same code the server enforces; here they only become sentences and enabled
// controls. It renders each state snapshot whole, updating list rows in place (keyed by member or
// card id) so that focus and the textareas bound to the board survive.
//
// Words: every sentence the page shows is in the catalogue below (`en`, and the refusal
// sentences in REFUSALS), and in German and French in i18n/de.js and i18n/fr.js; `t(key, vars)`
// picks it in the page's language (see i18n/i18n.js). The HTML names its texts with
// data-i18n="key", filled in at start-up. Numbers, times and dates go through Intl (`fmt`).
//
// Layout: the meeting (phase, floor, my hand, the queue, and for leaders "Next speaker" and the
// lobby) comes first in the DOM and on screen at every width; the board follows. The leader's
// other tools open in a panel that Escape closes.
//
// Storage: the resume token (and the name it goes with) lives in this tab's sessionStorage, so a
// reload rejoins as the same member; so does the language picked in the header. Nothing goes to localStorage or IndexedDB. When the
// meeting ends, the token is forgotten, the client wipes its board and the board leaves the DOM.

import init, { RoomClient, templatePhases } from './pkg/balint_client.js';
import { chooseLanguage, formatters, mountPicker } from './i18n/i18n.js';
import * as de from './i18n/de.js';
import * as fr from './i18n/fr.js';

// ---------------------------------------------------------------------------------------------
// Words

// Why something was refused: the server's (and the client's) reason code, the page a sentence.
// One entry per reason of balint-proto's rules::Reason (a test checks that none is missing).
// These are the English sentences; the catalogue holds them under `refused_<reason>`.
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
  nobody_waiting: 'Nobody is waiting in the lobby.',
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
  not_sealed: 'This room is not sealed: names travel in clear here.',
  bad_sealed_value: 'Your name could not be sent sealed. Reload the page and try again.',
};

const englishOrdinals = new Intl.PluralRules('en', { type: 'ordinal' });
const ENGLISH_SUFFIX = { one: 'st', two: 'nd', few: 'rd', other: 'th' };

/**
 * The English catalogue: key → sentence. `{name}` marks a value given to `t`; a function
 * entry computes the sentence (plurals, ordinals). Another language is another object with the
 * same keys; a key missing there falls back to English.
 */
const en = {
  brand: 'Balint Room',
  skip: 'Skip to the room',
  page_title: '{title} · Balint Room',
  untitled: 'Meeting room',
  keys_button: 'Keyboard',
  keys_title: 'Keyboard shortcuts',
  key_hand: 'Raise or lower your hand (works while typing on the board).',
  key_next: 'Leaders: give the floor to the next speaker in the queue.',
  key_escape: 'Close the leader tools, a menu or this help, and go back to the button that opened it.',
  key_help: 'Show this help (not while typing).',
  keys_note: 'On a Mac, Alt is the Option key (⌥). Tab and Shift+Tab move through the page in the order you see it.',
  close: 'Close',
  language: 'Language',
  ok: 'OK',
  cancel: 'Cancel',

  // Connection.
  conn_none: 'Not connected',
  conn_connecting: 'Connecting…',
  conn_lobby: 'In the lobby',
  conn_online: 'Connected',
  conn_reconnecting: 'Reconnecting…',
  conn_left: 'Left',
  retry_soon: 'Reconnecting…',
  retry_in: 'Reconnecting {when}…',
  reconnect_now: 'Reconnect now',
  offline_controls: 'Unavailable while reconnecting: the hand, the floor and the leader\'s controls. '
    + 'Your edits on the board are kept and will be sent when you are back.',
  why_connection_lost: 'The connection was lost.',
  why_no_answer: 'No answer from the server: the network may have stalled.',
  why_unreachable: 'The server cannot be reached. Check the network.',
  why_server_restart: 'The server is restarting.',
  why_too_slow: 'The connection could not keep up with the room.',
  why_room_full: 'The room is full.',
  why_rate_limited: 'Changes were sent too fast for too long; the room asked to wait a moment.',
  why_server_busy: 'The server is busy.',
  why_malformed: 'This browser sent something the room could not read. Reload the page to join again.',
  why_board_full: 'The board is full: nothing more can be written in this room.',

  // Joining and the screens instead of the room.
  join_title: 'Join the meeting',
  join_name: 'Your name',
  join_name_help: 'The others in the room see this name.',
  join_button: 'Join',
  waiting_title: 'Waiting to be let in',
  waiting_text: 'A leader will let you into the room shortly. Until then you see nothing of the board.',
  no_copy: 'This page kept no copy of the board.',
  load_failed_title: 'The room could not be loaded',
  load_failed: 'This browser could not start the room client (it needs WebAssembly). Try a current browser.',
  renewed_title: 'This link was replaced',
  renewed: 'This link was replaced by a newer one; ask the leader for the new link.',
  refused_title: 'The room closed this connection',
  refused_connection: 'The room refused this connection. Reload the page to try again.',
  deleted_title: 'This room was deleted',
  deleted: 'A leader deleted the room: its board is erased from the server, and this page kept no copy.',
  ended_title: 'The meeting has ended',
  why_ended_by_leader: 'A leader ended the meeting.',
  why_empty: 'Everyone had left, so the meeting ended.',
  why_max_length: 'The meeting reached the longest time a room may run.',
  ended_ephemeral: 'Everything on the board was discarded: the server has erased it, and this page kept no copy.',
  ended_nothing_kept: 'Nothing of the meeting is stored in this browser. You can close this tab.',
  ended_persistent: 'This page kept no copy of the board. You can close this tab.',
  removed_title: 'You are no longer in the meeting',
  removed: 'A leader removed you from the meeting, or did not let you in. This page kept no copy of the board.',
  origin_title: 'This page may not open the room',
  origin: 'The server does not accept connections from this address of the page. Open the link exactly as the leader sent it.',
  bad_name_title: 'That name was not accepted',
  bad_name: 'Use 1 to 64 letters, digits or spaces, then open the link again.',
  bad_link_title: 'This link does not open a room',
  bad_link: 'It may be incomplete or expired. Ask the leader of your group for a new link.',
  incomplete_title: 'This link is incomplete',
  incomplete: 'A room link ends with "#t=" and a code. Copy the whole link from the leader\'s message and try again.',

  // Notices.
  notice_sealed: 'Sealed: the board, the names and the title are encrypted in your browsers with the key in your link; the server cannot read them.',
  unreadable: 'A part of the board could not be decrypted and was left out: it was altered on the way or sealed with another key.',
  bad_key_title: 'This link is damaged',
  bad_key: 'The key at the end of this link (after "&k=") is incomplete. Copy the whole link again.',
  notice_ephemeral: 'Ephemeral: erased for everyone when the meeting ends. It cannot stop screenshots or copying text, '
    + 'so write as if it could be kept.',
  notice_persistent: 'Persistent room: the board is kept after the meeting for the group. Write nothing you would not keep.',
  released_hand: 'your raised hand was lowered',
  released_floor: 'your turn on the floor ended',
  released_presenter: 'you are no longer the presenter',
  released_role: 'you had been made {role}, and now have the role of your link',
  released: 'You were away longer than the room keeps a place ({grace}), so you rejoined as a new member{what}',
  reflection_me: 'Presenter is outside the circle: that is you. Listen to the group; you can read the board but not write '
    + 'or take the floor until the response.',
  reflection_other: 'Presenter is outside the circle ({name}): listening, not taking part.',
  reflection_nobody: 'Presenter is outside the circle: listening, not taking part.',

  // Phases.
  stand_title: 'The meeting',
  phase_title: 'Phase',
  phase_gathering: 'Gathering',
  phase_presentation: 'Presentation',
  phase_questions: 'Questions',
  phase_reflection: 'Reflection',
  phase_response: 'Response',
  phase_closing: 'Closing',
  phase_discussion: 'Discussion',
  hint_gathering: 'The leader asks who has a case and picks the presenter.',
  hint_presentation: 'The presenter tells the case. Only the presenter has the floor.',
  hint_questions: 'Raise your hand to ask a factual question. The presenter answers.',
  hint_reflection: 'The presenter listens from outside the circle. The group shares thoughts, feelings and fantasies.',
  hint_response: 'The presenter comes back and speaks first.',
  hint_closing: 'A short reflection on the session itself.',
  hint_discussion: 'Raise your hand to speak.',
  time_left: '{time} left',
  time_over: '{time} over time',
  announce_phase: 'Phase: {phase}.',

  // Floor and hands.
  floor_title: 'Floor',
  floor_me: 'You have the floor.',
  floor_other: '{name} has the floor.',
  floor_free: 'Nobody has the floor.',
  speaking: 'Speaking for {time}',
  speaking_of: 'Speaking for {time} of {limit}',
  time_up: '{name} has passed the speaking limit of {limit}.',
  raise_hand: 'Raise hand',
  lower_hand_mine: 'Lower my hand',
  yield: 'Yield the floor',
  ordinal: ({ n }) => `${n}${ENGLISH_SUFFIX[englishOrdinals.select(n)]}`,
  my_place: 'Your hand is up: you are {place} in the queue.',
  announce_place: 'You are {place} in the queue.',
  announce_hand_down: 'Your hand is down.',
  standing_observer: 'You are observing: you can read the board, not write or take the floor.',
  standing_presenter_in_reflection: 'You are outside the circle during reflection.',
  queue_title: 'Hand queue',
  queue_empty: 'No hands raised.',
  queue_more: ({ n }) => `and ${n} more`,
  queue_show_all: 'Show all',
  queue_show_fewer: 'Show fewer',
  you_suffix: '{name} (you)',
  give_floor: 'Give the floor',
  give_floor_to: ' to {name}',
  lower_hand: 'Lower hand',
  lower_hand_of: ' of {name}',
  someone: 'Someone',
  unnamed: 'Unnamed',
  // Why fair order moved a hand (the queue row says it in words, for everyone).
  moved_ahead: 'ahead: has not spoken in this phase yet',
  moved_behind: 'after others: has spoken in this phase',

  // Statuses and roles.
  status_here: 'here',
  status_reconnecting: 'reconnecting…',
  status_away: 'away',
  status_outside_circle: 'outside the circle',
  role_leader: 'leader',
  role_member: 'member',
  role_observer: 'observer',
  role_made_leader: 'co-leader',
  badge_presenter: 'presenter',
  badge_speaking: 'speaking',

  // Leading.
  lead_title: 'Leading',
  next_speaker: 'Next speaker',
  next_preview_to: 'Next: {name}',
  next_preview_none: 'Nobody in the queue can take the floor now.',
  next_preview_skips: ({ list }) => `Passes over ${list}; they keep their place.`,
  next_preview_skip: '{name} ({why})',
  skip_reconnecting: 'reconnecting…',
  skip_only_presenter_during_presentation: 'only the presenter speaks now',
  skip_presenter_in_reflection: 'outside the circle',
  tools_button: 'Leader tools',
  tools_title: 'Leader tools',
  lobby_one: '{name} is waiting to come in',
  lobby_many: ({ n }) => `${n} people are waiting to come in`,
  admit_all: 'Let everyone in',
  admit: 'Let in',
  decline: 'Turn away',
  announce_waiting: '{name} is waiting to come in.',
  floor_tools: 'Floor and hands',
  revoke: 'Take back the floor',
  lower_all: 'Lower all hands',
  move_phase: 'Move to phase',
  phase_minutes: 'Minutes for the next phase',
  phase_minutes_help: '(optional; else the suggested time)',
  phase_current_title: 'Current phase: click to restart its countdown',
  phase_suggested_title: 'Suggested: {minutes} minutes',
  presenter: 'Presenter',
  nobody_yet: 'Nobody yet',
  speaking_limit: 'Speaking limit per turn',
  no_limit: 'No limit',
  minutes: ({ n }) => (n === 1 ? '1 minute' : `${n} minutes`),
  fair_order: 'Fair order: those who have not spoken in this phase go first',
  lock_board: 'Lock the board: only leaders can write',
  lobby_setting: 'Lobby: let newcomers in one by one',
  phase_reset: 'Lower hands and release the floor when the phase changes',
  attendance_title: 'Attendance',
  attendance_download: 'Download attendance (CSV)',
  attendance_yours: 'This file holds names: it is yours to keep safe; Balint Room keeps no copy.',
  attendance_summary: ({ people, minutes, since }) =>
    `${people === 1 ? '1 person' : `${people} people`} so far · ${minutes === 1 ? '1 minute' : `${minutes} minutes`} since ${since}`,
  attendance_none: 'Nobody on the sheet yet.',
  attendance_file: 'attendance-{date}.csv',
  end_attendance: 'Download the attendance before ending: afterwards it is gone.',
  participation: 'Participation',
  participation_empty: 'Nobody has spoken yet.',
  participation_caption: 'Turns and speaking time per person',
  participation_legend: 'Bar: speaking time. Thin bar: turns.',
  participation_row: ({ turns, time }) => `${turns === 1 ? '1 turn' : `${turns} turns`} · ${time}`,
  col_name: 'Name',
  col_turns: 'Turns',
  col_time: 'Speaking time',
  links_title: 'Links',
  links_hint: 'Issue fresh links before the old ones expire (your leader link expires too), or to share them again. The links issued before keep working '
    + 'unless you renew the invite link while removing someone.',
  fresh_links: 'Issue fresh links',
  leader_link: 'Leader link',
  leader_link_help: '(for yourself and co-leaders)',
  invite_link: 'Invite link',
  invite_link_help: '(for the members)',
  observer_link: 'Observer link',
  observer_link_help: '(read only)',
  copy: 'Copy',
  copy_leader: 'Copy the leader link',
  copy_invite: 'Copy the invite link',
  copy_observer: 'Copy the observer link',
  copied: '{link} copied.',
  selected: '{link} selected: press Ctrl+C (or ⌘C) to copy it.',
  links_issuing: 'Issuing fresh links…',
  links_renewing: 'Renewing the invite link…',
  links_ready: 'Fresh links are ready below.',
  links_renewed: 'The invite link was renewed: share the new links below. The old invite and observer links no longer let anyone in.',
  links_until: 'These links work until {date}.',
  links_failed: 'No links were issued. Try again in a moment.',
  links_offline: 'No links were issued. Check the connection and try again.',
  keep_title: 'This room is kept',
  keep_hint: 'Its board stays between meetings. Export it, or delete it for good.',
  export: 'Export the notes (Markdown)',
  export_failed: 'The export did not work. Try again in a moment.',
  export_offline: 'The export did not work. Check the connection and try again.',
  export_loading: 'The board is still loading. Try again in a moment.',
  delete: 'Delete this room for good…',
  delete_title: 'Delete this room for good?',
  delete_text: 'Everyone leaves the room, and its board (the notes and every observation card) is erased from the server. '
    + 'The links stop working. This cannot be undone.',
  delete_confirm: 'Delete the room',
  delete_failed: 'The room was not deleted. Try again in a moment.',
  delete_offline: 'The room was not deleted. Check the connection and try again.',
  http_401: 'This link has expired. Ask for a new leader link.',
  http_403: 'Only the leader link (the one the room was created with) can do that.',
  http_409: 'This room is ephemeral: nothing of it is kept, so there is nothing to export.',
  http_410: 'This room no longer exists.',
  end: 'End the meeting for everyone…',
  end_title: 'End the meeting for everyone?',
  end_text_ephemeral: 'Everyone leaves the room, and everything on the board is erased for good. This cannot be undone.',
  end_text_persistent: 'Everyone leaves the room. This cannot be undone.',
  end_confirm: 'End the meeting',
  kick_title: 'Remove {name} from the meeting?',
  kick_text: 'They leave the meeting at once. They can rejoin with the current invite link unless you renew it.',
  kick_renew: 'Remove and renew the invite link: the current invite and observer links stop letting anyone new in '
    + '(everyone here stays), and you get new links to share.',
  kick_confirm: 'Remove',

  // People.
  people_title: 'In the room',
  away: 'I am away for a moment',
  member_actions: 'Actions',
  member_actions_for: ' for {name}',
  make_presenter: 'Make presenter',
  unmake_presenter: 'No longer presenter',
  make_leader: 'Make co-leader',
  make_member: 'Make member',
  make_observer: 'Make observer',
  kick: 'Remove from the meeting',

  // The board.
  board_title: 'Board',
  notes: 'Running notes',
  observations: 'Observations',
  cards_empty: 'No observations yet.',
  new_card: 'New observation',
  add_card: 'Add observation',
  card_head: '{author} · {phase}',
  no_phase: 'No phase',
  board_observer: 'You are observing: the board is read-only for you.',
  board_presenter_in_reflection: 'You are outside the circle: the board is read-only for you until the response.',
  board_board_locked: 'The leader has locked the board: only leaders can write now.',
  board_readonly: 'The board is read-only for you right now.',
  // Who is writing where: a line under the notes, a chip on a card.
  writing_notes: ({ names, n }) => `${names} ${n === 1 ? 'is' : 'are'} writing in the notes.`,
  writing_card: ({ names, n }) => `${names} ${n === 1 ? 'is' : 'are'} writing`,

  // Refusals and problems.
  refused_unknown: 'That was not possible just now.',
  lost_edit: 'Your last change was not kept.',
  not_sent: 'Not sent: {error}. Wait until the room is connected again.',
  not_connected: 'not connected to the room',
  ...Object.fromEntries(Object.entries(REFUSALS).map(([reason, text]) => [`refused_${reason}`, text])),
};

/** The catalogues by language; the page speaks the tab's pick, else the browser's first it has. */
const CATALOGUES = { en, de: de.room, fr: fr.room };
const lang = chooseLanguage(CATALOGUES);
const words = CATALOGUES[lang];
/** Numbers, times, dates and durations in the page's language. */
const fmt = formatters(lang);

/**
 * The sentence of `key` in the page's language, with `{name}`-style `vars` filled in (numbers
 * formatted for the language). A function entry gets the raw `vars`.
 */
export function t(key, vars = {}) {
  const entry = words[key] ?? en[key];
  if (entry === undefined) return key;
  if (typeof entry === 'function') return entry(vars);
  const shown = (value) => (typeof value === 'number' ? fmt.number(value) : String(value));
  return entry.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? shown(vars[name]) : whole));
}

/** Fills the page's data-i18n texts and labels from the catalogue. */
function translatePage() {
  document.documentElement.lang = lang;
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-label]')) node.setAttribute('aria-label', t(node.dataset.i18nLabel));
  for (const option of document.querySelectorAll('#speaking-limit option[value]:not([value=""])')) {
    option.textContent = t('minutes', { n: Number(option.value) / 60 });
  }
  document.title = t('brand');
}

/**
 * The sentence of a refusal, by its reason code. The server's `message` is English for API
 * users and is never shown: an unknown reason (a newer server) gets the general sentence.
 */
function refusalText(reason) {
  return reason && reason in REFUSALS ? t(`refused_${reason}`) : t('refused_unknown');
}

/** Why the connection stands where it does, from the client's reason code. */
function reasonText(reason, fallback = 'why_connection_lost') {
  return t(reason && `why_${reason}` in en ? `why_${reason}` : fallback);
}

// ---------------------------------------------------------------------------------------------
// State

const $ = (id) => document.getElementById(id);

const roomId = decodeURIComponent(location.pathname.split('/')[2] || '');
const token = new URLSearchParams(location.hash.slice(1)).get('t');
// A sealed room's key (docs/PROTOCOL.md §13): it stays in this page; only `sealed=1` goes to the server.
const roomKey = new URLSearchParams(location.hash.slice(1)).get('k');
const storageKey = `balint.room.${roomId}`;
/** How many rows of the hand queue a narrow screen shows before "and N more". */
const QUEUE_ROWS_COMPACT = 3;
const wide = window.matchMedia('(min-width: 64rem)');

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
    const node = $(id);
    if (node) node.hidden = id !== screen;
  }
  // In the room the page is an app shell on wide screens: each column scrolls on its own.
  document.body.classList.toggle('in-room', screen === 'room');
}

function wsUrls(displayName) {
  // In a sealed room the name travels only sealed, once the room tells us our member id.
  const query = roomKey
    ? `token=${encodeURIComponent(token)}&sealed=1`
    : `token=${encodeURIComponent(token)}&name=${encodeURIComponent(displayName)}`;
  const path = `/ws/${encodeURIComponent(roomId)}?${query}`;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return { ws: `${scheme}//${location.host}${path}`, probe: `${location.origin}${path}` };
}

async function join(displayName, resume) {
  name = displayName;
  setConnection(t('conn_connecting'));
  try {
    await init();
  } catch (error) {
    showMessage(t('load_failed_title'), [t('load_failed')]);
    return;
  }
  const urls = wsUrls(displayName);
  try {
    client = new RoomClient(urls.ws, urls.probe, resume || undefined, onEvent,
      roomKey ? roomId : undefined, roomKey || undefined, roomKey ? displayName : undefined);
  } catch {
    showMessage(t('bad_key_title'), [t('bad_key')]);
    return;
  }
  $('sealed-notice').hidden = !client.isSealed();
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
      state = withNames(event.state);
      canWrite = event.can_write;
      actions = event.actions;
      ephemeral = state.ephemeral;
      render();
      // May we show our caret now? (Not while pushed back, say.)
      scheduleCursor();
      break;
    case 'board':
      renderCards();
      renderCursors();
      break;
    case 'cursors':
      renderCursors();
      break;
    case 'time_up':
      announce(t('time_up', { name: memberName(event.member), limit: duration(event.limit_secs * 1000) }));
      $('floor-timer').classList.add('over');
      break;
    case 'error': {
      const why = refusalText(event.reason);
      alertUser(event.lost_edit ? `${why} ${t('lost_edit')}` : why);
      break;
    }
    case 'released':
      showReleased(event);
      break;
    case 'unreadable':
      // Once per session, and never with anything of the entry.
      alertUser(t('unreadable'));
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

/**
 * In a sealed room a name the client could not open (or not yet sent) arrives empty: it is
 * shown as a placeholder, never as text the server chose.
 */
function withNames(roomState) {
  for (const person of [...roomState.members, ...(roomState.waiting || [])]) {
    if (!person.name) person.name = t('unnamed');
  }
  return roomState;
}

function onConnection(event) {
  setAvailable(event.status === 'online');
  $('offline').hidden = event.status !== 'reconnecting';
  switch (event.status) {
    case 'connecting':
      setConnection(t('conn_connecting'));
      break;
    case 'waiting':
      setConnection(t('conn_lobby'));
      show('waiting-screen');
      break;
    case 'online':
      setConnection(t('conn_online'));
      show('room');
      break;
    case 'reconnecting':
      setConnection(t('conn_reconnecting'), true);
      $('offline-reason').textContent = reasonText(event.reason);
      $('offline-retry').textContent = event.retry_in_ms == null ? t('retry_soon')
        : t('retry_in', { when: fmt.inSeconds(Math.max(1, Math.round(event.retry_in_ms / 1000))) });
      break;
    case 'link_renewed':
      finish();
      showMessage(t('renewed_title'), [t('renewed'), t('no_copy')]);
      break;
    case 'refused':
      finish();
      showMessage(t('refused_title'), [reasonText(event.reason, 'refused_connection'), t('no_copy')]);
      break;
    case 'ended':
      finish();
      if (event.reason === 'deleted') {
        showMessage(t('deleted_title'), [t('deleted')]);
      } else {
        // Why it ended, when the server said (the client's reasons ended_by_leader, empty, max_length).
        const why = event.reason && `why_${event.reason}` in en ? [t(`why_${event.reason}`)] : [];
        if (ephemeral) showMessage(t('ended_title'), [...why, t('ended_ephemeral'), t('ended_nothing_kept')]);
        else showMessage(t('ended_title'), [...why, t('ended_persistent')]);
      }
      break;
    case 'removed':
      finish();
      showMessage(t('removed_title'), [t('removed')]);
      break;
    case 'invalid_link':
      finish();
      if (event.reason === 'origin_refused') showMessage(t('origin_title'), [t('origin')]);
      else if (event.reason === 'bad_name') showMessage(t('bad_name_title'), [t('bad_name')]);
      else showMessage(t('bad_link_title'), [t('bad_link')]);
      break;
    case 'left':
      setConnection(t('conn_left'));
      break;
  }
}

/**
 * Enables the room's controls when connected; otherwise disables them, and the offline bar says
 * why. Board editors stay as they are: edits made meanwhile are kept and sent on reconnect.
 */
function setAvailable(available) {
  connected = available;
  for (const control of document.querySelectorAll('#stand button, #stand input, #stand select')) {
    // Controls that only change this page (open a panel, show more) stay available.
    if ('local' in control.dataset) continue;
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
  if (released.hand) lost.push(t('released_hand'));
  if (released.floor) lost.push(t('released_floor'));
  if (released.presenter) lost.push(t('released_presenter'));
  if (released.role) lost.push(t('released_role', { role: roleName(released.role, true) }));
  // The server of this page always says its grace period (`grace_secs`).
  const grace = fmt.span(released.grace_secs ?? 0);
  $('released-text').textContent = t('released', { grace, what: lost.length ? `: ${lost.join('; ')}.` : '.' });
  $('released-notice').hidden = false;
  announce($('released-text').textContent);
}
$('released-ok').addEventListener('click', () => { $('released-notice').hidden = true; });

/** Takes the board out of the page and forgets everything about the meeting. */
function finish() {
  finished = true;
  $('offline').hidden = true;
  sessionStorage.removeItem(storageKey);
  for (const dialog of document.querySelectorAll('dialog')) if (dialog.open) dialog.close();
  $('room')?.remove();
  $('room-title').textContent = '';
  document.title = t('brand');
  state = null;
  setConnection(t('conn_none'));
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

/** An SVG element, for the participation chart. */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
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
  return state?.members.find((m) => m.id === id)?.name || t('someone');
}

function roleName(role, promoted = false) {
  if (promoted && role === 'leader') return t('role_made_leader');
  return `role_${role}` in en ? t(`role_${role}`) : role;
}

function statusName(status) {
  return `status_${status}` in en ? t(`status_${status}`) : status;
}

function phaseName(phase) {
  return phase && `phase_${phase}` in en ? t(`phase_${phase}`) : phase || t('no_phase');
}

function isLeader() {
  return Boolean(actions?.lead);
}

/** A stopwatch duration (m:ss, h:mm:ss), in the page's language's digits. */
function duration(ms) {
  return fmt.duration(ms);
}

function render() {
  if (!state || finished) return;
  const leader = isLeader();
  const presenterName = state.presenter ? memberName(state.presenter) : null;
  const iAmPresenter = state.presenter === me;

  const title = state.title || t('untitled');
  $('room-title').textContent = title;
  document.title = t('page_title', { title });

  $('ephemeral-notice').textContent = t(state.ephemeral ? 'notice_ephemeral' : 'notice_persistent');
  $('ephemeral-notice').classList.toggle('persistent', !state.ephemeral);

  // Reflection: the presenter is pushed back.
  const reflection = state.phase.name === 'reflection';
  const banner = $('reflection-banner');
  banner.hidden = !reflection;
  if (reflection) {
    banner.textContent = iAmPresenter ? t('reflection_me')
      : presenterName ? t('reflection_other', { name: presenterName }) : t('reflection_nobody');
  }

  // Phase.
  const label = phaseName(state.phase.name);
  $('phase-name').textContent = label;
  $('phase-hint').textContent = `hint_${state.phase.name}` in en ? t(`hint_${state.phase.name}`) : '';
  if (lastAnnounced.phase !== undefined && lastAnnounced.phase !== state.phase.name) {
    announce(t('announce_phase', { phase: label }));
  }
  lastAnnounced.phase = state.phase.name;

  renderFloor();
  renderQueue(leader);
  renderLeading(leader);
  renderMembers(leader);
  renderBoardAccess();
  if (!connected) setAvailable(false);
  tick();
}

function renderFloor() {
  const floor = state.floor;
  const holder = floor ? (floor.member === me ? t('floor_me') : t('floor_other', { name: memberName(floor.member) }))
    : t('floor_free');
  if ($('floor-holder').textContent !== holder) $('floor-holder').textContent = holder;
  $('floor-holder').classList.toggle('free', !floor);
  $('floor-timer').classList.remove('over');
  $('yield').hidden = !actions?.yield_floor;

  const position = state.queue.findIndex((entry) => entry.member === me);
  const hand = $('hand');
  const raise = actions?.raise_hand || { allowed: false };
  hand.hidden = !actions?.hand_shown;
  hand.querySelector('.text').textContent = t(position >= 0 ? 'lower_hand_mine' : 'raise_hand');
  hand.classList.toggle('primary', position < 0);
  hand.classList.toggle('raised', position >= 0);
  hand.disabled = !raise.allowed && position < 0;

  let text = '';
  if (!raise.allowed && `standing_${raise.reason}` in en) text = t(`standing_${raise.reason}`);
  else if (position >= 0) text = t('my_place', { place: t('ordinal', { n: position + 1 }) });
  if ($('my-position').textContent !== text) $('my-position').textContent = text;
}

let queueExpanded = false;
function renderQueue(leader) {
  const queue = $('queue');
  $('queue-empty').hidden = state.queue.length > 0;
  $('queue-count').textContent = state.queue.length ? `(${fmt.number(state.queue.length)})` : '';
  const status = new Map(state.members.map((member) => [member.id, member.status]));
  reconcile(
    queue,
    state.queue,
    (entry) => entry.member,
    () => el('li', {},
      el('span', { class: 'who' },
        el('span', { class: 'name' }),
        el('span', { class: 'badges' })),
      el('span', { class: 'why' }),
      el('span', { class: 'row-actions' },
        el('button', { type: 'button', class: 'small', dataset: { act: 'grant' } }, t('give_floor'), el('span', { class: 'visually-hidden' })),
        el('button', { type: 'button', class: 'small quiet', dataset: { act: 'lower' } }, t('lower_hand'), el('span', { class: 'visually-hidden' })))),
    (row, entry, index) => {
      const who = memberName(entry.member);
      row.querySelector('.name').textContent = entry.member === me ? t('you_suffix', { name: who }) : who;
      row.classList.toggle('me', entry.member === me);
      // Its number, drawn by the stylesheet, stays right when a narrow screen hides rows.
      row.dataset.place = `${index + 1}.`;
      const memberStatus = status.get(entry.member) || 'here';
      row.dataset.status = memberStatus;
      // Each row says where its person is, in words.
      row.querySelector('.badges').textContent = `· ${statusName(memberStatus)}`;
      // When fair order moved the hand, why: shown to everyone, read with the row.
      const why = row.querySelector('.why');
      why.textContent = entry.moved ? t(`moved_${entry.moved}`) : '';
      why.hidden = !entry.moved;
      row.dataset.moved = entry.moved || '';
      const buttons = row.querySelector('.row-actions');
      buttons.hidden = !leader;
      buttons.querySelector('[data-act=grant] .visually-hidden').textContent = t('give_floor_to', { name: who });
      buttons.querySelector('[data-act=lower] .visually-hidden').textContent = t('lower_hand_of', { name: who });
    },
  );
  // A narrow screen shows the head of the queue and "and N more"; your own row is always shown.
  const extra = Math.max(0, state.queue.length - QUEUE_ROWS_COMPACT);
  queue.classList.toggle('all', queueExpanded);
  [...queue.children].forEach((row, index) => row.classList.toggle('beyond', index >= QUEUE_ROWS_COMPACT));
  const more = $('queue-more');
  more.hidden = extra === 0;
  $('queue-more-count').textContent = queueExpanded ? '' : t('queue_more', { n: extra });
  more.querySelector('button').textContent = t(queueExpanded ? 'queue_show_fewer' : 'queue_show_all');
  more.querySelector('button').setAttribute('aria-expanded', String(queueExpanded));
}

function renderMembers(leader) {
  // What we may do to each member, from the client (the row's own `actions` is its menu).
  const allowed = actions || {};
  $('people-count').textContent = `(${fmt.number(state.members.length)})`;
  reconcile(
    $('members'),
    state.members,
    (member) => member.id,
    () => el('li', {},
      el('span', { class: 'name' }),
      el('span', { class: 'badges' }),
      el('details', { class: 'member-actions' },
        el('summary', {}, t('member_actions'), el('span', { class: 'visually-hidden' })),
        el('div', { class: 'menu' },
          el('button', { type: 'button', dataset: { act: 'grant' } }, t('give_floor')),
          el('button', { type: 'button', dataset: { act: 'presenter' } }, t('make_presenter')),
          el('button', { type: 'button', dataset: { act: 'unpresenter' } }, t('unmake_presenter')),
          el('button', { type: 'button', dataset: { act: 'co-leader' } }, t('make_leader')),
          el('button', { type: 'button', dataset: { act: 'member' } }, t('make_member')),
          el('button', { type: 'button', dataset: { act: 'observer' } }, t('make_observer')),
          el('button', { type: 'button', dataset: { act: 'lower' } }, t('lower_hand')),
          el('button', { type: 'button', class: 'danger', dataset: { act: 'kick' } }, t('kick'))))),
    (row, member) => {
      const self = member.id === me;
      row.querySelector('.name').textContent = self ? t('you_suffix', { name: member.name }) : member.name;
      const badges = [roleName(member.role)];
      if (state.presenter === member.id) badges.push(t('badge_presenter'));
      if (member.status !== 'here') badges.push(statusName(member.status));
      if (state.floor?.member === member.id) badges.push(t('badge_speaking'));
      row.querySelector('.badges').textContent = badges.join(' · ');
      row.dataset.status = member.status;
      const menu = row.querySelector('.member-actions');
      menu.hidden = !leader;
      menu.querySelector('summary .visually-hidden').textContent = t('member_actions_for', { name: member.name });
      const showAct = (act, visible) => { menu.querySelector(`[data-act="${act}"]`).hidden = !visible; };
      const may = allowed.members?.[member.id] || {};
      showAct('grant', may.grant_floor);
      showAct('presenter', may.make_presenter);
      showAct('unpresenter', may.clear_presenter);
      showAct('co-leader', may.make_leader);
      showAct('member', may.make_member);
      showAct('observer', may.make_observer);
      showAct('lower', may.lower_hand);
      showAct('kick', may.kick);
    },
  );
}

/** The leader's quick controls and lobby alert in the meeting, and the tools panel. */
function renderLeading(leader) {
  $('lead-row').hidden = !leader;
  if (!leader) {
    closeTools(false);
    return;
  }
  renderNextPreview();
  renderLobby();
  renderTools();
}

/**
 * Beside "Next speaker": whom it would give the floor to, and whom it passes over and why, by
 * the same rule the server applies (the client's preview). Passed-over hands keep their place.
 */
function renderNextPreview() {
  const preview = client?.nextSpeakerPreview() || null;
  $('next-speaker').disabled = !preview;
  const box = $('next-preview');
  box.hidden = state.queue.length === 0;
  if (box.hidden) return;
  const to = preview ? t('next_preview_to', { name: memberName(preview.member) }) : t('next_preview_none');
  if ($('next-preview-to').textContent !== to) $('next-preview-to').textContent = to;
  // Without a next speaker, the rows of the queue say where each person is.
  const skipped = preview?.skipped || [];
  const list = nameList(skipped.map((skip) => t('next_preview_skip', {
    name: memberName(skip.member),
    why: skip.reason && `skip_${skip.reason}` in en ? t(`skip_${skip.reason}`) : statusName(skip.status),
  })));
  const text = skipped.length ? t('next_preview_skips', { list }) : '';
  if ($('next-preview-skipped').textContent !== text) $('next-preview-skipped').textContent = text;
}

/** Names or phrases joined as a list in the page's language ("Ann, Ben and Cem"). */
function nameList(items) {
  return new Intl.ListFormat(lang, { style: 'long', type: 'conjunction' }).format(items);
}

function renderLobby() {
  const waiting = state.waiting || [];
  $('lobby-alert').hidden = waiting.length === 0;
  $('lobby-count').textContent = waiting.length === 1 ? t('lobby_one', { name: waiting[0].name })
    : t('lobby_many', { n: waiting.length });
  reconcile(
    $('waiting'),
    waiting,
    (person) => person.id,
    () => el('li', {},
      el('span', { class: 'name' }),
      el('span', { class: 'row-actions' },
        el('button', { type: 'button', class: 'small primary', dataset: { act: 'admit' } }, t('admit'), el('span', { class: 'visually-hidden' })),
        el('button', { type: 'button', class: 'small', dataset: { act: 'decline' } }, t('decline'), el('span', { class: 'visually-hidden' })))),
    (row, person) => {
      row.querySelector('.name').textContent = person.name;
      for (const hidden of row.querySelectorAll('.visually-hidden')) hidden.textContent = ` ${person.name}`;
    },
  );
  if (waiting.length && (lastAnnounced.waiting || 0) < waiting.length) {
    announce(t('announce_waiting', { name: waiting[waiting.length - 1].name }));
  }
  lastAnnounced.waiting = waiting.length;
}

function renderTools() {
  $('keep-box').hidden = state.ephemeral;
  const phases = templatePhases(state.template);
  reconcile(
    $('phases'),
    phases,
    (plan) => plan.phase,
    (plan) => el('button', { type: 'button', class: 'small', dataset: { phase: plan.phase } }),
    (button, plan) => {
      const current = state.phase.name === plan.phase;
      button.textContent = phaseName(plan.phase);
      button.setAttribute('aria-pressed', String(current));
      button.title = current ? t('phase_current_title') : t('phase_suggested_title', { minutes: plan.suggested_secs / 60 });
    },
  );

  const presenter = $('presenter');
  const options = [{ id: '', name: t('nobody_yet') }, ...state.members.filter((m) => m.role !== 'observer')];
  reconcile(
    presenter,
    options,
    (member) => member.id || '-',
    () => el('option'),
    (option, member) => {
      option.value = member.id;
      option.textContent = member.id === me ? t('you_suffix', { name: member.name }) : member.name;
    },
  );
  presenter.value = state.presenter || '';

  const limit = state.speaking_limit_secs ? String(state.speaking_limit_secs) : '';
  $('speaking-limit').value = limit;
  if ($('speaking-limit').value !== limit) {
    // A limit set elsewhere that is not one of the choices.
    $('speaking-limit').append(el('option', { value: limit }, duration(state.speaking_limit_secs * 1000)));
    $('speaking-limit').value = limit;
  }
  $('fair-order').checked = state.fair_order;
  // Absent (an older server) reads as on, as the protocol says.
  $('phase-reset').checked = state.phase_reset !== false;
  $('lock-board').checked = state.board_locked;
  $('lobby').checked = state.lobby;
  $('revoke').disabled = !state.floor;
  $('lower-all').disabled = state.queue.length === 0;
}

/**
 * Participation as a picture: per member, a bar of speaking time and a thin bar of turns, each
 * against the group's largest. The SVG is drawn for the eye (aria-hidden); the visually hidden
 * table beside it says the same to a screen reader.
 */
function renderParticipation() {
  if (!state?.participation || !isLeader() || $('tools').hidden) return;
  const now = Date.now();
  const rows = state.participation.map((row) => {
    const running = state.floor?.member === row.member ? Math.max(0, now - state.floor.since_ms) : 0;
    return { member: row.member, name: memberName(row.member), turns: row.turns, ms: row.speaking_ms + running };
  });
  reconcile(
    $('participation'),
    rows,
    (row) => row.member,
    () => el('tr', {}, el('th', { scope: 'row' }), el('td'), el('td')),
    (tr, row) => {
      const cells = tr.children;
      cells[0].textContent = row.name;
      cells[1].textContent = fmt.number(row.turns);
      cells[2].textContent = duration(row.ms);
    },
  );
  $('participation-empty').hidden = rows.some((row) => row.turns > 0 || row.ms > 0);

  const width = 320;
  const rowHeight = 34;
  const maxMs = Math.max(1, ...rows.map((row) => row.ms));
  const maxTurns = Math.max(1, ...rows.map((row) => row.turns));
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${rows.length * rowHeight + 4}`, class: 'chart-svg', 'aria-hidden': 'true', focusable: 'false',
  });
  rows.forEach((row, i) => {
    const y = i * rowHeight;
    chart.append(
      svg('text', { x: 0, y: y + 12, class: 'chart-name' }, row.name),
      svg('text', { x: width, y: y + 12, class: 'chart-value', 'text-anchor': 'end' },
        t('participation_row', { turns: row.turns, time: duration(row.ms) })),
      svg('rect', { x: 0, y: y + 17, width, height: 8, rx: 4, class: 'chart-track' }),
      svg('rect', { x: 0, y: y + 17, width: Math.max(row.ms ? 3 : 0, (width * row.ms) / maxMs), height: 8, rx: 4, class: 'chart-time' }),
      svg('rect', { x: 0, y: y + 27, width: Math.max(row.turns ? 3 : 0, (width * row.turns) / maxTurns), height: 3, rx: 1.5, class: 'chart-turns' }),
    );
  });
  $('participation-chart').replaceChildren(chart, el('p', { class: 'hint', 'aria-hidden': 'true' }, t('participation_legend')));
}

function renderBoardAccess() {
  let note = '';
  const reason = actions?.write?.reason;
  if (!canWrite) note = reason && `board_${reason}` in en ? t(`board_${reason}`) : t('board_readonly');
  $('board-readonly').textContent = note;
  $('board-readonly').hidden = !note;
  $('board').classList.toggle('readonly', !canWrite);
  $('new-card').readOnly = !canWrite;
  $('add-card').hidden = !canWrite;
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
      const body = el('textarea', { rows: '2', id: `card-${card.id}` });
      const article = el('article', { class: 'obs' },
        el('div', { class: 'obs-top' },
          el('label', { class: 'obs-head', for: `card-${card.id}` }),
          el('span', { class: 'obs-writers' })),
        el('div', { class: 'editor' }, body, el('div', { class: 'carets', 'aria-hidden': 'true' })));
      client.bindCard(card.id, body);
      return article;
    },
    (article, card) => {
      const time = card.created_ms ? fmt.time(card.created_ms) : '';
      const head = t('card_head', { author: card.author || t('someone'), phase: phaseName(card.phase) });
      article.querySelector('.obs-head').textContent = time ? `${head} · ${time}` : head;
      article.dataset.phase = card.phase;
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Who is writing where
//
// Our caret goes to the others as an awareness state (client.setCursor) whenever it moves in the
// notes or a card, and is withdrawn when the editor loses focus. The others' carets are drawn
// over the editors: a thin line in their colour with their name on a flag, placed by measuring
// the text up to the caret in a hidden copy of the textarea (a "mirror"). For screen readers and
// as a summary, a line under the notes and a chip on each card say the same in words. A state
// not renewed fades (the client leaves it out), so the page asks again every second.

let cursorSent = '';
let cursorPending = false;

/** The board editor that has focus, as `{target, card, el}`, or null. */
function focusedEditor() {
  const active = document.activeElement;
  if (!(active instanceof HTMLTextAreaElement)) return null;
  if (active.id === 'notes') return { target: 'notes', card: undefined, el: active };
  const article = active.closest('#cards .obs');
  return article ? { target: 'card', card: article.dataset.key, el: active } : null;
}

/** Publishes where our caret is now (after the client has taken the edit that moved it). */
function scheduleCursor() {
  if (cursorPending) return;
  cursorPending = true;
  setTimeout(publishCursor, 0);
}

function publishCursor() {
  cursorPending = false;
  if (!client || finished || !connected) return;
  const editor = focusedEditor();
  if (!editor) {
    if (cursorSent) client.clearCursor();
    cursorSent = '';
    return;
  }
  const { selectionStart: start, selectionEnd: end, selectionDirection: direction } = editor.el;
  const [anchor, head] = direction === 'backward' ? [end, start] : [start, end];
  const key = [editor.target, editor.card, anchor, head, canWrite].join(':');
  if (key === cursorSent) return;
  cursorSent = key;
  try {
    client.setCursor(editor.target, editor.card ?? null, anchor, head);
  } catch {
    // A card that went away meanwhile: nothing to show.
  }
}

for (const name of ['focusin', 'focusout', 'input', 'keyup', 'mouseup', 'select']) {
  document.addEventListener(name, (event) => {
    if (event.target instanceof HTMLTextAreaElement) scheduleCursor();
    if (name === 'input' && event.target instanceof HTMLTextAreaElement) renderCursors();
  });
}
document.addEventListener('selectionchange', () => { if (focusedEditor()) scheduleCursor(); });

/** The style properties that decide where text wraps in a textarea, copied onto the mirror. */
const MIRRORED = ['boxSizing', 'fontFamily', 'fontSize', 'fontStyle', 'fontVariant', 'fontWeight', 'fontStretch',
  'lineHeight', 'letterSpacing', 'wordSpacing', 'textTransform', 'textIndent', 'textAlign', 'tabSize',
  'paddingTop', 'paddingRight', 'paddingBottom', 'paddingLeft'];

/**
 * Where the character at `index` of `textarea` starts, in pixels from the textarea's border box
 * (scrolling included), with the line's height: `{x, y, line}`. The text is copied into a
 * hidden element that wraps as the textarea does, measured, and wiped at once.
 */
function caretPosition(textarea, index) {
  let mirror = $('caret-mirror');
  if (!mirror) {
    mirror = el('div', { id: 'caret-mirror', class: 'caret-mirror', 'aria-hidden': 'true' });
    // Inside the board, so that it leaves the page with it.
    $('board').append(mirror);
  }
  const style = getComputedStyle(textarea);
  for (const property of MIRRORED) mirror.style[property] = style[property];
  mirror.style.boxSizing = 'border-box';
  mirror.style.width = `${textarea.clientWidth}px`;
  const value = textarea.value;
  const at = Math.max(0, Math.min(index, value.length));
  const marker = el('span', {}, value.slice(at, at + 1).replace('\n', '') || '\u200b');
  mirror.replaceChildren(document.createTextNode(value.slice(0, at)), marker);
  const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.5;
  const position = {
    x: textarea.clientLeft + marker.offsetLeft - textarea.scrollLeft,
    y: textarea.clientTop + marker.offsetTop - textarea.scrollTop,
    line,
  };
  mirror.replaceChildren();
  return position;
}

/** Black or white, whichever reads better on `color` (a #rrggbb): 4.5:1 at least either way. */
function readableOn(color) {
  const channel = (i) => {
    const c = parseInt(color.slice(i, i + 2), 16) / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
  return (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) ? '#000000' : '#ffffff';
}

/** Gives `node` the colours of one writer, as CSS custom properties (no inline style attribute). */
function paint(node, color) {
  const safe = /^#[0-9a-f]{6}$/i.test(color) ? color : '#4f5d64';
  node.style.setProperty('--who', safe);
  node.style.setProperty('--who-text', readableOn(safe));
}

/** Draws `cursors` over `textarea`: a caret line and a name flag each, or a flag at the edge. */
function drawCarets(textarea, cursors) {
  const layer = textarea?.parentElement?.querySelector('.carets');
  if (!layer) return;
  reconcile(
    layer,
    cursors,
    (cursor) => String(cursor.client),
    () => el('span', { class: 'caret' }, el('span', { class: 'caret-flag' })),
    (caret, cursor) => {
      paint(caret, cursor.color);
      caret.querySelector('.caret-flag').textContent = cursor.name;
      const { x, y, line } = caretPosition(textarea, cursor.head);
      const height = textarea.clientHeight + textarea.clientTop;
      // Scrolled out of view: the flag waits at the top or bottom edge, pointing there.
      const above = y < textarea.clientTop;
      const below = y + line > height;
      caret.classList.toggle('above', above);
      caret.classList.toggle('below', below);
      caret.classList.toggle('flip', !above && !below && y < line);
      caret.classList.toggle('end', x > textarea.clientWidth - 80);
      caret.style.left = `${Math.max(textarea.clientLeft, Math.min(x, textarea.clientWidth))}px`;
      caret.style.top = `${above ? textarea.clientTop : below ? height - line : y}px`;
      caret.style.height = `${line}px`;
    },
  );
}

/** The names of `cursors`, each once, with the colour of its first cursor. */
function writers(cursors) {
  const seen = new Map();
  for (const cursor of cursors) if (!seen.has(cursor.name)) seen.set(cursor.name, cursor.color);
  return [...seen].map(([name, color]) => ({ name, color }));
}

/** Shows the others' cursors: on the notes and on each card, in colour and in words. */
function renderCursors() {
  if (!client || finished || !state || $('room')?.hidden !== false) return;
  const cursors = client.cursors();
  const onNotes = cursors.filter((cursor) => cursor.target === 'notes');
  drawCarets($('notes'), onNotes);
  const inNotes = writers(onNotes);
  const line = $('notes-writers');
  const sentence = inNotes.length ? t('writing_notes', { names: nameList(inNotes.map((w) => w.name)), n: inNotes.length }) : '';
  if (line.textContent !== sentence) {
    line.replaceChildren(...inNotes.map((w) => {
      const dot = el('span', { class: 'dot', 'aria-hidden': 'true' });
      paint(dot, w.color);
      return dot;
    }), sentence);
  }
  for (const article of $('cards').children) {
    const here = cursors.filter((cursor) => cursor.target === 'card' && cursor.card === article.dataset.key);
    drawCarets(article.querySelector('textarea'), here);
    reconcile(
      article.querySelector('.obs-writers'),
      writers(here),
      (w) => w.name,
      () => el('span', { class: 'writer-chip' }),
      (chip, w) => {
        paint(chip, w.color);
        chip.textContent = t('writing_card', { names: w.name, n: 1 });
      },
    );
  }
}
setInterval(renderCursors, 1000);
window.addEventListener('resize', renderCursors);
$('notes').addEventListener('scroll', renderCursors);

/** Once a second: the countdown, the speaking timer and the running participation. */
function tick() {
  if (!state || finished) return;
  const now = Date.now();
  const left = state.phase.started_at_ms + state.phase.duration_secs * 1000 - now;
  const countdown = $('phase-countdown');
  countdown.textContent = left >= 0 ? t('time_left', { time: duration(left) }) : t('time_over', { time: duration(-left) });
  countdown.classList.toggle('over', left < 0);

  const timer = $('floor-timer');
  if (state.floor) {
    const spoken = now - state.floor.since_ms;
    const limit = state.floor.limit_secs;
    timer.textContent = limit ? t('speaking_of', { time: duration(spoken), limit: duration(limit * 1000) })
      : t('speaking', { time: duration(spoken) });
    timer.classList.toggle('over', Boolean(limit) && spoken > limit * 1000);
  } else {
    timer.textContent = '';
  }
  renderParticipation();
  renderAttendance();
  announceChanges();
}
setInterval(tick, 1000);

/** Tells screen-reader users about a new speaker and about their own place in the queue. */
function announceChanges() {
  const floor = state.floor?.member || null;
  const position = state.queue.findIndex((entry) => entry.member === me);
  const messages = [];
  if ('floor' in lastAnnounced && lastAnnounced.floor !== floor) {
    messages.push(floor ? (floor === me ? t('floor_me') : t('floor_other', { name: memberName(floor) })) : t('floor_free'));
  }
  if ('position' in lastAnnounced && lastAnnounced.position !== position) {
    if (position >= 0) messages.push(t('announce_place', { place: t('ordinal', { n: position + 1 }) }));
    else if (floor !== me) messages.push(t('announce_hand_down'));
  }
  lastAnnounced.floor = floor;
  lastAnnounced.position = position;
  if (messages.length) announce(messages.join(' '));
}

// ---------------------------------------------------------------------------------------------
// Actions

/**
 * Runs a client command; a refusal before sending is shown to the user. The client refuses a
 * command only when not connected (its other errors are the page's mistakes), so that is what
 * the sentence says, in the page's language rather than the client's English.
 */
function act(command) {
  try {
    command();
  } catch {
    alertUser(t('not_sent', { error: t('not_connected') }));
  }
}

/** Raises or lowers my hand, as the hand button says; the shortcut does the same. */
function toggleHand() {
  const hand = $('hand');
  if (!state || hand.hidden) return;
  if (hand.disabled) {
    const reason = actions?.raise_hand?.reason;
    if (connected && reason) alertUser(refusalText(reason));
    return;
  }
  const raised = state.queue.some((entry) => entry.member === me);
  act(() => (raised ? client.lowerHand(undefined) : client.raiseHand()));
}

/** Gives the floor to the head of the queue (leaders). */
function nextSpeaker() {
  if (!isLeader() || $('next-speaker').disabled) return;
  act(() => client.nextSpeaker());
}

/** Lets everyone waiting in the lobby in, with one command. */
function admitEveryone() {
  if (!state?.waiting?.length) return;
  act(() => client.admitAll());
}

$('hand').addEventListener('click', toggleHand);
$('yield').addEventListener('click', () => act(() => client.yieldFloor()));
$('away').addEventListener('change', (event) => act(() => client.setAway(event.target.checked)));
$('next-speaker').addEventListener('click', nextSpeaker);
$('admit-all').addEventListener('click', admitEveryone);
$('queue-more').querySelector('button').addEventListener('click', () => {
  queueExpanded = !queueExpanded;
  if (state) renderQueue(isLeader());
});

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
      kickOpener = row.querySelector('summary');
      $('kick-title').textContent = t('kick_title', { name: memberName(member) });
      $('kick-renew').checked = false;
      $('kick-dialog').showModal();
      break;
  }
  row.querySelector('details').open = false;
});

// Removing someone: the confirmation offers to renew the invite link, so that they cannot come
// back through the link they have.
let kicking = null;
let kickOpener = null;
$('kick-dialog').addEventListener('close', async () => {
  const member = kicking;
  kicking = null;
  if (kickOpener?.isConnected) kickOpener.focus();
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
$('phase-reset').addEventListener('change', (event) => act(() => client.setPhaseReset(event.target.checked)));
$('lock-board').addEventListener('change', (event) => act(() => client.lockBoard(event.target.checked)));
$('lobby').addEventListener('change', (event) => act(() => client.setLobby(event.target.checked)));

$('end-meeting').addEventListener('click', () => {
  $('end-text').textContent = t(ephemeral ? 'end_text_ephemeral' : 'end_text_persistent');
  // Before ending: the attendance sheet, which ends with the meeting.
  $('end-attendance').hidden = !client || client.attendance().members.length === 0;
  $('end-dialog').showModal();
});
$('end-dialog').addEventListener('close', () => {
  $('end-meeting').focus();
  if ($('end-dialog').returnValue === 'end') act(() => client.endMeeting());
});

// ---------------------------------------------------------------------------------------------
// The leader tools panel, the keyboard help, and the keyboard

/** Opens the leader tools and moves focus into them. */
function openTools() {
  $('tools').hidden = false;
  $('tools-button').setAttribute('aria-expanded', 'true');
  renderParticipation();
  renderAttendance();
  $('tools-close').focus();
}

/** Closes the leader tools; focus goes back to the button that opened them when asked to. */
function closeTools(returnFocus = true) {
  if ($('tools').hidden) return;
  const hadFocus = $('tools').contains(document.activeElement);
  $('tools').hidden = true;
  $('tools-button').setAttribute('aria-expanded', 'false');
  if (returnFocus || hadFocus) $('tools-button').focus();
}

$('tools-button').addEventListener('click', () => ($('tools').hidden ? openTools() : closeTools()));
$('tools-close').addEventListener('click', () => closeTools());

let keysOpener = null;
function openKeys() {
  if ($('keys-dialog').open) return;
  keysOpener = document.activeElement;
  $('keys-dialog').showModal();
}
$('keys-button').addEventListener('click', openKeys);
$('keys-dialog').addEventListener('close', () => {
  if (keysOpener?.isConnected && keysOpener !== document.body) keysOpener.focus();
  else $('keys-button').focus();
  keysOpener = null;
});

/** Whether keys typed now go into a text field (then shortcuts without a modifier stay off). */
function typingIn(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT') return true;
  return target.tagName === 'INPUT' && !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(target.type);
}

// Shortcuts: Alt+Y raises and lowers the hand (as in Zoom), Alt+N gives leaders the next speaker;
// both carry a modifier, so they work while typing on the board. "?" opens the help, but not
// while typing. Escape closes the open menu or panel and returns focus to its button. The keys
// are matched by their place (event.code), since Alt+Y types "¥" on a Mac.
document.addEventListener('keydown', (event) => {
  const inRoom = state && !finished && !$('room')?.hidden;
  const altOnly = event.altKey && !event.ctrlKey && !event.metaKey && !event.shiftKey;
  if (altOnly && event.code === 'KeyY' && inRoom) {
    event.preventDefault();
    toggleHand();
  } else if (altOnly && event.code === 'KeyN' && inRoom && isLeader()) {
    event.preventDefault();
    nextSpeaker();
  } else if (event.key === '?' && !event.altKey && !event.ctrlKey && !event.metaKey && !typingIn(event.target)
    && !document.querySelector('dialog[open]')) {
    event.preventDefault();
    openKeys();
  } else if (event.key === 'Escape' && !document.querySelector('dialog[open]')) {
    const menu = document.activeElement?.closest?.('details.member-actions[open]')
      || document.querySelector('details.member-actions[open]');
    if (menu) {
      menu.open = false;
      menu.querySelector('summary').focus();
    } else if (!$('tools')?.hidden) {
      closeTools();
    }
  }
});

// ---------------------------------------------------------------------------------------------
// A persistent room's board, kept between meetings: the leader link may export it or delete the
// room. The server checks the token, in a sealed room too; a co-leader who came in through the
// invite link is told that only the leader link can.

function roomApi(suffix, method) {
  return fetch(`/api/rooms/${encodeURIComponent(roomId)}${suffix}`, {
    method,
    headers: { Authorization: `Bearer ${token}` },
  });
}

function httpText(status, fallback) {
  return `http_${status}` in en ? t(`http_${status}`) : t(fallback);
}

/** A link with this room's key appended, in a sealed room: the server's links never carry it. */
function withKey(url) {
  return roomKey ? `${url}&k=${roomKey}` : url;
}

// Fresh links: POST /api/rooms/{room}/links with the leader link's token. With `renew`, the
// invite and observer links issued before stop letting newcomers in.
async function issueLinks(renew) {
  const status = $('links-status');
  status.textContent = t(renew ? 'links_renewing' : 'links_issuing');
  try {
    const response = await fetch(`/api/rooms/${encodeURIComponent(roomId)}/links`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ renew }),
    });
    if (!response.ok) {
      status.textContent = '';
      alertUser(httpText(response.status, 'links_failed'));
      return;
    }
    const links = await response.json();
    $('fresh-leader-link').value = withKey(links.leader_url);
    $('fresh-invite-link').value = withKey(links.invite_url);
    $('fresh-observer-link').value = withKey(links.observer_url);
    // expires_at is in Unix seconds.
    $('fresh-expiry').textContent = links.expires_at
      ? t('links_until', { date: fmt.date(links.expires_at * 1000) })
      : '';
    $('fresh-box').hidden = false;
    status.textContent = t(renew ? 'links_renewed' : 'links_ready');
  } catch {
    status.textContent = '';
    alertUser(t('links_offline'));
  }
}
$('fresh-links').addEventListener('click', () => issueLinks(false));

for (const copy of document.querySelectorAll('#fresh-box [data-copy]')) {
  copy.addEventListener('click', async () => {
    const input = $(copy.dataset.copy);
    const link = document.querySelector(`label[for="${input.id}"] [data-i18n]`).textContent.trim();
    try {
      await navigator.clipboard.writeText(input.value);
      $('links-status').textContent = t('copied', { link });
    } catch {
      input.focus();
      input.select();
      $('links-status').textContent = t('selected', { link });
    }
  });
}

/**
 * The room's title as this page knows it, for the export (null when it has none). The one
 * place the export reads it: a sealed title, decrypted, arrives here too.
 */
function exportTitle() {
  return state?.title || null;
}

/** The export's file name: the title's letters and digits, joined by dashes. */
function exportFileName() {
  const title = (exportTitle() || 'balint-room').replace(/[^\p{L}\p{N}]+/gu, '-').replace(/^-|-$/g, '');
  return `${title || 'balint-room'}.md`;
}

// The server checks the leader link for either kind of room. A plain room's board comes from
// the server; a sealed room's server cannot read the board and answers 409 `sealed`, and this
// page builds the same Markdown from the board it decrypted (balint_proto::board, run in the
// wasm client). Nothing of that file is sent anywhere.
$('export-board').addEventListener('click', async () => {
  try {
    const response = await roomApi('/export.md', 'GET');
    if (response.ok) {
      saveFile(await response.blob(), exportFileName());
      return;
    }
    const answer = response.status === 409 ? await response.json().catch(() => ({})) : {};
    if (answer.error === 'sealed' && client?.isSealed()) {
      const markdown = client.exportMarkdown(exportTitle() ?? undefined);
      if (markdown === undefined) {
        alertUser(t('export_loading'));
        return;
      }
      saveFile(new Blob([markdown], { type: 'text/markdown;charset=utf-8' }), exportFileName());
      return;
    }
    alertUser(httpText(response.status, 'export_failed'));
  } catch {
    alertUser(t('export_offline'));
  }
});

/**
 * Saves `blob` as a file named `filename`, through a link with `download` to an object URL.
 * A download is not a fetch, so the Content-Security-Policy needs no `blob:` for it.
 */
function saveFile(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// The attendance sheet: written down by this tab's client from the room states, for a leader to
// download (CME/CPD records). Nothing of it is sent anywhere; it is gone when the page is.

/** The preview in the leader tools: how many people, and how long since the meeting began. */
function renderAttendance() {
  if (!client || !isLeader() || $('tools').hidden) return;
  const sheet = client.attendance();
  const people = sheet.members.length;
  const text = people && sheet.date ? t('attendance_summary', {
    people,
    minutes: Math.max(0, Math.floor((Date.now() - sheet.date) / 60_000)),
    since: new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit' }).format(new Date(sheet.date)),
  }) : t('attendance_none');
  if ($('attendance-summary').textContent !== text) $('attendance-summary').textContent = text;
  $('download-attendance').disabled = people === 0;
}

/**
 * Saves the sheet as `attendance-YYYY-MM-DD.csv` (the meeting's date in UTC, as in the file).
 * A byte order mark tells spreadsheet programs that it is UTF-8, so that names keep their accents.
 */
function downloadAttendance() {
  if (!client) return;
  const sheet = client.attendance();
  const date = new Date(sheet.date || Date.now()).toISOString().slice(0, 10);
  saveFile(new Blob(['\ufeff', client.attendanceCsv()], { type: 'text/csv;charset=utf-8' }), t('attendance_file', { date }));
}
$('download-attendance').addEventListener('click', downloadAttendance);
$('end-download-attendance').addEventListener('click', downloadAttendance);

$('delete-room').addEventListener('click', () => $('delete-dialog').showModal());
$('delete-dialog').addEventListener('close', async () => {
  if ($('delete-dialog').returnValue !== 'delete') {
    $('delete-room').focus();
    return;
  }
  try {
    const response = await roomApi('', 'DELETE');
    // On success the server ends the meeting for everyone, this page included.
    if (!response.ok) alertUser(httpText(response.status, 'delete_failed'));
  } catch {
    alertUser(t('delete_offline'));
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
    alertUser(refusalText(client.actions()?.write?.reason));
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

translatePage();
// The language picker: a new pick reloads the page, which rejoins as the same member.
mountPicker($('language'), CATALOGUES, lang, () => location.reload());
// Who is in the room is open beside the board on a wide screen, one line on a narrow one.
$('people').open = wide.matches;

if (!roomId || !token) {
  showMessage(t('incomplete_title'), [t('incomplete')]);
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
