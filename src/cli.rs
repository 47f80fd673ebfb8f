//! Command-line flags shared by `ipfs-cluster-ctl` and `ipfs-cluster-service`.

/// Replication factors and allocations of pins (`--rmin`, `--rmax`, `--allocations`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplicationArgs {
    /// Minimum replication (-1: everywhere; 0: the cluster's default).
    #[arg(
        long,
        alias = "replication-min",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub rmin: i32,
    /// Maximum replication (-1: everywhere; 0: the cluster's default).
    #[arg(
        long,
        alias = "replication-max",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub rmax: i32,
    /// Peers to allocate to (comma-separated peer IDs).
    #[arg(long, alias = "allocs", value_delimiter = ',')]
    pub allocations: Vec<String>,
}
