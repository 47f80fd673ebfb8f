//! Test harness: a real IPFS daemon (through `scripts/ipfs-daemon.sh`) and cluster
//! peers run as processes of the real binaries, all on 127.0.0.1 ports.
#![allow(dead_code)]

pub mod cluster;
pub mod ports;

pub use ports::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A distinct identity CID (CIDv1, raw, identity multihash of `pin-<n>`): an
/// offline daemon can pin it without fetching anything.
pub fn id_cid(n: usize) -> String {
    let data = format!("pin-{n}");
    let mut bytes = vec![0x01, 0x55, 0x00, data.len() as u8];
    bytes.extend_from_slice(data.as_bytes());
    cid::Cid::try_from(bytes.as_slice())
        .expect("cid")
        .to_string()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real IPFS daemon, stopped on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Daemon {
    /// Starts a daemon; a second attempt on fresh ports and a fresh repo, as
    /// a start on a loaded machine can fail for reasons outside the project.
    pub fn start() -> Daemon {
        Self::start_with_env(&[])
    }

    /// Like `start`, with settings of `scripts/ipfs-daemon.sh` (such as `CORS_ORIGINS`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        for attempt in 1..=2 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let out = Command::new("bash")
                .arg(repo_root().join("scripts/ipfs-daemon.sh"))
                .args([
                    "start",
                    &dir.path().join("repo").to_string_lossy(),
                    &port.to_string(),
                ])
                .env("SWARM_PORT", free_port().to_string())
                .envs(env.iter().copied())
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/ipfs-daemon.sh");
            if out.status.success() {
                return Daemon { dir, port };
            }
            eprintln!("the IPFS daemon did not start (attempt {attempt})");
        }
        panic!("the IPFS daemon did not start twice")
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}/api/v0", self.port)
    }

    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/ipfs-daemon.sh"))
            .args(["stop", &self.dir.path().join("repo").to_string_lossy()])
            .status();
    }
}

/// A cluster peer process with its own config folder.
pub struct PeerProc {
    pub dir: PathBuf,
    pub proxy_port: u16,
    pub rest_port: u16,
    pub cluster_port: u16,
    pub node: String,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

pub fn service_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ipfs-cluster-service")
}

pub fn ctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ipfs-cluster-ctl")
}

impl PeerProc {
    /// Initialises a config folder in `dir` for a peer in front of `node`.
    pub fn init(dir: &Path, node: &str) -> PeerProc {
        Self::init_with_peers(dir, node, &[])
    }

    /// Like `init`, with `init --peers`.
    pub fn init_with_peers(dir: &Path, node: &str, peers: &[String]) -> PeerProc {
        if peers.is_empty() {
            Self::init_with_args(dir, node, &[])
        } else {
            Self::init_with_args(dir, node, &["--peers", &peers.join(",")])
        }
    }

    /// Like `init`, with more arguments to `init`.
    pub fn init_with_args(dir: &Path, node: &str, args: &[&str]) -> PeerProc {
        let st = Command::new(service_bin())
            .args(["--config", &dir.to_string_lossy(), "init"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("init");
        assert!(st.success());
        PeerProc {
            dir: dir.to_path_buf(),
            proxy_port: free_port(),
            rest_port: free_port(),
            cluster_port: free_port(),
            node: node.to_string(),
            extra_args: Vec::new(),
            child: None,
        }
    }

    /// A started peer before a daemon that is not there.
    pub fn before_dead_daemon(dir: &Path) -> PeerProc {
        Self::before_dead_daemon_with(dir, &[])
    }

    /// Like `before_dead_daemon`, with more arguments to `init`.
    pub fn before_dead_daemon_with(dir: &Path, init_args: &[&str]) -> PeerProc {
        let dead = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let mut peer = Self::init_with_args(dir, &dead, init_args);
        peer.start();
        peer
    }

    /// The peer ID in identity.json.
    pub fn peer_id(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("identity.json")).expect("identity"),
        )
        .expect("identity json");
        v["id"].as_str().expect("id").to_string()
    }

    /// `/ip4/127.0.0.1/tcp/<cluster port>/p2p/<id>`.
    pub fn cluster_multiaddr(&self) -> String {
        format!(
            "/ip4/127.0.0.1/tcp/{}/p2p/{}",
            self.cluster_port,
            self.peer_id()
        )
    }

    /// Changes service.json.
    pub fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let path = self.dir.join("service.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
        f(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write");
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself; returns its success.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Some(st.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(service_bin());
        c.args(["--config", &self.dir.to_string_lossy(), "daemon"])
            .args(&self.extra_args)
            .env(
                "CLUSTER_LISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.cluster_port),
            )
            .env("CLUSTER_IPFSHTTP_NODEMULTIADDRESS", &self.node)
            .env("CLUSTER_IPFSPROXY_NODEMULTIADDRESS", &self.node)
            .env(
                "CLUSTER_IPFSPROXY_LISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.proxy_port),
            )
            .env(
                "CLUSTER_RESTAPI_HTTPLISTENMULTIADDRESS",
                format!("/ip4/127.0.0.1/tcp/{}", self.rest_port),
            )
            .env("IPFS_CLUSTER_LOG_LEVEL", "warn,openraft=off");
        c
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(&mut self) {
        let child = self.command().spawn().expect("spawn peer");
        self.child = Some(child);
    }

    /// Starts the peer with `log_level`, its log written to `log`.
    pub fn start_logging_to(&mut self, log_level: &str, log: &Path) {
        self.spawn_logging_to(log_level, log);
        self.wait_ready();
    }

    /// Like `start_logging_to`, without waiting for the peer to be ready.
    pub fn spawn_logging_to(&mut self, log_level: &str, log: &Path) {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .command()
            .env("IPFS_CLUSTER_LOG_LEVEL", log_level)
            .stderr(file)
            .spawn()
            .expect("spawn peer");
        self.child = Some(child);
    }

    /// Waits until the REST API and the proxy answer.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("peer exited early: {st}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.rest_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("peer did not start");
    }

    /// Starts the daemon and waits until its REST API answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGTERM and wait; asserts a clean exit within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "peer exited with {st}");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("peer did not stop within 10s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}/api/v0", self.proxy_port)
    }

    pub fn rest(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    pub fn rest_multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.rest_port)
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking HTTP client for tests.
pub fn http() -> reqwest::blocking::Client {
    ipfs_cluster::http::install_crypto_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Polls `f` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_for(what, timeout, f, |held| *held);
}

/// Polls `probe` every 100 ms until `ok` holds for what it saw, and returns that;
/// after `timeout` fails the test with the last thing seen.
pub fn wait_for<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = probe();
        if ok(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON answer to a GET of `url`.
pub fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    http()
        .get(url)
        .send()
        .expect("request")
        .json()
        .expect("a JSON answer")
}

/// The HTTP status of `req` once sent.
pub fn status(req: reqwest::blocking::RequestBuilder) -> u16 {
    req.send().expect("request").status().as_u16()
}

pub fn add_bytes(api: &str, name: &str, data: Vec<u8>) -> String {
    let part = reqwest::blocking::multipart::Part::bytes(data)
        .file_name(name.to_string())
        .mime_str("application/octet-stream")
        .expect("mime");
    let form = reqwest::blocking::multipart::Form::new().part("file", part);
    let resp = http()
        .post(format!("{api}/add?pin=false"))
        .multipart(form)
        .send()
        .expect("add");
    assert!(resp.status().is_success(), "add failed: {}", resp.status());
    let text = resp.text().expect("add body");
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .expect("add output");
    let v: serde_json::Value = serde_json::from_str(last).expect("add json");
    v["Hash"].as_str().expect("Hash").to_string()
}

/// Kilobytes of a /proc/<pid>/status field (VmRSS, VmHWM).
pub fn proc_kb(pid: u32, field: &str) -> u64 {
    ipfs_cluster::procfs::status_kb(Some(pid), field).expect("a /proc status field")
}
