//! The pids and references in messages (and, when asked, the atoms written
//! out in them), found as the bytes go by: a message may be megabytes long and split across frames
//! (fragments) and reads, so it is walked token by token, holding only a
//! stack of counts and the few bytes of a token cut by a read. Binaries
//! are skipped, not read.

use super::etf::{Atom, Pid, Ref};
use std::sync::Arc;

/// The longest token held across reads: a pid or reference with the
/// longest atom (255 characters of 4 bytes) and its fixed fields.
const MAX_TOKEN: usize = 2048;
/// Open compound terms: deeper messages are not walked further (their
/// pids are then not given, which refuses, never allows, more).
const MAX_STACK: usize = 1 << 16;

/// Something the walk found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Pid(Pid),
    Ref(Ref),
    /// A port, by its node.
    Port(Atom),
    /// An atom written out (not an atom cache reference): the node creates
    /// it if it has not got it. Only from walks that report atoms.
    Atom(Atom),
    /// An export `fun M:F/A` (module, function, arity, each followed by a
    /// NUL): the node makes an export entry of it if it has not got one.
    /// Only from walks that report atoms.
    Export(Atom),
}

enum Tok {
    Leaf,
    /// An atom written out.
    Atom(Atom),
    /// A pid, reference or port, and its node's name when written out.
    Found(Found, Option<Atom>),
    /// A compound term with this many terms inside.
    Compound(u64),
    /// Opaque bytes that follow (a binary's contents).
    Skip(u64),
}

/// A walk through a sequence of terms.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Walker {
    stack: Vec<u64>,
    max_stack: usize,
    skip: u64,
    pending: Vec<u8>,
    versioned: bool,
    expect_version: bool,
    failed: bool,
    /// Report atoms written out ([`Found::Atom`]).
    #[serde(default)]
    atoms: bool,
    /// Pids, references and ports are reported from this byte on.
    #[serde(default)]
    from: u64,
    /// Bytes walked so far.
    #[serde(default)]
    pos: u64,
    /// Tokens left of an export being read (module, function, arity).
    #[serde(default)]
    export_left: u8,
    /// What was read of it.
    #[serde(default)]
    export_key: String,
}

/// A token that matters to an export's count.
enum ExportPart {
    /// EXPORT_EXT itself.
    Start,
    /// An atom's text or an integer's digits.
    Text(String),
}

/// What the token at the start of `b` (whole) is to an export's count.
fn export_part(b: &[u8], refs: &[Atom]) -> Option<ExportPart> {
    match b.first()? {
        113 => Some(ExportPart::Start),
        82 | 100 | 115 | 118 | 119 => atom(b, refs)
            .ok()
            .flatten()
            .map(|(a, _, _)| ExportPart::Text(a.to_string())),
        97 => Some(ExportPart::Text(b.get(1)?.to_string())),
        98 => Some(ExportPart::Text(
            i32::from_be_bytes(b.get(1..5)?.try_into().ok()?).to_string(),
        )),
        _ => None,
    }
}

impl Walker {
    /// A walk through `terms` terms, each with its version byte when
    /// `versioned` (pass-through frames).
    pub fn new(terms: u64, versioned: bool) -> Walker {
        Walker::bounded(terms, versioned, MAX_STACK)
    }

    /// A walk that gives up beyond `max_stack` open compound terms.
    pub fn bounded(terms: u64, versioned: bool, max_stack: usize) -> Walker {
        Walker {
            max_stack: max_stack.min(MAX_STACK),
            stack: if terms == 0 { Vec::new() } else { vec![terms] },
            skip: 0,
            pending: Vec::new(),
            versioned,
            expect_version: versioned,
            failed: false,
            atoms: false,
            from: 0,
            pos: 0,
            export_left: 0,
            export_key: String::new(),
        }
    }

    /// Reports every atom written out, and pids, references and ports only
    /// from byte `from` of what it walks on.
    pub fn atoms_and_from(mut self, from: u64) -> Walker {
        self.atoms = true;
        self.from = from;
        self
    }

    /// Every term walked, or the walk gave up.
    pub fn done(&self) -> bool {
        self.stack.is_empty() || self.failed
    }

    /// The walk gave up: bytes that are no term, or nested too deeply.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Walks the next bytes, telling `found` of each pid and reference.
    pub fn feed(&mut self, mut data: &[u8], refs: &[Atom], found: &mut impl FnMut(Found)) {
        while !data.is_empty() && !self.done() {
            if self.skip > 0 {
                let k = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= k as u64;
                self.pos += k as u64;
                data = &data[k..];
                if self.skip == 0 {
                    self.term_done();
                }
                continue;
            }
            if self.expect_version {
                if data[0] != super::etf::VERSION {
                    self.failed = true;
                    return;
                }
                self.expect_version = false;
                self.pos += 1;
                data = &data[1..];
                continue;
            }
            let start = self.pos - self.pending.len() as u64;
            let want = Want {
                atoms: self.atoms,
                finds: start >= self.from,
            };
            // An export's module, function and arity, for its count.
            let mut part = None;
            let (used, tok) = if self.pending.is_empty() {
                match token(data, refs, want) {
                    Ok(Some(v)) => {
                        if self.atoms && (self.export_left > 0 || data[0] == 113) {
                            part = export_part(&data[..v.0], refs);
                        }
                        v
                    }
                    Ok(None) => {
                        self.pending.extend_from_slice(data);
                        self.pos += data.len() as u64;
                        return;
                    }
                    Err(()) => {
                        self.failed = true;
                        return;
                    }
                }
            } else {
                let old = self.pending.len();
                let take = data.len().min(MAX_TOKEN.saturating_sub(old));
                self.pending.extend_from_slice(&data[..take]);
                match token(&self.pending, refs, want) {
                    Ok(Some((n, tok))) => {
                        if self.atoms && (self.export_left > 0 || self.pending[0] == 113) {
                            part = export_part(&self.pending[..n], refs);
                        }
                        self.pending.clear();
                        (n - old, tok)
                    }
                    Ok(None) if take == data.len() => {
                        self.pos += take as u64;
                        return;
                    }
                    _ => {
                        self.failed = true;
                        return;
                    }
                }
            };
            self.pos += used as u64;
            data = &data[used..];
            if self.atoms {
                self.export(part, &mut *found);
            }
            match tok {
                Tok::Leaf | Tok::Compound(0) | Tok::Skip(0) => self.term_done(),
                Tok::Atom(a) => {
                    if self.atoms {
                        found(Found::Atom(a));
                    }
                    self.term_done();
                }
                Tok::Found(f, node) => {
                    if let (true, Some(n)) = (self.atoms, node) {
                        found(Found::Atom(n));
                    }
                    if start >= self.from {
                        found(f);
                    }
                    self.term_done();
                }
                Tok::Compound(n) if self.stack.len() < self.max_stack => self.stack.push(n),
                Tok::Compound(_) => self.failed = true,
                Tok::Skip(n) => self.skip = n,
            }
        }
    }

    /// Follows an EXPORT_EXT (`fun M:F/A`): a node makes an export entry
    /// of each it decodes and never frees one (its table is full at
    /// 524 288 and halts the node), so a distinct one counts as an atom
    /// does ([`Found::Export`]). `part` is the token just walked, as
    /// [`export_part`] reads it.
    fn export(&mut self, part: Option<ExportPart>, found: &mut impl FnMut(Found)) {
        match (self.export_left, part) {
            (0, Some(ExportPart::Start)) => {
                self.export_left = 3;
                self.export_key.clear();
            }
            (0, _) => {}
            (n, Some(ExportPart::Text(t))) => {
                self.export_key.push_str(&t);
                self.export_key.push('\u{0}');
                self.export_left = n - 1;
                if n == 1 {
                    found(Found::Export(Arc::from(std::mem::take(&mut self.export_key).as_str())));
                }
            }
            // Not an export the node takes (it refuses the message).
            _ => self.export_left = 0,
        }
    }

    fn term_done(&mut self) {
        loop {
            let outermost = self.stack.len() == 1;
            let Some(top) = self.stack.last_mut() else {
                break;
            };
            *top -= 1;
            if *top == 0 {
                self.stack.pop();
                continue;
            }
            if outermost {
                self.expect_version = self.versioned;
            }
            break;
        }
    }
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |v, x| (v << 8) | *x as u64)
}

/// An atom at the start of `b`, unbuilt: an atom cache entry, or text
/// written out.
enum AtomAt<'a> {
    Cached(&'a Atom),
    Written(std::borrow::Cow<'a, str>),
}

/// An atom at the start of `b` and its length; None when cut short.
fn atom_at<'a>(b: &'a [u8], refs: &'a [Atom]) -> Result<Option<(AtomAt<'a>, usize)>, ()> {
    let (start, n) = match b.first() {
        None => return Ok(None),
        Some(82) => {
            return match b.get(1) {
                None => Ok(None),
                Some(i) => refs.get(*i as usize).map(|a| Some((AtomAt::Cached(a), 2))).ok_or(()),
            }
        }
        Some(100 | 118) if b.len() >= 3 => (3, be(&b[1..3]) as usize),
        Some(115 | 119) if b.len() >= 2 => (2, b[1] as usize),
        Some(100 | 118 | 115 | 119) => return Ok(None),
        Some(_) => return Err(()),
    };
    let latin1 = matches!(b[0], 100 | 115);
    match b.get(start..start + n) {
        None => Ok(None),
        Some(t) => super::etf::atom_text(t, latin1)
            .map(|s| Some((AtomAt::Written(s), start + n)))
            .ok_or(()),
    }
}

/// An atom at the start of `b`: its text, its length and whether it is
/// written out (not a cache reference); None when cut short.
fn atom(b: &[u8], refs: &[Atom]) -> Result<Option<(Atom, usize, bool)>, ()> {
    Ok(atom_at(b, refs)?.map(|(a, n)| match a {
        AtomAt::Cached(a) => (a.clone(), n, false),
        AtomAt::Written(t) => (Arc::from(&*t), n, true),
    }))
}

/// An atom at the start of `b`, not built: its length and whether it is
/// written out; None when cut short.
fn atom_len(b: &[u8], refs: &[Atom]) -> Result<Option<(usize, bool)>, ()> {
    Ok(atom_at(b, refs)?.map(|(a, n)| (n, matches!(a, AtomAt::Written(_)))))
}

/// A pid, reference or port not wanted for itself: its node atom at
/// `at`, `fixed` bytes after it; reported only as the atom it writes out,
/// when atoms are wanted.
fn skim(b: &[u8], at: usize, fixed: usize, refs: &[Atom], atoms: bool) -> Result<Option<(usize, Tok)>, ()> {
    let Some((n, out)) = atom_len(&b[at..], refs)? else {
        return Ok(None);
    };
    let len = at + n + fixed;
    if b.len() < len {
        return Ok(None);
    }
    if atoms && out {
        if let Some((a, _, _)) = atom(&b[at..], refs)? {
            return Ok(Some((len, Tok::Atom(a))));
        }
    }
    Ok(Some((len, Tok::Leaf)))
}

/// What a token is wanted for: the atoms written out in it, its pids,
/// references and ports.
#[derive(Clone, Copy)]
struct Want {
    atoms: bool,
    finds: bool,
}

/// One token at the start of `b`: its length and what it is (only what is
/// `want`ed is built); None when cut short; Err when not a term of the
/// distribution.
fn token(b: &[u8], refs: &[Atom], want: Want) -> Result<Option<(usize, Tok)>, ()> {
    let atoms = want.atoms;
    macro_rules! need {
        ($n:expr) => {
            if b.len() < $n {
                return Ok(None);
            }
        };
    }
    let fixed = |n: usize| -> Result<Option<(usize, Tok)>, ()> { Ok((b.len() >= n).then_some((n, Tok::Leaf))) };
    match b[0] {
        97 => fixed(2),
        98 => fixed(5),
        70 => fixed(9),
        99 => fixed(32),
        106 => fixed(1),
        82 => Ok(atom(b, refs)?.map(|(_, n, _)| (n, Tok::Leaf))),
        100 | 115 | 118 | 119 if atoms => Ok(atom(b, refs)?.map(|(a, n, _)| (n, Tok::Atom(a)))),
        100 | 115 | 118 | 119 => Ok(atom_len(b, refs)?.map(|(n, _)| (n, Tok::Leaf))),
        104 => {
            need!(2);
            Ok(Some((2, Tok::Compound(b[1] as u64))))
        }
        105 => {
            need!(5);
            Ok(Some((5, Tok::Compound(be(&b[1..5])))))
        }
        108 => {
            need!(5);
            Ok(Some((5, Tok::Compound(be(&b[1..5]) + 1))))
        }
        116 => {
            need!(5);
            Ok(Some((5, Tok::Compound(2 * be(&b[1..5])))))
        }
        113 => Ok(Some((1, Tok::Compound(3)))),
        // RECORD_EXT (OTP 29): field count, flags, then module, name, the
        // field names and the values as terms.
        67 => {
            need!(6);
            Ok(Some((6, Tok::Compound(2 + 2 * be(&b[1..5])))))
        }
        109 => {
            need!(5);
            Ok(Some((5, Tok::Skip(be(&b[1..5])))))
        }
        77 => {
            need!(6);
            Ok(Some((6, Tok::Skip(be(&b[1..5])))))
        }
        107 => {
            need!(3);
            Ok(Some((3, Tok::Skip(be(&b[1..3])))))
        }
        110 => {
            need!(3);
            Ok(Some((3, Tok::Skip(b[1] as u64))))
        }
        111 => {
            need!(6);
            Ok(Some((6, Tok::Skip(be(&b[1..5])))))
        }
        // NEW_FUN_EXT: size, arity, uniq, index, free count, then module,
        // old index, old uniq, pid and the free variables as terms.
        112 => {
            need!(30);
            Ok(Some((30, Tok::Compound(4 + be(&b[26..30])))))
        }
        // FUN_EXT: free count, then pid, module, index, uniq, free variables.
        117 => {
            need!(5);
            Ok(Some((5, Tok::Compound(4 + be(&b[1..5])))))
        }
        88 | 103 if !want.finds => skim(b, 1, if b[0] == 88 { 12 } else { 9 }, refs, atoms),
        89 | 102 | 120 if !want.finds => skim(
            b,
            1,
            [8, 5, 12][[89, 102, 120].iter().position(|t| *t == b[0]).unwrap_or(0)],
            refs,
            atoms,
        ),
        90 | 114 if !want.finds => {
            need!(3);
            let words = be(&b[1..3]) as usize;
            if words == 0 || words > 5 {
                return Err(());
            }
            skim(b, 3, if b[0] == 90 { 4 } else { 1 } + 4 * words, refs, atoms)
        }
        101 if !want.finds => skim(b, 1, 5, refs, atoms),
        88 | 103 => {
            let Some((node, n, out)) = atom(&b[1..], refs)? else {
                return Ok(None);
            };
            let len = 1 + n + if b[0] == 88 { 12 } else { 9 };
            need!(len);
            let f = &b[1 + n..];
            let creation = if b[0] == 88 { be(&f[8..12]) } else { f[8] as u64 };
            let pid = Pid {
                node,
                id: be(&f[0..4]) as u32,
                serial: be(&f[4..8]) as u32,
                creation: creation as u32,
            };
            let written = out.then(|| pid.node.clone());
            Ok(Some((len, Tok::Found(Found::Pid(pid), written))))
        }
        89 | 102 | 120 => {
            let Some((node, n, out)) = atom(&b[1..], refs)? else {
                return Ok(None);
            };
            let len = 1 + n + [8, 5, 12][[89, 102, 120].iter().position(|t| *t == b[0]).unwrap_or(0)];
            need!(len);
            let written = out.then(|| node.clone());
            Ok(Some((len, Tok::Found(Found::Port(node), written))))
        }
        90 | 114 => {
            need!(3);
            let words = be(&b[1..3]) as usize;
            if words == 0 || words > 5 {
                return Err(());
            }
            let Some((node, n, out)) = atom(&b[3..], refs)? else {
                return Ok(None);
            };
            let cr = if b[0] == 90 { 4 } else { 1 };
            let len = 3 + n + cr + 4 * words;
            need!(len);
            let f = &b[3 + n..];
            let r = Ref {
                node,
                creation: be(&f[..cr]) as u32,
                ids: (0..words).map(|i| be(&f[cr + 4 * i..cr + 4 * i + 4]) as u32).collect(),
            };
            let written = out.then(|| r.node.clone());
            Ok(Some((len, Tok::Found(Found::Ref(r), written))))
        }
        101 => {
            let Some((node, n, out)) = atom(&b[1..], refs)? else {
                return Ok(None);
            };
            let len = 1 + n + 5;
            need!(len);
            let f = &b[1 + n..];
            let r = Ref {
                node,
                creation: f[4] as u32,
                ids: vec![be(&f[..4]) as u32],
            };
            let written = out.then(|| r.node.clone());
            Ok(Some((len, Tok::Found(Found::Ref(r), written))))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::etf::{encode, Term};

    fn sample() -> (Vec<u8>, Vec<Found>) {
        let pid = Pid {
            node: Arc::from("b@hostb"),
            id: 90,
            serial: 0,
            creation: 3,
        };
        let r = Ref {
            node: Arc::from("b@hostb"),
            creation: 3,
            ids: vec![9, 8, 7],
        };
        let mut b = Vec::new();
        // {[<pid>, ref], <<1 MiB of zeros>>, "abc"} written by hand around
        // encoded pieces.
        b.extend([104, 3, 108, 0, 0, 0, 2]);
        encode(&Term::Pid(pid.clone()), &mut b);
        encode(&Term::Ref(r.clone()), &mut b);
        b.push(106);
        b.extend([109, 0, 0x10, 0, 0]);
        b.extend(std::iter::repeat(0).take(0x10_0000));
        b.extend([107, 0, 3, b'a', b'b', b'c']);
        (b, vec![Found::Pid(pid), Found::Ref(r)])
    }

    #[test]
    fn finds_pids_and_refs_whatever_the_cuts() {
        let (b, want) = sample();
        for step in [1usize, 2, 3, 7, 1000, 65536, b.len()] {
            let mut w = Walker::new(1, false);
            let mut got = Vec::new();
            for chunk in b.chunks(step) {
                w.feed(chunk, &[], &mut |f| got.push(f));
            }
            assert_eq!(got, want, "step {step}");
            assert!(w.done(), "step {step}");
        }
    }

    #[test]
    fn a_record_is_walked_into() {
        // #r{a = <pid>} of module m, as RECORD_EXT: 67, 1 field, flags 0.
        let pid = Pid {
            node: Arc::from("b@hostb"),
            id: 4,
            serial: 0,
            creation: 3,
        };
        let mut b = vec![67, 0, 0, 0, 1, 0, 119, 1, b'm', 119, 1, b'r', 119, 1, b'a'];
        encode(&Term::Pid(pid.clone()), &mut b);
        let mut w = Walker::new(1, false);
        let mut got = Vec::new();
        w.feed(&b, &[], &mut |f| got.push(f));
        assert!(w.done());
        assert_eq!(got, vec![Found::Pid(pid.clone())]);
        let t = crate::firewall::etf::Decoder::new(&b, &[]).term().unwrap();
        assert_eq!(t, Term::Record(vec![Term::Pid(pid)]));
    }

    #[test]
    fn garbage_stops_the_walk_without_finding_anything() {
        let mut w = Walker::new(1, false);
        let mut n = 0;
        w.feed(&[104, 2, 200, 1, 2, 3], &[], &mut |_| n += 1);
        assert!(w.done());
        assert_eq!(n, 0);
    }
}
