//! A future polled only once something woke it: an open tunnel's task is
//! woken at every message either direction carries, and a `select!` polls
//! every branch at every wake-up, so a branch that is almost never ready
//! (the other direction, the end of the peer's certificate, a freeze for
//! an upgrade) would be polled at each message. [`OnWake`] gives its
//! future a waker of its own and polls it only after that waker fired (as
//! `FuturesUnordered` does for its futures).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// `F`, polled at its first poll, after its own waker fired, and when the
/// task polling it changes; otherwise pending without polling `F`.
pub struct OnWake<F> {
    inner: F,
    flag: Arc<Flag>,
    /// `flag` as a waker: what `inner` is polled with.
    waker: Waker,
    /// The task's waker `flag` wakes, as last registered.
    task: Option<Waker>,
}

/// Whether the inner future's waker fired since it was last polled, and
/// the task to wake when it does.
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the task is woken: the poll it leads to sees it.
        self.woken.store(true, Ordering::SeqCst);
        if let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F: Future + Unpin> OnWake<F> {
    pub fn new(inner: F) -> OnWake<F> {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        OnWake {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            // Another task (or the first poll): it is the one woken from
            // now on, and the inner future is polled for it.
            *this.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
            this.flag.woken.store(true, Ordering::SeqCst);
        }
        // Cleared before the poll: a wake-up during it is seen next time.
        if !this.flag.woken.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and is ready once `ready` is set,
    /// woken through the waker it was last polled with.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_only_when_its_own_waker_fired_and_then_ready() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let mut rare = OnWake::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        // A busy neighbour in the same task: woken (and the task polled)
        // 100 times; the rare future is polled once, at the first poll.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let sender = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
            }
            tx
        });
        let mut got = 0;
        while got < 100 {
            tokio::select! {
                _ = &mut rare => panic!("ready before it was"),
                m = rx.recv() => { m.unwrap(); got += 1; }
            }
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polled at wake-ups that were not its own"
        );
        // Its own waker fired: polled again, and ready.
        let _tx = sender.await.unwrap();
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut rare)
            .await
            .expect("woken, the future completes");
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_wake_up_during_its_poll_is_not_lost() {
        // The inner future fires its own waker while being polled (as a
        // future does when what it waits for happens meanwhile): the next
        // poll must poll it, though the task was not woken in between.
        struct WakesItself(u32);
        impl Future for WakesItself {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 += 1;
                if self.0 == 3 {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), OnWake::new(WakesItself(0)))
            .await
            .expect("a future that wakes itself completes under OnWake");
    }
}
