//! The task that owns the swarm. Everything else reaches it through [`Command`]s;
//! it answers through oneshots and never awaits application code, so a slow
//! handler cannot stall the network.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol as MaProtocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::behaviour::{Behaviour, BehaviourEvent, Payload, Refusal, Response};
use super::peerstore::{self, AddressBook};
use super::{Inbound, P2pError, Protocol};

/// Requests from [`super::P2p`] handles (and reply tasks) to the swarm task.
pub(super) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    AddressesOf {
        peer: PeerId,
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Connect {
        peer: PeerId,
        /// `None` when the caller gave a bare `/p2p/<id>`: dial the known addresses.
        addr: Option<Multiaddr>,
        reply: oneshot::Sender<Result<PeerId, P2pError>>,
    },
    Request {
        peer: PeerId,
        protocol: Protocol,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, P2pError>>,
    },
    /// A new pipe stream to a connected peer.
    OpenPipe {
        peer: PeerId,
        reply: super::pipe_behaviour::OpenReply,
    },
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    SavePeerstore(oneshot::Sender<()>),
    /// The application's answer to an inbound request, relayed by its reply task.
    Respond {
        protocol: Protocol,
        channel: ResponseChannel<Response>,
        payload: Vec<u8>,
    },
}

/// Outcome of the listen phase, reported once to [`super::P2p::start`].
pub(super) type Ready = oneshot::Sender<Result<(), P2pError>>;
/// Where the reply to an outbound request goes.
type ReplyTo = oneshot::Sender<Result<Vec<u8>, P2pError>>;

/// At most this many dial errors are remembered for error messages; they are
/// normally consumed right away by the request that caused the dial.
const MAX_DIAL_ERRORS: usize = 1024;

pub(super) struct SwarmTask {
    pub swarm: Swarm<Behaviour>,
    pub commands: mpsc::Receiver<Command>,
    /// Handed to reply tasks so answers come back through the command queue.
    pub command_tx: mpsc::Sender<Command>,
    pub inbound: mpsc::Sender<Inbound>,
    pub book: AddressBook,
    pub peerstore: Option<PeerstoreFile>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    pub request_timeout: Duration,
    /// Listeners that have not reported an address yet, and whom to tell once they all have.
    pub pending_listeners: HashSet<ListenerId>,
    pub ready: Option<Ready>,
    /// Outbound request IDs are per behaviour, hence the protocol in the key.
    pub requests: HashMap<(Protocol, OutboundRequestId), ReplyTo>,
    pub dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, P2pError>>>,
    /// The last dial error per peer, to explain a request's `DialFailure`, which
    /// carries no detail of its own.
    pub dial_errors: HashMap<PeerId, String>,
    /// Bytes per protocol, shared with the handles for `GET /health/bandwidth`.
    pub bandwidth: Arc<super::bandwidth::Bandwidth>,
    /// Each peer's inbound requests not answered yet.
    pub inflight: super::inflight::InflightLimit,
}

/// The peerstore path and a lock so that concurrent saves don't interleave on the
/// temporary file.
#[derive(Clone)]
pub(super) struct PeerstoreFile {
    pub path: PathBuf,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

impl PeerstoreFile {
    async fn write(&self, text: String) {
        let _guard = self.lock.lock().await;
        match peerstore::save(&self.path, text).await {
            Ok(()) => tracing::debug!(path = %self.path.display(), "peerstore saved"),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save the peerstore")
            }
        }
    }
}

impl SwarmTask {
    /// Runs until `cancel` fires, then saves the peerstore. Pending callers see
    /// [`P2pError::Shutdown`] when their oneshots drop with the task.
    pub async fn run(mut self) {
        self.check_ready();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
        // Waiting callers learn of the shutdown now, not after the file write.
        self.requests.clear();
        self.dials.clear();
        if let Some(file) = &self.peerstore {
            file.write(self.book.to_file_text()).await;
        }
        tracing::debug!("p2p host stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(reply) => {
                let me = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(MaProtocol::P2p(me)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::AddAddress { peer, addr } => self.add_address(peer, addr),
            Command::AddressesOf { peer, reply } => {
                let _ = reply.send(self.book.get(&peer));
            }
            Command::Connect { peer, addr, reply } => self.connect(peer, addr, reply),
            Command::Request {
                peer,
                protocol,
                payload,
                reply,
            } => self.request(peer, protocol, payload, reply),
            Command::OpenPipe { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    self.swarm.behaviour_mut().pipe.open(peer, reply);
                } else {
                    // The caller sends on a stream of its own, which dials.
                    let _ = reply.send(Err(P2pError::Unreachable(format!(
                        "not connected to {peer}"
                    ))));
                }
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::SavePeerstore(reply) => match self.peerstore.clone() {
                Some(file) => {
                    // File I/O off the swarm loop; the lock keeps saves in order.
                    let text = self.book.to_file_text();
                    self.tasks.spawn(async move {
                        file.write(text).await;
                        let _ = reply.send(());
                    });
                }
                None => {
                    let _ = reply.send(());
                }
            },
            Command::Respond {
                protocol,
                channel,
                payload,
            } => {
                let b = self.swarm.behaviour_mut();
                let rr = match protocol {
                    Protocol::Raft => &mut b.raft,
                    Protocol::Rpc => &mut b.rpc,
                };
                let size = Payload::encoded_len(payload.len());
                if rr
                    .send_response(channel, Response::Data(Payload::new(payload)))
                    .is_err()
                {
                    // The requester gave up (timeout, closed connection) meanwhile.
                    tracing::debug!(?protocol, "response dropped: the request is gone");
                } else {
                    self.bandwidth.sent(protocol, size);
                }
            }
        }
    }

    fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if let Some(addr) = self.book.add(peer, addr) {
            // Also tell the behaviours, so dials they start on their own (e.g.
            // identify's) know the address.
            self.swarm.add_peer_address(peer, addr);
        }
    }

    fn connect(
        &mut self,
        peer: PeerId,
        addr: Option<Multiaddr>,
        reply: oneshot::Sender<Result<PeerId, P2pError>>,
    ) {
        if self.swarm.is_connected(&peer) {
            if let Some(addr) = addr {
                self.add_address(peer, addr);
            }
            let _ = reply.send(Ok(peer));
            return;
        }
        let addresses = match addr {
            Some(a) => dialable(peer, vec![a]),
            None => dialable(peer, self.book.get(&peer)),
        };
        if addresses.is_empty() {
            let _ = reply.send(Err(P2pError::Unreachable(format!(
                "no known address for {peer}"
            ))));
            return;
        }
        // Only the given address is dialled; it enters the book once a connection
        // through it succeeds, so bad addresses stay out of the peerstore.
        let opts = DialOpts::peer_id(peer).addresses(addresses).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                // Callers that gave up (their deadline passed) need no answer.
                self.dials.retain(|_, waiting| !waiting.is_closed());
                self.dials.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(P2pError::Unreachable(format!("dial {peer}: {e}"))));
            }
        }
    }

    fn request(&mut self, peer: PeerId, protocol: Protocol, payload: Vec<u8>, reply: ReplyTo) {
        let size = Payload::encoded_len(payload.len());
        if size > protocol.max_request_size() {
            // The remote would read a truncated message and fail obscurely.
            let _ = reply.send(Err(P2pError::TooLarge {
                size,
                max: protocol.max_request_size(),
            }));
            return;
        }
        let addresses = dialable(peer, self.book.get(&peer));
        if addresses.is_empty() && !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(P2pError::Unreachable(format!(
                "not connected to {peer} and no known address"
            ))));
            return;
        }
        let b = self.swarm.behaviour_mut();
        let rr = match protocol {
            Protocol::Raft => &mut b.raft,
            Protocol::Rpc => &mut b.rpc,
        };
        let id = rr.send_request_with_addresses(&peer, Payload::new(payload), addresses);
        self.bandwidth.sent(protocol, size);
        self.requests.insert((protocol, id), reply);
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Raft(e)) => self.on_rr(Protocol::Raft, e),
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(e)) => self.on_rr(Protocol::Rpc, e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, addrs = ?info.listen_addrs, "identified");
                // Identified addresses come over an authenticated connection inside the
                // private network; they are how peers learn each other's real ports.
                for addr in info.listen_addrs.into_iter().rev() {
                    self.add_address(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Pipe(pipe)) => {
                let ctx = super::pipe::ServeCtx {
                    inbound: self.inbound.clone(),
                    inflight: self.inflight.clone(),
                    bandwidth: self.bandwidth.clone(),
                    tasks: self.tasks.clone(),
                    cancel: self.cancel.clone(),
                };
                super::pipe::serve(pipe, &ctx);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                tracing::trace!(peer = %e.peer, result = ?e.result, "ping");
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "p2p listening");
                self.pending_listeners.remove(&listener_id);
                self.check_ready();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                tracing::warn!(?reason, "p2p listener closed");
                self.listener_failed(listener_id, format!("{reason:?}"));
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!(%error, "p2p listener error");
                self.listener_failed(listener_id, error.to_string());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                self.dial_errors.remove(&peer_id);
                // Only dialled addresses are worth remembering: a listener sees the
                // remote's ephemeral source port.
                if let ConnectedPoint::Dialer { address, .. } = endpoint {
                    self.add_address(peer_id, address);
                }
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let msg = error.to_string();
                tracing::debug!(peer = ?peer_id, error = %msg, "dial failed");
                if let Some(reply) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(P2pError::Unreachable(msg.clone())));
                }
                if let Some(peer) = peer_id {
                    if self.dial_errors.len() >= MAX_DIAL_ERRORS {
                        self.dial_errors.clear();
                    }
                    self.dial_errors.insert(peer, msg);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // Also what a peer with another secret looks like from this side.
                tracing::debug!(from = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
            }
            _ => {}
        }
    }

    fn on_rr(&mut self, protocol: Protocol, event: request_response::Event<Payload, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_inbound(protocol, peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let (size, result) = match response {
                    Response::Data(p) => (Payload::encoded_len(p.0.len()), Ok(p.into_vec())),
                    Response::Refused(r) => {
                        (Payload::CBOR_OVERHEAD, Err(refused(protocol, peer, r)))
                    }
                };
                self.bandwidth.received(protocol, size);
                if let Some(reply) = self.requests.remove(&(protocol, request_id)) {
                    let _ = reply.send(result);
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.requests.remove(&(protocol, request_id)) {
                    let detail = self.dial_errors.remove(&peer);
                    let _ = reply.send(Err(outbound_error(protocol, peer, error, detail)));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, ?protocol, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        protocol: Protocol,
        peer: PeerId,
        request: Payload,
        channel: ResponseChannel<Response>,
    ) {
        self.bandwidth
            .received(protocol, Payload::encoded_len(request.0.len()));
        // A peer over its bound gets this request refused with a "busy" answer
        // (not a place in the queue, nor a closed stream that looks like a
        // failed peer): it retries once its earlier requests are answered.
        let Some(permit) = self.inflight.try_acquire(peer, protocol) else {
            tracing::warn!(%peer, ?protocol, "too many requests in flight from this peer; refused as busy");
            self.refuse_busy(protocol, channel);
            return;
        };
        let (reply, answer) = oneshot::channel();
        let inbound = Inbound {
            protocol,
            peer,
            payload: request.into_vec(),
            reply: super::Reply::stream(reply),
        };
        // Never wait for the application here. A full queue means it is far behind:
        // the caller is told so, and retries.
        match self.inbound.try_send(inbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%peer, ?protocol, "inbound queue full; request refused as busy");
                self.refuse_busy(protocol, channel);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%peer, ?protocol, "inbound request dropped: shutting down");
                return;
            }
        }
        let commands = self.command_tx.clone();
        let cancel = self.cancel.clone();
        // The requester stops waiting after its request timeout; so can we.
        let timeout = self.request_timeout;
        self.tasks.spawn(async move {
            let _permit = permit;
            let answer = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(timeout, answer) => r,
            };
            match answer {
                Ok(Ok(payload)) => {
                    let size = Payload::encoded_len(payload.len());
                    if size > protocol.max_response_size() {
                        tracing::error!(%peer, ?protocol, size, "response too large; not sent");
                        return;
                    }
                    let _ = commands
                        .send(Command::Respond {
                            protocol,
                            channel,
                            payload,
                        })
                        .await;
                }
                // Dropping `channel` closes the stream: the requester gets an error.
                Ok(Err(_)) => tracing::debug!(%peer, ?protocol, "handler dropped the reply"),
                Err(_) => tracing::debug!(%peer, ?protocol, "handler did not answer in time"),
            }
        });
    }

    fn refuse_busy(&mut self, protocol: Protocol, channel: ResponseChannel<Response>) {
        let b = self.swarm.behaviour_mut();
        let rr = match protocol {
            Protocol::Raft => &mut b.raft,
            Protocol::Rpc => &mut b.rpc,
        };
        let busy = Response::Refused(Refusal::busy(self.inflight.max()));
        if rr.send_response(channel, busy).is_ok() {
            self.bandwidth.sent(protocol, Payload::CBOR_OVERHEAD);
        }
    }

    fn listener_failed(&mut self, id: ListenerId, reason: String) {
        if self.pending_listeners.remove(&id)
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(Err(P2pError::Transport(format!(
                "listener failed: {reason}"
            ))));
        }
    }

    fn check_ready(&mut self) {
        if self.pending_listeners.is_empty()
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(Ok(()));
        }
    }
}

/// Addresses in the form the swarm's own address caches use (`…/p2p/<peer>`): the
/// swarm de-duplicates the addresses of a dial literally, and a bare and a suffixed
/// copy of one address would otherwise be dialled twice.
fn dialable(peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter_map(|a| a.with_p2p(peer).ok())
        .collect()
}

/// What a caller sees of a refusal.
fn refused(protocol: Protocol, peer: PeerId, r: Refusal) -> P2pError {
    let what = format!("{} request to {peer}", protocol.stream_protocol());
    if r.refused == Refusal::BUSY {
        P2pError::Busy(format!(
            "{what}: refused unanswered (at most {} requests of one peer in flight there); retry",
            r.max_in_flight
        ))
    } else {
        P2pError::Remote(format!("{what}: refused ({})", r.refused))
    }
}

fn outbound_error(
    protocol: Protocol,
    peer: PeerId,
    error: OutboundFailure,
    dial_detail: Option<String>,
) -> P2pError {
    let what = format!("{} request to {peer}", protocol.stream_protocol());
    match error {
        OutboundFailure::DialFailure => P2pError::Unreachable(match dial_detail {
            Some(d) => format!("{what}: {d}"),
            None => format!("{what}: dial failed"),
        }),
        OutboundFailure::Timeout => P2pError::Timeout(what),
        OutboundFailure::ConnectionClosed => {
            P2pError::Transport(format!("{what}: connection closed before the reply"))
        }
        OutboundFailure::UnsupportedProtocols => {
            P2pError::Transport(format!("{what}: the peer does not speak the protocol"))
        }
        // A stream that ends before a decodable reply: the remote closed it without
        // answering (its handler dropped the reply, or it rejected our message).
        OutboundFailure::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::Unsupported
            ) =>
        {
            P2pError::Remote(format!("{what}: no valid reply ({e})"))
        }
        OutboundFailure::Io(e) => P2pError::Transport(format!("{what}: {e}")),
    }
}
