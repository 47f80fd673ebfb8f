//! `identity.json`: the peer's libp2p key pair, in upstream's shape.

use std::path::Path;

use base64::Engine;
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The file name inside the config folder.
pub const IDENTITY_FILE: &str = "identity.json";

/// A peer's key pair (ed25519 for new peers; RSA and secp256k1 as found in
/// upstream's identities) and the peer ID derived from it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The libp2p peer ID.
    pub peer_id: PeerId,
    /// The private key.
    pub keypair: Keypair,
}

#[derive(Serialize, Deserialize)]
struct IdentityJson {
    id: String,
    private_key: String,
}

impl Identity {
    /// A fresh random ed25519 identity.
    pub fn generate() -> Self {
        let keypair = Keypair::generate_ed25519();
        Identity {
            peer_id: keypair.public().to_peer_id(),
            keypair,
        }
    }

    /// Reads `identity.json` and checks that `id` matches the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |_| None)
    }

    /// [`Identity::load`] with upstream's overrides `CLUSTER_ID` and
    /// `CLUSTER_PRIVATEKEY` read through `get`; with both set, the file may be
    /// missing (as in upstream's container setups).
    pub fn load_with_env(
        path: &Path,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (env_id, env_key) = (get("CLUSTER_ID"), get("CLUSTER_PRIVATEKEY"));
        let mut j = match std::fs::read(path) {
            Ok(bytes) => super::from_json_slice::<IdentityJson>(path, &bytes)?,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && env_id.is_some()
                    && env_key.is_some() =>
            {
                IdentityJson {
                    id: String::new(),
                    private_key: String::new(),
                }
            }
            Err(e) => return Err(ConfigError::io(path, e)),
        };
        let from_env = env_id.is_some() || env_key.is_some();
        if let Some(id) = env_id {
            j.id = id;
        }
        if let Some(key) = env_key {
            j.private_key = key;
        }
        let shown = if from_env {
            format!("{} (with CLUSTER_ID/CLUSTER_PRIVATEKEY)", path.display())
        } else {
            path.display().to_string()
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: "private_key".into(),
            path: shown.clone(),
            reason,
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(j.private_key.trim())
            .map_err(|e| invalid(format!("not base64: {e}")))?;
        let keypair =
            Keypair::from_protobuf_encoding(&raw).map_err(|e| invalid(format!("bad key: {e}")))?;
        let peer_id = keypair.public().to_peer_id();
        if peer_id.to_string() != j.id.trim() {
            return Err(ConfigError::Invalid {
                key: "id".into(),
                path: shown,
                reason: format!("does not match the private key (expected {peer_id})"),
            });
        }
        Ok(Identity { peer_id, keypair })
    }

    /// Writes `identity.json` (mode 0600: it holds the private key).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let raw = self
            .keypair
            .to_protobuf_encoding()
            .map_err(|e| ConfigError::Invalid {
                key: "private_key".into(),
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let j = IdentityJson {
            id: self.peer_id.to_string(),
            private_key: base64::engine::general_purpose::STANDARD.encode(raw),
        };
        let text = serde_json::to_string_pretty(&j).map_err(|e| ConfigError::io(path, e.into()))?;
        super::write_private(path, text.as_bytes())
    }
}
