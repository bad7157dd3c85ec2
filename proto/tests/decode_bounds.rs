//! Frames that once made the y-sync decoder allocate by the gigabyte or recurse until the stack
//! ran out (found by `cargo fuzz`, see `fuzz/`). Each is refused, and decoding it allocates
//! no more than a small multiple of its own size. Valid documents of every kind of content
//! still decode.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use balint_proto::sync::{decode_frame, encode_update, FrameError, MAX_ANY_DEPTH};
use yrs::{Any, Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, XmlFragment};

/// The system allocator, noting the largest block each thread asks for.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; noting a size touches no memory of the
// caller's.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Decodes `frame` and returns the result with the largest block allocated meanwhile.
fn decode_measured(frame: &[u8]) -> (Result<usize, FrameError>, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = decode_frame(frame).map(|messages| messages.len());
    (result, LARGEST.with(Cell::get))
}

fn var(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A sync frame (`0`, then `kind`) around `payload`.
fn sync_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, kind];
    var(payload.len() as u64, &mut frame);
    frame.extend_from_slice(payload);
    frame
}

/// An update with one block, at the root type `notes`, holding `content` (after its info
/// byte's content kind).
fn update_with_content(kind: u8, content: &[u8]) -> Vec<u8> {
    // One client with one block: client 1 at clock 0; a root parent named "notes".
    let mut payload = vec![1, 1, 1, 0, kind, 1, 5];
    payload.extend_from_slice(b"notes");
    payload.extend_from_slice(content);
    // An empty delete set.
    payload.push(0);
    payload
}

/// `depth` arrays nested in each other, around a null, as one Any value.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut any = Vec::with_capacity(depth * 2 + 1);
    for _ in 0..depth {
        any.extend_from_slice(&[117, 1]);
    }
    any.push(126);
    any
}

fn refused_cheaply(name: &str, frame: &[u8]) {
    let (result, largest) = decode_measured(frame);
    assert!(result.is_err(), "{name}: accepted");
    let bound = 4096 + 64 * frame.len();
    assert!(largest <= bound, "{name}: allocated a block of {largest} bytes (bound {bound})");
}

#[test]
fn an_update_declaring_millions_of_clients_is_refused_without_allocating_them() {
    // The input the fuzzer found: an 11-byte sync step 2 whose update declares 155 million
    // clients. yrs reserved a hash map for all of them: an 11 GB allocation.
    let frame =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/sync_frame/oom-update-client-count"))
            .expect("the saved fuzz input");
    assert_eq!(frame, [0x00, 0x01, 0x07, 0xf8, 0xfe, 0xfa, 0x49, 0xfb, 0xff, 0xfe, 0x00]);
    refused_cheaply("client count", &frame);
}

#[test]
fn every_declared_count_is_checked_against_the_bytes_that_follow() {
    let huge = 300_000_000;
    // A state vector (sync step 1) of 300 million entries.
    let mut payload = Vec::new();
    var(huge, &mut payload);
    refused_cheaply("state vector", &sync_frame(0, &payload));
    // An awareness update of 300 million states.
    let mut frame = vec![1];
    let mut payload = Vec::new();
    var(huge, &mut payload);
    var(payload.len() as u64, &mut frame);
    frame.extend_from_slice(&payload);
    refused_cheaply("awareness", &frame);
    // One client with 300 million blocks.
    let mut payload = vec![1];
    var(huge, &mut payload);
    payload.extend_from_slice(&[1, 0]);
    refused_cheaply("blocks", &sync_frame(2, &payload));
    // An Any content of 300 million values, and an Any array and map as long.
    let mut count = Vec::new();
    var(huge, &mut count);
    refused_cheaply("any content", &sync_frame(2, &update_with_content(8, &count)));
    for tag in [117u8, 118] {
        let mut content = vec![1, tag];
        content.extend_from_slice(&count);
        refused_cheaply("any collection", &sync_frame(2, &update_with_content(8, &content)));
    }
    // JSON content of 300 million strings (refused in any case: see below).
    refused_cheaply("json content", &sync_frame(2, &update_with_content(2, &count)));
    // A delete set of 300 million clients, and of 300 million ranges.
    let mut payload = vec![0];
    var(huge, &mut payload);
    refused_cheaply("delete set", &sync_frame(2, &payload));
    let mut payload = vec![0, 1, 1];
    var(huge, &mut payload);
    refused_cheaply("delete ranges", &sync_frame(2, &payload));
}

#[test]
fn deeply_nested_any_values_are_refused_before_yrs_recurses_into_them() {
    // 400,000 nested arrays fit in an 800 KB frame; yrs decodes them by recursion and the
    // process aborts with a stack overflow. A few levels are fine.
    let mut content = vec![1];
    content.extend_from_slice(&nested_arrays(400_000));
    refused_cheaply("deep arrays", &sync_frame(2, &update_with_content(8, &content)));
    let mut content = vec![1];
    content.extend_from_slice(&nested_arrays(MAX_ANY_DEPTH + 1));
    assert!(decode_frame(&sync_frame(2, &update_with_content(8, &content))).is_err());
    let mut content = vec![1];
    content.extend_from_slice(&nested_arrays(MAX_ANY_DEPTH));
    decode_frame(&sync_frame(2, &update_with_content(8, &content))).expect("nesting up to the limit decodes");
}

#[test]
fn clocks_that_overflow_and_oversized_client_ids_are_refused() {
    // A delete range ending past u32::MAX: yrs adds without checking (a panic in debug builds).
    let payload = [0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1];
    assert_eq!(decode_frame(&sync_frame(2, &payload)), Err(FrameError::Malformed));
    // Blocks whose clocks run past u32::MAX.
    let mut payload = vec![1, 2, 1];
    var(u64::from(u32::MAX), &mut payload);
    payload.extend_from_slice(&[1, 1, 5]);
    payload.extend_from_slice(b"notes");
    payload.extend_from_slice(&[1, 1, 1, 5]);
    payload.extend_from_slice(b"notes");
    payload.extend_from_slice(&[1, 0]);
    assert_eq!(decode_frame(&sync_frame(2, &payload)), Err(FrameError::Malformed));
    // A client id past 53 bits (yrs asserts on it in debug builds).
    let mut payload = vec![0, 1];
    var(1 << 53, &mut payload);
    payload.extend_from_slice(&[1, 0, 1]);
    assert_eq!(decode_frame(&sync_frame(2, &payload)), Err(FrameError::Malformed));
}

#[test]
fn every_kind_of_content_yrs_writes_still_decodes() {
    let doc = Doc::with_client_id(1 << 52);
    let notes = doc.get_or_insert_text("notes");
    let observations = doc.get_or_insert_array("observations");
    let xml = doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = doc.transact_mut();
        notes.push(&mut txn, "Aerztin und Patient 👩‍⚕️");
        notes.format(&mut txn, 0, 6, [("bold".into(), Any::Bool(true))].into_iter().collect());
        notes.insert_embed(&mut txn, 3, Any::from(vec![Any::from("image")]));
        notes.remove_range(&mut txn, 1, 2);
        let card = observations.push_back(&mut txn, MapPrelim::default());
        card.insert(&mut txn, "body", "Wut");
        card.insert(&mut txn, "created_ms", 1.5e12);
        card.insert(&mut txn, "n", 42i64);
        card.insert(&mut txn, "big", Any::from(1i64 << 60));
        card.insert(
            &mut txn,
            "tags",
            Any::from(vec![Any::Null, Any::Undefined, Any::from(false), Any::from(vec![0u8, 1])]),
        );
        let mut nested = Any::Null;
        for _ in 0..MAX_ANY_DEPTH - 1 {
            nested = Any::from(vec![nested]);
        }
        card.insert(&mut txn, "nested", nested);
        let inner = card.insert(&mut txn, "inner", MapPrelim::default());
        inner.insert(&mut txn, "x", "y");
        observations.push_back(&mut txn, yrs::ArrayPrelim::default());
        observations.push_back(&mut txn, yrs::TextPrelim::new("text"));
        observations.push_back(&mut txn, yrs::Doc::new());
        xml.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        xml.push_back(&mut txn, yrs::XmlTextPrelim::new("hi"));
        observations.remove(&mut txn, 1);
    }
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let (result, _) = decode_measured(&encode_update(&update));
    assert_eq!(result, Ok(1));
}

/// A valid update of text and cards, to be damaged.
fn sample_update(words: &[String]) -> Vec<u8> {
    let doc = Doc::with_client_id(3);
    let notes = doc.get_or_insert_text("notes");
    let cards = doc.get_or_insert_array("observations");
    for (n, word) in words.iter().enumerate() {
        let mut txn = doc.transact_mut();
        if n % 3 == 2 {
            let card = cards.push_back(&mut txn, MapPrelim::default());
            card.insert(&mut txn, "body", word.as_str());
            card.insert(&mut txn, "tags", Any::from(vec![Any::from(word.as_str()), Any::from(vec![Any::Null])]));
        } else {
            notes.insert(&mut txn, 0, word);
            if n % 4 == 3 {
                notes.remove_range(&mut txn, 0, 1);
            }
        }
    }
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    update
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

    /// A valid frame with a few bytes changed (counts, lengths, tags, clocks) decodes or is
    /// refused, and never allocates more than a small multiple of its size.
    #[test]
    fn damaged_updates_never_allocate_much(
        words in proptest::collection::vec("[a-z]{1,5}", 1..12),
        damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
    ) {
        let mut frame = encode_update(&sample_update(&words)).to_vec();
        for (at, byte) in damage {
            let at = at % frame.len();
            frame[at] = byte;
        }
        let (_, largest) = decode_measured(&frame);
        let bound = 4096 + 64 * frame.len();
        proptest::prop_assert!(largest <= bound, "allocated a block of {} bytes (bound {})", largest, bound);
    }
}

#[test]
fn an_update_yrs_cannot_read_back_after_re_encoding_is_refused() {
    // Found by `cargo fuzz`: a 93-byte sync step 2 that yrs decodes and applies, but whose
    // blocks it cannot integrate (one names itself as its parent). yrs keeps them pending and
    // re-encodes them into every later diff, and that encoding does not decode again: every
    // sync step 1 answered and every save of the board panicked from then on.
    let frame = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/sync_frame/update-that-does-not-re-encode"
    ))
    .expect("the saved fuzz input");
    assert_eq!(frame.len(), 93);
    assert_eq!(decode_frame(&frame), Err(FrameError::Malformed));
}

#[test]
fn legacy_json_content_is_refused() {
    // Found by `cargo fuzz`: a 58-byte update with a legacy JSON block. yrs 0.28.1 reads one
    // string more than such a block's count and writes back the count it holds, so once the
    // board held it, its snapshot no longer decoded: a persistent board that would never load
    // again. Yjs has written Any content instead since version 13.
    let frame =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/sync_frame/legacy-json-content"))
            .expect("the saved fuzz input");
    assert_eq!(decode_frame(&frame), Err(FrameError::Malformed));
    let mut content = vec![1];
    var(2, &mut content);
    content.extend_from_slice(&[0, 0]);
    assert_eq!(decode_frame(&sync_frame(2, &update_with_content(2, &content))), Err(FrameError::Malformed));
}
