//! Loopback ports for the processes the tests and benchmarks start (shared by
//! both: benches include this file by path).

use std::net::TcpListener;

/// A free loopback port below the kernel's ephemeral range (32768 and up on
/// Linux): a port the kernel hands out with `bind(0)` can be taken again by any
/// outgoing connection before the process meant to listen on it starts, which
/// made a daemon fail with EADDRINUSE. Ports are handed out once per test
/// process, from an offset that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 997) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}
