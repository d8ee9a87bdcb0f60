//! The distribution firewall, both directions, on arbitrary frames after
//! the handshake, cut at arbitrary places: an error ends a tunnel, a panic
//! (or a broken held-bytes budget, checked in debug builds) is the bug.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    erlmesh::firewall::filter::fuzz_inbound(bytes, cut as usize);
});
