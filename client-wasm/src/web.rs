//! The browser glue: drives a [`Session`] with a real WebSocket, timers and textareas.
//!
//! Everything here is thin. Sockets, timers and DOM events call into the session, then
//! [`pump`] performs what it asks ([`Io`]) and hands what it reports ([`Event`]) to the page's
//! callback. The session is never borrowed while page code runs, so the page may call back into
//! the client from its event handler.
//!
//! Textareas are bound to the board's texts ([`RoomClient::bind_notes`],
//! [`RoomClient::bind_card`]): each input event becomes the smallest edit, and each remote
//! update rewrites only editors whose text changed, with their selection anchored to the
//! characters around it. While an input method composes a word, remote updates wait, so the
//! composition is never torn apart.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use balint_proto::room::{ClientMessage, Phase, Role, Template};
use balint_proto::rules;
use js_sys::{ArrayBuffer, Function, Uint8Array, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    BinaryType, CloseEvent, HtmlTextAreaElement, MessageEvent, RequestCache, RequestInit, Response, WebSocket,
};

use crate::board::{Anchored, TextKey};
use crate::seal::RoomKey;
use crate::session::{Event, Io, Session};

/// A JavaScript callback of one value (a promise's outcome).
type Callback = Closure<dyn FnMut(JsValue)>;
/// A DOM event listener.
type Listener = Closure<dyn FnMut(web_sys::Event)>;

/// One room connection, for the page.
#[wasm_bindgen]
pub struct RoomClient {
    shared: Rc<Shared>,
}

struct Shared {
    inner: RefCell<Inner>,
    on_event: Function,
}

struct Inner {
    session: Session,
    ws_url: String,
    probe_url: String,
    socket: Option<Socket>,
    timer: Option<Timer>,
    bindings: Vec<Binding>,
    composing: bool,
    deferred: Vec<Vec<u8>>,
    probe_handlers: Option<(Callback, Callback)>,
}

/// A WebSocket with its handlers. Dropping it detaches the handlers and closes the socket.
struct Socket {
    ws: WebSocket,
    _handlers: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close_with_code(1000);
    }
}

struct Timer {
    handle: i32,
    _callback: Closure<dyn FnMut()>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(window) = web_sys::window() {
            window.clear_timeout_with_handle(self.handle);
        }
    }
}

/// A textarea showing one text of the board.
struct Binding {
    key: TextKey,
    el: HtmlTextAreaElement,
    listeners: Vec<(&'static str, Listener)>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        for (name, listener) in &self.listeners {
            let _ = self.el.remove_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        }
    }
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

fn random() -> f64 {
    js_sys::Math::random()
}

/// A random id for a new card: 16 bytes from the browser's CSPRNG, hex-encoded.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = web_sys::window()
        .and_then(|w| w.crypto().ok())
        .is_some_and(|c| c.get_random_values_with_u8_array(&mut bytes).is_ok());
    if !filled {
        for b in &mut bytes {
            *b = (random() * 256.0) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, JsError> {
    serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| JsError::new("unknown value"))
}

#[wasm_bindgen]
impl RoomClient {
    /// A client for the room socket at `ws_url` (`ws://host/ws/{room}?token=T&name=N`).
    /// `probe_url` is the same address over HTTP, asked when a socket fails to open, to tell
    /// an ended meeting from a network problem. `resume` is the token this tab kept, if any.
    /// `on_event` receives every [`Event`] as a plain object.
    ///
    /// In a sealed room, `room` is the room id and `key` the room key from the link's `k=`
    /// (`ws_url` then carries `sealed=1` and no name): the board travels sealed, and `name`, our
    /// display name, too. A malformed key is an error.
    #[wasm_bindgen(constructor)]
    pub fn new(
        ws_url: String,
        probe_url: String,
        resume: Option<String>,
        on_event: Function,
        room: Option<String>,
        key: Option<String>,
        name: Option<String>,
    ) -> Result<RoomClient, JsError> {
        let session = match (room, key) {
            (Some(room), Some(key)) => {
                let key = RoomKey::from_base64url(&key).map_err(|e| JsError::new(&e.to_string()))?;
                let name = name.unwrap_or_default();
                Session::sealed(resume, &room, key, &name).map_err(|e| JsError::new(&e.to_string()))?
            }
            _ => Session::new(resume),
        };
        let inner = Inner {
            session,
            ws_url,
            probe_url,
            socket: None,
            timer: None,
            bindings: Vec::new(),
            composing: false,
            deferred: Vec::new(),
            probe_handlers: None,
        };
        Ok(RoomClient { shared: Rc::new(Shared { inner: RefCell::new(inner), on_event }) })
    }

    /// Whether the board travels sealed (the link carried a room key).
    #[wasm_bindgen(js_name = isSealed)]
    pub fn is_sealed(&self) -> bool {
        self.shared.inner.borrow().session.is_sealed()
    }

    /// Connects.
    pub fn start(&self) {
        self.shared.inner.borrow_mut().session.start(now_ms());
        pump(&self.shared);
    }

    /// Reconnects at once if that can help: while waiting out the backoff, or when the socket
    /// has been silent too long. The page calls it when the browser goes online again, when the
    /// page becomes visible, and from the "Reconnect now" button. Returns whether it did.
    #[wasm_bindgen(js_name = reconnectNow)]
    pub fn reconnect_now(&self) -> bool {
        let acted = self.shared.inner.borrow_mut().session.reconnect_now(now_ms());
        pump(&self.shared);
        acted
    }

    /// Leaves the room: closes the socket and stops reconnecting.
    pub fn leave(&self) {
        self.shared.inner.borrow_mut().session.leave();
        pump(&self.shared);
    }

    /// Sends any room command, as the JSON of the protocol (`{"type":"raise_hand"}`).
    pub fn send(&self, json: &str) -> Result<(), JsError> {
        let message = ClientMessage::from_json(json).map_err(|e| JsError::new(&e.to_string()))?;
        self.command(message)
    }

    fn command(&self, message: ClientMessage) -> Result<(), JsError> {
        let result = self.shared.inner.borrow_mut().session.command(message);
        pump(&self.shared);
        result.map_err(|e| JsError::new(&e.to_string()))
    }

    /// Raises our hand.
    #[wasm_bindgen(js_name = raiseHand)]
    pub fn raise_hand(&self) -> Result<(), JsError> {
        self.command(ClientMessage::RaiseHand {})
    }

    /// Lowers our hand, or (leaders) `member`'s.
    #[wasm_bindgen(js_name = lowerHand)]
    pub fn lower_hand(&self, member: Option<String>) -> Result<(), JsError> {
        self.command(ClientMessage::LowerHand { member })
    }

    /// Leader: lowers every hand.
    #[wasm_bindgen(js_name = lowerAllHands)]
    pub fn lower_all_hands(&self) -> Result<(), JsError> {
        self.command(ClientMessage::LowerAllHands {})
    }

    /// Gives the floor back.
    #[wasm_bindgen(js_name = yieldFloor)]
    pub fn yield_floor(&self) -> Result<(), JsError> {
        self.command(ClientMessage::YieldFloor {})
    }

    /// Leader: gives the floor to `member` (with the version on screen).
    #[wasm_bindgen(js_name = grantFloor)]
    pub fn grant_floor(&self, member: String) -> Result<(), JsError> {
        self.command(ClientMessage::GrantFloor { member, if_version: None })
    }

    /// Leader: gives the floor to the head of the queue (with the version on screen).
    #[wasm_bindgen(js_name = nextSpeaker)]
    pub fn next_speaker(&self) -> Result<(), JsError> {
        self.command(ClientMessage::NextSpeaker { if_version: None })
    }

    /// Leader: ends the current turn.
    #[wasm_bindgen(js_name = revokeFloor)]
    pub fn revoke_floor(&self) -> Result<(), JsError> {
        self.command(ClientMessage::RevokeFloor {})
    }

    /// Leader: sets the speaking limit in seconds, or clears it.
    #[wasm_bindgen(js_name = setSpeakingLimit)]
    pub fn set_speaking_limit(&self, seconds: Option<u32>) -> Result<(), JsError> {
        self.command(ClientMessage::SetSpeakingLimit { seconds })
    }

    /// Leader: turns fair order on or off.
    #[wasm_bindgen(js_name = setFairOrder)]
    pub fn set_fair_order(&self, enabled: bool) -> Result<(), JsError> {
        self.command(ClientMessage::SetFairOrder { enabled })
    }

    /// Leader: turns the phase reset on or off (on: a phase change lowers every hand and frees
    /// the floor).
    #[wasm_bindgen(js_name = setPhaseReset)]
    pub fn set_phase_reset(&self, enabled: bool) -> Result<(), JsError> {
        self.command(ClientMessage::SetPhaseReset { enabled })
    }

    /// Leader: who "next speaker" would give the floor to now, and whom it would pass over:
    /// `{member, skipped: [{member, status, reason}]}`, or `null` when no raised hand may
    /// take the floor.
    #[wasm_bindgen(js_name = nextSpeakerPreview)]
    pub fn next_speaker_preview(&self) -> JsValue {
        match self.shared.inner.borrow().session.next_speaker() {
            Some(next) => to_js(&next),
            None => JsValue::NULL,
        }
    }

    /// Leader: moves to `phase` (its wire name), optionally for `duration_secs`.
    #[wasm_bindgen(js_name = setPhase)]
    pub fn set_phase(&self, phase: &str, duration_secs: Option<u32>) -> Result<(), JsError> {
        let phase: Phase = parse(phase)?;
        self.command(ClientMessage::SetPhase { phase, duration_secs })
    }

    /// Leader: picks the presenter, or clears the pick.
    #[wasm_bindgen(js_name = pickPresenter)]
    pub fn pick_presenter(&self, member: Option<String>) -> Result<(), JsError> {
        self.command(ClientMessage::PickPresenter { member })
    }

    /// Leader: changes `member`'s role (`leader` makes a co-leader).
    #[wasm_bindgen(js_name = setRole)]
    pub fn set_role(&self, member: String, role: &str) -> Result<(), JsError> {
        let role: Role = parse(role)?;
        self.command(ClientMessage::SetRole { member, role })
    }

    /// Leader: turns the lobby on or off.
    #[wasm_bindgen(js_name = setLobby)]
    pub fn set_lobby(&self, enabled: bool) -> Result<(), JsError> {
        self.command(ClientMessage::SetLobby { enabled })
    }

    /// Leader: admits someone waiting.
    pub fn admit(&self, member: String) -> Result<(), JsError> {
        self.command(ClientMessage::Admit { member })
    }

    /// Leader: admits everyone waiting in the lobby.
    #[wasm_bindgen(js_name = admitAll)]
    pub fn admit_all(&self) -> Result<(), JsError> {
        self.command(ClientMessage::AdmitAll {})
    }

    /// Leader: turns away someone waiting.
    pub fn decline(&self, member: String) -> Result<(), JsError> {
        self.command(ClientMessage::Decline { member })
    }

    /// Leader: locks or unlocks the board.
    #[wasm_bindgen(js_name = lockBoard)]
    pub fn lock_board(&self, locked: bool) -> Result<(), JsError> {
        self.command(ClientMessage::LockBoard { locked })
    }

    /// Leader: removes a member.
    pub fn kick(&self, member: String) -> Result<(), JsError> {
        self.command(ClientMessage::Kick { member })
    }

    /// Leader: ends the meeting for everyone. The page asks for confirmation first.
    #[wasm_bindgen(js_name = endMeeting)]
    pub fn end_meeting(&self) -> Result<(), JsError> {
        self.command(ClientMessage::EndMeeting {})
    }

    /// Marks us away, or back.
    #[wasm_bindgen(js_name = setAway)]
    pub fn set_away(&self, away: bool) -> Result<(), JsError> {
        self.command(ClientMessage::SetAway { away })
    }

    /// Binds the running notes to a textarea.
    #[wasm_bindgen(js_name = bindNotes)]
    pub fn bind_notes(&self, el: HtmlTextAreaElement) {
        bind(&self.shared, TextKey::Notes, el);
    }

    /// Binds the body of card `id` to a textarea.
    #[wasm_bindgen(js_name = bindCard)]
    pub fn bind_card(&self, id: String, el: HtmlTextAreaElement) {
        bind(&self.shared, TextKey::Card(id), el);
    }

    /// Forgets a textarea bound earlier.
    pub fn unbind(&self, el: &HtmlTextAreaElement) {
        self.shared.inner.borrow_mut().bindings.retain(|b| &b.el != el);
    }

    /// Adds an observation card with `body`; returns its id.
    #[wasm_bindgen(js_name = addCard)]
    pub fn add_card(&self, body: &str) -> Result<String, JsError> {
        let id = random_id();
        let result = self.shared.inner.borrow_mut().session.add_card(&id, body, now_ms());
        pump(&self.shared);
        result.map(|()| id).map_err(|e| JsError::new(&e.to_string()))
    }

    /// The observation cards: `[{id, author, phase, body, created_ms}]`.
    pub fn cards(&self) -> JsValue {
        let cards = self.shared.inner.borrow().session.board().cards();
        to_js(&cards)
    }

    /// The running notes.
    pub fn notes(&self) -> String {
        self.shared.inner.borrow().session.board().notes()
    }

    /// Whether the board holds nothing at all, history included (after the end of a meeting).
    #[wasm_bindgen(js_name = boardIsEmpty)]
    pub fn board_is_empty(&self) -> bool {
        self.shared.inner.borrow().session.board().is_empty()
    }

    /// Whether we may write on the board now.
    #[wasm_bindgen(js_name = canWrite)]
    pub fn can_write(&self) -> bool {
        self.shared.inner.borrow().session.can_write()
    }

    /// What we may do now, by the rules the server enforces: `{write, raise_hand, hand_shown,
    /// yield_floor, lead, members: {id: {grant_floor, make_presenter, ...}}}`, where `write`
    /// and `raise_hand` are `{allowed, reason?}`; `null` until we are in the room.
    pub fn actions(&self) -> JsValue {
        match self.shared.inner.borrow().session.actions() {
            Some(actions) => to_js(&actions),
            None => JsValue::NULL,
        }
    }

    /// The latest room state, or `null`.
    pub fn state(&self) -> JsValue {
        match self.shared.inner.borrow().session.state() {
            Some(state) => to_js(state),
            None => JsValue::NULL,
        }
    }

    /// Our caret is at `anchor..head` (UTF-16 offsets, as a textarea's selection) of the
    /// notes (`target` = `"notes"`) or of card `card_id` (`target` = `"card"`): shown to the
    /// others as an awareness state. Returns whether it is shown (not while we may not write).
    #[wasm_bindgen(js_name = setCursor)]
    pub fn set_cursor(&self, target: &str, card_id: Option<String>, anchor: u32, head: u32) -> Result<bool, JsError> {
        let key = match (target, card_id) {
            ("notes", _) => TextKey::Notes,
            ("card", Some(id)) => TextKey::Card(id),
            _ => return Err(JsError::new("target is \"notes\" or \"card\" with a card id")),
        };
        let shown = self.shared.inner.borrow_mut().session.set_cursor(key, anchor, head, now_ms());
        pump(&self.shared);
        Ok(shown)
    }

    /// Our editor lost focus: our cursor is no longer shown.
    #[wasm_bindgen(js_name = clearCursor)]
    pub fn clear_cursor(&self) {
        self.shared.inner.borrow_mut().session.clear_cursor(now_ms());
        pump(&self.shared);
    }

    /// The others' cursors: `[{client, name, color, target, card, index, head}]`, where
    /// `target` is `"notes"` or `"card"` (with the card's id in `card`), `index` the anchor and
    /// `head` the caret, in UTF-16 offsets of that text now. States not renewed for 30 s are
    /// left out; the page asks again when it renders (on `board` events, and on a timer).
    pub fn cursors(&self) -> JsValue {
        to_js(&self.shared.inner.borrow().session.cursors(now_ms()))
    }

    /// Leader: the attendance sheet kept in this tab: `{title, date, members: [{name, role,
    /// joined_at_ms, left_at_ms, minutes_present, intervals: [{start_ms, end_ms}]}]}`. Empty
    /// `members` unless we have been a leader. Nothing of it leaves the browser.
    pub fn attendance(&self) -> JsValue {
        to_js(&self.shared.inner.borrow().session.attendance(now_ms()))
    }

    /// Leader: the attendance sheet as CSV (UTC times), for a download.
    #[wasm_bindgen(js_name = attendanceCsv)]
    pub fn attendance_csv(&self) -> String {
        self.shared.inner.borrow().session.attendance_csv(now_ms())
    }

    /// Leader: the board as Markdown under `title`, the same file as the server's export of a
    /// plain room; built here, for a sealed room whose board only the members' pages can read.
    /// Nothing of it leaves the browser. `undefined` while this page may lack part of the board
    /// (before the room's log or the first sync came on this connection).
    #[wasm_bindgen(js_name = exportMarkdown)]
    pub fn export_markdown(&self, title: Option<String>) -> Option<String> {
        self.shared.inner.borrow().session.export_markdown(title.as_deref())
    }

    /// Our member id, once in the room or the lobby.
    #[wasm_bindgen(js_name = memberId)]
    pub fn member_id(&self) -> Option<String> {
        self.shared.inner.borrow().session.member_id().map(str::to_owned)
    }
}

/// The phases of a template (`balint` or `open`) in order, with their suggested durations:
/// `[{phase, suggested_secs}]`.
#[wasm_bindgen(js_name = templatePhases)]
pub fn template_phases(template: &str) -> Result<JsValue, JsError> {
    let template: Template = parse(template)?;
    Ok(to_js(&rules::template_plan(template)))
}

/// Seals a new sealed room's title for `PUT /api/rooms/{room}/title`, under the room key
/// `key` (base64url, from the links) with sender `""` and sequence number 0
/// (`docs/PROTOCOL.md` §13). The title is checked against the title rules first, since the
/// server cannot: an error names the rule, never the title.
#[wasm_bindgen(js_name = sealTitle)]
pub fn seal_title(key: &str, room: &str, title: &str) -> Result<String, JsError> {
    let key = RoomKey::from_base64url(key).map_err(|e| JsError::new(&e.to_string()))?;
    let title = balint_proto::room::check_title(title)
        .map_err(|e| JsError::new(&e.to_string()))?
        .ok_or_else(|| JsError::new("no title"))?;
    crate::seal::seal_text(&key, room, "", 0, balint_proto::sealed::Kind::Title, title)
        .map_err(|e| JsError::new(&e.to_string()))
}

fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    JSON::parse(&json).unwrap_or(JsValue::NULL)
}

/// Performs what the session asks and reports what it says, until it has nothing more; then
/// sets the reconnect timer.
fn pump(shared: &Rc<Shared>) {
    loop {
        let (ios, events) = {
            let mut inner = shared.inner.borrow_mut();
            let ios: Vec<Io> = std::iter::from_fn(|| inner.session.poll_io()).collect();
            let events: Vec<Event> = std::iter::from_fn(|| inner.session.poll_event()).collect();
            (ios, events)
        };
        if ios.is_empty() && events.is_empty() {
            break;
        }
        for io in ios {
            perform(shared, io);
        }
        for event in events {
            {
                let mut inner = shared.inner.borrow_mut();
                match &event {
                    Event::Board => render_bindings(&inner, None),
                    Event::State { can_write, .. } => {
                        for binding in &inner.bindings {
                            binding.el.set_read_only(!can_write);
                        }
                    }
                    Event::Connection { .. } if inner.session.is_finished() => {
                        // Nothing of the board stays in the page's editors.
                        for binding in &inner.bindings {
                            binding.el.set_value("");
                            binding.el.set_read_only(true);
                        }
                        inner.bindings.clear();
                        inner.deferred.clear();
                        inner.timer = None;
                    }
                    _ => {}
                }
            }
            // No borrow is held here: the page may call back into the client.
            let _ = shared.on_event.call1(&JsValue::NULL, &to_js(&event));
        }
    }
    schedule(shared);
}

fn schedule(shared: &Rc<Shared>) {
    let mut inner = shared.inner.borrow_mut();
    inner.timer = None;
    let Some(at) = inner.session.poll_timeout() else { return };
    let Some(window) = web_sys::window() else { return };
    let weak = Rc::downgrade(shared);
    let callback = Closure::<dyn FnMut()>::new(move || {
        if let Some(shared) = weak.upgrade() {
            shared.inner.borrow_mut().session.handle_timeout(now_ms(), random());
            pump(&shared);
        }
    });
    let delay = at.saturating_sub(now_ms()).min(i32::MAX as u64) as i32;
    if let Ok(handle) =
        window.set_timeout_with_callback_and_timeout_and_arguments_0(callback.as_ref().unchecked_ref(), delay)
    {
        inner.timer = Some(Timer { handle, _callback: callback });
    }
}

fn perform(shared: &Rc<Shared>, io: Io) {
    match io {
        Io::Connect => connect(shared),
        Io::Probe => probe(shared),
        Io::SendText(text) => {
            let inner = shared.inner.borrow();
            if let Some(socket) = &inner.socket {
                let _ = socket.ws.send_with_str(&text);
            }
        }
        Io::SendBinary(bytes) => {
            let inner = shared.inner.borrow();
            if let Some(socket) = &inner.socket {
                let _ = socket.ws.send_with_u8_array(&bytes);
            }
        }
        Io::Close => {
            shared.inner.borrow_mut().socket = None;
        }
    }
}

fn connect(shared: &Rc<Shared>) {
    let url = shared.inner.borrow().ws_url.clone();
    // Drop the previous socket first: its handlers must not report into the new connection.
    shared.inner.borrow_mut().socket = None;
    let ws = match WebSocket::new(&url) {
        Ok(ws) => ws,
        Err(_) => {
            // A malformed URL: report it like a socket that never opened.
            shared.inner.borrow_mut().session.handle_close(1006, random(), now_ms());
            pump(shared);
            return;
        }
    };
    ws.set_binary_type(BinaryType::Arraybuffer);

    let handler = |f: fn(&Rc<Shared>, web_sys::Event)| {
        let weak: Weak<Shared> = Rc::downgrade(shared);
        Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            if let Some(shared) = weak.upgrade() {
                f(&shared, event);
            }
        })
    };
    let on_open = handler(|shared, _| {
        shared.inner.borrow_mut().session.handle_open(now_ms());
        pump(shared);
    });
    let on_message = handler(|shared, event| {
        let Ok(event) = event.dyn_into::<MessageEvent>() else { return };
        let data = event.data();
        if let Some(text) = data.as_string() {
            shared.inner.borrow_mut().session.handle_text(&text, now_ms());
        } else if let Ok(buffer) = data.dyn_into::<ArrayBuffer>() {
            receive_binary(shared, Uint8Array::new(&buffer).to_vec());
        }
        pump(shared);
    });
    let on_close = handler(|shared, event| {
        let code = event.dyn_into::<CloseEvent>().map(|e| e.code()).unwrap_or(1006);
        shared.inner.borrow_mut().session.handle_close(code, random(), now_ms());
        pump(shared);
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    shared.inner.borrow_mut().socket = Some(Socket { ws, _handlers: vec![on_open, on_message, on_close] });
}

/// Applies a binary frame, keeping every bound editor's selection with its text. While an input
/// method composes, frames wait.
fn receive_binary(shared: &Rc<Shared>, frame: Vec<u8>) {
    let mut inner = shared.inner.borrow_mut();
    if inner.composing {
        // Held back, but heard: the connection is alive.
        inner.session.handle_activity(now_ms());
        inner.deferred.push(frame);
        return;
    }
    let marks: Vec<Anchored> = inner
        .bindings
        .iter()
        .map(|b| {
            let start = b.el.selection_start().ok().flatten().unwrap_or(0);
            let end = b.el.selection_end().ok().flatten().unwrap_or(start);
            inner.session.board().capture(&b.key, start, end)
        })
        .collect();
    if inner.session.handle_binary(&frame, now_ms()) {
        render_bindings(&inner, Some(&marks));
    }
}

/// Shows the board's texts in the bound editors that differ, restoring each selection: where
/// its anchors now are, or clamped to the new text.
fn render_bindings(inner: &Inner, marks: Option<&[Anchored]>) {
    let board = inner.session.board();
    for (i, binding) in inner.bindings.iter().enumerate() {
        let text = board.text(&binding.key).unwrap_or_default();
        if binding.el.value() == text {
            continue;
        }
        let (start, end) = match marks.and_then(|m| m.get(i)) {
            Some(anchored) => board.resolve(anchored),
            None => {
                let len = text.encode_utf16().count() as u32;
                let start = binding.el.selection_start().ok().flatten().unwrap_or(0).min(len);
                let end = binding.el.selection_end().ok().flatten().unwrap_or(start).min(len);
                (start, end)
            }
        };
        let focused =
            web_sys::window().and_then(|w| w.document()).and_then(|d| d.active_element()).is_some_and(|active| {
                let el: &web_sys::Element = binding.el.as_ref();
                active == *el
            });
        binding.el.set_value(&text);
        if focused {
            let _ = binding.el.set_selection_range(start, end);
        }
    }
}

fn bind(shared: &Rc<Shared>, key: TextKey, el: HtmlTextAreaElement) {
    let weak = Rc::downgrade(shared);
    let listener = |name: &'static str, f: fn(&Rc<Shared>, &TextKey, &HtmlTextAreaElement, web_sys::Event)| {
        let (weak, key, el) = (weak.clone(), key.clone(), el.clone());
        let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            if let Some(shared) = weak.upgrade() {
                f(&shared, &key, &el, event);
            }
        });
        (name, closure)
    };
    let listeners = vec![
        listener("input", |shared, key, el, event| {
            let composing = event.dyn_ref::<web_sys::InputEvent>().is_some_and(|e| e.is_composing());
            if !composing {
                local_edit(shared, key, el);
            }
        }),
        listener("compositionstart", |shared, _, _, _| {
            shared.inner.borrow_mut().composing = true;
        }),
        listener("compositionend", |shared, key, el, _| {
            shared.inner.borrow_mut().composing = false;
            local_edit(shared, key, el);
            let deferred = std::mem::take(&mut shared.inner.borrow_mut().deferred);
            for frame in deferred {
                receive_binary(shared, frame);
            }
            pump(shared);
        }),
    ];
    for (name, closure) in &listeners {
        let _ = el.add_event_listener_with_callback(name, closure.as_ref().unchecked_ref());
    }
    let mut inner = shared.inner.borrow_mut();
    inner.bindings.retain(|b| b.el != el);
    let text = inner.session.board().text(&key).unwrap_or_default();
    el.set_value(&text);
    el.set_read_only(!inner.session.can_write());
    inner.bindings.push(Binding { key, el, listeners });
}

/// The user changed an editor: send the edit, or put the board's text back when we may not
/// write.
fn local_edit(shared: &Rc<Shared>, key: &TextKey, el: &HtmlTextAreaElement) {
    {
        let mut inner = shared.inner.borrow_mut();
        let caret = el.selection_end().ok().flatten();
        if inner.session.edit_text(key, &el.value(), caret).is_err() {
            let text = inner.session.board().text(key).unwrap_or_default();
            el.set_value(&text);
            el.set_read_only(!inner.session.can_write());
        }
    }
    pump(shared);
}

fn probe(shared: &Rc<Shared>) {
    let url = shared.inner.borrow().probe_url.clone();
    let report = |shared: &Weak<Shared>, status: Option<u16>| {
        if let Some(shared) = shared.upgrade() {
            shared.inner.borrow_mut().session.handle_probe(status, random(), now_ms());
            pump(&shared);
        }
    };
    let Some(window) = web_sys::window() else {
        report(&Rc::downgrade(shared), None);
        return;
    };
    let init = RequestInit::new();
    init.set_cache(RequestCache::NoStore);
    let promise = window.fetch_with_str_and_init(&url, &init);
    let (ok, failed) = (Rc::downgrade(shared), Rc::downgrade(shared));
    let on_response = Closure::<dyn FnMut(JsValue)>::new(move |response: JsValue| {
        let status = response.dyn_into::<Response>().ok().map(|r| r.status());
        report(&ok, status);
    });
    let on_failure = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| report(&failed, None));
    let _ = promise.then2(&on_response, &on_failure);
    // Kept until the next probe: the session asks for one at a time, so this one has settled
    // by then.
    shared.inner.borrow_mut().probe_handlers = Some((on_response, on_failure));
}
