//! `ipfs-cluster-ctl`: the command-line client of a peer's REST API.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ipfs_cluster::cli::ReplicationArgs;
use ipfs_cluster::ctl::{
    WaitTarget, format_added, format_alert, format_bandwidth, format_error, format_graph,
    format_id, format_metric, format_pin, format_repo_gc, format_status, human_bytes, to_go_json,
    wait_for,
};
use ipfs_cluster::restapi::client::{AddedOutput, Client, ClientError, ClientOptions};
use ipfs_cluster::restapi::upload::{self, UploadOptions, UploadProgress};
use ipfs_cluster::types::{Cid, PinMode, PinOptions, TrackerStatusFilter};

const ABOUT: &str = "CLI for IPFS Cluster";

const LONG_ABOUT: &str = "\
ipfs-cluster-ctl is a tool to manage IPFS Cluster nodes.

Use \"ipfs-cluster-ctl help\" to list all available commands and
\"ipfs-cluster-ctl help <command>\" to get usage information for a
specific one.

ipfs-cluster-ctl uses the IPFS Cluster API to perform requests and
display responses in a user-readable format. The location of the IPFS
Cluster server is assumed to be /ip4/127.0.0.1/tcp/9094, but can be
configured with the --host option. If several multiaddresses are specified
(comma-separated), requests will be sent to the first one and fail-over
over to the others.";

#[derive(Parser)]
#[command(
    name = "ipfs-cluster-ctl",
    version = ipfs_cluster::VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    disable_help_subcommand = true,
    max_term_width = 120
)]
struct Cli {
    /// API endpoint multiaddresses (comma-separated), tried in order.
    #[arg(
        long,
        short = 'l',
        global = true,
        default_value = "/ip4/127.0.0.1/tcp/9094"
    )]
    host: String,
    /// Cluster secret for upstream's libp2p-http endpoint, which this ctl does not
    /// speak: refused with a hint.
    #[arg(long, hide = true)]
    secret: Option<String>,
    /// Use https to connect to the API.
    #[arg(long, short = 's')]
    https: bool,
    /// Do not verify the server's TLS certificate (only with https).
    #[arg(long, global = true)]
    no_check_certificate: bool,
    /// Output format encoding [text, json].
    #[arg(long = "encoding", visible_alias = "enc", global = true, value_enum, default_value_t = Enc::Text)]
    enc: Enc,
    /// Basic auth credentials <username>[:<password>]; implies --https unless --force-http.
    #[arg(long, global = true, env = "CLUSTER_CREDENTIALS")]
    basic_auth: Option<String>,
    /// Force HTTP: only valid with --basic-auth.
    #[arg(long, short = 'f')]
    force_http: bool,
    /// Give up after this many seconds (0: never); exit code 62 then, as upstream.
    #[arg(long, short = 't', global = true, default_value_t = 0)]
    timeout: u64,
    /// Set debug log level (requests and answers on stderr).
    #[arg(long, short = 'd', global = true)]
    debug: bool,
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
    /// Retrieve peer information.
    Id,
    /// List and manage IPFS Cluster peers.
    #[command(subcommand)]
    Peers(PeersCmd),
    /// Add a file or directory to ipfs and pin it in the cluster.
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
        /// 'unixfs' (add as a unixfs DAG) or 'car' (import one CAR file).
        #[arg(long, default_value = "unixfs")]
        format: String,
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
    /// Pin and unpin and list items in IPFS Cluster.
    #[command(subcommand)]
    Pin(PinCmd),
    /// Retrieve the status of tracked items.
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
    /// Recover tracked items in error state (all when no CID is given).
    Recover {
        /// A CID.
        cid: Option<String>,
        /// Only on this peer.
        #[arg(long)]
        local: bool,
    },
    /// Retrieve cluster version.
    Version,
    /// Cluster monitoring information.
    #[command(subcommand)]
    Health(HealthCmd),
    /// Manage IPFS daemon.
    #[command(subcommand)]
    Ipfs(IpfsCmd),
    /// List all commands.
    #[command(hide = true)]
    Commands,
    /// Shows a list of commands or help for one command.
    #[command(visible_alias = "h")]
    Help {
        /// The command (and subcommand) to explain.
        command: Vec<String>,
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
    /// Create a graph displaying connectivity of cluster peers (Graphviz DOT).
    Graph {
        /// Write to this file instead of standard output.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
        /// Include daemons that are not the cluster's.
        #[arg(long)]
        all_ipfs_peers: bool,
    },
    /// List latest metrics logged by this peer (all metric names without one).
    Metrics {
        /// A metric name (e.g. freespace, ping, tag:group).
        name: Option<String>,
    },
    /// List the latest expired metric alerts.
    Alerts,
    /// Lists bandwidth stats for libp2p protocols.
    Bandwidth,
}

#[derive(Subcommand)]
enum IpfsCmd {
    /// Run garbage collection on IPFS repos of cluster peers.
    Gc {
        /// Only on this peer's daemon.
        #[arg(long)]
        local: bool,
    },
}

#[derive(Subcommand)]
enum PeersCmd {
    /// List the nodes participating in the IPFS Cluster.
    Ls,
    /// Remove a peer from the Cluster.
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
    /// Pin an item in the cluster.
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
    /// Unpin an item from the cluster.
    Rm {
        /// CID or /ipfs/ path.
        arg: String,
        #[command(flatten)]
        after: AfterOp,
    },
    /// Pin a new item based on an existing one.
    ///
    /// Pins NEW with the options and allocations of the pin EXISTING, which stays
    /// pinned (remove it with `pin rm` once NEW is pinned).
    #[command(verbatim_doc_comment)]
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
    /// List items in the cluster pinset.
    Ls {
        /// A CID (all when absent).
        cid: Option<String>,
        /// Comma-separated pin types when listing all: all, pin, meta-pin,
        /// clusterdag-pin, shard-pin.
        #[arg(long, default_value = "all")]
        filter: String,
    },
}

/// Why a command failed, and so what it prints and how it exits.
enum Failure {
    /// The client's error: printed as upstream's error block (exit 2 for an
    /// API answer, 1 when no API answered).
    Client(ClientError),
    /// Anything else: `error <what>` on stderr, exit 1.
    Other(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1 as upstream's: 2 means the API answered an error.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.debug {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter("ipfs_cluster=debug,ipfs_cluster_ctl=debug")
            .try_init();
        tracing::debug!("debug level enabled");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error starting: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (timeout, enc) = (cli.timeout, cli.enc);
    let outcome = rt.block_on(async {
        if timeout == 0 {
            return Some(run(cli).await);
        }
        tokio::time::timeout(Duration::from_secs(timeout), run(cli))
            .await
            .ok()
    });
    let failure = match outcome {
        Some(Ok(())) => return ExitCode::SUCCESS,
        // What the API said, or that it could not be reached, gets upstream's
        // block; a bad host or file is the command line's own error.
        Some(Err(e)) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Host(_) | ClientError::Input(_)) | None => Failure::Other(e),
            Some(_) => match e.downcast::<ClientError>() {
                Ok(c) => Failure::Client(c),
                Err(e) => Failure::Other(e),
            },
        },
        None => {
            eprintln!("error: timed out after {timeout}s");
            // Upstream's exit code for an exceeded deadline (ETIME).
            return ExitCode::from(62);
        }
    };
    let _ = std::io::stdout().flush();
    match failure {
        Failure::Client(e) => {
            let (code, message) = match &e {
                ClientError::Api { code, message } => (*code, message.clone()),
                other => (0, other.to_string()),
            };
            match enc {
                Enc::Text => print!("{}", format_error(code, &message)),
                Enc::Json => {
                    let v = serde_json::json!({"code": code, "message": message});
                    println!("{}", to_go_json(&v).unwrap_or_default());
                }
            }
            // As upstream: 2 when the call went through and the API said no,
            // 1 when there was a problem with the call itself.
            if code == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::from(2)
            }
        }
        Failure::Other(e) => {
            eprintln!("error {e:#}");
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
        Enc::Json => println!("{}", to_go_json(v)?),
        Enc::Text => print!("{}", text(v)),
    }
    Ok(())
}

fn parse_cid(s: &str) -> anyhow::Result<Cid> {
    s.parse().with_context(|| format!("parsing cid {s:?}"))
}

/// Every command's full name, parents first, as upstream's `commands` lists them.
fn walk_commands(cmd: &clap::Command, parent: &str, out: &mut Vec<String>) {
    for sub in cmd.get_subcommands() {
        // Aliases too, as urfave/cli's full names ("help, h").
        let names: Vec<&str> = std::iter::once(sub.get_name())
            .chain(sub.get_visible_aliases())
            .collect();
        let name = format!("{parent} {}", names.join(", "));
        out.push(name.clone());
        walk_commands(sub, &name, out);
    }
}

/// Prints the help of the command path `path` (the program's without one).
fn print_help(path: &[String]) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut at = &mut cmd;
    for name in path {
        at = at
            .find_subcommand_mut(name)
            .with_context(|| format!("no help topic for '{name}'"))?;
    }
    at.print_long_help()?;
    Ok(())
}

/// The client `cli` asks for: HTTPS with --https, or with --basic-auth unless
/// --force-http, as upstream.
fn client(cli: &Cli) -> anyhow::Result<Client> {
    if cli.secret.is_some() {
        bail!(
            "--secret is for upstream's libp2p-http API endpoint, which this ctl does not \
             speak: give --host the REST API's address (api.restapi.http_listen_multiaddress)"
        );
    }
    let auth = cli.basic_auth.as_deref().map(|a| match a.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (a.to_string(), String::new()),
    });
    let mut https = cli.https;
    if auth.is_some() && !https && !cli.force_http {
        tracing::warn!(
            "SSL automatically enabled with basic auth credentials. Set \"force-http\" to disable"
        );
        https = true;
    }
    let opts = ClientOptions {
        https,
        no_verify_cert: cli.no_check_certificate,
        auth,
    };
    Client::with_options(&cli.host, opts).context("creating API client")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Commands => {
            let mut names = Vec::new();
            walk_commands(&Cli::command(), "ipfs-cluster-ctl", &mut names);
            for n in names {
                println!("{n}");
            }
            return Ok(());
        }
        Command::Help { command } => return print_help(command),
        _ => {}
    }
    let client = client(&cli)?;
    let enc = cli.enc;
    match cli.command {
        Command::Commands | Command::Help { .. } => Ok(()),
        Command::Id => print(enc, &client.id().await?, format_id),
        Command::Version => print(enc, &client.version().await?, |v| {
            format!("{}\n", v.version)
        }),
        Command::Peers(PeersCmd::Ls) => {
            let mut shown = Ok(());
            client
                .peers(|id| {
                    if shown.is_ok() {
                        shown = print(enc, &id, format_id);
                    }
                })
                .await?;
            shown
        }
        Command::Peers(PeersCmd::Rm { peer }) => {
            peer.parse::<libp2p_identity::PeerId>()
                .with_context(|| format!("parsing peer ID {peer:?}"))?;
            Ok(client.peer_remove(&peer).await?)
        }
        Command::Health(HealthCmd::Metrics { name: None }) => {
            print(enc, &client.metric_names().await?, |n| {
                n.iter().map(|x| format!("{x}\n")).collect()
            })
        }
        Command::Health(HealthCmd::Metrics { name: Some(name) }) => {
            let now = chrono::Utc::now();
            print(enc, &client.metrics(&name).await?, |ms| {
                ms.iter().map(|m| format_metric(m, now)).collect()
            })
        }
        Command::Health(HealthCmd::Alerts) => {
            let now = chrono::Utc::now();
            print(enc, &client.alerts().await?, |a| {
                a.iter().map(|x| format_alert(x, now)).collect()
            })
        }
        Command::Health(HealthCmd::Bandwidth) => {
            print(enc, &client.bandwidth().await?, format_bandwidth)
        }
        Command::Ipfs(IpfsCmd::Gc { local }) => {
            print(enc, &client.repo_gc(local).await?, format_repo_gc)
        }
        Command::Health(HealthCmd::Graph {
            file,
            all_ipfs_peers,
        }) => {
            // Always DOT, whatever the encoding, as upstream.
            let dot = format_graph(&client.graph().await?, all_ipfs_peers);
            match file {
                Some(f) => std::fs::write(&f, dot)
                    .with_context(|| format!("creating output file {}", f.display()))?,
                None => print!("{dot}"),
            }
            Ok(())
        }
        Command::Add {
            paths,
            recursive,
            quiet,
            quieter,
            wrap_with_directory,
            hidden,
            format,
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
            let rmin = pin.replication.rmin;
            let mut q = pin.options()?.to_query();
            let wrap = wrap_with_directory || paths.len() > 1;
            if format == "car" && wrap {
                bail!(
                    "only a single CAR file can be added and wrap-with-directory is not supported"
                );
            }
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
            if format != "unixfs" {
                q.push(("format".into(), format));
            }
            if let Some(v) = cid_version {
                q.push(("cid-version".into(), v.to_string()));
            }
            if no_stream {
                q.push(("stream-channels".into(), "false".into()));
            }
            let progress = std::io::stderr()
                .is_terminal()
                .then(|| Arc::new(UploadProgress::default()));
            let opts = UploadOptions {
                recursive,
                hidden,
                progress: progress.clone(),
            };
            let bar = progress.map(ProgressBar::start);
            let quiet = quiet || quieter;
            let mut last: Option<AddedOutput> = None;
            let mut buffered = Vec::new();
            let mut shown = Ok(());
            let res = client
                .add(
                    || async {
                        upload::form(&paths, &opts)
                            .await
                            .map_err(|e| ClientError::Input(e.to_string()))
                    },
                    &q,
                    |o| {
                        if o.cid.is_none() {
                            return;
                        }
                        last = Some(o.clone());
                        if no_stream {
                            buffered.push(o);
                        } else if !quieter && shown.is_ok() {
                            if let Some(b) = &bar {
                                b.clear();
                            }
                            shown = print(enc, &o, |o| format_added(o, quiet));
                        }
                    },
                )
                .await;
            if let Some(b) = bar {
                b.stop().await;
            }
            res?;
            shown?;
            let Some(root) = last.and_then(|o| o.cid.map(|c| (c, o))) else {
                bail!("the peer reported no added CID");
            };
            let (root, root_out) = root;
            if no_stream {
                // Text and JSON: the whole list, or with -Q the root only.
                let list = if quieter { vec![root_out] } else { buffered };
                print(enc, &list, |l| {
                    l.iter().map(|o| format_added(o, quiet)).collect()
                })?;
            } else if quieter {
                print(enc, &root_out, |o| format_added(o, true))?;
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
                    .map_err(anyhow::Error::msg)
                    .context("parsing wait-timeout")?;
                let limit = usize::try_from(pinned.options.replication_factor_min)
                    .or(usize::try_from(rmin))
                    .unwrap_or(0);
                wait_for(&client, &root, WaitTarget::Pinned, limit, t)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("waiting for pin status")?;
            }
            Ok(())
        }
        Command::Status {
            cids,
            filter,
            local,
        } => {
            if cids.is_empty() {
                if !filter.is_empty() {
                    filter
                        .parse::<TrackerStatusFilter>()
                        .map_err(|_| anyhow::anyhow!("invalid filter name"))
                        .context("parsing filter flag")?;
                }
                let mut shown = Ok(());
                client
                    .status_all(&filter, local, |g| {
                        if shown.is_ok() {
                            shown = print(enc, &g, format_status);
                        }
                    })
                    .await?;
                shown?;
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
            let mut shown = Ok(());
            client
                .recover_all(local, |g| {
                    if shown.is_ok() {
                        shown = print(enc, &g, format_status);
                    }
                })
                .await?;
            shown
        }
        Command::Pin(PinCmd::Ls { cid, filter }) => {
            match cid {
                Some(c) => print(enc, &client.allocation(&parse_cid(&c)?).await?, format_pin)?,
                None => {
                    let mut shown = Ok(());
                    client
                        .allocations(&filter, |p| {
                            if shown.is_ok() {
                                shown = print(enc, &p, format_pin);
                            }
                        })
                        .await?;
                    shown?;
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
            after_op(&client, enc, &pin, WaitTarget::Pinned, limit, &after).await
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
            after_op(&client, enc, &pin, WaitTarget::Pinned, limit, &after).await
        }
        Command::Pin(PinCmd::Rm { arg, after }) => {
            let pin = client.unpin(&arg).await?;
            after_op(&client, enc, &pin, WaitTarget::Unpinned, 0, &after).await
        }
    }
}

/// The upload's progress on stderr (a terminal), redrawn a few times a second.
struct ProgressBar {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressBar {
    fn start(progress: Arc<UploadProgress>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let p = progress;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(150));
            loop {
                tokio::select! {
                    _ = tick.tick() => draw(&p),
                    _ = &mut stopped => break,
                }
            }
        });
        ProgressBar { stop, task }
    }

    /// Wipes the bar so that a line of output can be printed in its place.
    fn clear(&self) {
        eprint!("\r\x1b[2K");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        eprint!("\r\x1b[2K");
    }
}

fn draw(p: &UploadProgress) {
    const WIDTH: u64 = 40;
    let (sent, total) = (
        p.sent.load(Ordering::Relaxed),
        p.total.load(Ordering::Relaxed),
    );
    if total == 0 {
        // The upload is still being put together.
        return;
    }
    let done = (sent * WIDTH).checked_div(total).unwrap_or(0).min(WIDTH) as usize;
    let pct = (sent * 100).checked_div(total).unwrap_or(0).min(100);
    eprint!(
        "\r\x1b[2K[{}{}] {pct:>3}% {} / {}",
        "=".repeat(done),
        " ".repeat(WIDTH as usize - done),
        human_bytes(sent),
        human_bytes(total)
    );
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
    pin: &ipfs_cluster::types::Pin,
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
    let limit = if *wait_limit > 0 { *wait_limit } else { limit };
    let waited = if *wait {
        let t = ipfs_cluster::config::parse_duration(wait_timeout)
            .map_err(anyhow::Error::msg)
            .context("parsing wait-timeout")?;
        Some(
            wait_for(client, &pin.cid, target, limit, t)
                .await
                .map_err(anyhow::Error::msg)
                .context("waiting for pin status")?,
        )
    } else {
        None
    };
    // As upstream: --no-status shows the pin as the API returned it.
    if *no_status {
        return print(enc, pin, format_pin);
    }
    let g = match waited {
        Some(g) => g,
        None => {
            // As upstream: give the peers a moment before showing the status.
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.status(&pin.cid).await?
        }
    };
    print(enc, &g, format_status)
}
