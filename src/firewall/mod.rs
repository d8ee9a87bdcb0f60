//! The distribution firewall: what a peer host's nodes may ask of this
//! host's nodes, decided on the distribution messages themselves, between
//! the record layer and the node, for unmodified nodes.
//!
//! Without a `dist_policy` nothing here runs: the tunnel's bytes are not
//! parsed. With one, every frame from the peer is parsed (handshake, ticks,
//! distribution header and atom cache, fragments) and its control message
//! judged ([`rules`]); what the policy refuses is dropped, with the answer a
//! refusing node would give (a spawn reply with an error, a monitor's
//! `noproc`) sent back to the peer's node. Frames from the local node are
//! parsed too, for the pids and references it gives the peer ([`walk`]):
//! only those stay reachable by pid or alias.
//!
//! - [`etf`]: the term format, the header, the atom cache.
//! - [`rules`]: one control message (and, where it matters, its message)
//!   against a policy.
//! - [`memory`]: the capability model's state per node pair (given,
//!   forged, machinery pids), owned by the running erlmesh.
//! - [`machinery`]: the exact shapes of the kernel protocols a restricted
//!   peer keeps, and the I/O a group leader may take.
//! - [`walk`]: the pids, references and atoms in frames, as they go by.
//! - [`atoms`]: the atoms each peer host brings to local nodes, bounded.
//! - [`pg`]: the groups the local `pg` scope has of the peer's scopes.
//! - [`filter`]: both directions' framing, fragments, held bytes, answers.

pub mod atoms;
pub mod etf;
pub mod filter;
pub mod machinery;
pub mod memory;
pub mod names;
pub mod pg;
pub mod rules;
pub mod walk;

use crate::mesh::policy::Pattern;

/// Enforce or only report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refused operations are dropped (and answered where a caller waits).
    Enforce,
    /// Nothing changes; what would be refused is counted and logged, and
    /// every operation is counted by kind and target.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// `[dist_policies.NAME]`: what a peer's nodes may do to this host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistPolicy {
    pub name: String,
    pub mode: Mode,
    /// Spawn requests (erpc, rpc, spawn/4, spawn_link, spawn_opt).
    pub spawn: bool,
    /// Registered names the peer's messages may reach, besides the
    /// machinery (net_kernel, global_name_server, pg), whose messages are
    /// checked by what they ask.
    pub registered: Vec<Pattern>,
    /// exit/2 signals to local processes, and links made by the peer.
    pub exit_signals: bool,
    /// Distinct atoms the peer host's nodes may bring to this host's
    /// nodes ([`atoms`]).
    pub max_atoms: usize,
    /// Monitors the peer host's processes may hold on this host's
    /// processes at once, all its node pairs together ([`memory`]): each
    /// is memory on the node (about 200 bytes) for as long as it lasts.
    pub max_monitors: usize,
    /// Global names and locks the peer host's nodes may have the local
    /// global hold at once ([`names`]).
    pub max_global_names: usize,
}

impl DistPolicy {
    /// `name` as registered on the node is listed.
    pub fn lists(&self, name: &str) -> bool {
        self.registered.iter().any(|p| p.matches(name))
    }
}
