//! The accept loop every listener shares: a connection slot is taken before
//! `accept`, each connection runs as a tracked task, and the loop ends on
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Pause after an accept error (EMFILE and the like) so a full descriptor
/// table does not turn the loop into a busy spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `listener` until `cancel` fires, running `handle` for each
/// connection while holding one permit of `slots`. Each connection gets a
/// child token of `cancel`, so shutdown reaches it too.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(listener = what, error = %e, "set TCP_NODELAY failed");
        }
        let fut = handle(stream, addr, cancel.child_token());
        tracker.spawn(async move {
            fut.await;
            drop(permit);
        });
    }
    debug!(listener = what, "accept loop ended");
}
