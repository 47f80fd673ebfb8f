#!/usr/bin/env python3
"""Chaos driver for scripts/chaos.sh (read its header for what it checks).

Each client owns its own CIDs and works on one at a time, so the outcome of
every CID is known from the client's own acknowledged calls: its last
acknowledged operation decides whether it must be pinned, unless a later call
on it ended without an answer (a timeout or a 5xx), which may or may not have
been applied; such CIDs are reported as ambiguous and not held against the
cluster. A refused connection never reached a peer and counts as not applied.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = sys.argv[1]
SECONDS = float(os.environ.get("CHAOS_SECONDS", "300"))
NPEERS = int(os.environ.get("CHAOS_PEERS", "3"))
NCLIENTS = int(os.environ.get("CHAOS_CLIENTS", "64"))
PORT0 = int(os.environ.get("CHAOS_PORT", "41000"))
SEED = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
CIDS_PER_CLIENT = 8
assert 3 <= NPEERS <= 5, "CHAOS_PEERS must be 3 to 5"

def free_base(start):
    """The first base from `start` on (in steps of 20) whose 4 ports per peer are
    all free now: ports in the kernel's ephemeral range can be held by any
    outgoing connection."""
    import socket
    for base in range(start, start + 2000, 20):
        try:
            for port in range(base, base + 4 * NPEERS):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise SystemExit(f"no free ports from {start}")


PORT0 = free_base(PORT0)
rng = random.Random(SEED)
work = tempfile.mkdtemp(prefix="chaos-")
lock = threading.Lock()
stats = {
    "ops": 0, "acked": 0, "unknown": 0, "refused": 0, "rejected": 0,
    "kills": 0, "leader_kills": 0, "pauses": 0, "restarts": 0,
}
errors = {}
ack_times = []


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def id_cid(n):
    """CIDv1 raw with an identity multihash of b'chaos-<n>' (as tests/common)."""
    data = f"chaos-{n}".encode()
    raw = bytes([0x01, 0x55, 0x00, len(data)]) + data
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    bits = "".join(f"{b:08b}" for b in raw)
    bits += "0" * (-len(bits) % 5)
    return "b" + "".join(alphabet[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def http(method, url, timeout=15):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Peer:
    def __init__(self, i, daemon):
        self.i = i
        self.dir = os.path.join(work, f"peer{i}")
        self.cluster_port = PORT0 + 4 * i
        self.rest_port = PORT0 + 4 * i + 1
        self.proxy_port = PORT0 + 4 * i + 2
        self.daemon = daemon
        self.proc = None
        self.paused = False
        subprocess.run([f"{BIN}/ipfs-cluster-service", "--config", self.dir, "init"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.dir, "identity.json")) as f:
            self.id = json.load(f)["id"]

    def addr(self):
        return f"/ip4/127.0.0.1/tcp/{self.cluster_port}/p2p/{self.id}"

    def rest(self):
        return f"http://127.0.0.1:{self.rest_port}"

    def proxy(self):
        return f"http://127.0.0.1:{self.proxy_port}/api/v0"

    def start(self):
        env = dict(os.environ)
        env.update({
            "CLUSTER_LISTENMULTIADDRESS": f"/ip4/127.0.0.1/tcp/{self.cluster_port}",
            "CLUSTER_IPFSHTTP_NODEMULTIADDRESS": self.daemon,
            "CLUSTER_IPFSPROXY_NODEMULTIADDRESS": self.daemon,
            "CLUSTER_IPFSPROXY_LISTENMULTIADDRESS": f"/ip4/127.0.0.1/tcp/{self.proxy_port}",
            "CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS": f"/ip4/127.0.0.1/tcp/{self.rest_port}",
            "IPFS_CLUSTER_LOG_LEVEL": "warn,openraft=off",
        })
        logf = open(os.path.join(work, f"peer{self.i}.log"), "a")
        self.proc = subprocess.Popen(
            [f"{BIN}/ipfs-cluster-service", "--config", self.dir, "daemon"],
            env=env, stdout=logf, stderr=logf)
        self.paused = False

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def pause(self, on):
        if self.running():
            self.proc.send_signal(signal.SIGSTOP if on else signal.SIGCONT)
            self.paused = on

    def raft(self):
        try:
            st, body = http("GET", f"{self.rest()}/raft", timeout=2)
            return json.loads(body) if st == 200 else None
        except Exception:
            return None

    def pinset(self):
        st, body = http("GET", f"{self.rest()}/allocations", timeout=30)
        if st == 204:
            return set()
        if st != 200:
            raise RuntimeError(f"allocations: {st}")
        return {json.loads(l)["cid"] for l in body.decode().splitlines() if l.strip()}


def setup(daemons, peers):
    """Starts the daemons and peers into the lists given, so that a failed start
    still stops what did start."""
    for _ in range(NPEERS):
        p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "fake_daemon.py")],
                             stdout=subprocess.PIPE, text=True)
        daemons.append((p, p.stdout.readline().strip()))
    peers.extend(Peer(i, daemons[i][1]) for i in range(NPEERS))
    with open(os.path.join(peers[0].dir, "service.json")) as f:
        secret = json.load(f)["cluster"]["secret"]
    for p in peers:
        others = ",".join(q.addr() for q in peers if q is not p)
        ident = open(os.path.join(p.dir, "identity.json")).read()
        subprocess.run([f"{BIN}/ipfs-cluster-service", "--config", p.dir, "init", "--force",
                        "--peers", others], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(p.dir, "identity.json"), "w") as f:
            f.write(ident)
        path = os.path.join(p.dir, "service.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["cluster"]["secret"] = secret
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
    for p in peers:
        p.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        if all((p.raft() or {}).get("leader") for p in peers):
            return
        time.sleep(0.2)
    raise RuntimeError("the cluster did not form within 60 s")


def leader_term(peers):
    """(index of the leader, its term) as the first live peer reports them."""
    for p in peers:
        if p.running() and not p.paused:
            r = p.raft()
            if r and r.get("leader"):
                for q in peers:
                    if q.id == r["leader"]:
                        return q.i, r.get("term")
    return None, None


def leader_index(peers):
    return leader_term(peers)[0]


def client(cid_base, peers, stop, history):
    crng = random.Random(SEED * 1000 + cid_base)
    cids = [id_cid(cid_base + k) for k in range(CIDS_PER_CLIENT)]
    while not stop.is_set():
        cid = crng.choice(cids)
        pin = crng.random() < 0.6
        p = crng.choice(peers)
        via_proxy = crng.random() < 0.5
        if via_proxy:
            url = f"{p.proxy()}/pin/{'add' if pin else 'rm'}?arg={cid}"
            method = "POST"
        else:
            url = f"{p.rest()}/pins/{cid}"
            method = "POST" if pin else "DELETE"
        try:
            st, body = http(method, url)
            if 200 <= st < 300:
                outcome = "acked"
            elif not pin and st in (404,) or (via_proxy and not pin and b"not pinned" in body):
                # Unpinning what is not pinned: unpinned either way.
                outcome = "acked"
            elif st in (400, 404, 409):
                outcome = "rejected"
            else:
                outcome = "unknown"
                key = f"HTTP {st} {body[:80].decode(errors='replace').strip()}"
        except (ConnectionRefusedError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionRefusedError):
                outcome = "refused"
            else:
                outcome = "unknown"
                key = f"{type(reason).__name__}: {reason}"[:100]
        except Exception as e:
            outcome = "unknown"
            key = f"{type(e).__name__}: {e}"[:100]
        now = time.time()
        with lock:
            stats["ops"] += 1
            stats[outcome] += 1
            if outcome == "unknown":
                errors[key] = errors.get(key, 0) + 1
            if outcome == "acked":
                ack_times.append(now)
            h = history.setdefault(cid, {"want": None, "ambiguous": False})
            if outcome == "acked":
                h["want"], h["ambiguous"] = pin, False
            elif outcome == "unknown":
                h["ambiguous"] = True


def chaos(peers, stop):
    while not stop.is_set():
        time.sleep(rng.uniform(2, 4))
        if stop.is_set():
            break
        action = rng.random()
        target = None
        # The leader in about half of the kills and of the pauses.
        if action < 0.45 or 0.8 <= action < 0.9:
            target = leader_index(peers)
            with lock:
                stats["leader_kills"] += target is not None
        if target is None:
            target = rng.randrange(len(peers))
        p = peers[target]
        if action < 0.8:
            log(f"kill -9 peer {target}{' (leader)' if action < 0.45 else ''}")
            p.kill9()
            with lock:
                stats["kills"] += 1
            # Down for up to 6 s: long enough, often, for the others to elect a
            # new leader (election timeout 1-2 s); a leader back sooner may resume
            # its own term, as openraft lets a restarted leader do.
            stop.wait(rng.uniform(0.5, 6))
            p.start()
            with lock:
                stats["restarts"] += 1
        else:
            d = rng.uniform(1, 4)
            log(f"SIGSTOP peer {target}{' (leader)' if action < 0.9 else ''} for {d:.1f} s")
            p.pause(True)
            with lock:
                stats["pauses"] += 1
            stop.wait(d)
            p.pause(False)


def leaders(peers, stop, seen):
    # A new term with a leader is a leader change, even when the same peer wins
    # again (a killed leader restarted quickly often does).
    last = None
    while not stop.is_set():
        li, term = leader_term(peers)
        if li is not None and (li, term) != last:
            if os.environ.get("CHAOS_DEBUG"):
                log(f"leader: peer {li}, term {term}")
            seen.append((time.time(), li, term))
            last = (li, term)
        stop.wait(0.3)


def main():
    log(f"chaos: {NPEERS} peers, {NCLIENTS} clients, {SECONDS:.0f} s, seed {SEED}, work {work}")
    daemons, peers = [], []
    ok = False
    try:
        setup(daemons, peers)
        stop = threading.Event()
        history = {}
        seen = []
        threads = [threading.Thread(target=client, args=(1_000 * (c + 1), peers, stop, history))
                   for c in range(NCLIENTS)]
        threads.append(threading.Thread(target=leaders, args=(peers, stop, seen)))
        chaos_stop = threading.Event()
        chaos_thread = threading.Thread(target=chaos, args=(peers, chaos_stop))
        started = time.time()
        for t in threads:
            t.start()
        chaos_thread.start()
        time.sleep(SECONDS)
        chaos_stop.set()
        chaos_thread.join()
        # A few seconds of calm writes after the last fault, then stop the clients.
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()
        ended = time.time()
        for p in peers:
            if not p.running():
                p.start()
            p.pause(False)

        # Convergence: every peer shows the same pinset.
        converged, sets = False, []
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                sets = [p.pinset() for p in peers]
                if all(s == sets[0] for s in sets):
                    converged = True
                    break
            except Exception:
                pass
            time.sleep(1)
        final = sets[0] if sets else set()
        lost = [c for c, h in history.items() if h["want"] is True and not h["ambiguous"] and c not in final]
        undone = [c for c, h in history.items() if h["want"] is False and not h["ambiguous"] and c in final]
        ambiguous = sum(1 for h in history.values() if h["ambiguous"])

        times = sorted([started] + ack_times + [ended])
        gap = max(b - a for a, b in zip(times, times[1:]))
        changes = max(len(seen) - 1, 0)
        other_peer = sum(1 for a, b in zip(seen, seen[1:]) if a[1] != b[1])
        log("---- chaos results ----")
        print(f"seed {SEED}; {NPEERS} peers; {NCLIENTS} clients; {ended - started:.0f} s")
        print(f"operations: {stats['ops']} ({stats['ops'] / (ended - started):.0f}/s); "
              f"acknowledged {stats['acked']}, rejected {stats['rejected']}, "
              f"refused connections {stats['refused']}, no answer/5xx {stats['unknown']}")
        for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {v:6d} x {k}")
        print(f"faults: {stats['kills']} kill -9 ({stats['leader_kills']} of the leader), "
              f"{stats['pauses']} SIGSTOP pauses, {stats['restarts']} restarts")
        print(f"leader changes: {changes} new terms with a leader, {other_peer} to another peer")
        print(f"longest time without an acknowledged write: {gap:.2f} s")
        print(f"CIDs: {len(history)} touched, {len(final)} pinned at the end, {ambiguous} ambiguous")
        print(f"converged: {'yes' if converged else 'NO'}; lost acknowledged pins: {len(lost)}; "
              f"undone acknowledged unpins: {len(undone)}")
        for c in (lost + undone)[:10]:
            print(f"  {c}")
        ok = converged and not lost and not undone
        print("PASS" if ok else "FAIL")
    finally:
        for p in peers:
            p.pause(False)
            p.kill9()
        for d, _ in daemons:
            d.kill()
            d.wait()
        if os.environ.get("CHAOS_KEEP"):
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
