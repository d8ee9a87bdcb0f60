//! The EPMD protocol: the pure codec, the embedded EPMD for this host's nodes
//! and the client that asks a system epmd.

pub mod codec;
pub mod embedded;
pub mod registry;

pub use codec::NodeInfo;
pub use registry::LocalEpmd;
