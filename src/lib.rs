//! erlmesh: a per-host proxy that carries unmodified Erlang/OTP distribution
//! between hosts inside mutually authenticated TLS.
//!
//! Data flows one way through the modules: a local node asks a peer's
//! [`face`] (EPMD answers, per-node listeners on a loopback alias), the face
//! dials the peer erlmesh over TLS ([`tls`], [`preface`]), whose
//! [`listener`] answers or connects the tunnel to the real node, and
//! [`splice`] moves the bytes.
#![forbid(unsafe_code)]

pub mod alias;
pub mod certs;
pub mod cli;
pub mod config;
pub mod control;
pub mod doctor;
pub mod epmd;
pub mod exposure;
pub mod face;
pub mod handshake;
pub mod hostname;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod preface;
pub mod record;
pub mod resolver;
pub mod serve;
pub mod server;
pub mod tls;
