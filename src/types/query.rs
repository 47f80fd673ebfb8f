//! Pin options in query strings (upstream's `PinOptions.FromQuery` / `ToQuery`).

use chrono::{DateTime, Utc};

use super::{PinMode, PinOptions};

impl PinOptions {
    /// Reads options from decoded query pairs; unknown keys are ignored.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut o = PinOptions::default();
        let int = |k: &str, v: &str| -> Result<i32, String> {
            v.parse()
                .map_err(|_| format!("parameter {k} invalid: {v:?} is not an integer"))
        };
        for (k, v) in pairs {
            match k.as_str() {
                "name" => o.name = v.clone(),
                "mode" => o.mode = v.parse::<PinMode>()?,
                "replication" => {
                    let n = int(k, v)?;
                    o.replication_factor_min = n;
                    o.replication_factor_max = n;
                }
                "replication-min" => o.replication_factor_min = int(k, v)?,
                "replication-max" => o.replication_factor_max = int(k, v)?,
                "shard-size" => {
                    o.shard_size = v
                        .parse()
                        .map_err(|_| format!("parameter shard-size invalid: {v:?}"))?
                }
                "user-allocations" => o.user_allocations = crate::config::comma_list(v),
                "expire-at" => {
                    let t = DateTime::parse_from_rfc3339(v)
                        .map_err(|e| format!("parameter expire-at invalid: {e}"))?;
                    o.expire_at = Some(t.with_timezone(&Utc));
                }
                "expire-in" => {
                    let d = crate::config::parse_duration(v)
                        .map_err(|e| format!("parameter expire-in invalid: {e}"))?;
                    if d < std::time::Duration::from_secs(1) {
                        return Err("parameter expire-in invalid: must be at least 1s".into());
                    }
                    let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
                    o.expire_at = Some(Utc::now() + d);
                }
                "origins" => o.origins = crate::config::comma_list(v),
                "pin-update" => {
                    o.pin_update = Some(
                        v.parse()
                            .map_err(|e| format!("parameter pin-update invalid: {e}"))?,
                    )
                }
                meta if meta.starts_with("meta-") => {
                    o.metadata
                        .insert(meta["meta-".len()..].to_string(), v.clone());
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// The query pairs that `from_query` reads back into these options.
    pub fn to_query(&self) -> Vec<(String, String)> {
        let mut q = vec![
            ("name".to_string(), self.name.clone()),
            ("mode".to_string(), self.mode.as_str().to_string()),
            (
                "replication-min".to_string(),
                self.replication_factor_min.to_string(),
            ),
            (
                "replication-max".to_string(),
                self.replication_factor_max.to_string(),
            ),
        ];
        if !self.user_allocations.is_empty() {
            q.push(("user-allocations".into(), self.user_allocations.join(",")));
        }
        if let Some(t) = self.expire_at {
            q.push(("expire-at".into(), t.to_rfc3339()));
        }
        for (k, v) in &self.metadata {
            q.push((format!("meta-{k}"), v.clone()));
        }
        if let Some(from) = &self.pin_update {
            q.push(("pin-update".into(), from.to_string()));
        }
        q
    }
}

/// Owned query pairs from string pairs, for tests of query readers.
#[cfg(test)]
pub(crate) fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
    s.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let o = PinOptions::from_query(&pairs(&[
            ("name", "n"),
            ("mode", "direct"),
            ("replication-min", "1"),
            ("replication-max", "3"),
            ("meta-a", "b"),
        ]))
        .unwrap();
        assert_eq!(o.mode, PinMode::Direct);
        assert_eq!(o.metadata["a"], "b");
        assert_eq!(PinOptions::from_query(&o.to_query()).unwrap(), o);
        let r = PinOptions::from_query(&pairs(&[("replication", "2")])).unwrap();
        assert_eq!((r.replication_factor_min, r.replication_factor_max), (2, 2));
        assert!(PinOptions::from_query(&pairs(&[("mode", "weird")])).is_err());
        assert!(PinOptions::from_query(&pairs(&[("replication-min", "x")])).is_err());
    }
}
