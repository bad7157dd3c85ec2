//! Property tests for the codecs: no input makes them panic, what they decode re-encodes to the
//! same thing, and every update yrs writes passes the decoder's checks.

use balint_proto::room::{ClientMessage, Phase, Role};
use balint_proto::sync::{self, decode_frame, decode_update, Message, SyncMessage};
use proptest::prelude::*;
use yrs::{Any, Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact};

/// An Any value nested at most `depth` deep.
fn any_value(depth: u32) -> impl Strategy<Value = Any> {
    let leaf = prop_oneof![
        Just(Any::Null),
        Just(Any::Undefined),
        any::<bool>().prop_map(Any::from),
        any::<i32>().prop_map(|n| Any::from(n as i64)),
        any::<f64>().prop_filter("JSON has no NaN", |f| !f.is_nan()).prop_map(Any::from),
        "\\PC{0,8}".prop_map(|s: String| Any::from(s)),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Any::from),
    ];
    leaf.prop_recursive(depth, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Any::from),
            proptest::collection::hash_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Any::from(m.into_iter().collect::<std::collections::HashMap<String, Any>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, String),
    Delete(usize, u32),
    Format(usize, u32),
    Card(String, Any),
    RemoveCard(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), "\\PC{1,6}").prop_map(|(at, s)| Op::Insert(at, s)),
        2 => (any::<usize>(), 1u32..4).prop_map(|(at, n)| Op::Delete(at, n)),
        1 => (any::<usize>(), 1u32..4).prop_map(|(at, n)| Op::Format(at, n)),
        2 => ("[a-z]{1,4}", any_value(6)).prop_map(|(k, v)| Op::Card(k, v)),
        1 => any::<usize>().prop_map(Op::RemoveCard),
    ]
}

/// Plays `ops` on a document that counts in UTF-16 code units, as Yjs does, and returns every
/// transaction's update.
fn play(ops: &[Op]) -> (Doc, Vec<Vec<u8>>) {
    let mut options = yrs::Options::with_client_id(yrs::block::ClientID::new(7));
    options.offset_kind = yrs::OffsetKind::Utf16;
    let doc = Doc::with_options(options);
    let notes = doc.get_or_insert_text("notes");
    let cards = doc.get_or_insert_array("observations");
    let mut updates = Vec::new();
    for op in ops {
        let mut txn = doc.transact_mut();
        let len = notes.len(&txn);
        let count = cards.len(&txn);
        // Positions must not split a surrogate pair: count in chars that are one unit long.
        let safe = |at: usize| -> u32 {
            let text = notes.get_string(&txn);
            let mut units = 0u32;
            let mut boundaries = vec![0u32];
            for c in text.chars() {
                units += c.len_utf16() as u32;
                boundaries.push(units);
            }
            boundaries[at % boundaries.len()]
        };
        match op {
            Op::Insert(at, s) => {
                let at = safe(*at);
                notes.insert(&mut txn, at, s);
            }
            Op::Delete(at, n) | Op::Format(at, n) if len > 0 => {
                let start = safe(*at);
                let end = safe(*at + *n as usize).max(start);
                if end > start {
                    if matches!(op, Op::Delete(..)) {
                        notes.remove_range(&mut txn, start, end - start);
                    } else {
                        let attrs = [("bold".into(), Any::Bool(true))].into_iter().collect();
                        notes.format(&mut txn, start, end - start, attrs);
                    }
                }
            }
            Op::Card(key, value) => {
                let card = cards.push_back(&mut txn, MapPrelim::default());
                card.insert(&mut txn, key.as_str(), value.clone());
            }
            Op::RemoveCard(at) if count > 0 => cards.remove(&mut txn, (*at % count as usize) as u32),
            _ => {}
        }
        updates.push(txn.encode_update_v1());
    }
    (doc, updates)
}

use yrs::GetString;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Leader), Just(Role::Member), Just(Role::Observer)]
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Gathering),
        Just(Phase::Presentation),
        Just(Phase::Questions),
        Just(Phase::Reflection),
        Just(Phase::Response),
        Just(Phase::Closing),
        Just(Phase::Discussion),
    ]
}

fn message() -> impl Strategy<Value = ClientMessage> {
    use ClientMessage as C;
    let id = "\\PC{0,12}";
    prop_oneof![
        proptest::option::of(id).prop_map(|resume| C::Hello { resume }),
        Just(C::RaiseHand {}),
        proptest::option::of(id).prop_map(|member| C::LowerHand { member }),
        Just(C::LowerAllHands {}),
        Just(C::YieldFloor {}),
        (id, proptest::option::of(any::<u64>())).prop_map(|(member, if_version)| C::GrantFloor { member, if_version }),
        proptest::option::of(any::<u64>()).prop_map(|if_version| C::NextSpeaker { if_version }),
        Just(C::RevokeFloor {}),
        proptest::option::of(any::<u32>()).prop_map(|seconds| C::SetSpeakingLimit { seconds }),
        any::<bool>().prop_map(|enabled| C::SetFairOrder { enabled }),
        (phase(), proptest::option::of(any::<u32>()))
            .prop_map(|(phase, duration_secs)| C::SetPhase { phase, duration_secs }),
        proptest::option::of(id).prop_map(|member| C::PickPresenter { member }),
        (id, role()).prop_map(|(member, role)| C::SetRole { member, role }),
        any::<bool>().prop_map(|enabled| C::SetLobby { enabled }),
        id.prop_map(|member| C::Admit { member }),
        id.prop_map(|member| C::Decline { member }),
        any::<bool>().prop_map(|locked| C::LockBoard { locked }),
        id.prop_map(|member| C::Kick { member }),
        Just(C::EndMeeting {}),
        any::<bool>().prop_map(|away| C::SetAway { away }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_are_refused_and_what_decodes_re_encodes(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(messages) = decode_frame(&frame) {
            prop_assert_eq!(decode_frame(&sync::encode_all(&messages)), Ok(messages));
        }
    }

    /// The decoder of a frame that holds one update agrees with the whole-frame decoder on
    /// every frame it takes, and leaves every other frame to it: random bytes, and edits with
    /// a byte changed, cut short or followed by more.
    #[test]
    fn the_single_update_decoder_agrees_with_decode_frame(
        ops in proptest::collection::vec(op(), 1..8),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        at in any::<usize>(),
        byte in any::<u8>(),
        step2 in any::<bool>(),
    ) {
        let (_, updates) = play(&ops);
        let update = updates.last().unwrap();
        let edit = if step2 { sync::encode_step2(update) } else { sync::encode_update(update) }.to_vec();
        let mut changed = edit.clone();
        let i = at % changed.len();
        changed[i] = byte;
        let mut more = edit.clone();
        more.extend_from_slice(&sync::encode_update(update));
        let frames = [edit.clone(), changed, edit[..at % edit.len()].to_vec(), more, noise];
        for frame in &frames {
            let whole = decode_frame(frame);
            match sync::decode_single_update(frame) {
                Some(Ok(single)) => {
                    let payload = single.payload.to_vec();
                    let expected = if single.is_step2 { SyncMessage::SyncStep2(payload) } else { SyncMessage::Update(payload) };
                    prop_assert_eq!(whole, Ok(vec![Message::Sync(expected)]));
                }
                Some(Err(e)) => prop_assert_eq!(whole, Err(e)),
                None => prop_assert!(whole.map_or(true, |m| m.len() != 1
                    || !matches!(m[0], Message::Sync(SyncMessage::SyncStep2(_) | SyncMessage::Update(_))))),
            }
        }
        prop_assert!(matches!(sync::decode_single_update(&edit), Some(Ok(_))));
    }

    #[test]
    fn any_text_parses_or_is_refused(text in "\\PC{0,64}") {
        let _ = ClientMessage::from_json(&text);
    }

    #[test]
    fn every_command_survives_a_round_trip(message in message()) {
        let json = serde_json::to_string(&message).unwrap();
        prop_assert_eq!(ClientMessage::from_json(&json).unwrap(), message);
    }

    /// The decoder's checks refuse nothing yrs writes: every transaction's update, the whole
    /// document, and a diff against a random earlier state.
    #[test]
    fn every_update_yrs_writes_passes_the_checks(ops in proptest::collection::vec(op(), 1..24), cut in any::<usize>()) {
        let (doc, updates) = play(&ops);
        for update in &updates {
            prop_assert!(decode_update(update).is_ok());
            prop_assert_eq!(decode_frame(&sync::encode_update(update)).map(|m| m.len()), Ok(1));
        }
        let whole = doc.transact().encode_state_as_update_v1(&StateVector::default());
        prop_assert!(decode_frame(&sync::encode_step2(&whole)).is_ok());
        let (earlier, _) = play(&ops[..cut % ops.len()]);
        let diff = doc.transact().encode_state_as_update_v1(&earlier.transact().state_vector());
        let frame = sync::encode_all(&[
            Message::Sync(SyncMessage::SyncStep1(earlier.transact().state_vector())),
            Message::Sync(SyncMessage::Update(diff)),
        ]);
        prop_assert_eq!(decode_frame(&frame).map(|m| m.len()), Ok(2));
    }
}
