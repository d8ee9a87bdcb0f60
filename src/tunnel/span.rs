//! A tunnel's task in its span (`tunnel`: its direction, peer and nodes),
//! entered at each poll while the tunnel is set up and when it ends. A
//! tunnel's task is polled at every message it carries, and entering a
//! span costs at every poll (the subscriber's span stack, the filter's
//! lookup); a tunnel without a dist policy logs nothing while it carries
//! bytes, so [`Quiet::carry`] runs that stretch outside the span.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Span;

/// Whether a tunnel's task is carrying bytes outside its span.
#[derive(Clone)]
pub struct Quiet {
    span: Span,
    outside: Arc<AtomicBool>,
}

impl Quiet {
    /// Runs `fut` (a tunnel carrying bytes) outside the span when `quiet`
    /// (it logs nothing meanwhile; its first poll is still inside); inside
    /// it otherwise. After a quiet carry, what runs in the same poll is
    /// outside the span: log with [`Quiet::in_span`].
    pub async fn carry<T>(&self, quiet: bool, fut: impl Future<Output = T>) -> T {
        if !quiet {
            return fut.await;
        }
        self.outside.store(true, Ordering::Relaxed);
        let r = fut.await;
        self.outside.store(false, Ordering::Relaxed);
        r
    }

    /// Runs `f` in the span (what follows [`Quiet::carry`] in the same
    /// poll runs outside it).
    pub fn in_span<T>(&self, f: impl FnOnce() -> T) -> T {
        self.span.in_scope(f)
    }
}

/// `fut` built with a handle on its span, then polled in it but where it
/// says otherwise ([`Quiet::carry`]).
pub fn in_span<F: Future>(span: Span, fut: impl FnOnce(Quiet) -> F) -> InSpan<F> {
    let quiet = Quiet {
        span,
        outside: Arc::new(AtomicBool::new(false)),
    };
    InSpan {
        inner: Box::pin(fut(quiet.clone())),
        quiet,
    }
}

/// A future polled in its tunnel's span, or outside it while it carries
/// bytes quietly.
pub struct InSpan<F> {
    inner: Pin<Box<F>>,
    quiet: Quiet,
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.quiet.outside.load(Ordering::Relaxed) {
            return this.inner.as_mut().poll(cx);
        }
        let _entered = this.quiet.span.enter();
        this.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing::subscriber::with_default;

    /// An event's message and the span it was in (its name), or none.
    type Event = (String, Option<String>);

    /// Each event seen.
    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<Event>>>);

    impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::Layer<S>
        for Seen
    {
        fn on_event(&self, e: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
            let mut msg = String::new();
            struct V<'a>(&'a mut String);
            impl tracing::field::Visit for V<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        *self.0 = format!("{v:?}");
                    }
                }
            }
            e.record(&mut V(&mut msg));
            let span = ctx.lookup_current().map(|s| s.name().to_owned());
            self.0.lock().unwrap().push((msg, span));
        }
    }

    #[test]
    fn set_up_and_end_log_in_the_span_and_a_quiet_carry_runs_outside_it() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(in_span(tracing::info_span!("tunnel"), |q| async move {
                tracing::info!("set up");
                let carried = q
                    .carry(true, async {
                        tracing::info!("quiet");
                        tokio::task::yield_now().await;
                        tracing::info!("quiet after a yield");
                        7
                    })
                    .await;
                q.in_span(|| tracing::info!("ended {carried}"));
            }));
            rt.block_on(in_span(tracing::info_span!("tunnel"), |q| async move {
                q.carry(false, async {
                    tokio::task::yield_now().await;
                    tracing::info!("firewalled")
                })
                .await;
            }));
        });
        let tunnel = Some("tunnel".to_owned());
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![
                ("set up".to_owned(), tunnel.clone()),
                ("quiet".to_owned(), tunnel.clone()),
                ("quiet after a yield".to_owned(), None),
                ("ended 7".to_owned(), tunnel.clone()),
                ("firewalled".to_owned(), tunnel),
            ]
        );
    }
}
