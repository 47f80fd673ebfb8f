//! `ipfs-cluster-ctl`: the command-line client of a peer's REST API.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipfs_cluster::cli::ReplicationArgs;
use ipfs_cluster::ctl::{
    WaitTarget, format_alert, format_graph, format_id, format_metric, format_pin, format_repo_gc,
    format_status, wait_for,
};
use ipfs_cluster::restapi::client::Client;
use ipfs_cluster::restapi::upload::{self, UploadOptions};
use ipfs_cluster::types::{Cid, PinMode, PinOptions};

#[derive(Parser)]
#[command(name = "ipfs-cluster-ctl", version = ipfs_cluster::VERSION, about = "Client for an IPFS Cluster peer")]
struct Cli {
    /// The peer's REST API (multiaddr or URL).
    #[arg(
        long,
        short = 'l',
        global = true,
        default_value = "/ip4/127.0.0.1/tcp/9094"
    )]
    host: String,
    /// Output encoding.
    #[arg(long = "enc", alias = "encoding", global = true, value_enum, default_value_t = Enc::Text)]
    enc: Enc,
    /// Basic auth credentials `user[:password]`.
    #[arg(long, global = true, env = "CLUSTER_CREDENTIALS")]
    basic_auth: Option<String>,
    /// Give up after this many seconds (0: never); exit code 62 then, as upstream.
    #[arg(long, short = 't', global = true, default_value_t = 0)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Enc {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Shows the peer's ID and addresses.
    Id,
    /// Shows the peer's version.
    Version,
    /// Pins: add, update, rm, ls.
    #[command(subcommand)]
    Pin(PinCmd),
    /// Cluster peers: ls, rm.
    #[command(subcommand)]
    Peers(PeersCmd),
    /// Cluster health: metrics, alerts, graph.
    #[command(subcommand)]
    Health(HealthCmd),
    /// The IPFS daemons behind the peers: gc.
    #[command(subcommand)]
    Ipfs(IpfsCmd),
    /// Adds files or folders to IPFS through the peer and pins the root in the cluster.
    Add {
        /// Files or folders (several are wrapped in a folder).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Add folders with their contents.
        #[arg(long, short = 'r')]
        recursive: bool,
        /// Print only the CIDs.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Print only the root's CID.
        #[arg(long, short = 'Q')]
        quieter: bool,
        /// Wrap the files in a folder.
        #[arg(long, short = 'w')]
        wrap_with_directory: bool,
        /// Include files whose names start with a dot.
        #[arg(long, short = 'H')]
        hidden: bool,
        /// DAG layout: balanced or trickle.
        #[arg(long, default_value = "")]
        layout: String,
        /// Chunker, e.g. size-262144.
        #[arg(long, short = 's', default_value = "")]
        chunker: String,
        /// Raw leaves.
        #[arg(long)]
        raw_leaves: bool,
        /// CID version.
        #[arg(long)]
        cid_version: Option<u32>,
        /// Hash function.
        #[arg(long, default_value = "")]
        hash: String,
        /// Add without pinning.
        #[arg(long)]
        no_pin: bool,
        /// Make this peer the first allocation of the pin.
        #[arg(long)]
        local: bool,
        /// Ask for the outputs as one list at the end rather than as they come.
        #[arg(long)]
        no_stream: bool,
        #[command(flatten)]
        pin: PinFlags,
        /// Wait until the root is pinned.
        #[arg(long)]
        wait: bool,
        /// How long to wait (Go duration; 0: forever).
        #[arg(long = "wait-timeout", alias = "wt", default_value = "0s")]
        wait_timeout: String,
    },
    /// Shows the status of CIDs on every peer.
    Status {
        /// CIDs (all when none).
        cids: Vec<String>,
        /// Status filter, e.g. `pinned,error`.
        #[arg(long, default_value = "")]
        filter: String,
        /// Only this peer's status.
        #[arg(long)]
        local: bool,
    },
    /// Retries failed or missing pins (all when no CID is given).
    Recover {
        /// A CID.
        cid: Option<String>,
        /// Only on this peer.
        #[arg(long)]
        local: bool,
    },
}

/// What `pin add` and `pin rm` show afterwards.
#[derive(clap::Args)]
struct AfterOp {
    /// Do not print the status afterwards.
    #[arg(long = "no-status", alias = "ns")]
    no_status: bool,
    /// Wait until the operation is done.
    #[arg(long, short = 'w')]
    wait: bool,
    /// How long to wait (Go duration; 0: forever).
    #[arg(long = "wait-timeout", alias = "wt", default_value = "0s")]
    wait_timeout: String,
    /// With --wait on pins: how many peers must have pinned (default: the
    /// pin's minimum replication, or all).
    #[arg(long = "wait-limit", alias = "wl", default_value_t = 0)]
    wait_limit: usize,
}

#[derive(Subcommand)]
enum HealthCmd {
    /// Lists metric names, or the latest metrics of one name.
    Metrics {
        /// A metric name (e.g. freespace, ping, tag:group).
        name: Option<String>,
    },
    /// Lists the alerts raised by expired metrics.
    Alerts,
    /// Prints the connections among peers and daemons as a Graphviz (DOT) graph.
    Graph {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
        /// Include daemons that are not the cluster's.
        #[arg(long)]
        all_ipfs_peers: bool,
    },
}

#[derive(Subcommand)]
enum IpfsCmd {
    /// Runs garbage collection on every peer's daemon and lists what each removed.
    Gc {
        /// Only on this peer's daemon.
        #[arg(long)]
        local: bool,
    },
}

#[derive(Subcommand)]
enum PeersCmd {
    /// Lists the cluster peers with their IDs.
    Ls,
    /// Removes a peer from the cluster.
    Rm {
        /// The peer ID.
        peer: String,
    },
}

/// The options of a new pin, shared by `pin add` and `add`.
#[derive(clap::Args)]
struct PinFlags {
    /// Pin name.
    #[arg(long, short = 'n', default_value = "")]
    name: String,
    #[command(flatten)]
    replication: ReplicationArgs,
    /// Metadata `key=value` (repeatable).
    #[arg(long)]
    metadata: Vec<String>,
    /// Expire after this long (Go duration).
    #[arg(long)]
    expire_in: Option<String>,
}

impl PinFlags {
    fn options(self) -> anyhow::Result<PinOptions> {
        let mut metadata = BTreeMap::new();
        for kv in self.metadata {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("metadata must be key=value, got {kv:?}");
            };
            metadata.insert(k.to_string(), v.to_string());
        }
        Ok(PinOptions {
            name: self.name,
            replication_factor_min: self.replication.rmin,
            replication_factor_max: self.replication.rmax,
            metadata,
            user_allocations: self.replication.allocations,
            expire_at: expiry(self.expire_in.as_deref())?,
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum PinCmd {
    /// Pins a CID or path in the cluster.
    Add {
        /// CID or /ipfs/ path.
        arg: String,
        /// recursive or direct.
        #[arg(long, default_value = "recursive")]
        mode: String,
        /// Sets both minimum and maximum replication.
        #[arg(long, short = 'r', allow_hyphen_values = true)]
        replication: Option<i32>,
        #[command(flatten)]
        pin: PinFlags,
        #[command(flatten)]
        after: AfterOp,
    },
    /// Pins NEW with the options and allocations of the pin EXISTING, which stays
    /// pinned (remove it with `pin rm` once NEW is pinned).
    Update {
        /// The CID of the existing pin.
        existing: String,
        /// The new CID or /ipfs/ path.
        new: String,
        /// A new name (default: the existing pin's).
        #[arg(long, short = 'n', default_value = "")]
        name: String,
        /// Expire after this long (Go duration; default: as the existing pin).
        #[arg(long)]
        expire_in: Option<String>,
        #[command(flatten)]
        after: AfterOp,
    },
    /// Unpins a CID or path from the cluster.
    Rm {
        /// CID or /ipfs/ path.
        arg: String,
        #[command(flatten)]
        after: AfterOp,
    },
    /// Lists the pinset.
    Ls {
        /// A CID (all when absent).
        cid: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = cli.timeout;
    let outcome = rt.block_on(async {
        if timeout == 0 {
            return Some(run(cli).await);
        }
        tokio::time::timeout(Duration::from_secs(timeout), run(cli))
            .await
            .ok()
    });
    match outcome {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("error: timed out after {timeout}s");
            // Upstream's exit code for an exceeded deadline.
            ExitCode::from(62)
        }
    }
}

fn print<T: serde::Serialize>(
    enc: Enc,
    v: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match enc {
        Enc::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Enc::Text => print!("{}", text(v)),
    }
    Ok(())
}

fn parse_cid(s: &str) -> anyhow::Result<Cid> {
    s.parse().with_context(|| format!("{s:?} is not a CID"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = cli.basic_auth.as_deref().map(|a| match a.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (a.to_string(), String::new()),
    });
    let client = Client::new(&cli.host, auth)?;
    let enc = cli.enc;
    match cli.command {
        Command::Id => print(enc, &client.id().await?, format_id),
        Command::Version => print(enc, &client.version().await?, |v| {
            format!("{}\n", v.version)
        }),
        Command::Peers(PeersCmd::Ls) => {
            for id in client.peers().await? {
                print(enc, &id, format_id)?;
            }
            Ok(())
        }
        Command::Peers(PeersCmd::Rm { peer }) => Ok(client.peer_remove(&peer).await?),
        Command::Health(HealthCmd::Metrics { name: None }) => {
            print(enc, &client.metric_names().await?, |n| {
                n.iter().map(|x| format!("{x}\n")).collect()
            })
        }
        Command::Health(HealthCmd::Metrics { name: Some(name) }) => {
            print(enc, &client.metrics(&name).await?, |ms| {
                ms.iter().map(format_metric).collect()
            })
        }
        Command::Ipfs(IpfsCmd::Gc { local }) => {
            print(enc, &client.repo_gc(local).await?, format_repo_gc)
        }
        Command::Health(HealthCmd::Graph {
            file,
            all_ipfs_peers,
        }) => {
            let g = client.graph().await?;
            if enc == Enc::Json {
                return print(enc, &g, |_| String::new());
            }
            let dot = format_graph(&g, all_ipfs_peers);
            match file {
                Some(f) => std::fs::write(&f, dot).with_context(|| f.display().to_string())?,
                None => print!("{dot}"),
            }
            Ok(())
        }
        Command::Health(HealthCmd::Alerts) => print(enc, &client.alerts().await?, |a| {
            a.iter().map(format_alert).collect()
        }),
        Command::Add {
            paths,
            recursive,
            quiet,
            quieter,
            wrap_with_directory,
            hidden,
            layout,
            chunker,
            raw_leaves,
            cid_version,
            hash,
            no_pin,
            local,
            no_stream,
            pin,
            wait,
            wait_timeout,
        } => {
            let mut q = pin.options()?.to_query();
            let wrap = wrap_with_directory || paths.len() > 1;
            let flags = [
                ("wrap-with-directory", wrap),
                ("hidden", hidden),
                ("raw-leaves", raw_leaves),
                ("no-pin", no_pin),
                ("local", local),
            ];
            for (k, on) in flags {
                if on {
                    q.push((k.into(), "true".into()));
                }
            }
            for (k, v) in [("layout", layout), ("chunker", chunker), ("hash", hash)] {
                if !v.is_empty() {
                    q.push((k.into(), v));
                }
            }
            if let Some(v) = cid_version {
                q.push(("cid-version".into(), v.to_string()));
            }
            if no_stream {
                q.push(("stream-channels".into(), "false".into()));
            }
            let form = upload::form(&paths, UploadOptions { recursive, hidden }).await?;
            let outputs = client.add(form, &q).await?;
            let root = outputs
                .iter()
                .rev()
                .find_map(|o| o.cid)
                .context("the peer reported no added CID")?;
            for o in outputs.iter().filter(|o| o.cid.is_some()) {
                let cid = o.cid.map(|c| c.to_string()).unwrap_or_default();
                match enc {
                    Enc::Json => println!("{}", serde_json::to_string_pretty(o)?),
                    _ if quieter => {}
                    _ if quiet => println!("{cid}"),
                    _ => println!("added {cid} {}", o.name),
                }
            }
            if quieter && enc == Enc::Text {
                println!("{root}");
            }
            if no_pin {
                return Ok(());
            }
            // A pin that failed after the upload shows only in a trailer, which
            // this client cannot read: the pinset says whether it happened.
            let pinned = client
                .allocation(&root)
                .await
                .with_context(|| format!("{root} was added but is not pinned in the cluster"))?;
            if wait {
                let t = ipfs_cluster::config::parse_duration(&wait_timeout)
                    .map_err(anyhow::Error::msg)?;
                let limit = usize::try_from(pinned.options.replication_factor_min).unwrap_or(0);
                wait_for(&client, &root, WaitTarget::Pinned, limit, t)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            Ok(())
        }
        Command::Status {
            cids,
            filter,
            local,
        } => {
            if cids.is_empty() {
                for g in client.status_all(&filter, local).await? {
                    print(enc, &g, format_status)?;
                }
            } else {
                for c in cids {
                    print(
                        enc,
                        &client.status_at(&parse_cid(&c)?, local).await?,
                        format_status,
                    )?;
                }
            }
            Ok(())
        }
        Command::Recover {
            cid: Some(c),
            local,
        } => print(
            enc,
            &client.recover(&parse_cid(&c)?, local).await?,
            format_status,
        ),
        Command::Recover { cid: None, local } => {
            for g in client.recover_all(local).await? {
                print(enc, &g, format_status)?;
            }
            Ok(())
        }
        Command::Pin(PinCmd::Ls { cid }) => {
            match cid {
                Some(c) => print(enc, &client.allocation(&parse_cid(&c)?).await?, format_pin)?,
                None => {
                    for p in client.allocations().await? {
                        print(enc, &p, format_pin)?;
                    }
                }
            }
            Ok(())
        }
        Command::Pin(PinCmd::Add {
            arg,
            mode,
            replication,
            pin,
            after,
        }) => {
            let mut opts = pin.options()?;
            opts.mode = mode.parse::<PinMode>().map_err(anyhow::Error::msg)?;
            if let Some(r) = replication {
                (opts.replication_factor_min, opts.replication_factor_max) = (r, r);
            }
            let pin = client.pin(&arg, &opts).await?;
            // Like upstream, --wait waits for the minimum replication (all peers when
            // the pin goes everywhere); `remote` counts as pinned.
            let limit = usize::try_from(pin.options.replication_factor_min).unwrap_or(0);
            after_op(&client, enc, &pin.cid, WaitTarget::Pinned, limit, &after).await
        }
        Command::Pin(PinCmd::Update {
            existing,
            new,
            name,
            expire_in,
            after,
        }) => {
            let opts = PinOptions {
                name,
                expire_at: expiry(expire_in.as_deref())?,
                pin_update: Some(parse_cid(&existing)?),
                ..Default::default()
            };
            let pin = client.pin(&new, &opts).await?;
            let limit = usize::try_from(pin.options.replication_factor_min).unwrap_or(0);
            after_op(&client, enc, &pin.cid, WaitTarget::Pinned, limit, &after).await
        }
        Command::Pin(PinCmd::Rm { arg, after }) => {
            let pin = client.unpin(&arg).await?;
            after_op(&client, enc, &pin.cid, WaitTarget::Unpinned, 0, &after).await
        }
    }
}

/// The expiry time of a pin made now with `--expire-in`.
fn expiry(expire_in: Option<&str>) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(e) = expire_in else {
        return Ok(None);
    };
    let d = ipfs_cluster::config::parse_duration(e).map_err(anyhow::Error::msg)?;
    Ok(Some(chrono::Utc::now() + chrono::Duration::from_std(d)?))
}

async fn after_op(
    client: &Client,
    enc: Enc,
    cid: &Cid,
    target: WaitTarget,
    limit: usize,
    after: &AfterOp,
) -> anyhow::Result<()> {
    let AfterOp {
        no_status,
        wait,
        wait_timeout,
        wait_limit,
    } = after;
    let (no_status, wait) = (*no_status, *wait);
    let limit = if *wait_limit > 0 { *wait_limit } else { limit };
    let g = if wait {
        let t = ipfs_cluster::config::parse_duration(wait_timeout).map_err(anyhow::Error::msg)?;
        wait_for(client, cid, target, limit, t)
            .await
            .map_err(anyhow::Error::msg)?
    } else {
        if no_status {
            return Ok(());
        }
        // As upstream: give the peers a moment before showing the status.
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.status(cid).await?
    };
    if no_status {
        return Ok(());
    }
    print(enc, &g, format_status)
}
