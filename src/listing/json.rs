//! Hand-written JSON for the shapes listings write once per pin. serde_json goes
//! through a map serializer for `Pin` (its options are flattened), formats times
//! and CIDs through `fmt::Write` and allocates a `String` per CID; at a million
//! pins that was most of a listing's CPU time. Every writer here produces exactly
//! the bytes `serde_json::to_writer` produces for the same value (upstream's shape
//! and field order), which the tests check on varied and odd values.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::types::{Cid, Pin, PinType};

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
pub fn str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&b[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Appends an unsigned integer.
pub fn uint(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a signed integer.
pub fn int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    uint(out, v.unsigned_abs());
}

fn two(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

fn digits(out: &mut Vec<u8>, v: u32, n: u32) {
    for p in (0..n).rev() {
        out.push(b'0' + (v / 10u32.pow(p) % 10) as u8);
    }
}

/// Appends a time as chrono's serde writes it (RFC 3339, `Z`, as many fraction
/// digits as needed: none, 3, 6 or 9).
pub fn time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    let d = t.naive_utc();
    let year = d.year();
    if !(0..=9999).contains(&year) {
        // Signed, widened years: rare enough for the general path.
        let _ = serde_json::to_writer(&mut *out, t);
        return;
    }
    out.push(b'"');
    digits(out, year as u32, 4);
    out.push(b'-');
    two(out, d.month());
    out.push(b'-');
    two(out, d.day());
    out.push(b'T');
    let (h, m, mut s) = (d.hour(), d.minute(), d.second());
    let mut nano = d.nanosecond();
    // A leap second, as chrono prints it.
    if nano >= 1_000_000_000 {
        s += 1;
        nano -= 1_000_000_000;
    }
    two(out, h);
    out.push(b':');
    two(out, m);
    out.push(b':');
    two(out, s);
    if nano != 0 {
        out.push(b'.');
        if nano.is_multiple_of(1_000_000) {
            digits(out, nano / 1_000_000, 3);
        } else if nano.is_multiple_of(1000) {
            digits(out, nano / 1000, 6);
        } else {
            digits(out, nano, 9);
        }
    }
    out.extend_from_slice(b"Z\"");
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Appends the text form of the CID whose binary form is `bytes`, without
/// quotes: CIDv1 in multibase base32 (as `cid` prints them) encoded here without
/// an intermediate `String`; anything else through `cid`'s own printing.
pub fn cid_text(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), crate::types::CidError> {
    if bytes.first() == Some(&1) {
        out.reserve(1 + (bytes.len() * 8).div_ceil(5));
        out.push(b'b');
        for chunk in bytes.chunks(5) {
            let mut b = [0u8; 5];
            b[..chunk.len()].copy_from_slice(chunk);
            let v = u64::from_be_bytes([0, 0, 0, b[0], b[1], b[2], b[3], b[4]]);
            let n = (chunk.len() * 8).div_ceil(5);
            for k in 0..n {
                out.push(BASE32[((v >> (35 - 5 * k)) & 31) as usize]);
            }
        }
        return Ok(());
    }
    let cid = Cid::from_bytes(bytes)?;
    out.extend_from_slice(cid.to_string().as_bytes());
    Ok(())
}

/// Appends `cid` as a JSON string.
pub fn cid(out: &mut Vec<u8>, cid: &Cid) {
    out.push(b'"');
    if cid.0.version() == ::cid::Version::V1 {
        // A CID's own bytes always form a CID.
        let _ = cid_text(out, &cid.to_bytes());
    } else {
        out.extend_from_slice(cid.to_string().as_bytes());
    }
    out.push(b'"');
}

/// Appends a list of strings.
pub fn strs(out: &mut Vec<u8>, v: &[String]) {
    out.push(b'[');
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        str(out, s);
    }
    out.push(b']');
}

fn pin_type(t: PinType) -> &'static [u8] {
    match t {
        PinType::Data => b"\"pin\"",
        PinType::Meta => b"\"meta-pin\"",
        PinType::ClusterDag => b"\"clusterdag-pin\"",
        PinType::Shard => b"\"shard-pin\"",
    }
}

/// Appends `pin` as serde_json writes it (options first, flattened).
pub fn pin(out: &mut Vec<u8>, p: &Pin) {
    let o = &p.options;
    out.extend_from_slice(b"{\"replication_factor_min\":");
    int(out, i64::from(o.replication_factor_min));
    out.extend_from_slice(b",\"replication_factor_max\":");
    int(out, i64::from(o.replication_factor_max));
    out.extend_from_slice(b",\"name\":");
    str(out, &o.name);
    out.extend_from_slice(b",\"mode\":\"");
    out.extend_from_slice(o.mode.as_str().as_bytes());
    out.extend_from_slice(b"\",\"shard_size\":");
    uint(out, o.shard_size);
    out.extend_from_slice(b",\"user_allocations\":");
    strs(out, &o.user_allocations);
    out.extend_from_slice(b",\"expire_at\":");
    match &o.expire_at {
        Some(t) => opt_time(out, t),
        None => {
            out.push(b'"');
            out.extend_from_slice(crate::types::ZERO_TIME.as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b",\"metadata\":");
    map(out, &o.metadata);
    if let Some(u) = &o.pin_update {
        out.extend_from_slice(b",\"pin_update\":");
        cid(out, u);
    }
    out.extend_from_slice(b",\"origins\":");
    strs(out, &o.origins);
    out.extend_from_slice(b",\"cid\":");
    cid(out, &p.cid);
    out.extend_from_slice(b",\"type\":");
    out.extend_from_slice(pin_type(p.pin_type));
    out.extend_from_slice(b",\"allocations\":");
    strs(out, &p.allocations);
    out.extend_from_slice(b",\"max_depth\":");
    int(out, i64::from(p.max_depth));
    out.extend_from_slice(b",\"reference\":");
    match &p.reference {
        Some(r) => cid(out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"timestamp\":");
    time(out, &p.timestamp);
    out.push(b'}');
}

/// `expire_at` goes through `to_rfc3339_opts(AutoSi, true)`, which is what the
/// serde form of a time writes too.
fn opt_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    time(out, t);
}

/// Appends a map of strings.
pub fn map(out: &mut Vec<u8>, m: &std::collections::BTreeMap<String, String>) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        str(out, k);
        out.push(b':');
        str(out, v);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PinMode, PinOptions};

    fn serde(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn mine(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut all = String::new();
        for c in 0u8..0x80 {
            all.push(c as char);
        }
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\u{7f}ünï\u{2028}😀",
            &all,
            "\n\r\t\u{8}\u{c}\u{1}\u{1f}",
        ] {
            assert_eq!(mine(|o| str(o, s)), serde(&s));
        }
        for v in [0i64, 7, -7, 10, -10, i64::MAX, i64::MIN, 1 << 40] {
            assert_eq!(mine(|o| int(o, v)), serde(&v));
        }
        assert_eq!(mine(|o| uint(o, u64::MAX)), serde(&u64::MAX));
    }

    #[test]
    fn times_print_as_chrono_serde_does() {
        let base = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for (secs, nanos) in [
            (0i64, 0u32),
            (1_700_000_000, 0),
            (1_700_000_000, 5_000_000),
            (1_700_000_000, 5_000),
            (1_700_000_000, 5),
            (1_700_000_000, 123_456_789),
            (-62_135_596_800, 0),           // year 1
            (-62_167_219_200 - 10, 0),      // before year 0
            (253_402_300_800 + 10, 0),      // after 9999
            (1_483_228_799, 1_001_500_000), // a leap second (2016-12-31T23:59:60.0015)
        ] {
            let Some(t) = DateTime::from_timestamp(secs, nanos) else {
                continue;
            };
            assert_eq!(mine(|o| time(o, &t)), serde(&t), "{secs} {nanos}");
        }
        assert_eq!(mine(|o| time(o, &base)), serde(&base));
    }

    fn cids() -> Vec<Cid> {
        let mut v: Vec<Cid> = [
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Digests of every length mod 5, so that every base32 tail is exercised.
        for n in 0..10u8 {
            let mut b = vec![0x01, 0x55, 0x00, n];
            b.extend((0..n).map(|i| i.wrapping_mul(37)));
            v.push(Cid::from_bytes(&b).unwrap());
        }
        v
    }

    #[test]
    fn cids_print_as_cid_does() {
        for c in cids() {
            assert_eq!(mine(|o| cid(o, &c)), serde(&c));
        }
    }

    #[test]
    fn pins_write_as_serde_json_does() {
        let cs = cids();
        for (i, c) in cs.iter().enumerate() {
            let mut p = Pin::new(*c, PinOptions::default());
            assert_eq!(mine(|o| pin(o, &p)), serde(&p));
            p.options.name = format!("n\"{i}\"\n");
            p.options.replication_factor_min = -1;
            p.options.replication_factor_max = i as i32;
            p.options.mode = PinMode::Direct;
            p.options.shard_size = u64::MAX - i as u64;
            p.options.user_allocations = vec!["a".into(), "b\\".into()];
            p.options.expire_at = DateTime::from_timestamp(1_800_000_000, i as u32 * 1000);
            p.options.metadata.insert("k".into(), "v".into());
            p.options.metadata.insert("ü".into(), "\u{1}".into());
            p.options.pin_update = Some(cs[(i + 1) % cs.len()]);
            p.options.origins = vec!["/ip4/1.2.3.4/tcp/4001".into()];
            p.allocations = vec!["peer1".into(), "peer2".into()];
            p.reference = Some(cs[0]);
            p.pin_type = [
                PinType::Data,
                PinType::Meta,
                PinType::ClusterDag,
                PinType::Shard,
            ][i % 4];
            p.max_depth = i as i32 - 3;
            assert_eq!(mine(|o| pin(o, &p)), serde(&p));
        }
    }
}
