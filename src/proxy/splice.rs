//! Large answer bodies moved from the daemon's socket to the client's through a
//! pipe with splice(2), so their bytes never enter the proxy's memory: the
//! kernel hands the daemon's pages on instead of copying them out and back in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's size asked for (Linux's default ceiling for unprivileged
/// processes, `/proc/sys/fs/pipe-max-size`); smaller if refused.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A pipe between the two sockets of one relayed body.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds at most.
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe, as large as the system allows up to `PIPE_SIZE`.
    pub(super) fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer trips; the default (64 KiB) still works.
        // SAFETY: fcntl on a descriptor we own.
        let size = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(size).unwrap_or(0).max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Moves exactly `n` bytes from `from` to `to`. An early end of `from` is
    /// `UnexpectedEof`; on any error some of the bytes may have been sent.
    pub(super) async fn relay(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        mut n: u64,
    ) -> io::Result<()> {
        // Bytes in the pipe.
        let mut held = 0usize;
        while n > 0 || held > 0 {
            let mut moved = false;
            if n > 0 && held < self.capacity {
                let want = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(self.capacity - held);
                let fill = || splice(from.as_raw_fd(), self.write.as_raw_fd(), want);
                // "Would block" with an empty pipe can only mean that `from` has
                // nothing to read, so its readiness may be cleared; with bytes
                // held it may mean a full pipe, and the readiness must stay.
                let r = if held == 0 {
                    from.try_io(Interest::READABLE, fill)
                } else {
                    fill()
                };
                match r {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(k) => {
                        held += k;
                        n -= k as u64;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if held > 0 {
                match to.try_io(Interest::WRITABLE, || {
                    splice(self.read.as_raw_fd(), to.as_raw_fd(), held)
                }) {
                    // Nothing taken from a pipe that holds bytes: the client
                    // end is unusable, and trying again would never progress.
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        held -= k;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if !moved {
                // Bytes held wait for the client; an empty pipe for the daemon.
                if held > 0 {
                    to.writable().await?;
                } else {
                    from.readable().await?;
                }
            }
        }
        Ok(())
    }
}

/// One non-blocking splice(2) of up to `len` bytes.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets are what splice expects for sockets and pipes.
    let r = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}
