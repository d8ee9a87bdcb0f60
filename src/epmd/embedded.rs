//! The embedded EPMD for this host's nodes, on 127.0.0.1:epmd_port, and the
//! request reader it shares with the peer faces.

use super::codec::{self, Request};
use super::registry::{Registration, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long a client may take to send its request after connecting. Nodes
/// send at once; this only frees slots held by silent clients.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::wire::ReadError;

/// Reads exactly one length-prefixed request, never more bytes than it.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, ReadError> {
    let work = async {
        let mut prefix = [0u8; 2];
        crate::wire::read_exact(r, &mut prefix).await?;
        let len = codec::request_len(prefix)?;
        let mut body = vec![0u8; len];
        crate::wire::read_exact(r, &mut body).await?;
        Ok(codec::parse_body(&body)?)
    };
    timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| ReadError::Timeout(REQUEST_TIMEOUT))?
}

/// Writes a reply and closes the write side, as epmd does: after PORT2_RESP
/// a node waits for the close, with no timeout of its own.
pub use crate::tunnel::preface::answer_and_close as reply_and_close;

/// Serves one connection to the embedded EPMD.
pub async fn handle(
    mut stream: TcpStream,
    from: SocketAddr,
    registry: Arc<Registry>,
    epmd_port: u16,
    metrics: Arc<crate::ops::metrics::Metrics>,
    exposure: crate::ops::exposure::ExposureChecker,
    cancel: CancellationToken,
) {
    let span = tracing::debug_span!("epmd", %from);
    async move {
        let req = match read_request(&mut stream).await {
            Ok(req) => req,
            Err(ReadError::Closed) => return,
            Err(e) => {
                warn!(error = %e, "bad request on the local EPMD port; connection closed");
                return;
            }
        };
        debug!(request = req.kind(), "request");
        metrics.epmd_request(req.kind());
        match req {
            Request::Alive2(info) => register(stream, info, &registry, &exposure, &cancel).await,
            Request::PortPlease2 { name } => {
                let reply = match registry.lookup(&name) {
                    Some(n) => codec::encode_port2_resp(&n, n.port),
                    None => codec::encode_port2_not_found(),
                };
                reply_and_close(&mut stream, &reply).await;
            }
            Request::Names => {
                reply_and_close(&mut stream, &codec::encode_names(epmd_port, &registry.names())).await;
            }
            Request::Dump => {
                let mut reply = (epmd_port as u32).to_be_bytes().to_vec();
                for (name, port) in registry.names() {
                    reply.extend_from_slice(format!("active name     <{name}> at port {port}\n").as_bytes());
                }
                reply_and_close(&mut stream, &reply).await;
            }
            Request::Kill => {
                // A careful epmd refuses to die while nodes are registered;
                // the proxy refuses always: it is stopped by its service manager.
                warn!("refused an EPMD KILL request (stop erlmesh with SIGTERM instead)");
                reply_and_close(&mut stream, b"NO").await;
            }
            Request::Stop { .. } => {
                warn!("refused an EPMD STOP request");
                reply_and_close(&mut stream, b"STOP_DISABLED").await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Registers a node for as long as its connection stays open (as epmd
/// does), answering in the form it asked in.
async fn register(
    mut stream: TcpStream,
    info: codec::NodeInfo,
    registry: &Arc<Registry>,
    exposure: &crate::ops::exposure::ExposureChecker,
    cancel: &CancellationToken,
) {
    let v6 = info.high >= 6;
    let name = info.name.clone();
    let port = info.port;
    let Some(reg) = registry.register(info) else {
        warn!(node = %name, "registration refused: name already registered");
        reply_and_close(&mut stream, &codec::encode_alive2_refusal(v6)).await;
        return;
    };
    let reply = if v6 {
        codec::encode_alive2_x_resp(0, reg.creation)
    } else {
        // 16-bit creations cycle 1..3, as old epmds handed out.
        codec::encode_alive2_resp(0, (reg.creation % 3 + 1) as u16)
    };
    if let Err(e) = stream.write_all(&reply).await {
        debug!(node = %name, error = %e, "node left during registration");
        return;
    }
    info!(node = %name, port, "node registered");
    exposure.check(&name, port);
    hold(stream, reg, cancel).await;
}

/// Keeps a registration for as long as its connection stays open (as
/// epmd does); an upgrade hands the connection and the registration over.
pub async fn hold(mut stream: TcpStream, reg: Registration, cancel: &CancellationToken) {
    let _participant = crate::upgrade::handoff().participant();
    let mut phase = crate::upgrade::handoff().watch();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = crate::upgrade::frozen(&mut phase) => {
                let report = match crate::upgrade::dup(&stream) {
                    Ok(fd) => crate::upgrade::Report::Registration {
                        info: reg.info(),
                        creation: reg.creation,
                        fd,
                    },
                    Err(e) => crate::upgrade::Report::Refused(format!("a registration: {e}")),
                };
                if let crate::upgrade::Outcome::Handed = crate::upgrade::handoff().report(report).await {
                    std::future::pending::<()>().await;
                }
            }
            r = stream.read(&mut sink) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    let name = reg.name().to_owned();
    drop(reg);
    info!(node = %name, "node unregistered");
}
