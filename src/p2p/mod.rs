//! The peer's libp2p host: a private network (pnet) over TCP with noise and yamux
//! (without a cluster secret: TCP with noise and yamux, and QUIC v1), carrying
//! opaque byte payloads on two request-response protocols and, for Raft, pipes.
//!
//! - `/ipfs-cluster-rs/raft/1.0.0`: Raft RPCs; requests and responses up to 64 MiB.
//! - `/ipfs-cluster-rs/rpc/1.0.0`: cluster RPCs; requests up to 16 MiB, responses
//!   up to 256 MiB.
//! - `/ipfs-cluster-rs/raft-pipe/1.0.0`: one long-lived stream per peer pair that
//!   carries the Raft requests up to 256 KiB and their answers (see `pipe.rs`).
//!
//! Callers serialise their own messages. One task owns the swarm ([`task`]); the
//! cloneable [`P2p`] handle and the [`Inbound`] queue are the only ways in and out,
//! so nothing outside can block the network loop. Peers learn each other's
//! addresses from `connect`, [`P2p::add_address`], identify and the peerstore file,
//! which is loaded at start and written back on shutdown.

mod bandwidth;
mod behaviour;
mod inflight;
mod peerstore;
mod pipe;
mod pipe_behaviour;
mod task;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol as MaProtocol;
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::task::{Command, PeerstoreFile, SwarmTask};

/// Capacity of the inbound request queue. When the application falls this far
/// behind, further requests fail at their callers rather than pile up in memory.
const INBOUND_QUEUE: usize = 1024;
/// Capacity of the command queue to the swarm task.
const COMMAND_QUEUE: usize = 1024;
/// How long `start` waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to the libp2p-side timeouts for the caller-side safety net, so that the
/// swarm's own (more precise) error normally wins.
const CALLER_SLACK: Duration = Duration::from_secs(5);

/// Which protocol a payload travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Raft RPCs (append entries, vote, snapshot chunks).
    Raft,
    /// Cluster RPCs between peers.
    Rpc,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The peer could not be dialled: refused, wrong secret, no known address.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No reply within the request timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The remote handler dropped the reply or sent something undecodable.
    #[error("remote error: {0}")]
    Remote(String),
    /// The peer refused the request unanswered: this peer already has as many
    /// requests in flight there as it may (or the peer's queue is full). The
    /// peer is up; retry once earlier requests are answered.
    #[error("peer busy: {0}")]
    Busy(String),
    /// The host has stopped.
    #[error("p2p host is shut down")]
    Shutdown,
    /// Any other network or set-up failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// An address that cannot be used as asked (e.g. no `/p2p/<id>` where needed).
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A request larger than the protocol allows; it was not sent.
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Encoded size of the payload.
        size: u64,
        /// The protocol's limit.
        max: u64,
    },
}

/// How to run the host.
pub struct P2pConfig {
    /// The peer's identity; its public key gives the peer ID.
    pub keypair: libp2p_identity::Keypair,
    /// The cluster secret: only peers with the same 32 bytes can connect. `None`
    /// (upstream's empty secret) is an unprotected network, which may also use QUIC.
    pub secret: Option<[u8; 32]>,
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// How long a request may wait for its reply (also the inbound answer deadline).
    pub request_timeout: Duration,
    /// File of multiaddrs with `/p2p/<id>`, one per line; read at start, written on
    /// shutdown and by [`P2p::save_peerstore`].
    pub peerstore: Option<PathBuf>,
    /// Carry Raft requests over pipes (one stream per peer pair) and serve the
    /// pipes of other peers; without, the host behaves as earlier versions did.
    pub pipes: bool,
}

/// An inbound request for the application; answer through `reply` (dropping it =
/// error at the caller).
pub struct Inbound {
    /// The protocol it arrived on.
    pub protocol: Protocol,
    /// The requesting peer (authenticated by noise).
    pub peer: PeerId,
    /// The request bytes.
    pub payload: Vec<u8>,
    /// Where the answer goes.
    pub reply: Reply,
}

/// Where the answer to an [`Inbound`] request goes. Dropping it unanswered is an
/// error at the caller.
pub struct Reply(Option<ReplyTo>);

enum ReplyTo {
    /// The request came on a stream of its own; the swarm task writes the answer.
    Stream(oneshot::Sender<Vec<u8>>),
    /// The request came over a pipe; the answer is written to it.
    Pipe(pipe::PipeReply),
}

impl Reply {
    fn stream(tx: oneshot::Sender<Vec<u8>>) -> Self {
        Reply(Some(ReplyTo::Stream(tx)))
    }

    fn pipe(p: pipe::PipeReply) -> Self {
        Reply(Some(ReplyTo::Pipe(p)))
    }

    /// Sends the answer; gives it back when the requester is known to be gone.
    pub fn send(mut self, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.0.take() {
            Some(ReplyTo::Stream(tx)) => tx.send(payload),
            Some(ReplyTo::Pipe(p)) => {
                p.send(&payload);
                Ok(())
            }
            None => Err(payload),
        }
    }

    /// Drops it without a word to the requester (who is told otherwise).
    fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(ReplyTo::Pipe(p)) = self.0.take() {
            p.dropped();
        }
    }
}

/// A handle to the running host. Cheap to clone; all clones talk to the same swarm
/// task.
#[derive(Clone)]
pub struct P2p {
    commands: mpsc::Sender<Command>,
    /// Bytes per protocol, counted by the swarm task.
    bandwidth: Arc<bandwidth::Bandwidth>,
    peer_id: PeerId,
    /// The libp2p-side bounds, for the caller-side safety nets.
    request_deadline: Duration,
    /// Raft requests go over these when they can.
    pipes: Arc<pipe::Pipes>,
}

impl P2p {
    /// Starts the swarm task on `tasks`; it stops when `cancel` fires. Returns once
    /// listening.
    pub async fn start(
        cfg: P2pConfig,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<(P2p, mpsc::Receiver<Inbound>), P2pError> {
        let peer_id = cfg.keypair.public().to_peer_id();
        let mut swarm =
            behaviour::build_swarm(cfg.keypair, cfg.secret, cfg.request_timeout, cfg.pipes)?;

        let listen = usable_listen_addrs(&cfg.listen, cfg.secret.is_some())?;
        let mut pending_listeners = HashSet::new();
        for addr in &listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| P2pError::Transport(format!("cannot listen on {addr}: {e}")))?;
            pending_listeners.insert(id);
        }

        let mut book = peerstore::AddressBook::default();
        if let Some(path) = &cfg.peerstore {
            // The file lists the best address first; adding in reverse keeps that order.
            for (peer, addr) in peerstore::load(path).await.into_iter().rev() {
                if peer != peer_id
                    && let Some(addr) = book.add(peer, addr)
                {
                    swarm.add_peer_address(peer, addr);
                }
            }
        }

        let (command_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        // A child token lets a failed start stop its own task without cancelling
        // the caller's other work.
        let task_cancel = cancel.child_token();
        let bandwidth = Arc::new(bandwidth::Bandwidth::default());
        let task = SwarmTask {
            swarm,
            commands,
            command_tx: command_tx.clone(),
            inbound: inbound_tx,
            book,
            peerstore: cfg.peerstore.map(|path| PeerstoreFile {
                path,
                lock: Arc::new(tokio::sync::Mutex::new(())),
            }),
            tasks: tasks.clone(),
            cancel: task_cancel.clone(),
            request_timeout: cfg.request_timeout,
            pending_listeners,
            ready: Some(ready_tx),
            requests: Default::default(),
            dials: Default::default(),
            dial_errors: Default::default(),
            bandwidth: bandwidth.clone(),
            inflight: inflight::InflightLimit::new(inflight::MAX_INFLIGHT_PER_PEER),
        };
        let pipes = Arc::new(pipe::Pipes::new(
            tasks.clone(),
            task_cancel.clone(),
            bandwidth.clone(),
            cfg.request_timeout,
        ));
        tasks.spawn(task.run());

        let ready = tokio::select! {
            _ = cancel.cancelled() => Err(P2pError::Shutdown),
            r = tokio::time::timeout(LISTEN_TIMEOUT, ready_rx) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(P2pError::Shutdown),
                Err(_) => Err(P2pError::Transport("listeners did not come up".into())),
            },
        };
        if let Err(e) = ready {
            task_cancel.cancel();
            return Err(e);
        }
        let handle = P2p {
            commands: command_tx,
            bandwidth,
            peer_id,
            request_deadline: cfg.request_timeout + behaviour::HANDSHAKE_TIMEOUT + CALLER_SLACK,
            pipes,
        };
        Ok((handle, inbound_rx))
    }

    /// Bytes sent and received per protocol, with recent rates.
    pub fn bandwidth(&self) -> crate::types::BandwidthByProtocol {
        self.bandwidth.snapshot()
    }

    /// Our peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses we actually listen on (with real ports), each ending in
    /// `/p2p/<our id>`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Remembers an address for `peer` (an address ending in `/p2p/<id>` may be given
    /// as is; one naming another peer is ignored).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.commands.send(Command::AddAddress { peer, addr }).await;
    }

    /// Addresses known for `peer`, best first, without `/p2p/<id>`.
    pub async fn addresses_of(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.ask(|reply| Command::AddressesOf { peer, reply })
            .await
            .unwrap_or_default()
    }

    /// Dials `addr` (must end in `/p2p/<id>`) and waits until connected or the dial
    /// fails. A bare `/p2p/<id>` dials the addresses already known for that peer.
    /// On success the address joins the address book.
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerId, P2pError> {
        let (peer, base) = split_p2p(&addr).ok_or_else(|| {
            P2pError::InvalidAddress(format!("{addr} does not end in /p2p/<peer id>"))
        })?;
        if peer == self.peer_id {
            return Err(P2pError::InvalidAddress(format!("{addr} is this peer")));
        }
        let addr = (!base.is_empty()).then_some(base);
        let deadline = behaviour::HANDSHAKE_TIMEOUT + CALLER_SLACK;
        self.ask_within(deadline, |reply| Command::Connect { peer, addr, reply })
            .await?
    }

    /// Sends a request and waits for the reply (request_timeout).
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: Protocol,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, P2pError> {
        if protocol == Protocol::Raft {
            let open = |peer| {
                let (reply, rx) = oneshot::channel();
                // A full command queue: no pipe this time (the dropped reply says so).
                let _ = self.commands.try_send(Command::OpenPipe { peer, reply });
                rx
            };
            if let Some(answer) = self.pipes.request(peer, &payload, &open).await {
                return answer;
            }
        }
        self.ask_within(self.request_deadline, |reply| Command::Request {
            peer,
            protocol,
            payload,
            reply,
        })
        .await?
    }

    /// Peers currently connected.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        self.ask(Command::ConnectedPeers).await.unwrap_or_default()
    }

    /// Writes the known peer addresses to the peerstore file (also done when the
    /// task stops). Returns once written; failures are logged, as the file is only
    /// a cache.
    pub async fn save_peerstore(&self) {
        let _ = self.ask(Command::SavePeerstore).await;
    }

    /// Sends a command carrying a reply oneshot and waits for the answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| P2pError::Shutdown)?;
        rx.await.map_err(|_| P2pError::Shutdown)
    }

    /// [`Self::ask`] with a safety net: the swarm task resolves every request
    /// itself, but a caller must not hang should that ever go wrong.
    async fn ask_within<T>(
        &self,
        deadline: Duration,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        with_deadline(deadline, self.ask(make)).await
    }
}

async fn with_deadline<T>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, P2pError>>,
) -> Result<T, P2pError> {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or_else(|_| Err(P2pError::Timeout(format!("no answer within {deadline:?}"))))
}

/// The listen addresses this host can serve, the others skipped with one warning
/// that says why (none left is an error). TCP always. QUIC v1 (`/udp/<port>/quic-v1`)
/// only without a cluster secret: a private network (pnet) is a handshake over a
/// stream transport, which QUIC is not — upstream's default `listen_multiaddress`
/// lists `/udp/9096/quic`, and upstream itself serves only TCP and websockets.
/// `/quic` (draft-29) is gone from libp2p; websockets are not offered here.
fn usable_listen_addrs(addrs: &[Multiaddr], private: bool) -> Result<Vec<Multiaddr>, P2pError> {
    fn protocols(a: &Multiaddr) -> Vec<MaProtocol<'_>> {
        a.iter().collect()
    }
    let is_plain_tcp = |a: &Multiaddr| {
        let p = protocols(a);
        p.iter().any(|p| matches!(p, MaProtocol::Tcp(_)))
            && !p.iter().any(|p| {
                matches!(
                    p,
                    MaProtocol::Udp(_)
                        | MaProtocol::Quic
                        | MaProtocol::QuicV1
                        | MaProtocol::Ws(_)
                        | MaProtocol::Wss(_)
                        | MaProtocol::WebTransport
                        | MaProtocol::WebRTCDirect
                )
            })
    };
    let is_quic_v1 = |a: &Multiaddr| {
        let p = protocols(a);
        matches!(
            p.as_slice(),
            [
                MaProtocol::Ip4(_) | MaProtocol::Ip6(_),
                MaProtocol::Udp(_),
                MaProtocol::QuicV1
            ]
        )
    };
    let (mut usable, mut skipped) = (Vec::new(), Vec::new());
    for a in addrs {
        if is_plain_tcp(a) || (!private && is_quic_v1(a)) {
            usable.push(a.clone());
        } else {
            skipped.push(a.to_string());
        }
    }
    if !skipped.is_empty() {
        let why = if private {
            "the cluster secret makes a private network (pnet), which needs a TCP transport \
             (QUIC and websockets cannot carry it); peers reach this one over TCP"
        } else {
            "only TCP and QUIC v1 (/udp/<port>/quic-v1) are served; /quic (draft-29) is no \
             longer supported by libp2p"
        };
        tracing::warn!("not listening on {}: {why}", skipped.join(", "));
    }
    if !usable.iter().any(is_plain_tcp) && private {
        return Err(P2pError::Transport(
            "cluster.listen_multiaddress has no TCP address (/ip4/…/tcp/<port>): a private \
             network needs TCP"
                .into(),
        ));
    }
    if usable.is_empty() {
        return Err(P2pError::Transport(
            "cluster.listen_multiaddress has no TCP or QUIC v1 address".into(),
        ));
    }
    Ok(usable)
}

/// Parses "/ip4/1.2.3.4/tcp/9096/p2p/12D3..." into (peer id, address). The address
/// is what precedes `/p2p/<id>` (empty for a bare `/p2p/<id>`); `None` when the
/// multiaddr does not end in `/p2p/<id>`.
pub fn split_p2p(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop()? {
        MaProtocol::P2p(peer) => Some((peer, base)),
        _ => None,
    }
}
