//! The compact binary encoding of pins (format 1), shared by the state values,
//! the Raft log entries and the snapshots.
//!
//! Hand-written rather than derived: `Pin` flattens its options into upstream's
//! JSON shape, which non-self-describing serde codecs (postcard, bincode) cannot
//! read back, and CBOR would repeat every field name in every pin. Integers are
//! LEB128 varints (signed ones zigzag-encoded), strings and byte strings carry
//! their length first. Every top-level value starts with a format byte, so a
//! later format can be told apart from this one and from the JSON that earlier
//! versions stored (which always starts with `{`, `[` or `n`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::types::{Cid, Pin, PinMode, PinOptions, PinType};

/// The leading byte of values in this encoding.
pub const FORMAT_V1: u8 = 1;

/// A value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    fn new(what: impl Into<String>) -> Self {
        DecodeError(what.into())
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint.
pub fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends `b` with its length first.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_strs(out: &mut Vec<u8>, v: &[String]) {
    put_uvarint(out, v.len() as u64);
    for s in v {
        put_bytes(out, s.as_bytes());
    }
}

fn put_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    put_ivarint(out, t.timestamp());
    put_uvarint(out, u64::from(t.timestamp_subsec_nanos()));
}

fn put_opt_cid(out: &mut Vec<u8>, c: &Option<Cid>) {
    match c {
        Some(c) => {
            out.push(1);
            put_bytes(out, &c.to_bytes());
        }
        None => out.push(0),
    }
}

/// A cursor over an encoded value.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .b
            .split_first()
            .ok_or_else(|| DecodeError::new("truncated value"))?;
        self.b = rest;
        Ok(first)
    }

    /// `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::new("truncated value"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    /// An unsigned varint.
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::new("varint too long"))
    }

    /// A zigzag varint.
    pub fn ivarint(&mut self) -> Result<i64, DecodeError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::new("length out of range"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::new("string is not UTF-8"))
    }

    fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.uvarint()?;
        // Each string takes at least its length byte: a count beyond what is left
        // is corrupt, and must not make us reserve memory for it.
        if n > self.b.len() as u64 {
            return Err(DecodeError::new("list longer than its value"));
        }
        (0..n).map(|_| self.string()).collect()
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        i32::try_from(self.ivarint()?).map_err(|_| DecodeError::new("integer out of range"))
    }

    /// A CID as its binary form.
    pub fn cid(&mut self) -> Result<Cid, DecodeError> {
        Cid::from_bytes(self.bytes()?).map_err(|e| DecodeError::new(e.to_string()))
    }

    fn opt_cid(&mut self) -> Result<Option<Cid>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.cid().map(Some),
            t => Err(DecodeError(format!("bad option tag {t}"))),
        }
    }

    fn time(&mut self) -> Result<DateTime<Utc>, DecodeError> {
        let secs = self.ivarint()?;
        let nanos = u32::try_from(self.uvarint()?)
            .map_err(|_| DecodeError::new("nanoseconds out of range"))?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| DecodeError::new("time out of range"))
    }
}

fn pin_type_byte(t: PinType) -> u8 {
    match t {
        PinType::Data => 0,
        PinType::Meta => 1,
        PinType::ClusterDag => 2,
        PinType::Shard => 3,
    }
}

/// Appends `pin` (without a format byte).
pub fn put_pin(out: &mut Vec<u8>, pin: &Pin) {
    put_uvarint(out, pin.cid.0.encoded_len() as u64);
    pin.cid.write_bytes_to(out);
    out.push(pin_type_byte(pin.pin_type));
    put_ivarint(out, i64::from(pin.max_depth));
    put_opt_cid(out, &pin.reference);
    put_time(out, &pin.timestamp);
    put_strs(out, &pin.allocations);
    let o = &pin.options;
    put_ivarint(out, i64::from(o.replication_factor_min));
    put_ivarint(out, i64::from(o.replication_factor_max));
    put_bytes(out, o.name.as_bytes());
    out.push(match o.mode {
        PinMode::Recursive => 0,
        PinMode::Direct => 1,
    });
    put_uvarint(out, o.shard_size);
    put_strs(out, &o.user_allocations);
    match &o.expire_at {
        Some(t) => {
            out.push(1);
            put_time(out, t);
        }
        None => out.push(0),
    }
    put_uvarint(out, o.metadata.len() as u64);
    for (k, v) in &o.metadata {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_opt_cid(out, &o.pin_update);
    put_strs(out, &o.origins);
}

/// Reads a pin written by [`put_pin`].
pub fn read_pin(r: &mut Reader<'_>) -> Result<Pin, DecodeError> {
    let cid = r.cid()?;
    let pin_type = match r.u8()? {
        0 => PinType::Data,
        1 => PinType::Meta,
        2 => PinType::ClusterDag,
        3 => PinType::Shard,
        t => return Err(DecodeError(format!("unknown pin type {t}"))),
    };
    let max_depth = r.i32()?;
    let reference = r.opt_cid()?;
    let timestamp = r.time()?;
    let allocations = r.strs()?;
    let replication_factor_min = r.i32()?;
    let replication_factor_max = r.i32()?;
    let name = r.string()?;
    let mode = match r.u8()? {
        0 => PinMode::Recursive,
        1 => PinMode::Direct,
        m => return Err(DecodeError(format!("unknown pin mode {m}"))),
    };
    let shard_size = r.uvarint()?;
    let user_allocations = r.strs()?;
    let expire_at = match r.u8()? {
        0 => None,
        1 => Some(r.time()?),
        t => return Err(DecodeError(format!("bad option tag {t}"))),
    };
    let n = r.uvarint()?;
    if n > r.rest().len() as u64 {
        return Err(DecodeError::new("metadata longer than its value"));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n {
        let k = r.string()?;
        metadata.insert(k, r.string()?);
    }
    let pin_update = r.opt_cid()?;
    let origins = r.strs()?;
    Ok(Pin {
        options: PinOptions {
            replication_factor_min,
            replication_factor_max,
            name,
            mode,
            shard_size,
            user_allocations,
            expire_at,
            metadata,
            pin_update,
            origins,
        },
        cid,
        pin_type,
        allocations,
        max_depth,
        reference,
        timestamp,
    })
}

/// A pin as a state value: the format byte, then the pin.
pub fn encode_pin(pin: &Pin) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(FORMAT_V1);
    put_pin(&mut out, pin);
    out
}

/// Decodes a state value: this format, or the JSON earlier versions stored.
pub fn decode_pin(b: &[u8]) -> Result<Pin, DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => {
            let mut r = Reader::new(&b[1..]);
            let pin = read_pin(&mut r)?;
            if !r.is_empty() {
                return Err(DecodeError::new("trailing bytes after a pin"));
            }
            Ok(pin)
        }
        Some(b'{') => serde_json::from_slice(b).map_err(|e| DecodeError(e.to_string())),
        Some(v) => Err(DecodeError(format!(
            "unknown pin format {v}: written by a newer version of this peer?"
        ))),
        None => Err(DecodeError::new("empty pin value")),
    }
}

/// What `pin/ls` prints of a stored pin: its depth (hence its mode) and its
/// name, read without decoding the rest of the value (no allocation for this
/// format; the JSON earlier versions stored is decoded whole).
pub fn read_depth_and_name(b: &[u8]) -> Result<(i32, std::borrow::Cow<'_, str>), DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => {
            let mut r = Reader::new(&b[1..]);
            let max_depth = skip_to_name(&mut r)?;
            let name = std::str::from_utf8(r.bytes()?)
                .map_err(|_| DecodeError::new("string is not UTF-8"))?;
            Ok((max_depth, std::borrow::Cow::Borrowed(name)))
        }
        _ => {
            let p = decode_pin(b)?;
            Ok((p.max_depth, std::borrow::Cow::Owned(p.options.name)))
        }
    }
}

/// A stored pin's `expire_at`, read without decoding the rest of the value
/// (the JSON earlier versions stored is decoded whole).
pub fn read_expire_at(b: &[u8]) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => {
            let mut r = Reader::new(&b[1..]);
            skip_to_name(&mut r)?;
            r.bytes()?; // name
            r.u8()?; // mode
            r.uvarint()?; // shard size
            for _ in 0..r.uvarint()? {
                r.bytes()?; // user allocations
            }
            match r.u8()? {
                0 => Ok(None),
                1 => Ok(Some(r.time()?)),
                t => Err(DecodeError(format!("bad option tag {t}"))),
            }
        }
        _ => Ok(decode_pin(b)?.options.expire_at),
    }
}

/// Whether a stored pin lists `peer` among its allocations, read without
/// decoding the rest of the value (the JSON of earlier versions is decoded whole).
pub fn is_allocated_to(b: &[u8], peer: &str) -> Result<bool, DecodeError> {
    match b.first() {
        Some(&FORMAT_V1) => {
            let mut r = Reader::new(&b[1..]);
            skip_to_allocations(&mut r)?;
            for _ in 0..r.uvarint()? {
                if r.bytes()? == peer.as_bytes() {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        _ => Ok(decode_pin(b)?.allocations.iter().any(|a| a == peer)),
    }
}

/// Reads a pin written by [`put_pin`] up to its allocations; its `max_depth`.
fn skip_to_allocations(r: &mut Reader<'_>) -> Result<i32, DecodeError> {
    r.bytes()?; // cid
    r.u8()?; // type
    let max_depth = r.i32()?;
    if r.u8()? == 1 {
        r.bytes()?; // reference
    }
    r.ivarint()?; // timestamp
    r.uvarint()?;
    Ok(max_depth)
}

/// Reads a pin written by [`put_pin`] up to its name; its `max_depth`.
fn skip_to_name(r: &mut Reader<'_>) -> Result<i32, DecodeError> {
    let max_depth = skip_to_allocations(r)?;
    for _ in 0..r.uvarint()? {
        r.bytes()?; // allocations
    }
    r.ivarint()?; // replication factors
    r.ivarint()?;
    Ok(max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocations read in place agree with the whole decode.
    #[test]
    fn allocations_are_read_without_the_rest() {
        let mut p = full_pin();
        p.allocations = vec!["peerA".into(), "peerB".into()];
        for b in [encode_pin(&p), serde_json::to_vec(&p).unwrap()] {
            assert!(is_allocated_to(&b, "peerA").unwrap());
            assert!(is_allocated_to(&b, "peerB").unwrap());
            assert!(!is_allocated_to(&b, "peer").unwrap());
            assert!(!is_allocated_to(&b, "peerAB").unwrap());
        }
        p.allocations.clear();
        assert!(!is_allocated_to(&encode_pin(&p), "peerA").unwrap());
    }

    /// `expire_at` read in place agrees with the whole decode, set or not.
    #[test]
    fn expire_at_is_read_without_the_rest() {
        let mut p = full_pin();
        assert!(p.options.expire_at.is_some());
        let v = encode_pin(&p);
        assert_eq!(read_expire_at(&v).unwrap(), p.options.expire_at);
        p.options.expire_at = None;
        assert_eq!(read_expire_at(&encode_pin(&p)).unwrap(), None);
        let p = full_pin();
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(read_expire_at(&json).unwrap(), p.options.expire_at);
    }

    fn full_pin() -> Pin {
        let cid: Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            .parse()
            .unwrap();
        let mut p = Pin::new(cid, PinOptions::default());
        p.options.name = "ünïcode name".into();
        p.options.replication_factor_min = -1;
        p.options.replication_factor_max = 3;
        p.options.mode = PinMode::Direct;
        p.options.shard_size = 1 << 40;
        p.options.user_allocations = vec!["a".into(), "b".into()];
        p.options.expire_at = Some(Utc::now());
        p.options.metadata.insert("k".into(), "v".into());
        p.options.pin_update = Some(cid);
        p.options.origins = vec!["/ip4/1.2.3.4/tcp/4001".into()];
        p.allocations = vec!["peer1".into()];
        p.reference = Some(cid);
        p.pin_type = PinType::Shard;
        p.max_depth = 0;
        p
    }

    #[test]
    fn pins_round_trip_and_json_still_reads() {
        let p = full_pin();
        let bin = encode_pin(&p);
        assert_eq!(decode_pin(&bin).unwrap(), p);
        let json = serde_json::to_vec(&p).unwrap();
        assert!(
            bin.len() * 2 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
        // A JSON value as earlier versions stored it.
        let old = decode_pin(&json).unwrap();
        assert_eq!(old.cid, p.cid);
        assert_eq!(old.options.metadata, p.options.metadata);
        let plain = Pin::new(p.cid, PinOptions::default());
        assert_eq!(decode_pin(&encode_pin(&plain)).unwrap(), plain);
    }

    #[test]
    fn depth_and_name_read_alone() {
        let mut p = full_pin();
        for depth in [0, -1, 7] {
            p.max_depth = depth;
            let bin = encode_pin(&p);
            let (d, name) = read_depth_and_name(&bin).unwrap();
            assert_eq!((d, name.as_ref()), (depth, p.options.name.as_str()));
            let json = serde_json::to_vec(&p).unwrap();
            let (d, name) = read_depth_and_name(&json).unwrap();
            assert_eq!((d, name.as_ref()), (depth, p.options.name.as_str()));
        }
        let plain = Pin::new(p.cid, PinOptions::default());
        let bin = encode_pin(&plain);
        let (d, name) = read_depth_and_name(&bin).unwrap();
        assert_eq!((d, name.as_ref()), (-1, ""));
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let bin = encode_pin(&full_pin());
        for n in 0..bin.len() {
            assert!(decode_pin(&bin[..n]).is_err(), "prefix of {n} bytes");
        }
        // Only what comes before the name is read: prefixes that end before it fail.
        for n in 0..40 {
            assert!(
                read_depth_and_name(&bin[..n]).is_err(),
                "prefix of {n} bytes"
            );
        }
        for n in 40..bin.len() {
            let _ = read_depth_and_name(&bin[..n]);
        }
        assert!(
            decode_pin(&[9, 1, 2])
                .unwrap_err()
                .0
                .contains("unknown pin format 9")
        );
        // A huge list count must not allocate.
        let mut v = vec![FORMAT_V1];
        put_bytes(&mut v, &full_pin().cid.to_bytes());
        v.extend_from_slice(&[0, 1, 0, 0, 0]);
        put_uvarint(&mut v, u64::MAX / 2);
        assert!(decode_pin(&v).is_err());
    }
}
