//! erlmesh: a per-host proxy that carries unmodified Erlang/OTP distribution
//! between hosts inside mutually authenticated TLS.
//!
//! The folders follow the data (ARCHITECTURE.md has the picture): a local
//! node asks a peer's face ([`mesh::face`]: EPMD answers, per-node
//! listeners on a loopback alias); the face dials the peer's erlmesh
//! ([`tunnel::dial`], TLS from [`tls`], the [`tunnel::preface`]) and
//! carries the node's connection ([`tunnel::outbound`]); the peer's TLS
//! port admits it ([`tunnel::accept`]) and connects it to the real node
//! ([`tunnel::inbound`]); both ends then move bytes through the TLS 1.3
//! record layer ([`tunnel::record`]). [`epmd`] serves this host's nodes,
//! [`mesh`] keeps the peer table, [`ops`] is what operators see, and
//! [`app`] runs it all.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod epmd;
pub mod firewall;
pub mod hostname;
pub mod mesh;
pub mod ops;
pub mod tls;
pub mod transparent;
pub mod tunnel;
pub mod upgrade;
pub mod wire;
