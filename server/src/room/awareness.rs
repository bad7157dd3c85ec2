//! The room's copy of the y-sync awareness states.
//!
//! yrs's `Awareness` type is built around a local document and keeps no owner per client id,
//! and it has no sweep. The server needs both: when a connection closes, the states it
//! announced are removed for everyone; a state that is not renewed within the timeout is swept.
//! This registry is a plain state machine: time comes in as `now` (milliseconds).

use std::collections::HashMap;
use std::sync::Arc;

use balint_proto::sync::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::block::ClientID;

use super::ConnId;

/// The JSON text Yjs uses for a removed awareness state.
const REMOVED: &str = "null";

#[derive(Debug)]
struct Entry {
    clock: u32,
    /// `None` once removed; the clock is kept so stale updates stay ignored.
    state: Option<Arc<str>>,
    owner: ConnId,
    last_seen_ms: u64,
}

/// Awareness states of every client in one room, with the connection that announced each.
#[derive(Debug, Default)]
pub struct AwarenessRegistry {
    entries: HashMap<u64, Entry>,
    /// No entry was last seen before this (Unix ms); `None` when there is none. Exact after a
    /// sweep; in between, a renewal may leave it earlier than the oldest entry, which only
    /// makes [`AwarenessRegistry::next_expiry`] early.
    oldest_seen_ms: Option<u64>,
}

impl AwarenessRegistry {
    /// Applies an update sent by `conn`. Returns the part of it that changed something, to be
    /// relayed to the room, or `None` when nothing changed.
    ///
    /// A client id first announced by one connection cannot be changed by another while the
    /// first holds it: one member cannot hide or impersonate another's cursor.
    pub fn apply(&mut self, conn: ConnId, update: AwarenessUpdate, now_ms: u64) -> Option<AwarenessUpdate> {
        let mut applied = HashMap::new();
        for (client_id, incoming) in update.clients {
            let removed = incoming.json.as_ref() == REMOVED;
            let id = client_id.get();
            let accept = match self.entries.get(&id) {
                None => !removed,
                Some(existing) => {
                    let same_owner = existing.owner == conn || existing.state.is_none();
                    let newer = incoming.clock > existing.clock
                        || (incoming.clock == existing.clock && removed && existing.state.is_some());
                    same_owner && newer
                }
            };
            if !accept {
                continue;
            }
            self.oldest_seen_ms = Some(self.oldest_seen_ms.map_or(now_ms, |oldest| oldest.min(now_ms)));
            self.entries.insert(
                id,
                Entry {
                    clock: incoming.clock,
                    state: (!removed).then(|| incoming.json.clone()),
                    owner: conn,
                    last_seen_ms: now_ms,
                },
            );
            applied.insert(client_id, incoming);
        }
        (!applied.is_empty()).then_some(AwarenessUpdate { clients: applied })
    }

    /// Every live state, as one update for a joining or querying client.
    pub fn snapshot(&self) -> Option<AwarenessUpdate> {
        let clients: HashMap<_, _> = self
            .entries
            .iter()
            .filter_map(|(&id, e)| {
                e.state
                    .as_ref()
                    .map(|json| (ClientID::new(id), AwarenessUpdateEntry { clock: e.clock, json: json.clone() }))
            })
            .collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Removes every live state announced by `conn`, as when its socket closes.
    pub fn remove_connection(&mut self, conn: ConnId) -> Option<AwarenessUpdate> {
        self.remove_where(|e| e.owner == conn)
    }

    /// Removes live states not renewed for `timeout_ms`, and forgets removed ones after the
    /// same delay. Returns the removals to relay.
    pub fn sweep(&mut self, now_ms: u64, timeout_ms: u64) -> Option<AwarenessUpdate> {
        let expired = |e: &Entry| now_ms.saturating_sub(e.last_seen_ms) >= timeout_ms;
        self.entries.retain(|_, e| e.state.is_some() || !expired(e));
        self.oldest_seen_ms = self.entries.values().map(|e| e.last_seen_ms).min();
        self.remove_where(expired)
    }

    /// When [`AwarenessRegistry::sweep`] next has something to do with `timeout_ms`: a live
    /// state to remove, or a removed one to forget (Unix ms). `None` with no entry at all.
    pub fn next_expiry(&self, timeout_ms: u64) -> Option<u64> {
        self.oldest_seen_ms.map(|oldest| oldest.saturating_add(timeout_ms))
    }

    fn remove_where(&mut self, mut condition: impl FnMut(&Entry) -> bool) -> Option<AwarenessUpdate> {
        let mut removed = HashMap::new();
        for (&id, entry) in self.entries.iter_mut() {
            if entry.state.is_some() && condition(entry) {
                entry.state = None;
                entry.clock += 1;
                removed.insert(ClientID::new(id), AwarenessUpdateEntry { clock: entry.clock, json: REMOVED.into() });
            }
        }
        (!removed.is_empty()).then_some(AwarenessUpdate { clients: removed })
    }

    /// Number of live states.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.state.is_some()).count()
    }

    /// Whether no live state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u64, clock: u32, json: &str) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: HashMap::from([(ClientID::new(id), AwarenessUpdateEntry { clock, json: json.into() })]),
        }
    }

    #[test]
    fn a_state_is_relayed_once_and_stale_clocks_are_ignored() {
        let mut reg = AwarenessRegistry::default();
        assert!(reg.apply(ConnId(1), update(7, 1, "{\"a\":1}"), 0).is_some());
        assert!(reg.apply(ConnId(1), update(7, 1, "{\"a\":1}"), 10).is_none());
        assert!(reg.apply(ConnId(1), update(7, 0, "{\"a\":2}"), 10).is_none());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn another_connection_cannot_overwrite_a_held_state() {
        let mut reg = AwarenessRegistry::default();
        reg.apply(ConnId(1), update(7, 1, "{}"), 0);
        assert!(reg.apply(ConnId(2), update(7, 5, "null"), 0).is_none());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn closing_a_connection_removes_its_states_with_a_higher_clock() {
        let mut reg = AwarenessRegistry::default();
        reg.apply(ConnId(1), update(7, 3, "{}"), 0);
        reg.apply(ConnId(2), update(8, 1, "{}"), 0);
        let removal = reg.remove_connection(ConnId(1)).unwrap();
        let entry = &removal.clients[&ClientID::new(7)];
        assert_eq!((entry.clock, entry.json.as_ref()), (4, "null"));
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn states_not_renewed_within_the_timeout_are_swept() {
        let mut reg = AwarenessRegistry::default();
        reg.apply(ConnId(1), update(7, 1, "{}"), 0);
        reg.apply(ConnId(1), update(8, 1, "{}"), 20_000);
        assert!(reg.sweep(29_999, 30_000).is_none());
        let removal = reg.sweep(30_000, 30_000).unwrap();
        assert!(removal.clients.contains_key(&ClientID::new(7)));
        assert_eq!(reg.len(), 1);
        // A renewal keeps a state alive.
        reg.apply(ConnId(1), update(8, 2, "{}"), 45_000);
        assert!(reg.sweep(60_000, 30_000).is_none());
    }

    #[test]
    fn the_next_expiry_is_the_oldest_entry_plus_the_timeout() {
        let mut reg = AwarenessRegistry::default();
        assert_eq!(reg.next_expiry(30_000), None, "nothing to sweep, ever");
        reg.apply(ConnId(1), update(7, 1, "{}"), 1_000);
        reg.apply(ConnId(2), update(8, 1, "{}"), 5_000);
        assert_eq!(reg.next_expiry(30_000), Some(31_000));
        // Renewing the oldest leaves the estimate early until the next sweep makes it exact.
        reg.apply(ConnId(1), update(7, 2, "{}"), 10_000);
        assert_eq!(reg.next_expiry(30_000), Some(31_000));
        assert!(reg.sweep(31_000, 30_000).is_none());
        assert_eq!(reg.next_expiry(30_000), Some(35_000));
        // At that time the state goes; its removal, as old, is forgotten at the next sweep.
        assert!(reg.sweep(35_000, 30_000).is_some());
        assert_eq!(reg.next_expiry(30_000), Some(35_000));
        assert!(reg.sweep(40_000, 30_000).is_some());
        assert!(reg.sweep(40_000, 30_000).is_none());
        assert_eq!(reg.next_expiry(30_000), None, "everything forgotten");
    }
}
