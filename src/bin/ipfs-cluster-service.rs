//! `ipfs-cluster-service`: initialises and runs a cluster peer.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipfs_cluster::cli::ReplicationArgs;
use ipfs_cluster::config::{self, CONFIG_FILE, Config, IDENTITY_FILE, Identity};
use ipfs_cluster::peer::{Peer, StartOptions};
use ipfs_cluster::raft::offline::{self, ImportOverrides, backup_raft_dir};
use ipfs_cluster::store::Backend;

// glibc's malloc took ~14% of the peers' CPU under ingest (perf: _int_malloc,
// malloc_consolidate, realloc), from the many short-lived buffers of Raft
// entries, libp2p frames and store batches.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ipfs-cluster-service", version = ipfs_cluster::VERSION, about = "IPFS Cluster peer")]
struct Cli {
    /// Config folder (default: $IPFS_CLUSTER_PATH or ~/.ipfs-cluster).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Debug logging.
    #[arg(long, short = 'd', global = true)]
    debug: bool,
    /// Log level filter (e.g. `info,ipfs_cluster=debug`).
    #[arg(long, short = 'l', global = true, env = "IPFS_CLUSTER_LOG_LEVEL")]
    loglevel: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a new service.json and identity.json.
    Init {
        /// Overwrite an existing configuration.
        #[arg(long, short = 'f')]
        force: bool,
        /// Initial peers (comma-separated multiaddrs ending in /p2p/<id>).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// The store of the Raft log and the pinset (fjall, as `store::Backend`'s default).
        #[arg(long, value_enum, default_value_t = DatastoreArg::Fjall)]
        datastore: DatastoreArg,
        /// The consensus: only raft here (upstream's default, crdt, is refused).
        #[arg(long, default_value = "raft")]
        consensus: String,
        /// Listen on random free ports instead of 9094-9096.
        #[arg(long)]
        randomports: bool,
    },
    /// Runs the peer (the default).
    Daemon {
        /// Join a running cluster through these peers (comma-separated multiaddrs).
        #[arg(long, short = 'j', value_delimiter = ',')]
        bootstrap: Vec<String>,
        /// Leave the cluster on shutdown.
        #[arg(long, short = 'x')]
        leave: bool,
        /// Serve Prometheus metrics (observations.metrics.enable_stats).
        #[arg(long)]
        stats: bool,
        /// Accepted for upstream's scripts: tracing is not implemented.
        #[arg(long)]
        tracing: bool,
        /// Accepted for upstream's scripts (deprecated there, no effect).
        #[arg(long, short = 'u', hide = true)]
        upgrade: bool,
    },
    /// Exports, imports or cleans up this peer's pinset (the peer must be stopped).
    #[command(subcommand)]
    State(StateCmd),
    /// Prints the version.
    Version,
}

/// `init --datastore`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DatastoreArg {
    Sled,
    Redb,
    Fjall,
}

#[derive(Subcommand)]
enum StateCmd {
    /// Writes the pinset as one pin JSON object per line.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// Replaces the pinset with the pins of FILE (or standard input), as written by
    /// `state export`. Do it on every peer of a stopped cluster, with the same file.
    Import {
        /// The pins (default: standard input).
        file: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
        /// Replication and allocations given to every imported pin.
        #[command(flatten)]
        replication: ReplicationArgs,
    },
    /// Moves the raft folder aside (kept as a backup): the next start is a new peer's.
    Cleanup {
        /// Do not ask for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

/// glibc gives threads that allocate their own arenas (up to 8 per core): the
/// blocking threads that read and render listings then keep hundreds of MiB of
/// freed, fragmented memory (one peer with 1M pins: 414 MiB 20 s after start and
/// 660 MiB after the listings; 249 and 277 MiB with two arenas). One arena per
/// core, unless MALLOC_ARENA_MAX says otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    // SAFETY: mallopt only sets an allocator parameter; this runs first in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX));
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    let level = cli.loglevel.clone().unwrap_or_else(|| {
        if cli.debug {
            "debug".into()
        } else {
            "info".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = config::config_dir(cli.config.as_deref());
    let command = cli.command.unwrap_or(Command::Daemon {
        bootstrap: Vec::new(),
        leave: false,
        stats: false,
        tracing: false,
        upgrade: false,
    });
    match command {
        Command::Version => {
            println!("{}", ipfs_cluster::VERSION);
            Ok(())
        }
        Command::Init {
            force,
            mut peers,
            datastore,
            consensus,
            randomports,
        } => {
            anyhow::ensure!(
                consensus == "raft",
                "--consensus {consensus:?} is not supported: this implementation uses raft \
                 (--consensus raft)"
            );
            peers.retain(|p| !p.trim().is_empty());
            let datastore = match datastore {
                DatastoreArg::Sled => Backend::Sled,
                DatastoreArg::Redb => Backend::Redb,
                DatastoreArg::Fjall => Backend::Fjall,
            };
            let (mut cfg, id) = config::init(&dir, force, &peers, datastore)?;
            if randomports {
                cfg.randomize_ports()?;
                cfg.save(&dir.join(CONFIG_FILE))?;
            }
            // A new identity cannot use the Raft state of the old one.
            if dir.join(config::RAFT_DIR).exists() {
                backup_raft_dir(&dir, cfg.consensus.raft.backups_rotate)?;
                println!("the previous raft folder was moved to raft.old.0");
            }
            println!(
                "configuration written to {}\npeer id: {}",
                dir.join(CONFIG_FILE).display(),
                id.peer_id
            );
            Ok(())
        }
        Command::State(cmd) => state(&dir, cmd),
        Command::Daemon {
            bootstrap,
            leave,
            stats,
            tracing,
            upgrade: _,
        } => {
            if tracing {
                eprintln!("warning: --tracing is not implemented; ignored");
            }
            let mut cfg = Config::load(&dir.join(CONFIG_FILE))?;
            cfg.cluster.leave_on_shutdown |= leave;
            cfg.observations.metrics.enable_stats |= stats;
            let backups = cfg.consensus.raft.backups_rotate;
            let identity = load_identity(&dir)?;
            match ipfs_cluster::fdlimit::raise_nofile_limit() {
                Ok(n) => ::tracing::debug!("open-files limit: {n}"),
                Err(e) => ::tracing::warn!("{e}; keeping the current one"),
            }
            let rt = ipfs_cluster::runtime::build()?;
            let removed = rt.block_on(async {
                // Handlers first: the APIs accept connections before start returns, and
                // a SIGTERM in that window must shut down cleanly, not kill the process.
                let signals = Signals::install()?;
                let peer = Peer::start(&dir, cfg, identity, StartOptions { bootstrap }).await?;
                notify_ready();
                let removed = peer.removed();
                tokio::select! {
                    _ = signals.wait() => {}
                    _ = removed.cancelled() => {}
                }
                anyhow::Ok(peer.shutdown().await)
            })?;
            if removed {
                backup_raft_dir(&dir, backups)?;
                eprintln!(
                    "this peer was removed from the cluster; its raft folder was moved aside so \
                     its next start is clean"
                );
            }
            Ok(())
        }
    }
}

fn state(dir: &std::path::Path, cmd: StateCmd) -> anyhow::Result<()> {
    use std::io::Write;
    let cfg = Config::load(&dir.join(CONFIG_FILE))?;
    match cmd {
        StateCmd::Export { file } => {
            let n = match file {
                Some(f) => {
                    let mut out = std::io::BufWriter::new(
                        std::fs::File::create(&f).with_context(|| f.display().to_string())?,
                    );
                    offline::export(dir, &cfg, &mut out)?
                }
                None => offline::export(dir, &cfg, &mut std::io::stdout().lock())?,
            };
            eprintln!("exported {n} pins");
        }
        StateCmd::Import {
            file,
            force,
            replication,
        } => {
            if !force {
                anyhow::ensure!(
                    file.is_some(),
                    "reading the pins from standard input needs --force (the confirmation \
                     would be read from there too)"
                );
                confirm(
                    "This replaces this peer's pinset with the file's (the old raft folder is kept as raft.old.0).",
                )?;
            }
            let identity = load_identity(dir)?;
            // The voters of a peer without Raft data come from init_peerset,
            // upstream's peer-ID entries completed from the peerstore.
            let mut cfg = cfg;
            let peerstore = dir.join(config::PEERSTORE_FILE);
            let text = match std::fs::read_to_string(&peerstore) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| peerstore.display().to_string()),
            };
            cfg.consensus.raft.init_peerset = cfg.consensus.raft.init_peerset_addrs(&text)?;
            let overrides = ImportOverrides {
                replication_min: replication.rmin,
                replication_max: replication.rmax,
                allocations: replication.allocations,
            };
            let n = match file {
                Some(f) => {
                    let mut input = std::io::BufReader::new(
                        std::fs::File::open(&f).with_context(|| f.display().to_string())?,
                    );
                    offline::import(dir, &cfg, &identity, &mut input, &overrides)?
                }
                None => offline::import(
                    dir,
                    &cfg,
                    &identity,
                    &mut std::io::stdin().lock(),
                    &overrides,
                )?,
            };
            eprintln!("imported {n} pins");
        }
        StateCmd::Cleanup { force } => {
            if !force {
                confirm("This removes this peer's pinset and Raft data (kept as raft.old.0).")?;
            }
            if offline::cleanup(dir, &cfg)? {
                eprintln!("the raft folder was moved to raft.old.0");
            } else {
                eprintln!("there was no raft folder");
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// `identity.json` with upstream's `CLUSTER_ID`/`CLUSTER_PRIVATEKEY` overrides.
fn load_identity(dir: &std::path::Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_with_env(&dir.join(IDENTITY_FILE), |k| {
        std::env::var(k).ok()
    })?)
}

/// Tells systemd (`Type=notify`) that the peer serves: `READY=1` on
/// `$NOTIFY_SOCKET`, as upstream's daemon does. Without the variable, nothing.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = sd_notify(&path, b"READY=1") {
        eprintln!("warning: could not notify systemd through NOTIFY_SOCKET: {e}");
    }
}

/// One datagram to the notify socket; a leading `@` names an abstract socket.
fn sd_notify(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

/// Asks on the terminal before a destructive command.
fn confirm(what: &str) -> anyhow::Result<()> {
    eprint!("{what} Continue? [y/N]: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    anyhow::ensure!(
        matches!(answer.trim(), "y" | "Y" | "yes"),
        "aborted (nothing changed)"
    );
    Ok(())
}

/// SIGTERM and SIGINT handlers, installed before the peer starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Returns at the first SIGTERM or SIGINT, also one received before this call.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
