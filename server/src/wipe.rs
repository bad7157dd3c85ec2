//! Freed memory is wiped: a global allocator that zeroes every block before handing it back.
//!
//! An ephemeral meeting's content must not survive in the server's memory after the meeting
//! ends. Dropping the document frees its blocks, but a plain allocator leaves their bytes in
//! place until something else reuses them. [`WipingAllocator`] wraps the system allocator and
//! zeroes each block on free, so freed content is gone at once, wherever it was held: the
//! document and its history, awareness states, names, socket buffers, encoded frames.
//!
//! Reallocation goes through `GlobalAlloc`'s default (allocate, copy, free), so the old block
//! of a growing buffer is wiped too. The cost is measured by `cargo bench -p balint-server
//! --bench wipe`. The binary installs the allocator unless built without the
//! `wipe-freed-memory` feature (on by default).

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, zeroing blocks when they are freed.
pub struct WipingAllocator;

// SAFETY: every method forwards to `System` with the same layout; `dealloc` only writes zeros
// within the block being freed, which the caller owns until the call returns.
unsafe impl GlobalAlloc for WipingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` points to a live block of `layout.size()` bytes owned by the caller.
        unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        // The compiler may not drop the zeroing as a dead store before a free.
        std::hint::black_box(ptr);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}
