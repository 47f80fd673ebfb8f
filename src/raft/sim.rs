//! Seeded in-process multi-peer tests: 3–5 Raft nodes on the real log store and
//! state machine (sled and redb mixed), joined by an in-memory network that, from
//! a seeded RNG, cuts links (partitions, one-way cuts, an isolated leader), delays
//! messages, drops requests, drops replies and delivers requests twice, while
//! nodes (the leader half the time) are stopped and started again from their
//! stores (a clean stop, its stores closed: neither kill -9 nor a power cut,
//! which `scripts/chaos.sh` does to real peers), and, in one test, nodes join
//! and the first leader is removed. Messages
//! cross it in their wire encoding (`RaftRpc`/`RaftReply`, CBOR). Clients pin and
//! unpin their own CIDs concurrently, retrying each operation until it is
//! acknowledged (as the peer's write path does), through the same faults.
//!
//! At the end every node must hold the same pinset, applied to the same log
//! index, and every CID must be in the state its last acknowledged operation
//! left it: no acknowledged pin lost, no acknowledged unpin undone.
//!
//! Time is tokio's paused clock on a current-thread runtime, so a run's timers
//! and the fault schedule follow from the seed. What a seed does not fix:
//! openraft draws election timeouts from its own thread-local RNG, and store I/O
//! runs on blocking threads, so two runs of a seed may interleave differently;
//! a failure is still most often reproduced by its seed. Replay one with
//! `SIM_SEED=<seed> cargo test --lib raft::sim`; `SIM_SEEDS=<n>` runs more seeds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Raft, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::log_store::LogStore;
use super::network::{RaftReply, RaftRpc, decode, encode};
use super::state_machine::StateMachine;
use super::types::{ClusterNode, LogBatch, LogOp, NodeId, Request, TypeConfig};
use crate::state::PinState;
use crate::store::{self, Backend};
use crate::types::{Cid, Pin, PinOptions};

/// How often each fault strikes a message, in percent.
#[derive(Clone, Copy)]
struct Faults {
    drop_request: u32,
    drop_reply: u32,
    duplicate: u32,
    /// Upper bound of a message's delay.
    max_delay_ms: u64,
}

const NO_FAULTS: Faults = Faults {
    drop_request: 0,
    drop_reply: 0,
    duplicate: 0,
    max_delay_ms: 2,
};

/// The network shared by every node of one run.
struct Net {
    rng: StdRng,
    faults: Faults,
    /// Directed links that deliver nothing.
    cut: HashSet<(NodeId, NodeId)>,
    /// The nodes up now (a restarting node is missing).
    nodes: HashMap<NodeId, Node>,
    backends: HashMap<NodeId, Backend>,
    root: std::path::PathBuf,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    messages: u64,
    cut: u64,
    dropped_requests: u64,
    dropped_replies: u64,
    duplicated: u64,
    partitions: u64,
    restarts: u64,
    membership_changes: u64,
    snapshot_chunks: u64,
    acked: u64,
    client_failures: u64,
}

/// What happens to one message.
struct Plan {
    cut: bool,
    delay: Duration,
    drop_request: bool,
    drop_reply: bool,
    /// Delivered once more after this long.
    duplicate: Option<Duration>,
}

type Shared = Arc<Mutex<Net>>;

fn lock(net: &Shared) -> std::sync::MutexGuard<'_, Net> {
    crate::sync::lock(net)
}

impl Net {
    fn plan(&mut self, from: NodeId, to: NodeId) -> Plan {
        let f = self.faults;
        self.stats.messages += 1;
        let cut = self.cut.contains(&(from, to));
        let delay = Duration::from_millis(self.rng.gen_range(0..=f.max_delay_ms));
        let drop_request = self.rng.gen_range(0..100) < f.drop_request;
        let drop_reply = self.rng.gen_range(0..100) < f.drop_reply;
        let duplicate = (self.rng.gen_range(0..100) < f.duplicate)
            .then(|| Duration::from_millis(self.rng.gen_range(0..=f.max_delay_ms * 3)));
        if cut {
            self.stats.cut += 1;
        } else if drop_request {
            self.stats.dropped_requests += 1;
        } else if drop_reply {
            self.stats.dropped_replies += 1;
        }
        if duplicate.is_some() && !cut {
            self.stats.duplicated += 1;
        }
        Plan {
            cut,
            delay,
            drop_request,
            drop_reply,
            duplicate,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SimError(String);

/// One node's view of the network.
#[derive(Clone)]
struct SimNetwork {
    from: NodeId,
    net: Shared,
}

struct SimClient {
    from: NodeId,
    to: NodeId,
    net: Shared,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &ClusterNode) -> SimClient {
        SimClient {
            from: self.from,
            to: target,
            net: self.net.clone(),
        }
    }
}

/// Delivers an encoded request to `raft` and encodes its answer, as a peer's
/// `Consensus::handle_rpc` does.
async fn deliver(raft: &Raft<TypeConfig>, bytes: &[u8]) -> Vec<u8> {
    let reply = match decode::<RaftRpc>(bytes) {
        Err(e) => RaftReply::BadRequest(e),
        Ok(RaftRpc::Append(r)) => RaftReply::Append(raft.append_entries(r).await),
        Ok(RaftRpc::Vote(r)) => RaftReply::Vote(raft.vote(r).await),
        Ok(RaftRpc::Snapshot(r)) => RaftReply::Snapshot(raft.install_snapshot(r).await),
        Ok(other) => RaftReply::BadRequest(format!("not sent in these tests: {other:?}")),
    };
    encode(&reply)
}

impl SimClient {
    async fn call<E: std::error::Error>(
        &self,
        rpc: RaftRpc,
    ) -> Result<RaftReply, RPCError<NodeId, ClusterNode, E>> {
        let is_snapshot = matches!(rpc, RaftRpc::Snapshot(_));
        let bytes = encode(&rpc);
        let (plan, target) = {
            let mut net = lock(&self.net);
            net.stats.snapshot_chunks += u64::from(is_snapshot);
            let plan = net.plan(self.from, self.to);
            (plan, net.nodes.get(&self.to).map(|n| n.raft.clone()))
        };
        let unreachable =
            |m: &str| RPCError::Unreachable(Unreachable::new(&SimError(m.to_string())));
        let lost = |m: &str| RPCError::Network(NetworkError::new(&SimError(m.to_string())));
        tokio::time::sleep(plan.delay).await;
        let Some(target) = target else {
            return Err(unreachable("no such node"));
        };
        if plan.cut {
            return Err(unreachable("link cut"));
        }
        if let Some(after) = plan.duplicate {
            let (target, bytes) = (target.clone(), bytes.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = deliver(&target, &bytes).await;
            });
        }
        if plan.drop_request {
            return Err(lost("request dropped"));
        }
        let reply = deliver(&target, &bytes).await;
        // A partition that began while the request was handled eats the reply.
        if plan.drop_reply || lock(&self.net).cut.contains(&(self.to, self.from)) {
            return Err(lost("reply dropped"));
        }
        decode(&reply).map_err(|e| lost(&e))
    }

    fn unexpected<E: std::error::Error>(&self, r: RaftReply) -> RPCError<NodeId, ClusterNode, E> {
        RPCError::Network(NetworkError::new(&SimError(format!(
            "unexpected reply {r:?}"
        ))))
    }
}

impl RaftNetwork<TypeConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        match self.call(RaftRpc::Append(rpc)).await? {
            RaftReply::Append(Ok(r)) => Ok(r),
            RaftReply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RaftRpc::Snapshot(rpc)).await? {
            RaftReply::Snapshot(Ok(r)) => Ok(r),
            RaftReply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        match self.call(RaftRpc::Vote(rpc)).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.to, e))),
            other => Err(self.unexpected(other)),
        }
    }
}

fn cid(n: u64) -> Cid {
    Cid(cid::Cid::new_v1(
        0x55,
        cid::multihash::Multihash::wrap(0x00, &n.to_be_bytes()).expect("an 8-byte identity hash"),
    ))
}

/// Where the stores live: tmpfs when there is one (durability across crashes
/// is not what these tests check, and fsync there costs nothing).
fn temp_root() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()),
        false => tempfile::tempdir(),
    }
    .expect("a temporary folder")
}

struct Node {
    raft: Raft<TypeConfig>,
    state: PinState,
    log: LogStore,
}

/// Starts node `id` on its folder (again, after a restart) and joins it to the network.
async fn start_node(id: NodeId, net: &Shared) {
    let (dir, backend) = {
        let n = lock(net);
        (n.root.join(format!("node-{id}")), n.backends[&id])
    };
    std::fs::create_dir_all(&dir).expect("node folder");
    // A node just stopped may still hold its store for a moment (its state
    // machine task ends after the Raft core).
    let mut tries = 0;
    let db = loop {
        match store::open(&dir, backend) {
            Ok(db) => break db,
            Err(e) => {
                tries += 1;
                assert!(tries < 200, "node {id}'s store does not reopen: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut log = LogStore::open(db.tree("raft_log").expect("tree"), &dir).expect("log");
    let state = PinState::new(db.tree("state").expect("tree"));
    let (events, _) = tokio::sync::broadcast::channel(64);
    let sm = StateMachine::new(
        state.clone(),
        db.tree("snapshot").expect("tree"),
        dir.join(super::SNAPSHOT_DIR),
        events,
    );
    log.purge_only_applied(sm.applied());
    state.build_filter_in_background();
    let cfg = openraft::Config {
        cluster_name: "sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        // Frequent snapshots and a short log: lagging nodes catch up by
        // snapshot, sent in many small chunks.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(25),
        max_in_snapshot_log_to_keep: 5,
        snapshot_max_chunk_size: 512,
        install_snapshot_timeout: 500,
        ..Default::default()
    }
    .validate()
    .expect("raft config");
    let raft = Raft::new(
        id,
        Arc::new(cfg),
        SimNetwork {
            from: id,
            net: net.clone(),
        },
        log.clone(),
        sm,
    )
    .await
    .expect("raft starts");
    lock(net).nodes.insert(id, Node { raft, state, log });
}

/// Starts the nodes `ids` and makes nodes 1 to `voters` a cluster.
async fn start_cluster(net: &Shared, ids: &[NodeId], voters: u64) {
    for &id in ids {
        start_node(id, net).await;
    }
    let members: BTreeMap<NodeId, ClusterNode> =
        (1..=voters).map(|id| (id, sim_node(id))).collect();
    raft_of(net, 1)
        .expect("node 1 is up")
        .initialize(members)
        .await
        .expect("initialize");
}

/// Stops node `id` (its Raft, then its store) for `down`, then starts it again
/// from its folder.
async fn restart_node(id: NodeId, down: Duration, net: &Shared) {
    let Some(node) = lock(net).nodes.remove(&id) else {
        return;
    };
    let _ = node.raft.shutdown().await;
    drop(node);
    tokio::time::sleep(down).await;
    start_node(id, net).await;
}

fn raft_of(net: &Shared, id: NodeId) -> Option<Raft<TypeConfig>> {
    lock(net).nodes.get(&id).map(|n| n.raft.clone())
}

/// One client: `ops` operations on its own CIDs, each retried until acknowledged.
/// Returns the state each CID must end in (`true`: pinned).
async fn client(
    id: u64,
    ops: usize,
    nodes: Vec<NodeId>,
    net: Shared,
    seed: u64,
) -> BTreeMap<u64, bool> {
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 32));
    let mut expected = BTreeMap::new();
    let mut target = nodes[rng.gen_range(0..nodes.len())];
    for _ in 0..ops {
        let n = id * 1_000 + rng.gen_range(0..8u64);
        let pin = rng.gen_bool(0.6);
        let op = if pin {
            LogOp::Pin(Box::new(Pin::new(cid(n), PinOptions::default())))
        } else {
            LogOp::Unpin(cid(n))
        };
        loop {
            let (drop_request, drop_reply, duplicate) = {
                let mut net = lock(&net);
                let f = net.faults;
                (
                    net.rng.gen_range(0..100) < f.drop_request,
                    net.rng.gen_range(0..100) < f.drop_reply,
                    net.rng.gen_range(0..100) < f.duplicate,
                )
            };
            let batch = LogBatch(vec![Request::new(op.clone())]);
            let Some(raft) = raft_of(&net, target) else {
                // Down: the client's connection is refused.
                lock(&net).stats.client_failures += 1;
                target = nodes[rng.gen_range(0..nodes.len())];
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if duplicate {
                let (raft, batch) = (raft.clone(), batch.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(3), raft.client_write(batch))
                        .await;
                });
            }
            let res = if drop_request {
                tokio::time::sleep(Duration::from_millis(300)).await;
                None
            } else {
                tokio::time::timeout(Duration::from_secs(3), raft.client_write(batch))
                    .await
                    .ok()
            };
            match res {
                Some(Ok(_)) if !drop_reply => {
                    lock(&net).stats.acked += 1;
                    break;
                }
                Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    target = match f.leader_id {
                        Some(l) => l,
                        None => nodes[rng.gen_range(0..nodes.len())],
                    };
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    lock(&net).stats.client_failures += 1;
                    target = nodes[rng.gen_range(0..nodes.len())];
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        expected.insert(n, pin);
        // Think time: spreads the writes over many partitions.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
    }
    expected
}

/// Cuts and heals links at random until `stop` is set.
async fn nemesis(net: Shared, ids: Vec<NodeId>, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        let (wait, restart) = {
            let mut n = lock(&net);
            n.cut.clear();
            let leader = n
                .nodes
                .values()
                .find_map(|node| node.raft.metrics().borrow().current_leader);
            let choice = n.rng.gen_range(0..6);
            let mut restart = None;
            let mut group: BTreeSet<NodeId> = BTreeSet::new();
            match choice {
                // Healed.
                0 => {}
                // The leader alone.
                1 => {
                    if let Some(l) = leader {
                        group.insert(l);
                    }
                }
                // A random minority or majority.
                2 | 3 => {
                    let k = n.rng.gen_range(1..ids.len());
                    while group.len() < k {
                        group.insert(ids[n.rng.gen_range(0..ids.len())]);
                    }
                }
                // A node (the leader half the time) stops and starts again
                // from its stores, the network otherwise healed.
                5 => {
                    let victim = match leader {
                        Some(l) if n.rng.gen_bool(0.5) => l,
                        _ => ids[n.rng.gen_range(0..ids.len())],
                    };
                    restart = Some(victim);
                    n.stats.restarts += 1;
                }
                // One-way: a node hears nobody (it still sends).
                _ => {
                    let victim = ids[n.rng.gen_range(0..ids.len())];
                    for &o in &ids {
                        if o != victim {
                            n.cut.insert((o, victim));
                        }
                    }
                }
            }
            for &a in &group {
                for &b in &ids {
                    if !group.contains(&b) {
                        n.cut.insert((a, b));
                        n.cut.insert((b, a));
                    }
                }
            }
            if !n.cut.is_empty() {
                n.stats.partitions += 1;
            }
            (Duration::from_millis(n.rng.gen_range(200..1500)), restart)
        };
        match restart {
            Some(id) => restart_node(id, wait, &net).await,
            None => tokio::time::sleep(wait).await,
        }
    }
    lock(&net).cut.clear();
}

fn sim_node(id: NodeId) -> ClusterNode {
    ClusterNode {
        peer_id: format!("sim-{id}"),
        ..Default::default()
    }
}

/// The node that believes it leads in the highest term, if any (a node cut
/// off, or removed, may still believe it leads an older term).
fn leader_of(net: &Shared) -> Option<Raft<TypeConfig>> {
    lock(net)
        .nodes
        .values()
        .filter_map(|n| {
            let m = n.raft.metrics().borrow().clone();
            (m.current_leader == Some(m.id)).then(|| (m.current_term, n.raft.clone()))
        })
        .max_by_key(|(term, _)| *term)
        .map(|(_, r)| r)
}

/// Membership changes made through whichever node leads, each retried until
/// the leader's membership shows it: `(true, id)` adds `id` as a voter (as a
/// learner first, as `peers add` does), `(false, id)` removes it.
async fn reconfigure(net: Shared, steps: Vec<(bool, NodeId)>) {
    let bound = Duration::from_secs(3);
    for (add, id) in steps {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        loop {
            if let Some(leader) = leader_of(&net) {
                let (is_voter, settled) = {
                    let m = leader.metrics().borrow().clone();
                    let c = &m.membership_config;
                    // Committed (applied here) and not joint: a change only
                    // appended may still be undone by the next leader.
                    let applied = c
                        .log_id()
                        .is_none_or(|at| m.last_applied.is_some_and(|a| a.index >= at.index));
                    (
                        c.membership().voter_ids().any(|v| v == id),
                        applied && c.membership().get_joint_config().len() == 1,
                    )
                };
                if settled && is_voter == add {
                    lock(&net).stats.membership_changes += 1;
                    break;
                }
                if add {
                    let learner = leader.add_learner(id, sim_node(id), true);
                    if let Ok(Ok(_)) = tokio::time::timeout(bound, learner).await {
                        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                        let _ =
                            tokio::time::timeout(bound, leader.change_membership(change, false))
                                .await;
                    }
                } else {
                    let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
                    let _ =
                        tokio::time::timeout(bound, leader.change_membership(change, false)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One run: `n` voters, `clients` clients of `ops` operations each. With
/// `reconfig`, two more nodes start outside the cluster; during the run one
/// joins, node 1 (the first leader) is removed, and the other joins.
async fn run(seed: u64, n: u64, clients: u64, ops: usize, reconfig: bool) {
    let spare = if reconfig { 2 } else { 0 };
    let root = temp_root();
    let faults = Faults {
        drop_request: 5,
        drop_reply: 5,
        duplicate: 5,
        max_delay_ms: 30,
    };
    let net: Shared = Arc::new(Mutex::new(Net {
        rng: StdRng::seed_from_u64(seed),
        faults,
        cut: HashSet::new(),
        nodes: HashMap::new(),
        // Both stores in one cluster, as peers choose their own.
        backends: (1..=n + spare)
            .map(|id| {
                let b = if (seed + id).is_multiple_of(2) {
                    Backend::Sled
                } else {
                    Backend::Redb
                };
                (id, b)
            })
            .collect(),
        root: root.path().to_path_buf(),
        stats: Stats::default(),
    }));
    let ids: Vec<NodeId> = (1..=n + spare).collect();
    start_cluster(&net, &ids, n).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos = tokio::spawn(nemesis(net.clone(), ids.clone(), stop.clone()));
    let steps = match reconfig {
        true => vec![(true, n + 1), (false, 1), (true, n + 2)],
        false => Vec::new(),
    };
    let membership = tokio::spawn(reconfigure(net.clone(), steps));
    let mut handles = Vec::new();
    for c in 1..=clients {
        handles.push(tokio::spawn(client(c, ops, ids.clone(), net.clone(), seed)));
    }
    let mut expected = BTreeMap::new();
    for h in handles {
        expected.extend(h.await.expect("client task"));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    chaos.await.expect("nemesis task");
    lock(&net).faults = NO_FAULTS;
    tokio::time::timeout(Duration::from_secs(60), membership)
        .await
        .expect("the membership changes end once the network is healed")
        .expect("membership task");
    // The voters now; every node is up again (the nemesis waits out each restart).
    // The newest membership any node knows (a removed node keeps an old one).
    let voters: Vec<NodeId> = {
        let configs: Vec<_> = ids
            .iter()
            .filter_map(|&id| raft_of(&net, id))
            .map(|r| r.metrics().borrow().membership_config.clone())
            .collect();
        let newest = configs
            .iter()
            .max_by_key(|c| c.log_id().map(|l| l.index))
            .expect("a node is up");
        newest.membership().voter_ids().collect()
    };
    if reconfig {
        assert_eq!(
            voters,
            (2..=n + 2).collect::<Vec<_>>(),
            "the membership changes did not all take"
        );
    }
    let rafts: Vec<Raft<TypeConfig>> = voters
        .iter()
        .map(|&id| raft_of(&net, id).expect("every node is up"))
        .collect();

    // Healed and quiet: one more write through the leader commits every entry
    // of earlier terms; then every node must apply up to it.
    let mut last = None;
    for _ in 0..100 {
        let leader = rafts
            .iter()
            .find_map(|r| r.metrics().borrow().current_leader);
        if let Some(l) = leader {
            let Some(raft) = raft_of(&net, l) else {
                continue;
            };
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(3), raft.client_write(LogBatch(vec![])))
                    .await
            {
                last = Some(r.log_id.index);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.expect("a leader accepts a write once the network is healed");
    // Every node applies up to that write; a late election after the heal may
    // add a blank entry, so wait until they all stand at the same log ID.
    let mut applied = Vec::new();
    for _ in 0..300 {
        applied = rafts
            .iter()
            .map(|r| r.metrics().borrow().last_applied)
            .collect();
        let done = applied.iter().all(|a| a.is_some_and(|a| a.index >= last))
            && applied.windows(2).all(|w| w[0] == w[1]);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = format!("{:?}", lock(&net).stats);
    assert!(
        applied.iter().all(|a| a.is_some_and(|a| a.index >= last))
            && applied.windows(2).all(|w| w[0] == w[1]),
        "the nodes did not converge on one applied log ID after {last}: {applied:?}"
    );

    let states: Vec<PinState> = voters
        .iter()
        .map(|id| lock(&net).nodes[id].state.clone())
        .collect();
    let pinsets: Vec<BTreeSet<Cid>> = states
        .iter()
        .map(|st| st.list().map(|p| p.expect("state readable").cid).collect())
        .collect();
    for (i, p) in pinsets.iter().enumerate().skip(1) {
        assert_eq!(
            p, &pinsets[0],
            "node {} and node {} hold different pinsets ({stats})",
            voters[i], voters[0]
        );
    }
    for (n, pinned) in &expected {
        assert_eq!(
            pinsets[0].contains(&cid(*n)),
            *pinned,
            "CID #{n}: its last acknowledged operation was {} ({stats})",
            if *pinned { "a pin" } else { "an unpin" }
        );
    }
    eprintln!(
        "seed {seed}: voters {voters:?}, {} CIDs checked, {} pinned, last index {last}; {stats}",
        expected.len(),
        pinsets[0].len()
    );
    for r in rafts {
        let _ = r.shutdown().await;
    }
}

/// Prints the seed of a run that panics, with the command that replays it.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILED with seed {0}: replay with SIM_SEED={0} cargo test --lib raft::sim",
                self.0
            );
        }
    }
}

fn seeds(default: &[u64]) -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    match std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()) {
        Some(n) => (0..n).map(|i| default[0].wrapping_add(i)).collect(),
        None => default.to_vec(),
    }
}

fn run_seeds(default: &[u64], nodes: u64, clients: u64, ops: usize, reconfig: bool) {
    for seed in seeds(default) {
        let _guard = SeedGuard(seed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(run(seed, nodes, clients, ops, reconfig));
    }
}

#[test]
fn three_nodes_lose_no_acknowledged_write_under_faults() {
    run_seeds(&[1, 2, 3, 4], 3, 4, 60, false);
}

#[test]
fn five_nodes_lose_no_acknowledged_write_under_faults() {
    run_seeds(&[101, 102], 5, 5, 50, false);
}

#[test]
fn nodes_join_and_leave_under_faults_losing_no_acknowledged_write() {
    run_seeds(&[201, 202], 3, 4, 60, true);
}

/// A quiet network of `n` nodes on `root` with a leader elected and one write
/// committed; returns the network (which keeps the nodes up), the leader and
/// its log.
async fn quiet_cluster(n: u64, root: &std::path::Path) -> (Shared, Raft<TypeConfig>, LogStore) {
    let net: Shared = Arc::new(Mutex::new(Net {
        rng: StdRng::seed_from_u64(n),
        faults: NO_FAULTS,
        cut: HashSet::new(),
        nodes: HashMap::new(),
        backends: (1..=n).map(|id| (id, Backend::Fjall)).collect(),
        root: root.to_path_buf(),
        stats: Stats::default(),
    }));
    start_cluster(&net, &(1..=n).collect::<Vec<_>>(), n).await;
    let leader = loop {
        if let Some(l) = leader_of(&net) {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::timeout(Duration::from_secs(10), leader.client_write(pin_batch(0)))
        .await
        .expect("the first write commits")
        .expect("the first write");
    let id = leader.metrics().borrow().id;
    let log = lock(&net).nodes[&id].log.clone();
    (net, leader, log)
}

/// Holds back a node's log syncs until dropped, a failed assertion included
/// (the log's last handle waits for its writer thread).
struct HeldSyncs(LogStore);

impl HeldSyncs {
    fn new(log: LogStore) -> Self {
        log.hold_syncs(true);
        HeldSyncs(log)
    }
}

impl Drop for HeldSyncs {
    fn drop(&mut self) {
        self.0.hold_syncs(false);
    }
}

fn pin_batch(n: u64) -> LogBatch {
    LogBatch(vec![Request::new(LogOp::Pin(Box::new(Pin::new(
        cid(n),
        PinOptions::default(),
    ))))])
}

/// With its own log's syncs held back, a leader still commits through its
/// followers' acknowledgements: it replicates while it flushes, instead of
/// after (vendor/openraft/PATCHES.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_commits_through_its_followers_while_its_own_flush_waits() {
    let root = temp_root();
    let (_net, raft, log) = quiet_cluster(3, root.path()).await;
    let held = HeldSyncs::new(log);
    let res = tokio::time::timeout(Duration::from_secs(10), raft.client_write(pin_batch(1))).await;
    drop(held);
    res.expect("committed while the leader's flush was held")
        .expect("the write");
}

/// A leader counts itself toward the quorum only once its log is flushed: a
/// single node commits nothing while its syncs are held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_commits_only_once_its_log_is_flushed() {
    let root = temp_root();
    let (_net, raft, log) = quiet_cluster(1, root.path()).await;
    let held = HeldSyncs::new(log);
    let write = tokio::spawn(async move { raft.client_write(pin_batch(1)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "committed before its log was flushed");
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("committed once flushed")
        .expect("the write task")
        .expect("the write");
}
