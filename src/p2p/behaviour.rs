//! The swarm's transport stack and network behaviour.

use std::time::Duration;

use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport, cbor};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, Transport, identify, noise, ping, tcp, yamux};
use serde::{Deserialize, Serialize};

use super::{P2pError, Protocol};

/// Stream protocol of the Raft RPCs.
pub(super) const RAFT_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs-cluster-rs/raft/1.0.0");
/// Stream protocol of the cluster RPCs.
pub(super) const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs-cluster-rs/rpc/1.0.0");
/// Sent in identify so peers of other software can tell us apart.
const IDENTIFY_PROTOCOL_VERSION: &str = "/ipfs-cluster-rs/1.0.0";

const MIB: u64 = 1024 * 1024;

/// Bounds every connection set-up (DNS, TCP connect, pnet, noise, yamux), as
/// go-libp2p's default dial timeout does. It matters for more than dead hosts: with
/// another secret each side decrypts the other's multistream-select header into
/// noise, and both may then wait for bytes that never come.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections with no open stream are closed after this long. libp2p's own default
/// (10 s) would tear down and re-handshake connections between Raft heartbeats of
/// an idle cluster.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

impl Protocol {
    /// The largest request the protocol accepts, in bytes (CBOR-encoded).
    pub fn max_request_size(self) -> u64 {
        match self {
            // Snapshot chunks and append-entries batches: well above openraft's 3 MiB
            // default snapshot chunk.
            Protocol::Raft => 64 * MIB,
            Protocol::Rpc => 16 * MIB,
        }
    }

    /// The largest response the protocol accepts, in bytes (CBOR-encoded).
    pub fn max_response_size(self) -> u64 {
        match self {
            Protocol::Raft => 64 * MIB,
            // Cluster RPC answers include whole status listings of big pinsets.
            Protocol::Rpc => 256 * MIB,
        }
    }

    /// The libp2p stream protocol name.
    pub fn stream_protocol(self) -> StreamProtocol {
        match self {
            Protocol::Raft => RAFT_PROTOCOL,
            Protocol::Rpc => RPC_PROTOCOL,
        }
    }
}

/// The bytes of one message. A newtype over `ByteBuf` so that CBOR writes one byte
/// string (a `Vec<u8>` would become an array of integers, up to twice the size).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Payload(pub serde_bytes::ByteBuf);

impl Payload {
    /// An upper bound of the CBOR header in front of the bytes (major type 2 with an
    /// 8-byte length).
    pub const CBOR_OVERHEAD: u64 = 9;

    pub fn new(bytes: Vec<u8>) -> Self {
        Payload(serde_bytes::ByteBuf::from(bytes))
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0.into_vec()
    }

    /// Size on the wire, CBOR header included.
    pub fn encoded_len(len: usize) -> u64 {
        len as u64 + Self::CBOR_OVERHEAD
    }
}

/// What answers a request: the handler's bytes, or a refusal made before any
/// handler saw the request.
///
/// On the wire the bytes are the CBOR byte string they always were, and a
/// refusal is a CBOR map ([`Refusal`]): a peer of an earlier version, which
/// expects a byte string, reads a refusal as an undecodable reply, as it read
/// the closed stream it used to get.
#[derive(Debug, Clone)]
pub(super) enum Response {
    /// The handler's answer.
    Data(Payload),
    /// Refused unanswered.
    Refused(Refusal),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Refusal {
    /// Format version of this message.
    pub v: u8,
    /// [`Refusal::BUSY`], or a reason a later version adds.
    pub refused: String,
    /// The bound that was met (requests in flight from the caller).
    #[serde(default)]
    pub max_in_flight: u32,
}

impl Refusal {
    /// The caller already has as many requests in flight here as it may.
    pub const BUSY: &'static str = "busy";

    /// A "busy" refusal at the bound `max`.
    pub fn busy(max: usize) -> Self {
        Refusal {
            v: 1,
            refused: Self::BUSY.into(),
            max_in_flight: u32::try_from(max).unwrap_or(u32::MAX),
        }
    }
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Response::Data(p) => p.serialize(s),
            Response::Refused(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ResponseVisitor)
    }
}

struct ResponseVisitor;

impl<'de> serde::de::Visitor<'de> for ResponseVisitor {
    type Value = Response;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a reply's bytes, or a refusal")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Response, E> {
        Ok(Response::Data(Payload::new(v.to_vec())))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Response, E> {
        Ok(Response::Data(Payload::new(v)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Response, A::Error> {
        Refusal::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(Response::Refused)
    }
}

/// Everything the swarm speaks. Raft and cluster RPCs are separate protocols so that
/// each gets its own size limits and a flood of one cannot exhaust the other's
/// stream budget.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub raft: cbor::Behaviour<Payload, Response>,
    pub rpc: cbor::Behaviour<Payload, Response>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub pipe: super::pipe_behaviour::Behaviour,
}

fn request_response_behaviour(
    protocol: Protocol,
    request_timeout: Duration,
) -> cbor::Behaviour<Payload, Response> {
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(protocol.max_request_size())
        .set_response_size_maximum(protocol.max_response_size());
    cbor::Behaviour::with_codec(
        codec,
        [(protocol.stream_protocol(), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(request_timeout),
    )
}

/// Idle connections last [`IDLE_CONNECTION_TIMEOUT`]; a new stream sends its
/// first message right behind its protocol proposal (multistream-select's "lazy"
/// mode) instead of waiting a round trip for the proposal's echo: every request
/// opens a stream, so that round trip was on the path of every Raft RPC. Only our
/// own protocols are proposed, which every peer of this software speaks; a peer
/// that does not refuses the stream, seen as an error on the first read.
fn swarm_config(c: libp2p::swarm::Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
        .with_substream_upgrade_protocol_override(Version::V1Lazy)
}

/// Builds the swarm. In a private network (`secret`): TCP, then the
/// private-network layer, then noise and yamux. pnet wraps the raw TCP stream,
/// before any libp2p protocol negotiation, so a peer without the cluster secret
/// cannot even complete multistream-select; `SwarmBuilder::with_tcp` has no hook
/// for that layer, hence `with_other_transport`. QUIC has no such layer (its
/// handshake is TLS), so it is only offered without a secret (upstream's empty
/// `secret`: an unprotected network), beside TCP with noise and yamux.
pub(super) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    secret: Option<[u8; 32]>,
    request_timeout: Duration,
    pipes: bool,
) -> Result<Swarm<Behaviour>, P2pError> {
    let agent_version = format!("ipfs-cluster-rs/{}", crate::VERSION);
    let behaviour = move |key: &libp2p::identity::Keypair| Behaviour {
        raft: request_response_behaviour(Protocol::Raft, request_timeout),
        rpc: request_response_behaviour(Protocol::Rpc, request_timeout),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), key.public())
                .with_agent_version(agent_version),
        ),
        ping: ping::Behaviour::default(),
        pipe: super::pipe_behaviour::Behaviour::new(pipes),
    };
    let transport_err = |e: &dyn std::fmt::Display| P2pError::Transport(e.to_string());
    let dns_err = |e: &dyn std::fmt::Display| {
        P2pError::Transport(format!("cannot set up DNS resolution: {e}"))
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match secret {
        Some(secret) => {
            let psk = PreSharedKey::new(secret);
            tracing::debug!(fingerprint = %psk.fingerprint(), "private network key");
            builder
                .with_other_transport(
                    |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                        let noise = noise::Config::new(key)?;
                        Ok(tcp::tokio::Transport::new(tcp::Config::new().nodelay(true))
                            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                            .upgrade(Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex(yamux::Config::default()))
                    },
                )
                .map_err(|e| transport_err(&e))?
                // DNS wraps the whole stack so /dns4/... addresses resolve before TCP.
                .with_dns()
                .map_err(|e| dns_err(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| transport_err(&e))?
                .with_swarm_config(swarm_config)
                // `build` wraps the whole transport in this timeout (10 s unless set).
                .with_connection_timeout(HANDSHAKE_TIMEOUT)
                .build()
        }
        None => builder
            .with_tcp(
                tcp::Config::new().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport_err(&e))?
            .with_quic()
            .with_dns()
            .map_err(|e| dns_err(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(swarm_config)
            .with_connection_timeout(HANDSHAKE_TIMEOUT)
            .build(),
    };
    Ok(swarm)
}
