//! `ipfs-cluster-ctl`: the command-line client of a peer's REST API.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipfs_cluster::ctl::{
    WaitTarget, format_alert, format_id, format_metric, format_pin, format_repo_gc, format_status,
    wait_for,
};
use ipfs_cluster::restapi::client::Client;
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
    /// Cluster health: metrics, alerts.
    #[command(subcommand)]
    Health(HealthCmd),
    /// The IPFS daemons behind the peers: gc.
    #[command(subcommand)]
    Ipfs(IpfsCmd),
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

#[derive(Subcommand)]
enum PinCmd {
    /// Pins a CID or path in the cluster.
    Add {
        /// CID or /ipfs/ path.
        arg: String,
        /// Pin name.
        #[arg(long, short = 'n', default_value = "")]
        name: String,
        /// recursive or direct.
        #[arg(long, default_value = "recursive")]
        mode: String,
        /// Sets both minimum and maximum replication.
        #[arg(long, short = 'r')]
        replication: Option<i32>,
        /// Minimum replication.
        #[arg(long, alias = "replication-min", default_value_t = 0)]
        rmin: i32,
        /// Maximum replication.
        #[arg(long, alias = "replication-max", default_value_t = 0)]
        rmax: i32,
        /// Peers to allocate to first (comma-separated peer IDs).
        #[arg(long, alias = "allocs", value_delimiter = ',')]
        allocations: Vec<String>,
        /// Metadata `key=value` (repeatable).
        #[arg(long)]
        metadata: Vec<String>,
        /// Expire after this long (Go duration).
        #[arg(long)]
        expire_in: Option<String>,
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
        Command::Health(HealthCmd::Alerts) => print(enc, &client.alerts().await?, |a| {
            a.iter().map(format_alert).collect()
        }),
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
            name,
            mode,
            replication,
            rmin,
            rmax,
            allocations,
            metadata,
            expire_in,
            after,
        }) => {
            let mut meta = BTreeMap::new();
            for kv in metadata {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("metadata must be key=value, got {kv:?}");
                };
                meta.insert(k.to_string(), v.to_string());
            }
            let (rmin, rmax) = replication.map(|r| (r, r)).unwrap_or((rmin, rmax));
            let mut opts = PinOptions {
                name,
                mode: mode.parse::<PinMode>().map_err(anyhow::Error::msg)?,
                replication_factor_min: rmin,
                replication_factor_max: rmax,
                metadata: meta,
                user_allocations: allocations,
                ..Default::default()
            };
            opts.expire_at = expiry(expire_in.as_deref())?;
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
    } = after;
    let (no_status, wait) = (*no_status, *wait);
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
