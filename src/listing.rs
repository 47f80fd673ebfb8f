//! Listings of the pinset written straight into large response frames: the
//! pinset is read in batches under one read view each, on a blocking thread, and
//! rendered into frames of tens of KiB (never one frame or channel send per pin).

use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod json;

use crate::http::{Body, FrameWriter, channel_body, stream_error_trailer};
use crate::state::{PageFrom, PinState, StateError};
use crate::types::Pin;

/// How many pins a listing reads under one read view.
pub const LIST_BATCH: usize = 2048;

/// How a listing ends its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer {
    /// Always an `X-Stream-Error` trailer, empty when all went well (the REST API).
    Always,
    /// The trailer only on errors (kubo's `pin/ls`).
    OnError,
}

/// The first page of the pinset, read off the async threads (to tell an empty
/// pinset from the rest before answering).
pub async fn first_page(state: &PinState) -> Result<(Vec<Pin>, Option<PageFrom>), String> {
    state
        .blocking(|s| s.page(&PageFrom::start(), LIST_BATCH))
        .await
        .map_err(|e| e.to_string())
}

/// The pages after `first` (read lazily from `next`).
pub fn pages_from(
    state: &PinState,
    first: Vec<Pin>,
    next: Option<PageFrom>,
) -> impl Iterator<Item = Result<Vec<Pin>, StateError>> + Send + 'static {
    let rest = next.map(|n| state.pages(n, LIST_BATCH));
    std::iter::once(Ok(first)).chain(rest.into_iter().flatten())
}

/// Streams `pages` as a body: `head`, each pin through `render` (which appends
/// its bytes), then `tail` when every page was read. A read failure stops the
/// listing and goes into the `X-Stream-Error` trailer.
pub fn write_pins<I, F>(
    tasks: &TaskTracker,
    cancel: CancellationToken,
    pages: I,
    head: &'static [u8],
    tail: &'static [u8],
    trailer: Trailer,
    mut render: F,
) -> Body
where
    I: Iterator<Item = Result<Vec<Pin>, StateError>> + Send + 'static,
    F: FnMut(&Pin, &mut Vec<u8>) + Send + 'static,
{
    let (tx, body) = channel_body();
    tasks.spawn_blocking(move || {
        let mut w = FrameWriter::new(tx);
        w.buf().extend_from_slice(head);
        let mut error = None;
        for page in pages {
            if cancel.is_cancelled() {
                error = Some("the peer is shutting down".to_string());
                break;
            }
            match page {
                Ok(pins) => {
                    for p in &pins {
                        render(p, w.buf());
                        if !w.flush_if_full() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if error.is_none() {
            w.buf().extend_from_slice(tail);
        }
        let t = match (trailer, error) {
            (_, Some(e)) => stream_error_trailer(&e),
            (Trailer::Always, None) => stream_error_trailer(""),
            (Trailer::OnError, None) => HeaderMap::new(),
        };
        w.finish(t);
    });
    body
}

/// True when the pinset holds at least one pin, read off the async threads
/// (to tell an empty pinset, or a failing store, before answering).
pub async fn any_pin(state: &PinState) -> Result<bool, String> {
    state
        .blocking(|s| {
            let mut any = false;
            s.scan(&PageFrom::start(), 1, &mut |_, _| {
                any = true;
                false
            })
            .map(|_| any)
        })
        .await
        .map_err(|e| e.to_string())
}

/// Streams the whole pinset as a body, rendered straight from the stored key
/// (the CID's bytes) and value by `render`, batch by batch under one read view
/// each: no page of decoded pins in between. `head`, then every pin, then `tail`
/// when all were read; a read or render failure stops the listing and goes into
/// the `X-Stream-Error` trailer.
pub fn write_scan<F>(
    tasks: &TaskTracker,
    cancel: CancellationToken,
    state: &PinState,
    head: &'static [u8],
    tail: &'static [u8],
    trailer: Trailer,
    mut render: F,
) -> Body
where
    F: FnMut(&[u8], &[u8], &mut Vec<u8>) -> Result<(), StateError> + Send + 'static,
{
    let (tx, body) = channel_body();
    let state = state.clone();
    tasks.spawn_blocking(move || {
        let mut w = FrameWriter::new(tx);
        w.buf().extend_from_slice(head);
        let mut error = None;
        let mut gone = false;
        let mut from = Some(PageFrom::start());
        while let Some(f) = from.take() {
            if cancel.is_cancelled() {
                error = Some("the peer is shutting down".to_string());
                break;
            }
            let mut failed = None;
            let read = state.scan(&f, LIST_BATCH, &mut |k, v| {
                if let Err(e) = render(k, v, w.buf()) {
                    failed = Some(e);
                    return false;
                }
                if !w.flush_if_full() {
                    gone = true;
                    return false;
                }
                true
            });
            if gone {
                return;
            }
            match (read, failed) {
                (_, Some(e)) | (Err(e), None) => {
                    error = Some(e.to_string());
                    break;
                }
                (Ok(next), None) => from = next,
            }
        }
        if error.is_none() {
            w.buf().extend_from_slice(tail);
        }
        let t = match (trailer, error) {
            (_, Some(e)) => stream_error_trailer(&e),
            (Trailer::Always, None) => stream_error_trailer(""),
            (Trailer::OnError, None) => HeaderMap::new(),
        };
        w.finish(t);
    });
    body
}

/// Appends a stored pin as one line of `GET /allocations` (upstream's `Pin` JSON).
pub fn pin_line(_key: &[u8], value: &[u8], out: &mut Vec<u8>) -> Result<(), StateError> {
    let p = PinState::decode_value(value)?;
    json::pin(out, &p);
    out.push(b'\n');
    Ok(())
}

/// Appends `v` as one JSON line.
pub fn json_line<T: serde::Serialize>(v: &T, out: &mut Vec<u8>) {
    // Serialising our own types into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::types::{Cid, PinOptions};

    fn pinset(n: u32) -> (tempfile::TempDir, PinState) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path(), crate::store::Backend::Sled).unwrap();
        let state = PinState::new(store.tree("state").unwrap());
        let batch = (0..n)
            .map(|i| {
                let mut b = vec![0x01, 0x55, 0x00, 0x04];
                b.extend_from_slice(&i.to_be_bytes());
                let mut p = Pin::new(Cid::from_bytes(&b).unwrap(), PinOptions::default());
                p.options.name = format!("pin \"{i}\"");
                PinState::add_entry(&p).unwrap()
            })
            .collect();
        state.tree().apply(batch).unwrap();
        (dir, state)
    }

    /// The frames of a body, and its trailers.
    async fn frames(mut body: Body) -> (Vec<bytes::Bytes>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    /// Batched listings write exactly what one JSON line per pin wrote, in a few
    /// large frames instead of one per pin.
    #[tokio::test]
    async fn batched_listing_is_byte_identical_in_large_frames() {
        let (_dir, state) = pinset(5000);
        let mut old = Vec::new();
        for p in state.list() {
            let mut line = serde_json::to_vec(&p.unwrap()).unwrap();
            line.push(b'\n');
            old.extend_from_slice(&line);
        }
        let tasks = TaskTracker::new();
        let (first, next) = first_page(&state).await.unwrap();
        assert_eq!(first.len(), LIST_BATCH);
        let body = write_pins(
            &tasks,
            CancellationToken::new(),
            pages_from(&state, first, next),
            b"[",
            b"]",
            Trailer::Always,
            json_line,
        );
        let (data, trailers) = frames(body).await;
        let all: Vec<u8> = data.iter().flat_map(|d| d.iter().copied()).collect();
        assert_eq!(&all[1..all.len() - 1], old.as_slice());
        assert_eq!((all[0], all[all.len() - 1]), (b'[', b']'));
        assert!(data.len() < 5000 / 100, "{} frames", data.len());
        for d in &data[..data.len() - 1] {
            assert!(
                d.len() >= crate::http::FRAME_BYTES,
                "a frame of {}",
                d.len()
            );
        }
        let t = trailers.expect("trailers");
        assert_eq!(t.get("x-stream-error").unwrap(), "");
    }

    /// A listing rendered straight from the store writes what serde_json wrote
    /// for each decoded pin, in large frames.
    #[tokio::test]
    async fn scanned_listing_is_byte_identical_in_large_frames() {
        let (_dir, state) = pinset(5000);
        let mut old = b"[".to_vec();
        for p in state.list() {
            old.extend_from_slice(&serde_json::to_vec(&p.unwrap()).unwrap());
            old.push(b'\n');
        }
        old.push(b']');
        assert!(any_pin(&state).await.unwrap());
        let tasks = TaskTracker::new();
        let body = write_scan(
            &tasks,
            CancellationToken::new(),
            &state,
            b"[",
            b"]",
            Trailer::Always,
            pin_line,
        );
        let (data, trailers) = frames(body).await;
        let all: Vec<u8> = data.iter().flat_map(|d| d.iter().copied()).collect();
        assert_eq!(
            String::from_utf8(all).unwrap(),
            String::from_utf8(old).unwrap()
        );
        assert!(data.len() < 5000 / 100, "{} frames", data.len());
        assert_eq!(
            trailers.expect("trailers").get("x-stream-error").unwrap(),
            ""
        );
        // A value that does not decode stops the listing, its error in the trailer.
        state
            .tree()
            .apply(vec![(b"p/\x01\x55\x00\x00".to_vec(), Some(vec![9]))])
            .unwrap();
        let body = write_scan(
            &tasks,
            CancellationToken::new(),
            &state,
            b"",
            b"END",
            Trailer::OnError,
            pin_line,
        );
        let (data, trailers) = frames(body).await;
        assert!(data.iter().all(|d| !d.ends_with(b"END")));
        let t = trailers.expect("trailers");
        assert!(
            t.get("x-stream-error")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("unknown pin format 9"),
            "{t:?}"
        );
        let empty = {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::open(dir.path(), crate::store::Backend::Redb).unwrap();
            PinState::new(store.tree("state").unwrap())
        };
        assert!(!any_pin(&empty).await.unwrap());
    }

    /// A read failure ends the listing without its tail, the error in the trailer.
    #[tokio::test]
    async fn a_failed_read_goes_into_the_trailer() {
        let (_dir, state) = pinset(10);
        let tasks = TaskTracker::new();
        let (first, _) = first_page(&state).await.unwrap();
        let pages = std::iter::once(Ok(first))
            .chain(std::iter::once(Err(StateError::Corrupt("bad pin".into()))));
        let body = write_pins(
            &tasks,
            CancellationToken::new(),
            pages,
            b"",
            b"END",
            Trailer::OnError,
            json_line,
        );
        let (data, trailers) = frames(body).await;
        let all: Vec<u8> = data.iter().flat_map(|d| d.iter().copied()).collect();
        assert_eq!(all.iter().filter(|b| **b == b'\n').count(), 10);
        assert!(!all.ends_with(b"END"));
        let t = trailers.expect("trailers");
        assert_eq!(
            t.get("x-stream-error").unwrap(),
            "corrupt pin in state: bad pin"
        );
    }
}
