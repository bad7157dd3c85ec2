//! What a room set up ahead costs a node until someone joins: 1,000 rooms are created
//! in-process, on one node (the embedded backend), and the heap they keep is counted by a
//! counting allocator around the system one. The figure is printed; the test holds it to the
//! target, 16 KiB per room.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use balint_server::backend::files::FileStore;
use balint_server::backend::redis::RedisBackend;
use balint_server::metrics::Metrics;
use balint_server::room_threads::RoomThreads;
use balint_server::rooms::{Cluster, Lookup, RoomOptions, RoomSettings, Rooms};

/// Bytes allocated and not yet freed, by every thread of this test binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the same layout and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROOMS: usize = 1_000;

/// The counter is shared by the whole binary: one measurement at a time.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn options() -> RoomOptions {
    RoomOptions {
        // The server's defaults.
        outbound_queue: balint_server::limits::OUTBOUND_QUEUE_FRAMES,
        reconnect_grace: Duration::from_secs(120),
        empty_grace: Duration::from_secs(600),
        max_length: Duration::from_secs(6 * 3600),
        max_members: 50,
        max_board_bytes: balint_server::limits::MAX_BOARD_BYTES,
        max_rooms: 10_000,
        idle_unload: Duration::from_secs(60),
        link_ttl: Duration::from_secs(30 * 24 * 3600),
    }
}

fn embedded(data: &std::path::Path) -> Rooms {
    Rooms::new(Cluster::embedded(Arc::new(FileStore::new(data)), Metrics::new(), "memory".into(), options()))
}

/// Sets up [`ROOMS`] rooms ahead, as `POST /api/rooms` does, and returns the heap each keeps
/// on the node, in KiB (with the embedded backend, the record in the node's own store
/// included); then opens them all, as a first lookup does, and returns what each open room
/// with nobody connected keeps.
async fn per_room(rooms: &Rooms) -> (f64, f64) {
    let settings = RoomSettings { title: Some("A case conference".into()), ..RoomSettings::default() };
    // One room first, so that whatever is allocated once per process is not counted.
    let first = rooms.create(settings.clone()).await.unwrap();
    let start = LIVE.load(Ordering::Relaxed);
    let mut ids = Vec::with_capacity(ROOMS);
    for _ in 0..ROOMS {
        ids.push(rooms.set_up(settings.clone()).await.unwrap());
    }
    let set_up = LIVE.load(Ordering::Relaxed);
    for id in &ids {
        assert!(matches!(rooms.lookup(id.id()).await.unwrap(), Lookup::Live(_)), "a room set up ahead opens");
    }
    let open = LIVE.load(Ordering::Relaxed);
    drop(first);
    let kib = |bytes: isize| bytes as f64 / ROOMS as f64 / 1024.0;
    (kib(set_up - start), kib(open - set_up))
}

/// One measurement at a time, on a runtime of its own that is gone (with whatever its tasks
/// held) before the next starts.
fn measure(test: impl std::future::Future<Output = ()>) {
    let _one = MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test);
}

#[test]
fn a_room_set_up_ahead_costs_at_most_16_kib_until_someone_joins() {
    measure(async {
        let data = tempfile::tempdir().unwrap();
        let (ahead, open) = per_room(&embedded(data.path())).await;
        println!("embedded backend, {ROOMS} rooms: {ahead:.2} KiB per room set up ahead, {open:.2} KiB more once open");
        assert!(ahead <= 16.0, "{ahead:.2} KiB per room set up ahead");
    });
}

/// A `redis-server` of the test's own, keeping nothing on disk.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test (scripts/test.sh installs it)");
        // Owned at once, so that it is killed and waited for whatever happens next.
        let redis = Redis(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_redis_a_room_set_up_ahead_costs_at_most_16_kib_until_someone_joins() {
    let redis = Redis::start();
    measure(async {
        let data = tempfile::tempdir().unwrap();
        let backend = RedisBackend::connect(&format!("redis://127.0.0.1:{}", redis.1), "memory", &Default::default())
            .await
            .unwrap();
        let backend = Arc::new(backend);
        let rooms = Rooms::new(Cluster {
            store: backend.clone(),
            presence: backend.clone(),
            bus: backend,
            boards: Arc::new(FileStore::new(data.path())),
            metrics: Metrics::new(),
            node: "memory".into(),
            options: options(),
            threads: Arc::new(RoomThreads::none()),
        });
        let (ahead, open) = per_room(&rooms).await;
        println!("Redis backend, {ROOMS} rooms: {ahead:.2} KiB per room set up ahead, {open:.2} KiB more once open");
        assert!(ahead <= 16.0, "{ahead:.2} KiB per room set up ahead");
    });
}
