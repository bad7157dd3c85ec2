//! Room threads: every connection of a room runs on one thread, which also owns its socket.
//!
//! An edit from one member wakes the task of every other member of its room. On tokio's
//! multi-thread runtime those tasks may sit on any worker: a delivery could cost a wake-up of
//! another thread (a futex call, a context switch) and the frame's cache lines moving between
//! cores. Here a node runs a few single-threaded runtimes, one per core by default
//! (`--room-threads`), each with its own I/O driver and timers. A room is given one of them by
//! its id, and every connection to it is moved there once upgraded: its socket is taken off
//! the main runtime (`linger.rs`'s handoff) and registered on the room's thread, and the
//! connection's task is spawned there. A delivery then wakes a task on the sender's own
//! thread, a push on a local queue, and an incoming frame wakes only the thread that reads it.
//!
//! With Redis, a room's Redis connection and its bus publisher run on its thread too
//! (`RedisBackend::run_rooms_on`, `Outbox::start`), and so does a due room's tick
//! (`Rooms::run_timers`). HTTP, rooms' set-up, the other backends and the node's timer queue
//! stay on the main runtime; what a connection spawns runs on its room's thread.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The room threads of a node.
pub struct RoomThreads {
    handles: Vec<Handle>,
    /// Each thread's stop signal and the thread itself, taken on drop.
    threads: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
    hasher: std::hash::RandomState,
}

impl RoomThreads {
    /// Starts `n` room threads; with `n == 0` there are none, and connections stay on the
    /// main runtime.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("room-{i}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Whatever still runs there is dropped with the runtime, off any async context.
                drop(runtime);
            })?;
            threads.push((stop, thread));
        }
        Ok(RoomThreads { handles, threads: Mutex::new(threads), hasher: std::hash::RandomState::new() })
    }

    /// No room threads: everything runs on the main runtime.
    pub fn none() -> Self {
        RoomThreads { handles: Vec::new(), threads: Mutex::default(), hasher: std::hash::RandomState::new() }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime of `room`'s connections, or `None` when there are no room threads.
    pub fn for_room(&self, room: &str) -> Option<&Handle> {
        self.index_of(room).and_then(|i| self.handles.get(i))
    }

    fn index_of(&self, room: &str) -> Option<usize> {
        if self.handles.is_empty() {
            return None;
        }
        Some((self.hasher.hash_one(room) % self.handles.len() as u64) as usize)
    }
}

impl Drop for RoomThreads {
    fn drop(&mut self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for (stop, thread) in threads {
            let _ = stop.send(());
            // Joined from a thread of its own: this may run inside an async context, which must
            // not block.
            std::thread::spawn(move || {
                let _ = thread.join();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_always_gets_the_same_thread_and_rooms_spread() {
        let threads = RoomThreads::start(2).unwrap();
        let first = threads.index_of("room-a").unwrap();
        for _ in 0..10 {
            assert_eq!(threads.index_of("room-a"), Some(first));
        }
        let used: std::collections::HashSet<_> =
            (0..64).map(|i| threads.index_of(&format!("room-{i}")).unwrap()).collect();
        assert_eq!(used.len(), 2, "64 rooms over two threads use both");
        assert!(RoomThreads::start(0).unwrap().for_room("room-a").is_none());
    }

    #[test]
    fn tasks_run_on_their_room_thread() {
        let threads = RoomThreads::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.for_room("room-a").unwrap().spawn(async move {
            tx.send(std::thread::current().name().map(str::to_owned)).unwrap();
        });
        let name = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().unwrap();
        assert!(name.starts_with("room-"), "{name}");
    }
}
