//! Reads a streamed HTTP body one JSON line at a time, holding at most one line.

use bytes::{Buf, BytesMut};

/// The longest line accepted from the daemon. Its NDJSON lines are small
/// objects (a pin, an added file, a progress event); a longer one means a broken
/// or hostile daemon, and reading on would grow memory without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Why the next line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NdjsonError {
    /// The body could not be read; the daemon may be retried.
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    /// A line exceeded the limit; the answer is not usable.
    #[error("a line of the daemon's answer exceeds {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
}

/// Splits a response body into lines as it arrives.
pub struct NdjsonReader {
    resp: reqwest::Response,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max_line: usize,
    done: bool,
}

impl NdjsonReader {
    /// Reads lines from `resp`'s body.
    pub fn new(resp: reqwest::Response) -> Self {
        Self::with_limit(resp, MAX_LINE)
    }

    /// Like `new`, with lines of at most `max_line` bytes.
    pub fn with_limit(resp: reqwest::Response, max_line: usize) -> Self {
        NdjsonReader {
            resp,
            buf: BytesMut::new(),
            scanned: 0,
            max_line,
            done: false,
        }
    }

    /// The next non-empty line, without its newline; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<BytesMut>, NdjsonError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(self.scanned + pos);
                self.buf.advance(1);
                self.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line.len() > self.max_line {
                    return Err(NdjsonError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                return Err(NdjsonError::LineTooLong {
                    limit: self.max_line,
                });
            }
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(self.buf.split()));
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A daemon that answers any request with `body` (chunked), then closes.
    async fn daemon(body: Vec<u8>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let _ = s.read(&mut req).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            for c in body.chunks(64 * 1024) {
                let head = format!("{:x}\r\n", c.len());
                if s.write_all(head.as_bytes()).await.is_err()
                    || s.write_all(c).await.is_err()
                    || s.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        });
        addr
    }

    async fn reader(body: Vec<u8>, limit: usize) -> NdjsonReader {
        let addr = daemon(body).await;
        let resp = crate::http::plain_http_client_builder()
            .build()
            .unwrap()
            .post(format!("http://{addr}/api/v0/pin/ls"))
            .send()
            .await
            .unwrap();
        NdjsonReader::with_limit(resp, limit)
    }

    #[tokio::test]
    async fn lines_split_across_chunks_and_a_last_line_without_newline() {
        let mut r = reader(b"{\"a\":1}\n\n  \n{\"b\":2}\n{\"c\":3}".to_vec(), 64).await;
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"{\"a\":1}");
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"{\"b\":2}");
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"{\"c\":3}");
        assert!(r.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_huge_line_is_an_error_not_unbounded_memory() {
        // 8 MiB without a newline, against the default 1 MiB limit: the reader
        // gives up after holding little more than the limit.
        let mut body = b"{\"ok\":1}\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 8 << 20));
        let mut r = reader(body, MAX_LINE).await;
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"{\"ok\":1}");
        match r.next_line().await {
            Err(NdjsonError::LineTooLong { limit }) => assert_eq!(limit, MAX_LINE),
            other => panic!("expected LineTooLong, got {other:?}"),
        }
        assert!(
            r.buf.len() <= MAX_LINE + 64 * 1024,
            "held {} bytes",
            r.buf.len()
        );
        // A long line that ends in a newline within one chunk is refused too.
        let mut body = vec![b'y'; 100];
        body.push(b'\n');
        let mut r = reader(body, 50).await;
        assert!(matches!(
            r.next_line().await,
            Err(NdjsonError::LineTooLong { limit: 50 })
        ));
    }
}
