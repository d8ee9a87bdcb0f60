//! The record layer: arbitrary bytes as TLS 1.3 records under fixed keys
//! (headers, lengths, tags, inner types, key updates), and records sealed
//! from arbitrary contents open to those contents.
#![no_main]
use erlmesh::tunnel::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = record::fuzz_open(data);
    let parts: Vec<&[u8]> = data.chunks(1 + data.first().copied().unwrap_or(0) as usize * 64).collect();
    let sealed = record::fuzz_seal(&parts);
    let opened = record::fuzz_open(&sealed);
    let want: Vec<Vec<u8>> = parts.iter().filter(|p| !p.is_empty()).map(|p| p.to_vec()).collect();
    // fuzz_open reads one receive buffer's worth: what fits opens whole.
    assert!(want.starts_with(&opened), "sealed records open to what was sealed");
    if sealed.len() <= 16 * 1024 {
        assert_eq!(opened, want, "sealed records open to what was sealed");
    }
});
