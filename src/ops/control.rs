//! The control endpoint: a minimal HTTP/1.0 responder serving `/metrics`
//! (Prometheus text) and `/status` (what `erlmesh status` prints), on a
//! unix socket in state_dir and, when configured, a loopback TCP port.

use crate::ops::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// The control socket's file name under state_dir.
pub const SOCKET_FILE: &str = "erlmesh.sock";
/// A request line and headers larger than this are refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one HTTP request on `s`; `upgrades`: the control socket, where
/// `POST /upgrade` starts an upgrade (not the loopback metrics port).
pub async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    metrics: Arc<Metrics>,
    host: String,
    upgrades: bool,
) {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 || buf.len() + n > MAX_REQUEST {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, read).await, Ok(Ok(()))) {
        debug!("control client sent no request in time");
        return;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        ("GET", "/status") => ("200 OK", "text/plain; charset=utf-8", metrics.status(&host)),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /status\n".to_owned()),
        ("POST", "/upgrade") if upgrades => match crate::upgrade::give::upgrade().await {
            Ok(done) => ("200 OK", "text/plain", format!("{done}\n")),
            Err(why) => ("500 Upgrade Refused", "text/plain", format!("{why}\n")),
        },
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.0 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Posts to `path` on a running erlmesh's control socket, waiting up to
/// `wait` for the answer; returns whether it succeeded (2xx) and the body.
pub fn post(socket: &std::path::Path, path: &str, wait: Duration) -> std::io::Result<(bool, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(format!("POST {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let ok = out.starts_with("HTTP/1.0 2");
    Ok((ok, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(out)))
}

/// Asks a running erlmesh for `path` over its control socket; returns the body.
pub fn request(socket: &std::path::Path, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(out))
}
