//! What wiping freed memory costs: allocation/free cycles through the system allocator and
//! through `WipingAllocator`, for the block sizes a room server frees most (small strings and
//! frames, CRDT blocks, large updates). Prints nanoseconds per cycle and the ratio.
//!
//! `cargo bench -p balint-server --bench wipe`

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

use balint_server::wipe::WipingAllocator;

fn cycle<A: GlobalAlloc>(allocator: &A, size: usize, rounds: usize) -> f64 {
    let layout = Layout::from_size_align(size, 8).expect("valid layout");
    let start = Instant::now();
    for i in 0..rounds {
        // SAFETY: each block is allocated, touched within bounds and freed once.
        unsafe {
            let ptr = allocator.alloc(layout);
            assert!(!ptr.is_null());
            ptr.write(i as u8);
            std::hint::black_box(ptr);
            allocator.dealloc(ptr, layout);
        }
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

fn main() {
    println!("{:>10} {:>14} {:>14} {:>8}", "block", "system ns", "wiping ns", "ratio");
    for size in [32, 256, 4 * 1024, 64 * 1024, 1024 * 1024] {
        let rounds = (64 * 1024 * 1024 / size).clamp(1_000, 2_000_000);
        // Warm up both paths, then measure.
        cycle(&System, size, rounds / 10);
        cycle(&WipingAllocator, size, rounds / 10);
        let plain = cycle(&System, size, rounds);
        let wiping = cycle(&WipingAllocator, size, rounds);
        println!("{size:>10} {plain:>14.1} {wiping:>14.1} {:>8.2}", wiping / plain);
    }
}
