//! The external term format as the distribution carries it (OTP's
//! `erl_ext_dist.md`): the distribution header with its atom cache, a
//! bounded decoder for the terms a firewall must read (control messages,
//! and the messages sent to the cluster machinery), and an encoder for the
//! few terms erlmesh answers with.
//!
//! Every length a peer sends is checked against the bytes present before
//! anything is allocated; a decoder that runs out of bytes says so
//! ([`DecodeError::Truncated`]), so that a caller can wait for more.

use std::sync::Arc;

/// An atom's text. Atoms arrive inline or through the atom cache.
pub type Atom = Arc<str>;

/// A process identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pid {
    pub node: Atom,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
}

/// A reference (also a process alias).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ref {
    pub node: Atom,
    pub creation: u32,
    pub ids: Vec<u32>,
}

/// A fun: `fun M:F/A` (export) or a closure of module `M`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fun {
    pub module: Atom,
    pub export: bool,
    pub arity: u32,
    /// A closure's creator pid, index, uniq and free variables: pids and
    /// references travel in them as anywhere else.
    pub env: Vec<Term>,
}

/// A decoded term. Numbers, binaries and strings keep only what a rule
/// looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Int(i64),
    /// An integer beyond 64 bits.
    Big,
    Float,
    Atom(Atom),
    Pid(Pid),
    /// A port, by its node.
    Port(Atom),
    Ref(Ref),
    Tuple(Vec<Term>),
    /// Elements and tail (`Nil` for a proper list).
    List(Vec<Term>, Box<Term>),
    Nil,
    /// STRING_EXT: a list of bytes.
    Bytes(Vec<u8>),
    /// A binary (or bitstring) of this many bytes, and a hash of its
    /// bytes when there are at most [`HASHED_BINARY`] of them (else 0):
    /// two small binaries are one term only if their hashes match.
    Binary(usize, u128),
    Map(Vec<(Term, Term)>),
    Fun(Fun),
    /// A native record (OTP 29's RECORD_EXT): its values (visited, for
    /// the pids in them), not its module, name or fields: never a tuple
    /// to the rules (no kernel protocol carries one), and a group or a
    /// name holding one is refused, as one holding a float is.
    Record(Vec<Term>),
}

impl Term {
    /// Its size, roughly as the node holds it: atoms, binaries and strings
    /// by their bytes, 8 for any other term.
    pub fn weight(&self) -> usize {
        let mut w = 0usize;
        self.visit(&mut |t| {
            w = w.saturating_add(match t {
                Term::Atom(a) => a.len(),
                Term::Binary(n, _) => *n,
                Term::Bytes(b) => b.len(),
                _ => 8,
            })
        });
        w
    }

    pub fn atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Term::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// A tuple's first element, when it is an atom: how OTP's processes
    /// tag their messages.
    pub fn tag(&self) -> Option<&str> {
        self.tuple().and_then(|t| t.first()).and_then(Term::atom)
    }

    /// Calls `f` on this term and every term inside it.
    /// The term as the node compares it: a string (STRING_EXT) as the
    /// list of its bytes, a list's tail that is a list joined to it, a
    /// map's pairs in one order, a reference without trailing zero words. Two encodings of one term are one
    /// canonical form (keys of pg groups and global names).
    pub fn canonical(&self) -> Term {
        let t = self;
        match t {
            Term::Bytes(b) if b.is_empty() => Term::Nil,
            Term::Bytes(b) => Term::List(
                b.iter().map(|x| Term::Int(i64::from(*x))).collect(),
                Box::new(Term::Nil),
            ),
            Term::List(v, tail) if v.is_empty() => tail.canonical(),
            Term::List(v, tail) => {
                // [a | "bc"] is [a, b, c]: a tail that is a list joins the elements.
                let mut items: Vec<Term> = v.iter().map(Term::canonical).collect();
                match tail.canonical() {
                    Term::List(more, end) => {
                        items.extend(more);
                        Term::List(items, end)
                    }
                    end => Term::List(items, Box::new(end)),
                }
            }
            Term::Tuple(v) => Term::Tuple(v.iter().map(Term::canonical).collect()),
            // A reference with trailing zero words is the reference
            // without them (OTP 25 and 29: `=:=`, one map key).
            Term::Ref(r) => {
                let mut r = r.clone();
                while r.ids.len() > 1 && r.ids.last() == Some(&0) {
                    r.ids.pop();
                }
                Term::Ref(r)
            }
            Term::Map(kv) => {
                let mut kv: Vec<(Term, Term)> = kv.iter().map(|(k, v)| (k.canonical(), v.canonical())).collect();
                kv.sort_by_key(|(k, _)| format!("{k:?}"));
                Term::Map(kv)
            }
            t => t.clone(),
        }
    }

    /// Whether this term can be a key erlmesh counts by (a pg group, a
    /// global name, a lock id): kept whole by the decoder (no float,
    /// bignum, large binary, fun, port or native record: erlmesh would
    /// take two such terms for one), and in the one encoding OTP's tables
    /// key it by. A reference with trailing zero words is `=:=` to the
    /// reference without them, and so one term to a small map or a list,
    /// but ETS tables and large maps hash it apart (OTP 25: one word
    /// against two; 27 and 29: every word count), so that a group, name
    /// or lock id sent in two encodings is one to erlmesh's count and two
    /// rows in b's tables: such a reference is refused in keys (the
    /// twentieth review; OTP 29's process aliases end in a zero word). So
    /// is a reference of one word: OTP 25's ETS hashes it with bytes that
    /// are not its own (of 10 000 such keys inserted, 996 were not found
    /// by the keys read back from the table), so that pg could not remove
    /// such groups from its table. The references nodes make have three
    /// words or more.
    pub fn keyable(&self) -> bool {
        let mut ok = true;
        self.visit(&mut |t| {
            ok &= match t {
                Term::Float | Term::Big | Term::Binary(_, 0) | Term::Fun(_) | Term::Port(_) | Term::Record(_) => false,
                Term::Ref(r) => r.ids.len() > 1 && r.ids.last() != Some(&0),
                _ => true,
            }
        });
        ok
    }

    pub fn visit(&self, f: &mut impl FnMut(&Term)) {
        f(self);
        match self {
            Term::Tuple(v) | Term::Record(v) => v.iter().for_each(|t| t.visit(f)),
            Term::List(v, tail) => {
                v.iter().for_each(|t| t.visit(f));
                tail.visit(f);
            }
            Term::Map(kv) => kv.iter().for_each(|(k, v)| {
                k.visit(f);
                v.visit(f);
            }),
            Term::Fun(fun) => fun.env.iter().for_each(|t| t.visit(f)),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed.
    Truncated,
    /// The bytes are not a term of the distribution (the cause).
    Malformed(&'static str),
    /// A term beyond what one decode builds (too many terms, nested too
    /// deeply): well formed, maybe, but walked rather than decoded.
    TooLarge(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated term"),
            DecodeError::Malformed(why) | DecodeError::TooLarge(why) => f.write_str(why),
        }
    }
}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// Nesting depth a decoded term may reach: the control messages and the
/// machinery's messages nest a handful of levels.
const MAX_DEPTH: usize = 64;
/// Terms one decode may produce, whatever the bytes claim: at most about
/// 10 MiB of decoded terms (a term is 40 bytes).
pub const MAX_TERMS: usize = 1 << 18;
/// Words a reference may carry (DFLAG_V4_NC allows five).
const MAX_REF_WORDS: usize = 5;

/// The version byte that starts a term outside a distribution header.
pub const VERSION: u8 = 131;
/// Distribution header tags.
pub const DIST_HEADER: u8 = 68;
pub const DIST_FRAG_HEADER: u8 = 69;
pub const DIST_FRAG_CONT: u8 = 70;
/// A frame without header (terms carry their version byte).
pub const PASS_THROUGH: u8 = 112;

/// A reader over bytes that all arrived, with the atoms the header named.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pub pos: usize,
    refs: &'a [Atom],
    terms: usize,
    max_terms: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], refs: &'a [Atom]) -> Decoder<'a> {
        Decoder::limited(buf, refs, MAX_TERMS)
    }

    /// A decoder that builds at most `max_terms` terms (then
    /// [`DecodeError::TooLarge`]).
    pub fn limited(buf: &'a [u8], refs: &'a [Atom], max_terms: usize) -> Decoder<'a> {
        Decoder {
            buf,
            pos: 0,
            refs,
            terms: 0,
            max_terms: max_terms.min(MAX_TERMS),
        }
    }

    /// The atoms the header named.
    pub fn refs(&self) -> &'a [Atom] {
        self.refs
    }

    /// Bytes after the current position.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Malformed("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips `n` bytes that the term says follow, checking they are there.
    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    /// The version byte, for terms outside a distribution header.
    pub fn version(&mut self) -> Result<()> {
        match self.u8()? {
            VERSION => Ok(()),
            80 => Err(DecodeError::Malformed("compressed term in a distribution message")),
            _ => Err(DecodeError::Malformed("term without the version byte")),
        }
    }

    /// One term.
    pub fn term(&mut self) -> Result<Term> {
        self.term_at(0)
    }

    /// An atom where the format requires one (a pid's node, a module).
    pub fn atom(&mut self) -> Result<Atom> {
        match self.term_at(MAX_DEPTH)? {
            Term::Atom(a) => Ok(a),
            _ => Err(DecodeError::Malformed("expected an atom")),
        }
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.terms = self.terms.saturating_add(n);
        if self.terms > self.max_terms {
            return Err(DecodeError::TooLarge("term too large to decode"));
        }
        // Each term takes at least one byte: a count beyond the bytes left
        // is either truncated or a lie; wait for the bytes either way.
        if n > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }

    fn text(&mut self, n: usize, latin1: bool) -> Result<Atom> {
        let b = self.take(n)?;
        atom_text(b, latin1)
            .map(|t| Arc::from(&*t))
            .ok_or(DecodeError::Malformed("atom is not UTF-8"))
    }

    fn term_at(&mut self, depth: usize) -> Result<Term> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooLarge("term nested too deeply to decode"));
        }
        self.count(1)?;
        let tag = self.u8()?;
        Ok(match tag {
            97 => Term::Int(self.u8()? as i64),
            98 => Term::Int(self.u32()? as i32 as i64),
            70 => {
                self.skip(8)?;
                Term::Float
            }
            99 => {
                self.skip(31)?;
                Term::Float
            }
            110 => {
                let n = self.u8()? as usize;
                self.big(n)?
            }
            111 => {
                let n = self.u32()? as usize;
                self.big(n)?
            }
            82 => {
                let i = self.u8()? as usize;
                Term::Atom(
                    self.refs
                        .get(i)
                        .cloned()
                        .ok_or(DecodeError::Malformed("unknown atom cache reference"))?,
                )
            }
            100 | 118 => {
                let n = self.u16()? as usize;
                Term::Atom(self.text(n, tag == 100)?)
            }
            115 | 119 => {
                let n = self.u8()? as usize;
                Term::Atom(self.text(n, tag == 115)?)
            }
            88 | 103 => {
                let node = self.atom()?;
                let id = self.u32()?;
                let serial = self.u32()?;
                let creation = if tag == 88 { self.u32()? } else { self.u8()? as u32 };
                Term::Pid(Pid {
                    node,
                    id,
                    serial,
                    creation,
                })
            }
            89 | 102 | 120 => {
                let node = self.atom()?;
                self.skip(match tag {
                    89 => 8,
                    102 => 5,
                    _ => 12,
                })?;
                Term::Port(node)
            }
            90 | 114 => {
                let n = self.u16()? as usize;
                if n == 0 || n > MAX_REF_WORDS {
                    return Err(DecodeError::Malformed("reference of an impossible size"));
                }
                let node = self.atom()?;
                let creation = if tag == 90 { self.u32()? } else { self.u8()? as u32 };
                let ids = (0..n).map(|_| self.u32()).collect::<Result<Vec<_>>>()?;
                Term::Ref(Ref { node, creation, ids })
            }
            101 => {
                let node = self.atom()?;
                let id = self.u32()?;
                let creation = self.u8()? as u32;
                Term::Ref(Ref {
                    node,
                    creation,
                    ids: vec![id],
                })
            }
            104 | 105 => {
                let n = if tag == 104 {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                self.count(n)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.term_at(depth + 1)?);
                }
                Term::Tuple(v)
            }
            // RECORD_EXT (OTP 29, EEP 79): field count, flags, module and
            // name atoms, the field names, then the values. Read as a tuple
            // of its values: no rule looks inside a record, but its pids
            // and references count.
            67 => {
                let n = self.u32()? as usize;
                self.count(2 * n)?;
                self.u8()?;
                self.atom()?;
                self.atom()?;
                for _ in 0..n {
                    self.atom()?;
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.term_at(depth + 1)?);
                }
                Term::Record(v)
            }
            106 => Term::Nil,
            107 => {
                let n = self.u16()? as usize;
                Term::Bytes(self.take(n)?.to_vec())
            }
            108 => {
                let n = self.u32()? as usize;
                self.count(n)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.term_at(depth + 1)?);
                }
                let tail = self.term_at(depth + 1)?;
                Term::List(v, Box::new(tail))
            }
            109 => {
                let n = self.u32()? as usize;
                Term::Binary(n, content_hash(tag, self.take(n)?))
            }
            77 => {
                let n = self.u32()? as usize;
                Term::Binary(n, content_hash(tag, self.take(1 + n)?))
            }
            116 => {
                let n = self.u32()? as usize;
                self.count(n.saturating_mul(2))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.term_at(depth + 1)?;
                    v.push((k, self.term_at(depth + 1)?));
                }
                Term::Map(v)
            }
            113 => {
                let module = self.atom()?;
                self.atom()?;
                let arity = self
                    .term_at(depth + 1)?
                    .int()
                    .ok_or(DecodeError::Malformed("fun arity"))?;
                Term::Fun(Fun {
                    module,
                    export: true,
                    arity: arity as u32,
                    env: Vec::new(),
                })
            }
            112 => {
                // Size counts itself, not the tag.
                let size = self.u32()? as usize;
                let start = self.pos - 4;
                let arity = self.u8()? as u32;
                self.skip(16 + 4)?;
                let free = self.u32()? as usize;
                let module = self.atom()?;
                // Old index, old uniq, pid: whatever the bytes hold there
                // is kept, as the walk counts it.
                let mut env = Vec::with_capacity(3);
                for _ in 0..3 {
                    env.push(self.term_at(depth + 1)?);
                }
                self.count(free)?;
                for _ in 0..free {
                    env.push(self.term_at(depth + 1)?);
                }
                if self.pos - start != size {
                    return Err(DecodeError::Malformed("fun size does not match its contents"));
                }
                Term::Fun(Fun {
                    module,
                    export: false,
                    arity,
                    env,
                })
            }
            117 => {
                let free = self.u32()? as usize;
                let mut env = vec![self.term_at(depth + 1)?]; // pid
                let module = self.atom()?;
                env.push(self.term_at(depth + 1)?); // index
                env.push(self.term_at(depth + 1)?); // uniq
                self.count(free)?;
                for _ in 0..free {
                    env.push(self.term_at(depth + 1)?);
                }
                Term::Fun(Fun {
                    module,
                    export: false,
                    arity: 0,
                    env,
                })
            }
            80 => return Err(DecodeError::Malformed("compressed term in a distribution message")),
            _ => return Err(DecodeError::Malformed("unknown term tag")),
        })
    }

    fn big(&mut self, n: usize) -> Result<Term> {
        let sign = self.u8()?;
        let digits = self.take(n)?;
        if n <= 7 {
            let mut v: i64 = 0;
            for (i, d) in digits.iter().enumerate() {
                v |= (*d as i64) << (8 * i);
            }
            return Ok(Term::Int(if sign == 0 { v } else { -v }));
        }
        Ok(Term::Big)
    }
}

/// A fixed (unkeyed) 128-bit hash of `parts` in turn: the same in every
/// erlmesh process (keys of pg groups and global names, handed over).
pub fn key128(parts: &[&[u8]]) -> u128 {
    use siphasher::sip128::Hasher128;
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new();
    for p in parts {
        h.write(p);
    }
    h.finish128().as_u128()
}

/// Binaries up to this size are hashed as they are decoded (pg's groups
/// and global's names are keyed by what they hold; larger ones are never
/// followed).
pub const HASHED_BINARY: usize = 1024;

/// A fixed (unkeyed) 128-bit hash of a small binary's bytes and kind: the
/// same in every erlmesh process, so that what one hands over the next one
/// reads. One term, one hash: a bitstring of whole bytes (BIT_BINARY_EXT
/// with 8 bits in its last byte, or none at all) is the binary of those
/// bytes, and the unused bits of a bitstring's last byte are not part of
/// it. 128 bits, so that no two binaries a peer can find share one (a
/// 64-bit hash was searched to a collision in minutes, and two groups or
/// names of one key passed where the node crashed or counted two).
fn content_hash(tag: u8, b: &[u8]) -> u128 {
    let (tag, bits, data) = match (tag, b) {
        (77, [bits, data @ ..]) if *bits == 8 || data.is_empty() => (109, 8, data),
        (77, [bits, data @ ..]) => (77, *bits, data),
        _ => (tag, 8, b),
    };
    if data.len() > HASHED_BINARY {
        return 0;
    }
    let masked;
    let data = match data.split_last() {
        Some((last, init)) if tag == 77 && (1..8).contains(&bits) => {
            masked = [init, &[last & (0xFF << (8 - bits))]].concat();
            &masked[..]
        }
        _ => data,
    };
    key128(&[&[tag, bits], data]) | 1
}

/// The atom cache of one direction of one connection: 8 segments of 256
/// entries, set by distribution headers, read by later ones.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct AtomCache {
    slots: Vec<Option<Atom>>,
}

impl Default for AtomCache {
    fn default() -> Self {
        AtomCache {
            slots: vec![None; 2048],
        }
    }
}

/// A distribution header's atom references: the atoms, how many bytes the
/// header took, and whether it set cache entries (a frame that does must
/// reach the node, or the node's cache and this one part ways).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Refs {
    pub atoms: Vec<Atom>,
    pub len: usize,
    pub sets_cache: bool,
    /// Which of `atoms` the header wrote out (new cache entries): the node
    /// creates each it has not got.
    #[serde(default)]
    pub new: Vec<usize>,
}

impl AtomCache {
    /// Reads the atom-cache part of a distribution header (from
    /// `NumberOfAtomCacheRefs` on) and applies its new entries once it is
    /// whole (nothing applied when it is not).
    pub fn header(&mut self, buf: &[u8]) -> Result<Refs> {
        let (refs, updates) = self.peek_header(buf)?;
        self.apply(updates);
        Ok(refs)
    }

    /// Applies a header's new entries ([`AtomCache::peek_header`]).
    pub fn apply(&mut self, updates: Vec<(usize, Atom)>) {
        for (slot, a) in updates {
            self.slots[slot] = Some(a);
        }
    }

    /// Reads a header without changing the cache: its references resolve,
    /// in order, against the cache as it was before the frame and the
    /// header's own earlier entries, as the node reads them; the new
    /// entries to apply once the frame is taken come back beside. (Parsed
    /// again on more bytes, a header that applied its entries the first
    /// time would read a slot it set where the node read the old atom: a
    /// send to rex judged as one to the listed cache.)
    pub fn peek_header(&self, buf: &[u8]) -> Result<(Refs, Vec<(usize, Atom)>)> {
        let n = *buf.first().ok_or(DecodeError::Truncated)? as usize;
        if n == 0 {
            return Ok((
                Refs {
                    atoms: Vec::new(),
                    len: 1,
                    sets_cache: false,
                    new: Vec::new(),
                },
                Vec::new(),
            ));
        }
        let flags_len = n / 2 + 1;
        let flags = buf.get(1..1 + flags_len).ok_or(DecodeError::Truncated)?;
        let nibble = |i: usize| {
            let b = flags[i / 2];
            if i % 2 == 0 {
                b & 0x0f
            } else {
                b >> 4
            }
        };
        let long = nibble(n) & 1 == 1;
        let mut d = Decoder::new(buf, &[]);
        d.pos = 1 + flags_len;
        let mut atoms = Vec::with_capacity(n);
        let mut sets_cache = false;
        let mut new = Vec::new();
        let mut updates: Vec<(usize, Atom)> = Vec::new();
        for i in 0..n {
            let f = nibble(i);
            let slot = ((f & 7) as usize) * 256 + d.u8()? as usize;
            if f & 8 != 0 {
                let len = if long { d.u16()? as usize } else { d.u8()? as usize };
                let a = d.text(len, false)?;
                updates.push((slot, a.clone()));
                sets_cache = true;
                new.push(atoms.len());
                atoms.push(a);
            } else {
                let earlier = updates.iter().rev().find(|(s, _)| *s == slot).map(|(_, a)| a.clone());
                atoms.push(
                    earlier
                        .or_else(|| self.slots[slot].clone())
                        .ok_or(DecodeError::Malformed("atom cache reference to an empty entry"))?,
                );
            }
        }
        Ok((
            Refs {
                atoms,
                len: d.pos,
                sets_cache,
                new,
            },
            updates,
        ))
    }
}

/// An atom's text as the node reads it: ATOM_EXT and SMALL_ATOM_EXT
/// (`latin1`) are one character per byte, so bytes that are UTF-8 there
/// name another atom than the same bytes as UTF-8 (`'Ã©'`, not `'é'`);
/// None when UTF-8 text is not UTF-8.
pub fn atom_text(b: &[u8], latin1: bool) -> Option<std::borrow::Cow<'_, str>> {
    if latin1 && !b.is_ascii() {
        return Some(std::borrow::Cow::Owned(b.iter().map(|&c| char::from(c)).collect()));
    }
    std::str::from_utf8(b).ok().map(std::borrow::Cow::Borrowed)
}

/// Encodes `t` (atoms inline, no cache) after `out`. Only what erlmesh
/// sends (and its tests) is supported: integers, atoms, pids, references,
/// tuples, lists, maps, nil.
pub fn encode(t: &Term, out: &mut Vec<u8>) {
    match t {
        Term::Int(i) if (0..256).contains(i) => out.extend([97, *i as u8]),
        Term::Int(i) if i32::try_from(*i).is_ok() => {
            out.push(98);
            out.extend((*i as i32).to_be_bytes());
        }
        // SMALL_BIG_EXT: sign, then the magnitude's bytes, little-endian.
        Term::Int(i) => {
            let bytes = i.unsigned_abs().to_le_bytes();
            let n = 8 - bytes.iter().rev().take_while(|b| **b == 0).count();
            out.extend([110, n as u8, u8::from(*i < 0)]);
            out.extend(&bytes[..n]);
        }
        Term::Atom(a) => encode_atom(a, out),
        Term::Pid(p) => {
            out.push(88);
            encode_atom(&p.node, out);
            out.extend(p.id.to_be_bytes());
            out.extend(p.serial.to_be_bytes());
            out.extend(p.creation.to_be_bytes());
        }
        Term::Ref(r) => {
            out.push(90);
            out.extend((r.ids.len() as u16).to_be_bytes());
            encode_atom(&r.node, out);
            out.extend(r.creation.to_be_bytes());
            for id in &r.ids {
                out.extend(id.to_be_bytes());
            }
        }
        Term::Tuple(v) if v.len() < 256 => {
            out.extend([104, v.len() as u8]);
            v.iter().for_each(|t| encode(t, out));
        }
        Term::Tuple(v) => {
            out.push(105);
            out.extend((v.len() as u32).to_be_bytes());
            v.iter().for_each(|t| encode(t, out));
        }
        Term::Map(kv) => {
            out.push(116);
            out.extend((kv.len() as u32).to_be_bytes());
            kv.iter().for_each(|(k, v)| {
                encode(k, out);
                encode(v, out);
            });
        }
        Term::Bytes(b) if !b.is_empty() && b.len() <= usize::from(u16::MAX) => {
            out.push(107);
            out.extend((b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        Term::List(v, tail) if !v.is_empty() => {
            out.push(108);
            out.extend((v.len() as u32).to_be_bytes());
            v.iter().for_each(|t| encode(t, out));
            encode(tail, out);
        }
        _ => out.push(106),
    }
}

fn encode_atom(a: &str, out: &mut Vec<u8>) {
    let b = a.as_bytes();
    if b.len() < 256 {
        out.extend([119, b.len() as u8]);
    } else {
        out.push(118);
        out.extend((b.len() as u16).to_be_bytes());
    }
    out.extend(b);
}

/// A whole frame for the connection: length, a distribution header with no
/// atom cache references, the control message and an optional message.
pub fn frame(control: &Term, message: Option<&Term>) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, VERSION, DIST_HEADER, 0];
    encode(control, &mut v);
    if let Some(m) = message {
        encode(m, &mut v);
    }
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {

    /// Invariant: two encodings of one term decode to one term (keys of pg
    /// groups and global names): a bitstring of whole bytes is a binary,
    /// a bitstring's unused bits are not part of it, a string is the list
    /// of its bytes; two different binaries are two terms.
    #[test]
    fn one_term_in_two_encodings_is_one_key() {
        let dec = |b: &[u8]| Decoder::new(b, &[]).term().unwrap().canonical();
        let binary = dec(&[109, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(dec(&[77, 0, 0, 0, 2, 8, b'a', b'b']), binary);
        assert_eq!(dec(&[77, 0, 0, 0, 0, 3]), dec(&[109, 0, 0, 0, 0]));
        // <<1:1>> with garbage in its unused bits.
        assert_eq!(dec(&[77, 0, 0, 0, 1, 1, 0x80]), dec(&[77, 0, 0, 0, 1, 1, 0xFF]));
        assert_ne!(dec(&[77, 0, 0, 0, 1, 1, 0x80]), dec(&[77, 0, 0, 0, 1, 2, 0x80]));
        assert_ne!(dec(&[77, 0, 0, 0, 2, 7, b'a', b'b']), binary);
        assert_ne!(dec(&[109, 0, 0, 0, 2, b'a', b'c']), binary);
        // "ab" as STRING_EXT and as a list of two small integers.
        assert_eq!(
            dec(&[107, 0, 2, b'a', b'b']),
            dec(&[108, 0, 0, 0, 2, 97, b'a', 97, b'b', 106])
        );
        // A reference with a trailing zero word (the eighteenth review's).
        let reference = |words: &[u32]| {
            let mut b = vec![90, 0, words.len() as u8, 119, 3, b'c', b'@', b'h', 0, 0, 0, 1];
            for w in words {
                b.extend(w.to_be_bytes());
            }
            b
        };
        assert_eq!(dec(&reference(&[1, 2, 3, 0])), dec(&reference(&[1, 2, 3])));
        assert_ne!(dec(&reference(&[1, 2, 3, 4])), dec(&reference(&[1, 2, 3])));
        // ... but ETS keys the two apart (the twentieth review's): no key.
        let term = |b: &[u8]| Decoder::new(b, &[]).term().unwrap();
        assert!(!term(&reference(&[1, 2, 3, 0])).keyable());
        assert!(!Term::Tuple(vec![Term::Nil, term(&reference(&[1, 0]))]).keyable());
        assert!(term(&reference(&[1, 2, 3])).keyable());
        assert!(term(&reference(&[0, 2])).keyable());
        assert!(!term(&reference(&[1])).keyable(), "one word: OTP 25's ETS loses it");
        // A native record (OTP 29) is kept as nothing of its own: never
        // one key with a tuple of its values.
        let record = [67, 0, 0, 0, 1, 0, 119, 1, b'm', 119, 1, b'r', 119, 1, b'f', 97, 1];
        assert_eq!(
            Decoder::new(&record, &[]).term().unwrap(),
            Term::Record(vec![Term::Int(1)])
        );
        // The 64-bit hash's colliding pair (the seventeenth review's).
        let x = 0xc9e63150633263cd_u64.to_le_bytes();
        let y = 0xedf09b8f04754471_u64.to_le_bytes();
        let bin = |b: &[u8]| [&[109, 0, 0, 0, 8][..], b].concat();
        assert_ne!(dec(&bin(&x)), dec(&bin(&y)));
    }

    /// ATOM_EXT and SMALL_ATOM_EXT are latin1: the same bytes as UTF-8
    /// name another atom (fifth review: two atoms, one key).
    #[test]
    fn latin1_atoms_are_one_character_per_byte() {
        let bytes = [0xc3, 0xa9];
        let mut seen = Vec::new();
        for (tag, len) in [(100u8, vec![0, 2]), (115, vec![2]), (118, vec![0, 2]), (119, vec![2])] {
            let mut b = vec![131, tag];
            b.extend(&len);
            b.extend(bytes);
            let mut d = Decoder::new(&b, &[]);
            d.version().unwrap();
            seen.push(d.term().unwrap());
        }
        let latin1 = Term::Atom(Arc::from("\u{c3}\u{a9}"));
        let utf8 = Term::Atom(Arc::from("\u{e9}"));
        assert_eq!(seen, vec![latin1.clone(), latin1, utf8.clone(), utf8]);
    }

    use super::*;

    #[test]
    fn encoded_terms_decode_to_themselves() {
        let pid = Term::Pid(Pid {
            node: Arc::from("a@hosta"),
            id: 85,
            serial: 2,
            creation: 1_700_000_000,
        });
        let r = Term::Ref(Ref {
            node: Arc::from("a@hosta"),
            creation: 7,
            ids: vec![1, 2, 3],
        });
        let t = Term::Tuple(vec![
            Term::Int(31),
            r,
            pid,
            Term::Int(70000),
            Term::Atom(Arc::from("notsup")),
        ]);
        let mut b = Vec::new();
        encode(&t, &mut b);
        let mut d = Decoder::new(&b, &[]);
        assert_eq!(d.term().unwrap(), t);
        assert_eq!(d.pos, b.len());
        for cut in 0..b.len() {
            assert_eq!(
                Decoder::new(&b[..cut], &[]).term(),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn what_otp_25_encodes_decodes() {
        // term_to_binary({fun(X) -> X + 1 end, fun lists:map/2,
        //   #{a => [1,2|3]}, <<1,2,3>>, "str", 1.5, 12345678901234567890})
        let b: &[u8] = &[
            131, 104, 7, 112, 0, 0, 0, 189, 1, 6, 83, 97, 170, 70, 21, 144, 209, 189, 241, 235, 98, 209, 166, 235, 8,
            0, 0, 0, 42, 0, 0, 0, 1, 100, 0, 8, 101, 114, 108, 95, 101, 118, 97, 108, 97, 42, 98, 0, 50, 155, 13, 88,
            100, 0, 13, 110, 111, 110, 111, 100, 101, 64, 110, 111, 104, 111, 115, 116, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0,
            0, 0, 104, 6, 97, 1, 106, 100, 0, 4, 110, 111, 110, 101, 100, 0, 4, 110, 111, 110, 101, 116, 0, 0, 0, 0,
            108, 0, 0, 0, 1, 104, 5, 100, 0, 6, 99, 108, 97, 117, 115, 101, 97, 1, 108, 0, 0, 0, 1, 104, 3, 100, 0, 3,
            118, 97, 114, 97, 1, 100, 0, 1, 88, 106, 106, 108, 0, 0, 0, 1, 104, 5, 100, 0, 2, 111, 112, 97, 1, 100, 0,
            1, 43, 104, 3, 100, 0, 3, 118, 97, 114, 97, 1, 100, 0, 1, 88, 104, 3, 100, 0, 7, 105, 110, 116, 101, 103,
            101, 114, 97, 1, 97, 1, 106, 106, 113, 100, 0, 5, 108, 105, 115, 116, 115, 100, 0, 3, 109, 97, 112, 97, 2,
            116, 0, 0, 0, 1, 100, 0, 1, 97, 108, 0, 0, 0, 2, 97, 1, 97, 2, 97, 3, 109, 0, 0, 0, 3, 1, 2, 3, 107, 0, 3,
            115, 116, 114, 70, 63, 248, 0, 0, 0, 0, 0, 0, 110, 8, 0, 210, 10, 31, 235, 140, 169, 84, 171,
        ];
        let mut d = Decoder::new(b, &[]);
        d.version().unwrap();
        let t = d.term().unwrap();
        assert_eq!(d.pos, b.len());
        let v = t.tuple().unwrap();
        assert!(matches!(&v[0], Term::Fun(Fun { module, export: false, arity: 1, .. }) if &**module == "erl_eval"));
        assert!(matches!(&v[1], Term::Fun(Fun { module, export: true, arity: 2, .. }) if &**module == "lists"));
        assert!(matches!(&v[2], Term::Map(kv) if kv.len() == 1));
        assert!(matches!(v[3], Term::Binary(3, h) if h != 0));
        assert_eq!(v[4], Term::Bytes(b"str".to_vec()));
        assert_eq!(v[5], Term::Float);
        assert_eq!(v[6], Term::Big);
    }

    #[test]
    fn the_documented_fragment_header_sets_and_reads_the_cache() {
        // erl_ext_dist.md's example, after `131,69,SequenceId,FragmentId`:
        // five references, the first two already cached.
        let mut cache = AtomCache::default();
        cache.slots[4 * 256 + 10] = Some(Arc::from("hostb"));
        cache.slots[5] = Some(Arc::from("hosta"));
        let hdr = [
            5, 4, 137, 9, 10, 5, 236, 3, 114, 101, 103, 9, 4, 99, 97, 108, 108, 238, 13, 115, 101, 116, 95, 103, 101,
            116, 95, 115, 116, 97, 116, 101,
        ];
        let refs = cache.header(&hdr).unwrap();
        let names: Vec<&str> = refs.atoms.iter().map(|a| &**a).collect();
        assert_eq!(names, ["hostb", "hosta", "reg", "call", "set_get_state"]);
        assert_eq!(refs.len, hdr.len());
        assert!(refs.sets_cache);
        // The control message that follows: {6, <0.0.0>, [], reg}.
        let ctl = [104, 4, 97, 6, 103, 82, 0, 0, 0, 0, 85, 0, 0, 0, 0, 2, 82, 1, 82, 2];
        let t = Decoder::new(&ctl, &refs.atoms).term().unwrap();
        assert_eq!(t.tuple().unwrap()[0], Term::Int(6));
        assert_eq!(t.tuple().unwrap()[3].atom(), Some("reg"));
        // Applying the header again gives the same cache (callers retry).
        assert_eq!(cache.header(&hdr).unwrap().atoms, refs.atoms);
    }

    #[test]
    fn hostile_lengths_are_refused_or_waited_for_without_allocating() {
        // A tuple claiming 2^32-1 elements, a list too, a huge binary.
        for b in [
            &[105u8, 255, 255, 255, 255, 97][..],
            &[108, 255, 255, 255, 255],
            &[109, 255, 255, 255, 255],
        ] {
            assert!(Decoder::new(b, &[]).term().is_err());
        }
        let deep: Vec<u8> = std::iter::repeat([104u8, 1]).take(100).flatten().chain([106]).collect();
        assert!(matches!(Decoder::new(&deep, &[]).term(), Err(DecodeError::TooLarge(_))));
        assert!(matches!(
            Decoder::new(&[82, 0], &[]).term(),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Decoder::new(&[80, 0, 0, 0, 1], &[]).term(),
            Err(DecodeError::Malformed(_))
        ));
    }
}
