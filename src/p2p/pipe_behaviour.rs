//! The libp2p side of pipes ([`super::pipe`]): a behaviour that opens one raw
//! stream on the pipe protocol when asked and hands every inbound one to the
//! swarm task. What travels on the streams is [`super::pipe`]'s business.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tokio::sync::oneshot;

use super::P2pError;

/// Stream protocol of pipes: one long-lived stream per peer pair carrying many
/// Raft requests and their answers.
pub(super) const PIPE_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/ipfs-cluster-rs/raft-pipe/1.0.0");

/// Where an opened stream (or why none) goes.
pub(super) type OpenReply = oneshot::Sender<Result<Stream, P2pError>>;

/// A stream a peer opened to us.
#[derive(Debug)]
pub(super) struct InboundPipe {
    /// The peer (authenticated by the connection's noise handshake).
    pub peer: PeerId,
    /// The stream, protocol negotiated.
    pub stream: Stream,
}

/// Opens pipe streams on request and reports inbound ones.
pub(super) struct Behaviour {
    /// Whether inbound pipes are served; without, they are closed at once, as a
    /// peer of an earlier version (which does not speak the protocol) would.
    serve: bool,
    /// Opens asked for, to hand to one of the peer's connections.
    opens: VecDeque<(PeerId, OpenReply)>,
    inbound: VecDeque<InboundPipe>,
}

impl Behaviour {
    /// Serving inbound pipes or not.
    pub fn new(serve: bool) -> Self {
        Behaviour {
            serve,
            opens: VecDeque::new(),
            inbound: VecDeque::new(),
        }
    }

    /// Opens a stream to `peer` over one of its connections. The caller makes
    /// sure one exists: without one, `reply` is dropped unanswered.
    pub fn open(&mut self, peer: PeerId, reply: OpenReply) {
        self.opens.push_back((peer, reply));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = InboundPipe;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.serve))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.serve))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        stream: THandlerOutEvent<Self>,
    ) {
        self.inbound.push_back(InboundPipe { peer, stream });
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<InboundPipe, THandlerInEvent<Self>>> {
        if let Some(pipe) = self.inbound.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(pipe));
        }
        if let Some((peer_id, reply)) = self.opens.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::Any,
                event: reply,
            });
        }
        Poll::Pending
    }
}

/// One connection's part: requests outbound streams, accepts inbound ones.
pub(super) struct Handler {
    serve: bool,
    opens: VecDeque<OpenReply>,
    inbound: VecDeque<Stream>,
}

impl Handler {
    fn new(serve: bool) -> Self {
        Handler {
            serve,
            opens: VecDeque::new(),
            inbound: VecDeque::new(),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenReply;
    type ToBehaviour = Stream;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PIPE_PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, reply: OpenReply) {
        self.opens.push_back(reply);
    }

    // Open pipes keep the connection up by themselves (a negotiated stream
    // counts as activity); the handler adds nothing.
    fn connection_keep_alive(&self) -> bool {
        false
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenReply, Stream>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(stream));
        }
        if let Some(reply) = self.opens.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PIPE_PROTOCOL), reply),
            });
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), OpenReply>,
    ) {
        match event {
            // Not serving: the stream is dropped, which closes it.
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) if self.serve => self.inbound.push_back(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let _ = reply.send(Err(P2pError::Transport(format!(
                    "cannot open a pipe: {error}"
                ))));
            }
            _ => {}
        }
    }
}
