//! Pin arguments as kubo reads them: a bare CID, or an `/ipfs/`, `/ipld/` or
//! `/ipns/` path (boxo's `NewPath`, with kubo's bare-CID fallback).

use crate::types::Cid;

/// A parsed pin argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinArg {
    /// A CID, pinned as is.
    Cid(Cid),
    /// A path the daemon must resolve to its CID.
    Path(String),
}

/// kubo's `invalid path` error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid path {path:?}: {reason}")]
pub struct InvalidPath {
    path: String,
    reason: String,
}

fn new_path(s: &str) -> Result<PinArg, InvalidPath> {
    let invalid = |reason: &str| InvalidPath {
        path: s.to_string(),
        reason: reason.to_string(),
    };
    let segments: Vec<&str> = s.split('/').skip(1).collect();
    if !s.starts_with('/') || segments.len() < 2 || segments[1].is_empty() {
        return Err(invalid("path does not have enough components"));
    }
    let rest: Vec<&str> = segments[2..]
        .iter()
        .copied()
        .filter(|x| !x.is_empty())
        .collect();
    match segments[0] {
        "ipfs" | "ipld" => {
            let cid: Cid = segments[1]
                .parse()
                .map_err(|e: crate::types::CidError| invalid(&e.to_string()))?;
            if rest.is_empty() {
                Ok(PinArg::Cid(cid))
            } else {
                Ok(PinArg::Path(format!(
                    "/{}/{}/{}",
                    segments[0],
                    cid,
                    rest.join("/")
                )))
            }
        }
        "ipns" => Ok(PinArg::Path(s.to_string())),
        _ => Err(invalid("unknown namespace")),
    }
}

/// Parses `arg` as kubo's `PathOrCidPath` does.
pub fn parse_pin_arg(arg: &str) -> Result<PinArg, InvalidPath> {
    match new_path(arg) {
        Ok(p) => Ok(p),
        Err(original) => new_path(&format!("/ipfs/{arg}")).map_err(|_| original),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";

    #[test]
    fn forms() {
        let cid: Cid = C.parse().unwrap();
        assert_eq!(parse_pin_arg(C).unwrap(), PinArg::Cid(cid));
        assert_eq!(
            parse_pin_arg(&format!("/ipfs/{C}")).unwrap(),
            PinArg::Cid(cid)
        );
        assert_eq!(
            parse_pin_arg(&format!("/ipfs/{C}/a/b")).unwrap(),
            PinArg::Path(format!("/ipfs/{C}/a/b"))
        );
        assert_eq!(
            parse_pin_arg(&format!("{C}/a")).unwrap(),
            PinArg::Path(format!("/ipfs/{C}/a"))
        );
        assert_eq!(
            parse_pin_arg("notacid").unwrap_err().to_string(),
            "invalid path \"notacid\": path does not have enough components"
        );
        assert!(parse_pin_arg("/ipfs/notacid").is_err());
        assert!(parse_pin_arg("/foo/bar").is_err());
    }
}
