//! The tunnel preface and the answers a peer erlmesh sends (port, names,
//! hosts): a value or an error, never a panic; what decodes re-encodes to
//! what decodes the same.
#![no_main]
use erlmesh::tunnel::preface::{self, Preface};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((p, _)) = Preface::decode(data) {
        let again = Preface::decode(&p.encode()).expect("an encoded preface decodes");
        assert_eq!(format!("{:?}", again.0), format!("{p:?}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    rt.block_on(async {
        let _ = preface::read_preface(&mut &data[..]).await;
        let _ = preface::read_port_answer(&mut &data[..], "n").await;
        let _ = preface::read_real_port_answer(&mut &data[..], "n").await;
        let _ = preface::read_names_answer(&mut &data[..]).await;
        let _ = preface::read_hosts_answer(&mut &data[..]).await;
    });
});
