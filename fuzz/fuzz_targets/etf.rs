//! The term decoder and the walk for pids, against each other: whatever
//! the bytes, neither panics, and when both read a whole term the walk
//! finds exactly the pids and references the decoder built, whatever the
//! cuts between reads. The atom cache header parser too.
#![no_main]
use erlmesh::firewall::etf::{AtomCache, Decoder, Term};
use erlmesh::firewall::walk::{Found, Walker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let _ = AtomCache::default().header(bytes);
    let Ok(term) = Decoder::new(bytes, &[]).term() else {
        return;
    };
    let mut decoded = Vec::new();
    term.visit(&mut |t| match t {
        Term::Pid(p) => decoded.push(format!("{p:?}")),
        Term::Ref(r) => decoded.push(format!("{r:?}")),
        _ => {}
    });
    let mut walked = Vec::new();
    let mut w = Walker::new(1, false);
    let step = (cut as usize).max(1);
    for chunk in bytes.chunks(step) {
        w.feed(chunk, &[], &mut |f| match f {
            Found::Pid(p) => walked.push(format!("{p:?}")),
            Found::Ref(r) => walked.push(format!("{r:?}")),
            Found::Port(_) | Found::Atom(_) | Found::Export(_) => {}
        });
    }
    if w.done() && !w.failed() {
        assert_eq!(decoded, walked, "the walk and the decoder disagree");
    }
});
