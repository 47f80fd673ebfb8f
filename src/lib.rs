//! ipfs-cluster in Rust: pinset orchestration for IPFS.
//!
//! A peer (`ipfs-cluster-service`) sits beside an IPFS daemon. Its kubo-compatible
//! proxy ([`proxy`]) turns pin calls into cluster operations ([`cluster`]), which are
//! committed through Raft ([`raft`]) into the shared pinset ([`state`]); each peer's
//! pin tracker drives its own daemon ([`ipfs`]) towards that pinset. The native REST
//! API ([`restapi`]) and `ipfs-cluster-ctl` ([`ctl`]) follow upstream ipfs-cluster.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod fdlimit;
pub mod http;
pub mod ipfs;
pub mod listing;
pub mod multiaddr;
pub mod observations;
pub mod p2p;
pub mod peer;
pub mod procfs;
pub mod proxy;
pub mod raft;
pub mod restapi;
pub mod runtime;
pub mod state;
pub mod store;
pub mod sync;
pub mod types;

#[cfg(test)]
mod peer_tests;

/// Version reported by `/version`, `/id` and `version` commands.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
