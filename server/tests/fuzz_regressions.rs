//! Replays the fuzz targets' saved inputs as ordinary tests: every file under
//! `fuzz/regressions/<target>/` (inputs that once crashed a target) and `fuzz/seeds/<target>/`
//! (where the fuzzers start) goes through the same checks as `cargo fuzz run <target>` does,
//! from `fuzz/src/checks.rs`.
//!
//! `cargo test -p balint-server --test fuzz_regressions -- --ignored write_seeds` rewrites
//! `fuzz/seeds/` from the seeds defined in the checks.

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `check` on every saved input of `target`, then on its seeds as defined in the code.
/// Returns how many inputs ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut ran = 0;
    for kind in ["regressions", "seeds"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("a readable directory").path()).collect();
        paths.sort();
        for path in paths {
            let input = std::fs::read(&path).expect("a readable input");
            eprintln!("{}", path.display());
            check(&input);
            ran += 1;
        }
    }
    for (name, input) in checks::seeds(target) {
        eprintln!("seed {target}/{name}");
        check(&input);
        ran += 1;
    }
    ran
}

#[test]
fn sync_frame_inputs_pass() {
    assert!(replay("sync_frame", checks::sync_frame) > 1);
}

#[test]
fn room_message_inputs_pass() {
    assert!(replay("room_message", checks::room_message) > 1);
}

#[test]
fn sealed_frame_inputs_pass() {
    assert!(replay("sealed_frame", checks::sealed_frame) > 1);
}

#[test]
fn token_inputs_pass() {
    assert!(replay("token", checks::token) > 1);
}

/// The committed seeds are the ones `checks::seeds` makes. After changing them, run this test
/// with `BALINT_WRITE_SEEDS=1` to write them.
#[test]
fn committed_seeds_are_up_to_date() {
    let write = std::env::var_os("BALINT_WRITE_SEEDS").is_some();
    for target in ["sync_frame", "room_message", "token", "sealed_frame"] {
        let dir = fuzz_dir().join("seeds").join(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, input) in checks::seeds(target) {
            let path = dir.join(&name);
            if write {
                std::fs::write(&path, &input).unwrap();
            } else {
                let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                assert_eq!(committed, input, "{path:?} is stale: run with BALINT_WRITE_SEEDS=1");
            }
        }
    }
}
