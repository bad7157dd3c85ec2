//! A room's feed: the frames for this node's connections, in one order, on a
//! `tokio::sync::broadcast` ring.
//!
//! A ring is allocated whole when it is made (32 bytes a slot), and a connection may fall as
//! many frames behind as the ring holds before it is closed as too slow (`--outbound-queue`,
//! 1,024). Most rooms never come near that: their feed starts on a small ring
//! ([`FIRST_RING`] slots) and moves to one of the full size the first time a connection falls
//! that far behind. The move loses nothing: before the frame that would fill the small ring,
//! the sender puts a last item on it that hands each of its receivers a receiver of the new
//! ring, subscribed before anything was sent there. Each connection reads the old ring to
//! its end, takes its new receiver and reads on. A connection may so fall behind by the full
//! size and what was left on the small ring; never by less than the full size.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Slots of the ring a feed starts with (2 KiB).
pub const FIRST_RING: usize = 64;

/// The receivers of the new ring, one for each receiver of the old one.
type Handover<T> = Mutex<Vec<broadcast::Receiver<Item<T>>>>;

/// What a ring carries: a frame, or, last on a ring that was left, the way to the next.
enum Entry<T> {
    Frame(Arc<T>),
    Moved(Handover<T>),
}

type Item<T> = Arc<Entry<T>>;

/// The sending end, kept under the room's lock.
pub struct FeedSender<T> {
    ring: broadcast::Sender<Item<T>>,
    /// Slots of the current ring.
    slots: usize,
    /// Slots of a full ring.
    full: usize,
}

/// A connection's end of the feed.
pub struct Feed<T> {
    ring: broadcast::Receiver<Item<T>>,
}

impl<T> FeedSender<T> {
    /// A feed whose connections may fall `full` frames behind.
    pub fn new(full: usize) -> Self {
        let full = full.max(1).next_power_of_two();
        let slots = FIRST_RING.min(full);
        FeedSender { ring: broadcast::channel(slots).0, slots, full }
    }

    /// A new receiver, which gets every frame sent from now on.
    pub fn subscribe(&self) -> Feed<T> {
        Feed { ring: self.ring.subscribe() }
    }

    /// Sends `frame` to every receiver; with none, it is dropped.
    pub fn send(&mut self, frame: Arc<T>) {
        if self.slots < self.full && self.ring.len() + 1 >= self.slots {
            // The last free slot takes the way to a full ring.
            let (ring, _) = broadcast::channel(self.full);
            let handover = (0..self.ring.receiver_count()).map(|_| ring.subscribe()).collect();
            let _ = self.ring.send(Arc::new(Entry::Moved(Mutex::new(handover))));
            self.ring = ring;
            self.slots = self.full;
        }
        let _ = self.ring.send(Arc::new(Entry::Frame(frame)));
    }

    /// Slots of the current ring.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

impl<T> Feed<T> {
    /// The next frame (cancel-safe). `Lagged` when the receiver fell more than the ring holds
    /// behind; `Closed` when the sender is gone and everything was read.
    pub async fn recv(&mut self) -> Result<Arc<T>, RecvError> {
        loop {
            let item = self.ring.recv().await?;
            if let Some(frame) = self.take(&item)? {
                return Ok(frame);
            }
        }
    }

    /// The next frame if one is there.
    pub fn try_recv(&mut self) -> Result<Arc<T>, TryRecvError> {
        loop {
            let item = self.ring.try_recv()?;
            if let Some(frame) = self.take(&item).map_err(|_| TryRecvError::Lagged(0))? {
                return Ok(frame);
            }
        }
    }

    /// The frame of `item`, or `None` when it moved this receiver to the next ring.
    fn take(&mut self, item: &Entry<T>) -> Result<Option<Arc<T>>, RecvError> {
        match item {
            Entry::Frame(frame) => Ok(Some(frame.clone())),
            Entry::Moved(handover) => {
                // One receiver was made for each receiver of this ring; should one be
                // missing, the connection resyncs as if it had fallen behind.
                let next = handover.lock().unwrap_or_else(|e| e.into_inner()).pop();
                self.ring = next.ok_or(RecvError::Lagged(0))?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_feed_starts_small_and_moves_without_losing_a_frame() {
        let mut feed = FeedSender::new(1024);
        let mut slow = feed.subscribe();
        let mut quick = feed.subscribe();
        for i in 0..(FIRST_RING as u32 - 2) {
            feed.send(Arc::new(i));
            assert_eq!(*quick.recv().await.unwrap(), i);
        }
        assert_eq!(feed.slots(), FIRST_RING, "nobody fell behind enough to move");
        for i in (FIRST_RING as u32 - 2)..1000 {
            feed.send(Arc::new(i));
            assert_eq!(*quick.try_recv().unwrap(), i);
        }
        assert_eq!(feed.slots(), 1024, "the slow receiver fell behind: the feed moved");
        // A receiver that came after the move reads the new ring.
        let mut late = feed.subscribe();
        feed.send(Arc::new(1000));
        assert_eq!(*late.recv().await.unwrap(), 1000);
        assert_eq!(*quick.recv().await.unwrap(), 1000);
        // The slow one gets every frame, in order, across the move.
        for i in 0..=1000 {
            assert_eq!(*slow.recv().await.unwrap(), i);
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn a_receiver_falls_behind_by_the_full_size_before_it_lags() {
        let mut feed = FeedSender::new(256);
        let mut slow = feed.subscribe();
        // Up to the full size behind (and what was left on the first ring): nothing lost.
        for i in 0..256 + FIRST_RING as u32 - 1 {
            feed.send(Arc::new(i));
        }
        for i in 0..256 + FIRST_RING as u32 - 1 {
            assert_eq!(*slow.try_recv().unwrap(), i);
        }
        // Beyond it on the full ring: lagged, as a connection too slow to follow.
        for i in 0..257 {
            feed.send(Arc::new(i));
        }
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(_))));
    }

    #[tokio::test]
    async fn a_small_feed_does_not_move() {
        let mut feed = FeedSender::new(16);
        let mut slow = feed.subscribe();
        for i in 0..17 {
            feed.send(Arc::new(i));
        }
        assert_eq!(feed.slots(), 16);
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(1))));
    }

    #[tokio::test]
    async fn the_end_of_the_feed_is_seen_after_its_frames() {
        let mut feed = FeedSender::new(1024);
        let mut rx = feed.subscribe();
        for i in 0..100 {
            feed.send(Arc::new(i));
        }
        drop(feed);
        for i in 0..100 {
            assert_eq!(*rx.recv().await.unwrap(), i);
        }
        assert!(matches!(rx.recv().await, Err(RecvError::Closed)));
    }
}
