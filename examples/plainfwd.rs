//! A plain TCP forwarder for the benchmark's `plain` setup: no encryption,
//! no checks, blocking threads and 64 KiB buffers. It stands where erlmesh
//! stands (one per host) to measure what any proxy-per-host design costs
//! on a machine before any cryptography: the floor erlmesh is held to.
//!
//! usage: plainfwd LISTEN_ADDR=CONNECT_ADDR...
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn main() {
    let mut handles = Vec::new();
    for arg in std::env::args().skip(1) {
        let (listen, connect) = arg.split_once('=').expect("usage: plainfwd LISTEN=CONNECT...");
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let connect = connect.to_string();
        handles.push(thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(&connect) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (i2, o2) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                thread::spawn(move || pump(inbound, outbound));
                thread::spawn(move || pump(o2, i2));
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}
