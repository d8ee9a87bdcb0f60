//! The distribution handshake's first frames as a local node sends them:
//! send_name (old and new), and the status frame.
#![no_main]
use erlmesh::tunnel::dist_handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, used)) = dist_handshake::parse_send_name(data) {
        assert!(used <= data.len());
    }
    let _ = dist_handshake::named_status(data);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    rt.block_on(async {
        let _ = dist_handshake::read_send_name(&mut &data[..]).await;
    });
});
