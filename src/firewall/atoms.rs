//! The atoms a peer host's nodes make local nodes create.
//!
//! An Erlang node never frees an atom, and when its atom table is full
//! (1 048 576 atoms by default) the whole VM halts ("no more index entries
//! in atom_tab"). A node creates an atom for every new atom text a
//! distribution frame carries: a distribution header's new atom cache
//! entries (even when the message itself is refused, since the stand-in
//! keeps the header) and every atom written out in the terms of a message
//! that passes (node names in pids, references and ports included).
//!
//! The invariant: a restricted peer host brings at most its policy's
//! `max_atoms` distinct atom texts to this host's nodes, and all restricted
//! hosts together at most [`MAX_ATOMS_ALL_HOSTS`], so that what they can
//! add to any node's atom table stays far below its size. An atom a local
//! node itself sent that host's node is not counted (the node has it):
//! each node pair remembers those it saw in the local node's atom cache
//! headers (`Memory::learn_atom`, bounded). Each text is
//! counted once per peer host, by a keyed 64-bit hash (the key is secret,
//! so a peer cannot choose texts that collide with counted ones). A frame
//! that would bring one more ends its tunnel before the node sees it.
//! The count lasts as long as the running erlmesh and is handed over with
//! the hash key to the next process by `erlmesh upgrade` ([`AtomsState`]);
//! a restart of erlmesh starts it again (a node's atoms last as long as the
//! node).

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A set of keyed hashes, not hashed again.
pub type Hashes = HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// The hasher of [`Hashes`]: its keys are keyed hashes already.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `max_atoms` when a policy does not set it.
pub const DEFAULT_MAX_ATOMS: usize = 65_536;
/// All restricted peer hosts together: a quarter of OTP's default atom
/// table, so that peers can never fill a node's table, whatever else the
/// node holds.
pub const MAX_ATOMS_ALL_HOSTS: usize = 262_144;

/// What every peer host's count shares: the hash key and the total.
pub struct AllAtoms {
    /// SipHash-1-3's key, secret (drawn at start, or handed over).
    key: zeroize::Zeroizing<[u8; 16]>,
    total: AtomicUsize,
    max_total: usize,
}

/// The counts, as an upgrade hands them to the next process: the key the
/// hashes were made with, every host's hashes, and the total (which never
/// decreases, even for hosts no longer remembered).
#[derive(Serialize, Deserialize, Default)]
pub struct AtomsState {
    pub key: Vec<u8>,
    pub total: usize,
    pub hosts: Vec<(String, Vec<u64>)>,
}

impl Drop for AtomsState {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl Default for AllAtoms {
    fn default() -> Self {
        AllAtoms::with_total(MAX_ATOMS_ALL_HOSTS)
    }
}

impl AllAtoms {
    /// A shared count whose hosts together bring at most `max_total`.
    pub fn with_total(max_total: usize) -> AllAtoms {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        // The system's random source does not fail on Linux once booted;
        // were it to, the key would still differ per process.
        if aws_lc_rs::rand::fill(&mut key[..]).is_err() {
            let k = fastrand::u128(..).to_le_bytes();
            key.copy_from_slice(&k);
        }
        AllAtoms {
            key,
            total: AtomicUsize::new(0),
            max_total,
        }
    }

    /// A count that goes on from `state` (its key and total); its hosts'
    /// hashes are [`AtomsState::hosts`], for the caller to place.
    pub fn resumed(state: &AtomsState, max_total: usize) -> Option<AllAtoms> {
        let key: [u8; 16] = state.key.as_slice().try_into().ok()?;
        Some(AllAtoms {
            key: zeroize::Zeroizing::new(key),
            total: AtomicUsize::new(state.total.min(max_total)),
            max_total,
        })
    }

    /// Atoms counted over all hosts (never decreases).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn hash(&self, text: &str) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_key(&self.key);
        h.write(text.as_bytes());
        h.finish()
    }

    /// The key and total, for [`AtomsState`].
    pub fn export(&self) -> AtomsState {
        AtomsState {
            key: self.key.to_vec(),
            total: self.total(),
            hosts: Vec::new(),
        }
    }
}

/// The atoms one peer host brought to local nodes.
pub struct HostAtoms {
    all: Arc<AllAtoms>,
    seen: Mutex<Hashes>,
}

impl HostAtoms {
    pub fn new(all: Arc<AllAtoms>) -> HostAtoms {
        HostAtoms {
            all,
            seen: Mutex::new(Hashes::default()),
        }
    }

    /// A count of its own (tests, fuzzing).
    pub fn alone() -> Arc<HostAtoms> {
        Arc::new(HostAtoms::new(Arc::new(AllAtoms::default())))
    }

    /// Distinct atoms this host brought.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when this host brought no atom yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hashes counted so far, for [`AtomsState`].
    pub fn hashes(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Takes hashes a previous process counted for this host (already in
    /// the total it handed over).
    pub fn resume(&self, hashes: impl IntoIterator<Item = u64>) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).extend(hashes);
    }

    /// Whether this host may still bring a new atom.
    pub fn has_room(&self, max: usize) -> bool {
        self.len() < max && self.all.total() < self.all.max_total
    }

    /// `text`'s keyed hash, as counts and [`Memory`](super::memory::Memory)
    /// keep it.
    pub fn hash(&self, text: &str) -> u64 {
        self.all.hash(text)
    }

    /// Counts `text`, brought by this host: false when it is new and this
    /// host already brought `max` atoms, or all hosts together their total.
    pub fn admit(&self, text: &str, max: usize) -> bool {
        self.admit_hashed(self.all.hash(text), max)
    }

    /// [`HostAtoms::admit`] by hash.
    pub fn admit_hashed(&self, h: u64, max: usize) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&h) {
            return true;
        }
        if seen.len() >= max {
            return false;
        }
        let room = self
            .all
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < self.all.max_total).then_some(t + 1)
            })
            .is_ok();
        if room {
            seen.insert(h);
        }
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_counts_once_and_the_bounds_hold() {
        let a = HostAtoms::alone();
        for i in 0..10 {
            assert!(a.admit(&format!("atom{i}"), 10));
        }
        assert!(a.admit("atom3", 10), "a counted atom is always admitted");
        assert!(!a.admit("atom10", 10), "the eleventh is not");
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn hosts_together_stay_within_the_total() {
        let all = Arc::new(AllAtoms::with_total(15));
        let (c, d) = (HostAtoms::new(all.clone()), HostAtoms::new(all.clone()));
        assert!((0..10).all(|i| c.admit(&format!("c{i}"), 10)));
        assert!((0..5).all(|i| d.admit(&format!("d{i}"), 10)));
        assert!(!d.admit("d5", 10), "the total is reached");
        assert!(d.admit("d0", 10));
        assert_eq!(all.total(), 15);
    }
}
