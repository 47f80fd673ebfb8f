//! Who is calling the REST API: HTTP Basic credentials, or upstream's JWT bearer
//! tokens (HS256, the `iss` claim naming a user, signed with that user's
//! password, no expiry), which `POST /token` hands out.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The users and their passwords.
pub type Credentials = BTreeMap<String, String>;

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

fn sign(password: &str, signing_input: &str) -> Option<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(password.as_bytes()).ok()?;
    mac.update(signing_input.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

/// A token for `user`, signed with `password`.
pub fn issue(user: &str, password: &str) -> Option<String> {
    let header = serde_json::to_vec(&JwtHeader {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
    })
    .ok()?;
    let claims = serde_json::to_vec(&Claims {
        iss: user.to_string(),
        exp: None,
        nbf: None,
    })
    .ok()?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = sign(password, &input)?;
    Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The user a token was issued to, when its signature is that user's and it is
/// within its validity (if it states one).
fn verify(token: &str, creds: &Credentials) -> Option<String> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: JwtHeader = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header.alg != "HS256" {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let password = creds.get(&claims.iss)?;
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(password.as_bytes()).ok()?;
    mac.update(format!("{h}.{c}").as_bytes());
    mac.verify_slice(&sig).ok()?;
    let now = chrono::Utc::now().timestamp();
    if claims.exp.is_some_and(|exp| now >= exp) || claims.nbf.is_some_and(|nbf| now < nbf) {
        return None;
    }
    Some(claims.iss)
}

/// The user named by a request's `Authorization` (Basic or Bearer) when it
/// checks out against `creds`.
pub fn user(headers: &HeaderMap, creds: &Credentials) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return verify(token.trim(), creds);
    }
    crate::http::basic_user(headers, creds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn creds() -> Credentials {
        [("alice".to_string(), "s3cret".to_string())].into()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn tokens_name_their_user_and_need_its_password() {
        let token = issue("alice", "s3cret").unwrap();
        assert_eq!(user(&bearer(&token), &creds()).as_deref(), Some("alice"));
        let forged = issue("alice", "guess").unwrap();
        assert_eq!(user(&bearer(&forged), &creds()), None);
        let stranger = issue("mallory", "s3cret").unwrap();
        assert_eq!(user(&bearer(&stranger), &creds()), None);
        // A token whose claims were edited no longer matches its signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let edited = URL_SAFE_NO_PAD.encode(br#"{"iss":"alice","exp":99999999999}"#);
        parts[1] = &edited;
        assert_eq!(user(&bearer(&parts.join(".")), &creds()), None);
        assert_eq!(user(&bearer("not.a.token"), &creds()), None);
        assert_eq!(user(&bearer(""), &creds()), None);
    }

    #[test]
    fn expired_tokens_and_basic_credentials() {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"iss":"alice","exp":1000}"#)
        );
        let sig = URL_SAFE_NO_PAD.encode(sign("s3cret", &input).unwrap());
        assert_eq!(user(&bearer(&format!("{input}.{sig}")), &creds()), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("alice:s3cret"))
                .parse()
                .unwrap(),
        );
        assert_eq!(user(&h, &creds()).as_deref(), Some("alice"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("alice:nope"))
                .parse()
                .unwrap(),
        );
        assert_eq!(user(&h, &creds()), None);
    }
}
