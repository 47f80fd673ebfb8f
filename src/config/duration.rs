//! Go-style duration strings ("30s", "1m0s", "200ms"), as upstream's `service.json` uses.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that reads and writes Go's `time.Duration` string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }
}

/// Parses a Go duration such as `1h2m3.5s`, `300ms` or `0`, as Go's
/// `time.ParseDuration` does: integer parts in integer arithmetic (a float sum
/// lost nanoseconds on long durations), fractions scaled like Go's, and at most
/// Go's largest duration (2^63-1 ns).
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let s_body = s.strip_prefix('+').unwrap_or(s);
    if s_body.is_empty() {
        return Err(bad());
    }
    const MAX: u64 = i64::MAX as u64;
    let mut total: u64 = 0;
    let mut rest = s_body;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_digits = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_digits = "";
        if let Some(after) = rest.strip_prefix('.') {
            let n = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            frac_digits = &after[..n];
            rest = &after[n..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let mut v: u64 = 0;
        for d in int_digits.bytes() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
                .filter(|v| *v <= MAX)
                .ok_or_else(bad)?;
        }
        v = v.checked_mul(unit).filter(|v| *v <= MAX).ok_or_else(bad)?;
        // Go keeps the fraction digits that fit and scales them in floating point.
        let (mut f, mut scale): (u64, f64) = (0, 1.0);
        let mut overflowed = false;
        for d in frac_digits.bytes() {
            if overflowed {
                continue;
            }
            match f
                .checked_mul(10)
                .and_then(|x| x.checked_add(u64::from(d - b'0')))
            {
                Some(x) if x <= MAX => {
                    f = x;
                    scale *= 10.0;
                }
                _ => overflowed = true,
            }
        }
        let frac = (f as f64 * (unit as f64 / scale)) as u64;
        v = v.checked_add(frac).filter(|v| *v <= MAX).ok_or_else(bad)?;
        total = total.checked_add(v).filter(|t| *t <= MAX).ok_or_else(bad)?;
    }
    Ok(Duration::from_nanos(total))
}

/// Formats like Go's `Duration.String()`: `1h0m0s`, `1m30s`, `1.5s`, `200ms`, `0s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1u128)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", frac(nanos, div));
    }
    let total_secs = nanos / 1_000_000_000;
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s_nanos = nanos - (h * 3600 + m * 60) * 1_000_000_000;
    let secs = frac(s_nanos, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

fn frac(value: u128, div: u128) -> String {
    let whole = value / div;
    let rem = value % div;
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(GoDuration).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_go_forms() {
        for s in [
            "0s", "30s", "1m0s", "2m0s", "12m0s", "3h0m0s", "24h0m0s", "200ms", "1.5s", "50ms",
            "1m30s",
        ] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn long_durations_keep_every_nanosecond_up_to_gos_maximum() {
        // Found by tests/fuzz_props.rs: a float sum lost nanoseconds here.
        let d = Duration::from_nanos(26_267_899_962_710_505);
        assert_eq!(parse(&format(d)), Ok(d));
        assert_eq!(
            parse("2562047h47m16.854775807s"),
            Ok(Duration::from_nanos(i64::MAX as u64))
        );
        assert!(parse("2562047h47m16.854775808s").is_err());
        assert!(parse("99999999999999999999h").is_err());
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1h1.5m"), Ok(Duration::from_secs(3690)));
    }

    #[test]
    fn rejects_bad() {
        for s in ["", "+", "5", "-1s", "1x", "s", "1.2.3s", ".s", "1h."] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
