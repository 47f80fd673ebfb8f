//! kubo's error responses: `{"Message":…,"Code":…,"Type":"error"}`.

use http::{Response, StatusCode};
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

/// The body of [`kubo_error`], for answers written without hyper.
pub fn kubo_error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut b = serde_json::to_vec(&KuboError {
        message,
        code: code as u8,
        kind: "error",
    })
    .unwrap_or_default();
    b.push(b'\n');
    b
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
