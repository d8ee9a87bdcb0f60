//! The EPMD protocol: the pure codec, the embedded EPMD for this host's nodes
//! and the client that asks a system epmd.

pub mod codec;
pub mod local;
pub mod server;

pub use codec::NodeInfo;
pub use local::LocalEpmd;
