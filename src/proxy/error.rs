//! kubo's error responses: `{"Message":…,"Code":…,"Type":"error"}`.

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::http::{Body, json};

/// go-ipfs-cmds' error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A runtime error (HTTP 500).
    Normal = 0,
    /// A client error, such as a missing argument (HTTP 400).
    Client = 1,
}

#[derive(Serialize)]
struct KuboError<'a> {
    #[serde(rename = "Message")]
    message: &'a str,
    #[serde(rename = "Code")]
    code: u8,
    #[serde(rename = "Type")]
    kind: &'static str,
}

/// A kubo-shaped error response.
pub fn kubo_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    json(
        status,
        &KuboError {
            message,
            code: code as u8,
            kind: "error",
        },
    )
}

/// kubo's runtime error: HTTP 500, code 0.
pub fn internal(message: &str) -> Response<Body> {
    kubo_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Normal,
        message,
    )
}

/// kubo's missing-argument error: HTTP 400, code 1.
pub fn missing_argument(name: &str) -> Response<Body> {
    kubo_error(
        StatusCode::BAD_REQUEST,
        ErrorCode::Client,
        &format!("argument \"{name}\" is required"),
    )
}

/// The value of an `X-Stream-Error` trailer: the bare message, as kubo's
/// go-ipfs-cmds writes it (`err.Error()`) and its clients read it back
/// (`errors.New(trailer)`), with line breaks and other control characters,
/// which a header value cannot carry, turned into spaces.
pub fn stream_error_value(message: &str) -> HeaderValue {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // Without control characters every byte is one a header value may hold.
    HeaderValue::from_bytes(clean.as_bytes()).unwrap_or(HeaderValue::from_static("error"))
}

/// Trailers holding only an `X-Stream-Error` with `message`.
pub fn stream_error_trailer(message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("x-stream-error", stream_error_value(message));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_trailers_carry_the_bare_message_on_one_line() {
        assert_eq!(stream_error_value("pin failed: boom"), "pin failed: boom");
        assert_eq!(stream_error_value("a\nb\r\tc"), "a b  c");
        assert_eq!(
            stream_error_value("nœud absent").as_bytes(),
            "nœud absent".as_bytes()
        );
    }
}
