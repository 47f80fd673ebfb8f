//! Reads a streamed HTTP body one JSON line at a time, holding at most one line.

use bytes::{Buf, BytesMut};

/// Splits a response body into lines as it arrives.
pub struct NdjsonReader {
    resp: reqwest::Response,
    buf: BytesMut,
    done: bool,
}

impl NdjsonReader {
    /// Reads lines from `resp`'s body.
    pub fn new(resp: reqwest::Response) -> Self {
        NdjsonReader {
            resp,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// The next non-empty line, without its newline; `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<BytesMut>, reqwest::Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos);
                self.buf.advance(1);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(self.buf.split()));
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}
