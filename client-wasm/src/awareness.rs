//! Who is writing where: the awareness states of the room's editors, in the convention of the
//! stock Yjs editor bindings (y-codemirror.next, y-prosemirror, y-quill), so that a stock
//! client shows our cursors and we show theirs.
//!
//! A state is JSON:
//!
//! ```json
//! {"user": {"name": "Ann", "color": "#1f77b4", "colorLight": "#1f77b433"},
//!  "cursor": {"anchor": <relative position>, "head": <relative position>},
//!  "balint": {"target": "card", "card": "<card id>"}}
//! ```
//!
//! `anchor` and `head` are Yjs relative positions in the JSON form of
//! `Y.relativePositionToJSON` (yrs's `StickyIndex` serializes to it): they name the item next
//! to the caret, so they stay with the text while others type. `cursor` is `null` when the
//! member's editor has no focus. `balint.target` says which text of the board the cursor is in
//! (`notes`, or `card` with the card's id): stock bindings ignore it, and we check a position
//! against it before showing it.
//!
//! Timing follows y-protocols' awareness: a client renews its state every
//! [`RENEW_MS`], and a remote state not renewed for [`OUTDATED_MS`] counts as gone (the
//! server sweeps it too). The server relays every state to everyone in the room, whatever
//! they may write, so a presenter pushed back still sees who writes where.

use std::collections::BTreeMap;

use balint_proto::sync::{AwarenessUpdate, AwarenessUpdateEntry};
use serde::Serialize;
use serde_json::{json, Value};
use yrs::block::ClientID;
use yrs::StickyIndex;

use crate::board::{Board, TextKey};

/// A remote state not renewed for this long is dropped (y-protocols' `outdatedTimeout`).
pub const OUTDATED_MS: u64 = 30_000;

/// How often our own state is renewed, so that nobody takes it for gone.
pub const RENEW_MS: u64 = OUTDATED_MS / 2;

/// Colours for cursors, picked by member id: distinct, and readable on a light background.
const PALETTE: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bc5a00", "#7f7f7f", "#4b6a00"];

/// The colour of member `id`'s cursor: the same on every screen, from the id alone.
pub fn color_of(id: &str) -> &'static str {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

/// Where our caret is: which text, and the relative positions of the selection's ends.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    key: TextKey,
    anchor: StickyIndex,
    head: StickyIndex,
}

/// Someone else's cursor, resolved against our copy of the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCursor {
    /// Their awareness client id.
    pub client: u64,
    /// Their display name.
    pub name: String,
    /// Their colour.
    pub color: String,
    /// `notes` or `card`.
    pub target: &'static str,
    /// The card's id when `target` is `card`.
    pub card: Option<String>,
    /// Where the selection starts (its anchor), in UTF-16 units of the text.
    pub index: u32,
    /// Where the selection's moving end (the caret) is.
    pub head: u32,
}

/// What an awareness update from the room did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Someone else's state changed (a renewal of the same state does not count).
    pub changed: bool,
    /// Ours must be published again.
    pub republish: bool,
}

#[derive(Debug, Clone)]
struct Remote {
    clock: u32,
    state: Option<Value>,
    seen_ms: u64,
}

/// Our awareness state and everyone else's.
#[derive(Debug, Default)]
pub struct Awareness {
    clock: u32,
    /// Our name and colour, once we are in the room.
    user: Option<(String, &'static str)>,
    cursor: Option<Cursor>,
    /// When our state was last sent.
    sent_ms: Option<u64>,
    remote: BTreeMap<u64, Remote>,
}

impl Awareness {
    /// Who we are: sets our name and colour (from our member id).
    pub fn set_user(&mut self, name: &str, member_id: &str) {
        self.user = Some((name.to_owned(), color_of(member_id)));
    }

    /// Our caret moved to `anchor..head` of `key`. Returns false when that text does not exist.
    pub fn set_cursor(&mut self, board: &Board, key: TextKey, anchor: u32, head: u32) -> bool {
        let (Some(a), Some(h)) = (board.sticky(&key, anchor), board.sticky(&key, head)) else { return false };
        self.cursor = Some(Cursor { key, anchor: a, head: h });
        true
    }

    /// Our editor lost focus, or we may not write.
    pub fn clear_cursor(&mut self) {
        self.cursor = None;
    }

    /// Whether our cursor is out.
    pub fn has_cursor(&self) -> bool {
        self.cursor.is_some()
    }

    /// Forgets everyone else's states: a new socket gets them anew.
    pub fn forget_remote(&mut self) {
        self.remote.clear();
    }

    /// Forgets everything (the meeting ended).
    pub fn reset(&mut self) {
        *self = Awareness { clock: self.clock, ..Awareness::default() };
    }

    /// Our state as the JSON of the convention, or `None` before we know who we are.
    fn local_json(&self) -> Option<String> {
        let (name, color) = self.user.as_ref()?;
        let mut state = json!({"user": {"name": name, "color": color, "colorLight": format!("{color}33")}});
        match &self.cursor {
            Some(cursor) => {
                state["cursor"] = json!({"anchor": cursor.anchor, "head": cursor.head});
                state["balint"] = match &cursor.key {
                    TextKey::Notes => json!({"target": "notes"}),
                    TextKey::Card(id) => json!({"target": "card", "card": id}),
                };
            }
            None => state["cursor"] = Value::Null,
        }
        Some(state.to_string())
    }

    /// Our state, with a new clock, as an update for client `client` sent at `now_ms`.
    pub fn publish(&mut self, client: u64, now_ms: u64) -> Option<AwarenessUpdate> {
        let json = self.local_json()?;
        self.clock += 1;
        self.sent_ms = Some(now_ms);
        let entry = AwarenessUpdateEntry { clock: self.clock, json: json.into() };
        Some(AwarenessUpdate { clients: [(ClientID::new(client), entry)].into() })
    }

    /// When our state is due for renewal, if we have one out.
    pub fn renew_at(&self) -> Option<u64> {
        self.sent_ms.map(|sent| sent + RENEW_MS)
    }

    /// Applies an update from the room at `now_ms`. `own` is our client id. Says whether
    /// someone else's state changed, and whether we must publish again: the server removed our
    /// state (an old socket of ours closed) or holds a newer clock for it than ours.
    pub fn apply(&mut self, update: &AwarenessUpdate, own: u64, now_ms: u64) -> Applied {
        let mut applied = Applied::default();
        for (client, entry) in &update.clients {
            let removed = entry.json.as_ref() == "null";
            if client.get() == own {
                if entry.clock >= self.clock && (removed || entry.clock > self.clock) && self.user.is_some() {
                    self.clock = entry.clock;
                    applied.republish = true;
                }
                continue;
            }
            let state = if removed { None } else { serde_json::from_str::<Value>(&entry.json).ok() };
            let accept = match self.remote.get(&client.get()) {
                None => true,
                Some(known) => entry.clock > known.clock || (entry.clock == known.clock && removed),
            };
            if accept {
                let old = self.remote.insert(client.get(), Remote { clock: entry.clock, state, seen_ms: now_ms });
                applied.changed |= old.map(|r| r.state) != Some(self.remote[&client.get()].state.clone());
            }
        }
        applied
    }

    /// The cursors of others whose state is fresh at `now_ms`, resolved against `board`.
    /// States without a cursor, for a text we do not have, or whose positions do not lie in
    /// the text they name are left out.
    pub fn cursors(&self, board: &Board, now_ms: u64) -> Vec<RemoteCursor> {
        self.remote
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.seen_ms) < OUTDATED_MS)
            .filter_map(|(&client, r)| {
                let state = r.state.as_ref()?;
                let balint = state.get("balint")?;
                let (target, key) = match balint.get("target")?.as_str()? {
                    "notes" => ("notes", TextKey::Notes),
                    "card" => ("card", TextKey::Card(balint.get("card")?.as_str()?.to_owned())),
                    _ => return None,
                };
                let cursor = state.get("cursor")?;
                let anchor: StickyIndex = serde_json::from_value(cursor.get("anchor")?.clone()).ok()?;
                let head: StickyIndex = serde_json::from_value(cursor.get("head")?.clone()).ok()?;
                let user = state.get("user");
                let text = |field: &str| user.and_then(|u| u.get(field)).and_then(Value::as_str).map(str::to_owned);
                Some(RemoteCursor {
                    client,
                    name: text("name").unwrap_or_default(),
                    color: text("color").unwrap_or_default(),
                    target,
                    card: match &key {
                        TextKey::Card(id) => Some(id.clone()),
                        TextKey::Notes => None,
                    },
                    index: board.resolve_sticky(&key, &anchor)?,
                    head: board.resolve_sticky(&key, &head)?,
                })
            })
            .collect()
    }
}
