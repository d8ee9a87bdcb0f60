//! A node's connection to a node on another host, end to end: admission on
//! the TLS port, dialling a peer, the preface that says what a connection
//! is for, the distribution handshake frames erlmesh reads, both ends of a
//! tunnel, and the TLS 1.3 record layer that carries it once open.

pub mod accept;
pub mod dial;
pub mod dist_handshake;
pub mod inbound;
pub mod on_wake;
pub mod outbound;
pub mod preface;
pub mod record;
pub mod resume;
pub mod span;
