//! The plain forwarder's twin on tokio (one current-thread runtime per
//! process, like erlmesh's default): no encryption, no checks, 64 KiB
//! buffers. Set beside `plainfwd` (blocking threads), it separates what the
//! async runtime costs per wake-up from what erlmesh itself costs.
//!
//! usage: asyncfwd LISTEN_ADDR=CONNECT_ADDR...
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for arg in std::env::args().skip(1) {
            let (listen, connect) = arg.split_once('=').expect("usage: asyncfwd LISTEN=CONNECT...");
            let listener = TcpListener::bind(listen)
                .await
                .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
            let connect = connect.to_string();
            tasks.push(tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = TcpStream::connect(&connect).await else {
                        continue;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::spawn(pump(ir, ow));
                    tokio::spawn(pump(or, iw));
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
