//! A wake gate: something a task waits on is polled again only once it woke the task.
//!
//! A connection's task waits on several things at once (its outlet, its socket, its
//! keepalive beat) and is woken by any of them: many turns of its loop come from the outlet
//! (frames its room sent while the task was busy, or that the kernel did not take at once). Polling everything else again on each of those turns is not free:
//! a socket read that finds nothing still goes through the WebSocket codec and the reactor
//! (which takes a lock to register the waker again), and the keepalive beat's wait takes a lock
//! its slot's connections share. A [`Gate`] skips those polls: it hands the inner poll a waker
//! of its own, which raises a flag before it wakes the task, and polls the inner again only
//! once the flag is up (or after the inner was ready, as a stream may have more).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::task::ArcWake;

/// See the module's documentation. About a hundred bytes, half of them on the heap.
pub struct Gate {
    woken: Arc<Woken>,
    /// Raises `woken`'s flag, then wakes the registered task; the waker the inner is polled
    /// with.
    waker: Waker,
    /// The task registered in `woken`, to tell whether a poll comes from another.
    task: Option<Waker>,
}

/// What the inner's wake-up sets, and the task it wakes.
struct Woken {
    flag: AtomicBool,
    /// Locked when the inner wakes the task, and when another task polls: never per turn.
    task: Mutex<Option<Waker>>,
}

impl ArcWake for Woken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.flag.store(true, Ordering::Release);
        if let Some(task) = arc_self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A gate that lets the first poll through.
    pub fn new() -> Self {
        let woken = Arc::new(Woken { flag: AtomicBool::new(true), task: Mutex::new(None) });
        let waker = futures_util::task::waker(woken.clone());
        Gate { woken, waker, task: None }
    }

    /// Lets the next poll through, as if the inner had woken the gate: for a caller that
    /// changed what the inner waits for.
    pub fn open(&mut self) {
        self.woken.flag.store(true, Ordering::Release);
    }

    /// Polls `inner` with the gate's waker if it may have become ready since its last poll:
    /// it woke the gate, or it was ready then. Otherwise `Pending`, without polling it; the
    /// task of `cx` is woken when `inner` wakes the gate.
    pub fn poll<T>(&mut self, cx: &mut Context<'_>, inner: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        // Registered again only when another task polls (a connection's is always the same):
        // the waker's comparison is two pointers, registering is not free. Registered before
        // the flag is read, so that a wake-up in between is not lost.
        if !self.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            *self.woken.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
        }
        if !self.woken.flag.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = inner(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // Ready once, it may be again at once (a stream with more buffered): the next
            // call polls it.
            self.woken.flag.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::task::noop_waker_ref;

    use super::*;

    /// An inner that counts its polls and is ready when told, keeping the waker it was given.
    #[derive(Default)]
    struct Inner {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Inner {
        fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.swap(false, Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn wake(&self) {
            self.ready.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }
    }

    /// A task waker that counts its wake-ups.
    struct Task(AtomicUsize);

    impl ArcWake for Task {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_is_polled_again_only_once_it_woke_the_task() {
        let inner = Inner::default();
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut gate = Gate::new();

        assert!(gate.poll(&mut cx, |cx| inner.poll(cx)).is_pending());
        assert_eq!(inner.polls.load(Ordering::SeqCst), 1, "the first poll goes through");
        for _ in 0..10 {
            assert!(gate.poll(&mut cx, |cx| inner.poll(cx)).is_pending());
        }
        assert_eq!(inner.polls.load(Ordering::SeqCst), 1, "not polled again before it woke");

        inner.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "its wake-up wakes the task");
        assert!(gate.poll(&mut cx, |cx| inner.poll(cx)).is_ready());
        assert_eq!(inner.polls.load(Ordering::SeqCst), 2);
        // Ready once, polled at the next call, which may find more.
        assert!(gate.poll(&mut cx, |cx| inner.poll(cx)).is_pending());
        assert_eq!(inner.polls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_wake_up_reaches_the_task_that_polled_last() {
        let inner = Inner::default();
        let mut gate = Gate::new();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(gate.poll(&mut cx, |cx| inner.poll(cx)).is_pending());
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(task.clone());
        assert!(gate.poll(&mut Context::from_waker(&waker), |cx| inner.poll(cx)).is_pending());
        inner.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }
}
