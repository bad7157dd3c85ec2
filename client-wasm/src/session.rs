//! The client's side of a room connection, sans-IO.
//!
//! [`Session`] is a state machine in the manner of `quinn-proto`: the driver (the browser glue
//! in `web.rs`, or a test) feeds it what happened (`handle_open`, `handle_text`,
//! `handle_binary`, `handle_close`, `handle_probe`, `handle_timeout`, with `now` passed in) and
//! the user's actions (`command`, `edit_text`, `add_card`), then drains what to do
//! ([`Session::poll_io`]) and what to show ([`Session::poll_event`]). It owns no socket, no
//! timer and no clock.
//!
//! The connection's life:
//!
//! ```text
//! start ─▶ Connecting ─open─▶ hello ─▶ Waiting (lobby) ─admit─▶ Welcomed ─▶ sync
//!              ▲                                                   │
//!              └──── Retrying (backoff) ◀── close (other codes) ◀──┘
//!                                             close 4410 ─▶ Ended (board wiped, no retry)
//!                                             close 4403 ─▶ Removed (no retry)
//!  a socket that never opened ─▶ Probing (plain GET: 410 ended, 401/404 invalid link, else retry)
//! ```
//!
//! `hello` is always the first frame of a socket, carrying the resume token of the last
//! `welcome` or `waiting`, so a reconnect within the grace period is the same member with the
//! same place in the queue. The token lives only in memory and, through [`Event::Resume`], in
//! the tab's sessionStorage.

use std::collections::VecDeque;

use balint_proto::close;
use balint_proto::room::{ClientMessage, ErrorCode, Phase, Role, RoomState, ServerMessage, Status};
use balint_proto::sync::{self, Message, SyncMessage};
use serde::Serialize;

use crate::backoff::Backoff;
use crate::board::{Board, NewCard, TextKey};

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a WebSocket to the room (closing any previous one).
    Connect,
    /// The last socket failed before it opened; ask the server why with a plain HTTP GET of the
    /// same URL and report the status with [`Session::handle_probe`].
    Probe,
    /// Send a text frame (the room protocol).
    SendText(String),
    /// Send a binary frame (y-sync).
    SendBinary(Vec<u8>),
    /// Close the socket; the session will not reconnect.
    Close,
}

/// Where the connection stands, as the UI shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Opening a socket.
    Connecting,
    /// Held in the lobby until a leader admits us.
    Waiting,
    /// In the room.
    Online,
    /// Dropped; the next attempt is scheduled.
    Reconnecting,
    /// The meeting has ended. The board was wiped. Final.
    Ended,
    /// A leader removed us or turned us away from the lobby. Final.
    Removed,
    /// The link is not valid (forged, expired, or for an unknown room). Final.
    InvalidLink,
    /// We left. Final.
    Left,
}

/// Something the UI should show.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The connection changed.
    Connection {
        /// Where it stands.
        status: ConnectionStatus,
        /// For `reconnecting`: how long until the next attempt.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        /// For `ended`: why, when the server said.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// For `reconnecting`: the close code of the socket that dropped (4409: the room is
        /// full), or the HTTP status of a refused handshake. For `invalid_link`: the HTTP
        /// status (401 bad or expired link, 403 page origin refused, 404 unknown room, 400 bad
        /// name).
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
    },
    /// We are in the room as `member_id`.
    Welcome {
        /// Our member id.
        member_id: String,
        /// Our role at that moment (see `state.members` for later changes).
        role: Role,
    },
    /// A newer room state. Replace the whole view with it.
    State {
        /// The snapshot.
        state: Box<RoomState>,
        /// Our member id.
        me: String,
        /// Whether we may write on the board now.
        can_write: bool,
    },
    /// The board changed (remote edits, a resync or a wipe): render it again.
    Board,
    /// The floor holder passed the speaking limit.
    TimeUp {
        /// The speaker.
        member: String,
        /// The limit.
        limit_secs: u32,
    },
    /// The server refused a command or an edit.
    Error {
        /// Its stable code.
        code: ErrorCode,
        /// Its human-readable text.
        message: String,
    },
    /// Keep this resume token for the tab (sessionStorage), or forget it (`None`).
    Resume {
        /// The token.
        token: Option<String>,
    },
}

/// Why a command was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// We are not in the room right now (connecting, in the lobby, or finished).
    #[error("not connected to the room")]
    NotConnected,
    /// `hello` is sent by the session itself.
    #[error("hello is sent by the session")]
    NotACommand,
}

/// Why an edit was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The room state says we may not write now.
    #[error("the board is read-only for you now")]
    ReadOnly,
    /// The card does not exist.
    #[error("no such card")]
    UnknownCard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Idle,
    Connecting { opened: bool },
    Waiting,
    Welcomed,
    Retrying { at_ms: u64 },
    Probing,
    Finished(ConnectionStatus),
}

/// One member's connection to one room.
pub struct Session {
    board: Board,
    link: Link,
    member_id: Option<String>,
    role: Option<Role>,
    resume: Option<String>,
    state: Option<RoomState>,
    backoff: Backoff,
    /// A sync step 1 of ours is unanswered: no other is sent until its step 2 arrives.
    syncing: bool,
    io: VecDeque<Io>,
    events: VecDeque<Event>,
}

impl Session {
    /// A session that will continue the membership of `resume` (a token kept by this tab), if
    /// any.
    pub fn new(resume: Option<String>) -> Self {
        Session {
            board: Board::new(),
            link: Link::Idle,
            member_id: None,
            role: None,
            resume,
            state: None,
            backoff: Backoff::default(),
            syncing: false,
            io: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Opens the first connection.
    pub fn start(&mut self) {
        if self.link == Link::Idle {
            self.connect();
        }
    }

    fn connect(&mut self) {
        self.link = Link::Connecting { opened: false };
        self.io.push_back(Io::Connect);
        self.status(ConnectionStatus::Connecting);
    }

    fn status(&mut self, status: ConnectionStatus) {
        self.events.push_back(Event::Connection { status, retry_in_ms: None, reason: None, code: None });
    }

    /// The socket opened: say `hello` first, before any binary frame.
    pub fn handle_open(&mut self) {
        if let Link::Connecting { opened } = &mut self.link {
            *opened = true;
            let hello = ClientMessage::Hello { resume: self.resume.clone() };
            self.io.push_back(Io::SendText(to_json(&hello)));
        }
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, text: &str) {
        if self.is_finished() {
            return;
        }
        // A message this client does not know (a newer server) is ignored.
        let Ok(message) = serde_json::from_str::<ServerMessage>(text) else { return };
        match message {
            ServerMessage::Welcome { member_id, role, resume_token, state, .. } => {
                self.link = Link::Welcomed;
                self.backoff.reset();
                self.member_id = Some(member_id.clone());
                self.role = Some(role);
                self.remember(resume_token);
                self.events.push_back(Event::Welcome { member_id, role });
                self.status(ConnectionStatus::Online);
                // A new socket's welcome is the truth for it, whatever the old socket saw last.
                self.state = None;
                self.install(state);
                // Our own sync step 1: the server answers with what we lack.
                self.send_step1();
            }
            ServerMessage::Waiting { member_id, resume_token } => {
                self.link = Link::Waiting;
                self.backoff.reset();
                self.member_id = Some(member_id);
                self.remember(resume_token);
                self.status(ConnectionStatus::Waiting);
            }
            ServerMessage::State { state } => self.install(state),
            ServerMessage::Heartbeat {} => {}
            ServerMessage::TimeUp { member, limit_secs } => self.events.push_back(Event::TimeUp { member, limit_secs }),
            ServerMessage::Ended { reason } => self.end(Some(reason)),
            ServerMessage::Error { code, message } => {
                if matches!(code, ErrorCode::ReadOnly | ErrorCode::BoardFull) {
                    // Our copy holds an edit the room refused: it has diverged. Throw it away
                    // and sync a fresh one.
                    self.board.wipe();
                    self.events.push_back(Event::Board);
                    if self.link == Link::Welcomed {
                        self.send_step1();
                    }
                }
                self.events.push_back(Event::Error { code, message });
            }
        }
    }

    fn remember(&mut self, token: String) {
        if self.resume.as_deref() != Some(token.as_str()) {
            self.resume = Some(token.clone());
            self.events.push_back(Event::Resume { token: Some(token) });
        }
    }

    /// Keeps `state` if it is newer than the one shown, and tells the UI.
    fn install(&mut self, state: RoomState) {
        if self.state.as_ref().is_some_and(|current| current.version >= state.version) {
            return;
        }
        self.state = Some(state);
        let state = self.state.clone().expect("just set");
        self.events.push_back(Event::State {
            state: Box::new(state),
            me: self.member_id.clone().unwrap_or_default(),
            can_write: self.can_write(),
        });
    }

    /// A binary frame arrived. Returns whether the board changed.
    pub fn handle_binary(&mut self, frame: &[u8]) -> bool {
        if self.link != Link::Welcomed {
            return false;
        }
        // The server never sends a bad frame; if one came anyway, there is nothing to answer.
        let Ok(messages) = sync::decode_frame(frame) else { return false };
        let mut changed = false;
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                    let update = self.board.update_since(&state_vector);
                    self.io.push_back(Io::SendBinary(sync::encode_step2(&update).to_vec()));
                }
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    self.syncing = false;
                    changed |= self.board.apply_update(&update).is_ok();
                }
                Message::Sync(SyncMessage::Update(update)) => {
                    changed |= self.board.apply_update(&update).is_ok();
                }
                // Awareness (other people's cursors) is not shown by this client.
                Message::Awareness(_) | Message::AwarenessQuery | Message::Auth(_) | Message::Custom(..) => {}
            }
        }
        if changed {
            self.events.push_back(Event::Board);
        }
        // Updates that arrived ahead of what they build on wait in the document. Normally the
        // next frames fill the gap; if they did not (yrs 0.28.1 can lose track of such updates
        // when they arrive out of order), the server's answer to a step 1 does.
        if self.board.is_waiting() && !self.syncing {
            self.send_step1();
        }
        changed
    }

    fn send_step1(&mut self) {
        self.syncing = true;
        self.io.push_back(Io::SendBinary(sync::encode_step1(&self.board.state_vector()).to_vec()));
    }

    /// The socket closed with `code`. `random` in `[0, 1)` spreads the reconnect delay.
    pub fn handle_close(&mut self, code: u16, random: f64, now_ms: u64) {
        // Whatever was asked on the old socket will not be answered.
        self.syncing = false;
        let opened = match self.link {
            Link::Connecting { opened } => opened,
            Link::Waiting | Link::Welcomed => true,
            // Closing an old socket, or after the end: nothing more to do.
            Link::Idle | Link::Retrying { .. } | Link::Probing | Link::Finished(_) => return,
        };
        match code {
            close::MEETING_ENDED => self.end(None),
            close::REMOVED => self.finish(ConnectionStatus::Removed, Some(code)),
            _ if !opened => {
                // The browser hides why a handshake failed; a plain GET tells 410 from 401.
                self.link = Link::Probing;
                self.io.push_back(Io::Probe);
            }
            _ => self.retry(random, now_ms, Some(code)),
        }
    }

    /// The answer to [`Io::Probe`]: the HTTP status, or `None` when the server could not be
    /// reached at all.
    pub fn handle_probe(&mut self, status: Option<u16>, random: f64, now_ms: u64) {
        if self.link != Link::Probing {
            return;
        }
        match status {
            Some(410) => self.end(None),
            // A bad link, an unknown room, a refused page origin or a bad name: trying again
            // cannot help.
            Some(code @ (400 | 401 | 403 | 404)) => self.finish(ConnectionStatus::InvalidLink, Some(code)),
            _ => self.retry(random, now_ms, status),
        }
    }

    fn retry(&mut self, random: f64, now_ms: u64, code: Option<u16>) {
        let delay = self.backoff.next_delay_ms(random);
        self.link = Link::Retrying { at_ms: now_ms + delay };
        self.events.push_back(Event::Connection {
            status: ConnectionStatus::Reconnecting,
            retry_in_ms: Some(delay),
            reason: None,
            code,
        });
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.link {
            Link::Retrying { at_ms } => Some(at_ms),
            _ => None,
        }
    }

    /// Time passed; reconnects when the backoff delay is over.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if let Link::Retrying { at_ms } = self.link {
            if now_ms >= at_ms {
                self.connect();
            }
        }
    }

    /// The meeting ended: wipe the board, forget the token, never reconnect.
    fn end(&mut self, reason: Option<String>) {
        if self.link == Link::Finished(ConnectionStatus::Ended) {
            return;
        }
        self.board.wipe();
        self.events.push_back(Event::Board);
        self.link = Link::Finished(ConnectionStatus::Ended);
        self.forget();
        self.events.push_back(Event::Connection {
            status: ConnectionStatus::Ended,
            retry_in_ms: None,
            reason,
            code: None,
        });
        self.io.push_back(Io::Close);
    }

    /// A final state other than the end of the meeting. A member who was removed keeps no
    /// copy of the board either.
    fn finish(&mut self, status: ConnectionStatus, code: Option<u16>) {
        if self.is_finished() {
            return;
        }
        self.board.wipe();
        self.events.push_back(Event::Board);
        self.link = Link::Finished(status);
        self.forget();
        self.events.push_back(Event::Connection { status, retry_in_ms: None, reason: None, code });
        self.io.push_back(Io::Close);
    }

    fn forget(&mut self) {
        self.state = None;
        self.member_id = None;
        self.role = None;
        if self.resume.take().is_some() {
            self.events.push_back(Event::Resume { token: None });
        }
    }

    /// Leaves the room for good (the tab is closing, or the user left).
    pub fn leave(&mut self) {
        if !self.is_finished() {
            self.link = Link::Finished(ConnectionStatus::Left);
            self.status(ConnectionStatus::Left);
            self.io.push_back(Io::Close);
        }
    }

    /// Whether the session reached a final state.
    pub fn is_finished(&self) -> bool {
        matches!(self.link, Link::Finished(_))
    }

    /// Sends a room command. `grant_floor` and `next_speaker` without `if_version` get the
    /// version of the state on screen, so two leaders clicking at once give the floor once.
    pub fn command(&mut self, mut message: ClientMessage) -> Result<(), CommandError> {
        if matches!(message, ClientMessage::Hello { .. }) {
            return Err(CommandError::NotACommand);
        }
        if self.link != Link::Welcomed {
            return Err(CommandError::NotConnected);
        }
        let shown = self.state.as_ref().map(|s| s.version);
        if let ClientMessage::GrantFloor { if_version: if_version @ None, .. }
        | ClientMessage::NextSpeaker { if_version: if_version @ None } = &mut message
        {
            *if_version = shown;
        }
        self.io.push_back(Io::SendText(to_json(&message)));
        Ok(())
    }

    /// Whether the room state lets us write on the board now. The server enforces the same
    /// rules; this only keeps the editor honest.
    pub fn can_write(&self) -> bool {
        if self.is_finished() || matches!(self.link, Link::Waiting | Link::Idle) {
            return false;
        }
        let (Some(state), Some(me)) = (&self.state, &self.member_id) else { return false };
        let view = state.members.iter().find(|m| &m.id == me);
        let Some(role) = view.map(|m| m.role).or(self.role) else { return false };
        if role == Role::Observer || (state.board_locked && role != Role::Leader) {
            return false;
        }
        let presenter = state.presenter.as_deref() == Some(me.as_str());
        let outside = view.is_some_and(|m| m.status == Status::OutsideCircle);
        !(outside || presenter && state.phase.name == Phase::Reflection)
    }

    /// An editor's text changed to `value`; `caret` is its caret after the edit. The edit is
    /// applied to the board and sent when we are in the room; while reconnecting it waits in
    /// the board and travels with the sync on reconnect.
    pub fn edit_text(&mut self, key: &TextKey, value: &str, caret: Option<u32>) -> Result<(), EditError> {
        if !self.can_write() {
            return Err(EditError::ReadOnly);
        }
        let update = self.board.set_text(key, value, caret).map_err(|_| EditError::UnknownCard)?;
        if let Some(update) = update {
            self.send_update(&update);
        }
        Ok(())
    }

    /// Adds an observation card with `body`, tagged with the current phase and our name.
    /// `id` must be unique (the driver makes it from random bytes).
    pub fn add_card(&mut self, id: &str, body: &str, now_ms: u64) -> Result<(), EditError> {
        if !self.can_write() {
            return Err(EditError::ReadOnly);
        }
        let (state, me) = (self.state.as_ref().expect("can_write"), self.member_id.as_deref().expect("can_write"));
        let author = state.members.iter().find(|m| m.id == me).map(|m| m.name.clone()).unwrap_or_default();
        let phase = serde_json::to_value(state.phase.name).ok();
        let phase = phase.as_ref().and_then(|p| p.as_str()).unwrap_or_default().to_owned();
        let update = self.board.add_card(NewCard { id, author: &author, phase: &phase, body, created_ms: now_ms });
        self.send_update(&update);
        self.events.push_back(Event::Board);
        Ok(())
    }

    fn send_update(&mut self, update: &[u8]) {
        if self.link == Link::Welcomed {
            self.io.push_back(Io::SendBinary(sync::encode_update(update).to_vec()));
        }
    }

    /// The next thing to do.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// The next thing to show.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The board.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The latest room state, while in the room.
    pub fn state(&self) -> Option<&RoomState> {
        self.state.as_ref()
    }

    /// Our member id, once welcomed or waiting.
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }
}

fn to_json(message: &ClientMessage) -> String {
    // Plain strings, numbers and enums: serializing cannot fail.
    serde_json::to_string(message).expect("client messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const NOW: u64 = 1_767_261_600_000;

    fn state(version: u64, extra: Value) -> Value {
        let mut state = json!({
            "version": version, "title": "Tuesday", "template": "balint", "ephemeral": true,
            "phase": {"name": "questions", "started_at_ms": NOW, "duration_secs": 600},
            "presenter": null,
            "members": [
                {"id": "me", "name": "Ann", "role": "member", "status": "here"},
                {"id": "lea", "name": "Lea", "role": "leader", "status": "here"}
            ],
            "queue": [], "floor": null, "speaking_limit_secs": null, "fair_order": false,
            "lobby": false, "board_locked": false
        });
        for (k, v) in extra.as_object().unwrap() {
            state[k] = v.clone();
        }
        state
    }

    fn welcome(token: &str, version: u64) -> String {
        json!({"type": "welcome", "member_id": "me", "role": "member", "resume_token": token,
               "state": state(version, json!({}))})
        .to_string()
    }

    fn drain_io(s: &mut Session) -> Vec<Io> {
        std::iter::from_fn(|| s.poll_io()).collect()
    }

    fn drain_events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn texts(io: &[Io]) -> Vec<Value> {
        io.iter()
            .filter_map(|i| match i {
                Io::SendText(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn binaries(io: &[Io]) -> Vec<Vec<Message>> {
        io.iter()
            .filter_map(|i| match i {
                Io::SendBinary(b) => Some(sync::decode_frame(b).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// A session that went through hello and welcome.
    fn joined() -> Session {
        let mut s = Session::new(None);
        s.start();
        s.handle_open();
        s.handle_text(&welcome("tok1", 1));
        drain_io(&mut s);
        drain_events(&mut s);
        s
    }

    #[test]
    fn hello_is_the_first_frame_and_step1_follows_welcome() {
        let mut s = Session::new(None);
        s.start();
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);
        s.handle_open();
        let io = drain_io(&mut s);
        assert_eq!(texts(&io), vec![json!({"type": "hello"})]);
        assert!(binaries(&io).is_empty(), "nothing binary before the answer to hello");

        s.handle_text(&welcome("tok1", 1));
        let io = drain_io(&mut s);
        let frames = binaries(&io);
        assert!(matches!(frames[..], [ref m] if matches!(m[..], [Message::Sync(SyncMessage::SyncStep1(_))])));
        let events = drain_events(&mut s);
        assert!(events.contains(&Event::Resume { token: Some("tok1".into()) }));
        assert!(events.iter().any(|e| matches!(e, Event::State { me, can_write: true, .. } if me == "me")));
        assert_eq!(s.member_id(), Some("me"));
    }

    #[test]
    fn an_update_that_cannot_be_integrated_makes_the_session_sync_once() {
        let mut s = joined();
        // The answer to the step 1 sent at welcome.
        s.handle_binary(&sync::encode_step2(&Board::new().update_since(&Default::default())));
        let mut server = Board::new();
        let _first = server.set_text(&TextKey::Notes, "a", None).unwrap().unwrap();
        let second = server.set_text(&TextKey::Notes, "ab", None).unwrap().unwrap();
        let third = server.set_text(&TextKey::Notes, "abc", None).unwrap().unwrap();
        // The second edit arrives without the first: it waits, and the session asks.
        s.handle_binary(&sync::encode_update(&second));
        let frames = binaries(&drain_io(&mut s));
        assert!(
            matches!(frames[..], [ref m] if matches!(m[..], [Message::Sync(SyncMessage::SyncStep1(_))])),
            "{frames:?}"
        );
        // Still waiting, but a step 1 is already out: no second one.
        s.handle_binary(&sync::encode_update(&third));
        assert!(binaries(&drain_io(&mut s)).is_empty());
        // The server's answer fills the gap.
        s.handle_binary(&sync::encode_step2(&server.update_since(&s.board().state_vector())));
        assert_eq!(s.board().notes(), "abc");
        assert!(!s.board().is_waiting());
        assert!(binaries(&drain_io(&mut s)).is_empty());
    }

    #[test]
    fn the_servers_step1_is_answered_with_step2_and_updates_apply() {
        let mut s = joined();
        let mut server = Board::new();
        let update = server.set_text(&TextKey::Notes, "from the room", None).unwrap().unwrap();
        // The server's step 1 (empty board) gets our step 2.
        assert!(!s.handle_binary(&sync::encode_step1(&server.state_vector())));
        assert!(matches!(
            binaries(&drain_io(&mut s))[..],
            [ref m] if matches!(m[..], [Message::Sync(SyncMessage::SyncStep2(_))])
        ));
        assert!(s.handle_binary(&sync::encode_step2(&update)));
        assert_eq!(s.board().notes(), "from the room");
        assert!(drain_events(&mut s).contains(&Event::Board));
    }

    #[test]
    fn local_edits_are_sent_as_updates() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "hello", Some(5)).unwrap();
        let frames = binaries(&drain_io(&mut s));
        let [ref messages] = frames[..] else { panic!("one frame: {frames:?}") };
        let [Message::Sync(SyncMessage::Update(update))] = &messages[..] else { panic!("{messages:?}") };
        let mut other = Board::new();
        other.apply_update(update).unwrap();
        assert_eq!(other.notes(), "hello");

        s.add_card("card-1", "first thought", NOW).unwrap();
        assert_eq!(binaries(&drain_io(&mut s)).len(), 1);
        let cards = s.board().cards();
        assert_eq!((cards[0].author.as_str(), cards[0].phase.as_str()), ("Ann", "questions"));
    }

    #[test]
    fn older_snapshots_are_ignored() {
        let mut s = joined();
        s.handle_text(&json!({"type": "state", "state": state(5, json!({"fair_order": true}))}).to_string());
        s.handle_text(&json!({"type": "state", "state": state(4, json!({"fair_order": false}))}).to_string());
        assert_eq!(s.state().unwrap().version, 5);
        assert!(s.state().unwrap().fair_order);
        let states = drain_events(&mut s).into_iter().filter(|e| matches!(e, Event::State { .. })).count();
        assert_eq!(states, 1);
    }

    #[test]
    fn floor_commands_carry_the_version_on_screen() {
        let mut s = joined();
        s.handle_text(&json!({"type": "state", "state": state(7, json!({}))}).to_string());
        s.command(ClientMessage::NextSpeaker { if_version: None }).unwrap();
        s.command(ClientMessage::GrantFloor { member: "lea".into(), if_version: Some(3) }).unwrap();
        s.command(ClientMessage::RaiseHand {}).unwrap();
        assert_eq!(
            texts(&drain_io(&mut s)),
            vec![
                json!({"type": "next_speaker", "if_version": 7}),
                json!({"type": "grant_floor", "member": "lea", "if_version": 3}),
                json!({"type": "raise_hand"}),
            ]
        );
        assert_eq!(s.command(ClientMessage::Hello { resume: None }), Err(CommandError::NotACommand));
    }

    #[test]
    fn a_drop_reconnects_with_backoff_and_resumes_with_the_token() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "before", Some(6)).unwrap();
        drain_io(&mut s);
        s.handle_close(1006, 0.0, NOW);
        let events = drain_events(&mut s);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Connection { status: ConnectionStatus::Reconnecting, retry_in_ms: Some(250), .. }
        )));
        assert_eq!(s.poll_timeout(), Some(NOW + 250));
        // Edits while away stay local, and are not sent on a closed socket.
        s.edit_text(&TextKey::Notes, "before, during", Some(14)).unwrap();
        assert!(drain_io(&mut s).is_empty());
        s.handle_timeout(NOW + 249);
        assert!(drain_io(&mut s).is_empty(), "not before the delay");
        s.handle_timeout(NOW + 250);
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);

        s.handle_open();
        assert_eq!(texts(&drain_io(&mut s)), vec![json!({"type": "hello", "resume": "tok1"})]);
        s.handle_text(&welcome("tok1", 9));
        drain_io(&mut s);
        // The server's step 1 from before the drop: our answer carries the edit made meanwhile.
        let server = Board::new();
        s.handle_binary(&sync::encode_step1(&server.state_vector()));
        let frames = binaries(&drain_io(&mut s));
        let [Message::Sync(SyncMessage::SyncStep2(update))] = &frames[0][..] else { panic!() };
        let mut other = Board::new();
        other.apply_update(update).unwrap();
        assert_eq!(other.notes(), "before, during");
    }

    #[test]
    fn failed_attempts_back_off_further_until_one_succeeds() {
        let mut s = joined();
        let mut now = NOW;
        let mut delays = vec![];
        for _ in 0..4 {
            s.handle_close(1006, 0.999, now);
            now = s.poll_timeout().unwrap();
            delays.push(now);
            s.handle_timeout(now);
            s.handle_open();
        }
        let gaps: Vec<u64> = delays.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] > g[0]), "growing: {gaps:?}");
        s.handle_text(&welcome("tok1", 2));
        s.handle_close(1012, 0.999, now);
        assert!(s.poll_timeout().unwrap() - now < 500, "reset after a success");
    }

    #[test]
    fn the_end_wipes_the_board_and_forgets_the_token() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "confidential", None).unwrap();
        drain_events(&mut s);
        s.handle_text(r#"{"type":"ended","reason":"ended_by_leader"}"#);
        assert!(s.board().is_empty());
        assert!(s.state().is_none());
        let events = drain_events(&mut s);
        assert!(events.contains(&Event::Resume { token: None }));
        assert!(events.contains(&Event::Connection {
            status: ConnectionStatus::Ended,
            retry_in_ms: None,
            reason: Some("ended_by_leader".into()),
            code: None,
        }));
        s.handle_close(close::MEETING_ENDED, 0.5, NOW);
        assert_eq!(s.poll_timeout(), None, "never reconnects");
        assert!(drain_events(&mut s).is_empty(), "the end is announced once");
        assert_eq!(s.edit_text(&TextKey::Notes, "more", None), Err(EditError::ReadOnly));
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));
    }

    #[test]
    fn close_4410_alone_also_ends_and_4403_removes() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "x", None).unwrap();
        s.handle_close(close::MEETING_ENDED, 0.5, NOW);
        assert!(s.board().is_empty());
        assert!(s.is_finished());

        let mut s = joined();
        s.handle_close(close::REMOVED, 0.5, NOW);
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None);
        assert!(drain_events(&mut s)
            .iter()
            .any(|e| matches!(e, Event::Connection { status: ConnectionStatus::Removed, .. })));
    }

    #[test]
    fn a_handshake_that_fails_is_probed() {
        for (status, expect) in [
            (Some(410), Some(ConnectionStatus::Ended)),
            (Some(401), Some(ConnectionStatus::InvalidLink)),
            (Some(404), Some(ConnectionStatus::InvalidLink)),
            (Some(403), Some(ConnectionStatus::InvalidLink)),
            (Some(503), None),
            (None, None),
        ] {
            let mut s = joined();
            s.handle_close(1006, 0.0, NOW);
            s.handle_timeout(NOW + 10_000);
            drain_io(&mut s);
            // The socket never opened.
            s.handle_close(1006, 0.0, NOW + 10_000);
            assert_eq!(drain_io(&mut s), vec![Io::Probe]);
            drain_events(&mut s);
            s.handle_probe(status, 0.0, NOW + 10_000);
            match expect {
                Some(final_status) => {
                    assert!(s.is_finished(), "{status:?}");
                    assert!(drain_events(&mut s)
                        .iter()
                        .any(|e| matches!(e, Event::Connection { status, .. } if *status == final_status)));
                }
                None => assert!(s.poll_timeout().is_some(), "{status:?} retries"),
            }
        }
    }

    #[test]
    fn the_lobby_holds_until_welcome() {
        let mut s = Session::new(None);
        s.start();
        s.handle_open();
        drain_io(&mut s);
        s.handle_text(r#"{"type":"waiting","member_id":"me","resume_token":"lobby-tok"}"#);
        assert!(drain_events(&mut s).contains(&Event::Resume { token: Some("lobby-tok".into()) }));
        assert!(!s.can_write());
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));
        s.handle_text(&welcome("lobby-tok", 3));
        assert!(s.can_write());
    }

    #[test]
    fn write_permission_follows_the_room_state() {
        let mut s = joined();
        let mut set = |extra: Value, version: u64| {
            s.handle_text(&json!({"type": "state", "state": state(version, extra)}).to_string());
            s.can_write()
        };
        assert!(set(json!({"presenter": "me"}), 2));
        assert!(!set(
            json!({"presenter": "me", "phase": {"name": "reflection", "started_at_ms": NOW, "duration_secs": 2100},
            "members": [{"id": "me", "name": "Ann", "role": "member", "status": "outside_circle"}]}),
            3
        ));
        assert!(set(
            json!({"presenter": "me", "phase": {"name": "response", "started_at_ms": NOW, "duration_secs": 600}}),
            4
        ));
        assert!(!set(json!({"board_locked": true}), 5));
        assert!(!set(json!({"members": [{"id": "me", "name": "Ann", "role": "observer", "status": "here"}]}), 6));
        // Promoted to co-leader: a locked board is still writable.
        assert!(set(
            json!({"board_locked": true, "members": [{"id": "me", "name": "Ann", "role": "leader", "status": "here"}]}),
            7
        ));
        s.handle_text(&json!({"type": "state", "state": state(8, json!({"board_locked": true}))}).to_string());
        assert_eq!(s.edit_text(&TextKey::Notes, "no", None), Err(EditError::ReadOnly));
        assert_eq!(s.add_card("c", "no", NOW), Err(EditError::ReadOnly));
    }

    #[test]
    fn a_refused_edit_throws_the_copy_away_and_resyncs() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "diverged", None).unwrap();
        drain_io(&mut s);
        s.handle_text(r#"{"type":"error","code":"read_only","message":"the board is locked"}"#);
        assert!(s.board().is_empty());
        let frames = binaries(&drain_io(&mut s));
        let [Message::Sync(SyncMessage::SyncStep1(sv))] = &frames[0][..] else { panic!("{frames:?}") };
        assert_eq!(*sv, yrs::StateVector::default());
        assert!(drain_events(&mut s).iter().any(|e| matches!(e, Event::Error { code: ErrorCode::ReadOnly, .. })));
    }

    #[test]
    fn a_full_room_is_retried_and_said_so() {
        let mut s = joined();
        s.handle_close(close::ROOM_FULL, 0.0, NOW);
        assert!(drain_events(&mut s).iter().any(|e| matches!(
            e,
            Event::Connection { status: ConnectionStatus::Reconnecting, code: Some(close::ROOM_FULL), .. }
        )));
        assert!(s.poll_timeout().is_some());
    }

    #[test]
    fn an_edit_refused_for_a_full_board_also_resyncs() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "one edit too many", None).unwrap();
        drain_io(&mut s);
        s.handle_text(r#"{"type":"error","code":"board_full","message":"the board is full"}"#);
        assert!(s.board().is_empty());
        assert_eq!(binaries(&drain_io(&mut s)).len(), 1, "a fresh sync step 1");
    }

    #[test]
    fn unknown_messages_are_ignored() {
        let mut s = joined();
        s.handle_text(r#"{"type":"from_the_future","x":1}"#);
        s.handle_text("not json");
        assert!(drain_events(&mut s).is_empty());
        assert!(!s.is_finished());
    }

    #[test]
    fn leaving_closes_and_never_reconnects() {
        let mut s = joined();
        s.leave();
        assert_eq!(drain_io(&mut s), vec![Io::Close]);
        s.handle_close(1000, 0.5, NOW);
        assert_eq!(s.poll_timeout(), None);
    }
}
