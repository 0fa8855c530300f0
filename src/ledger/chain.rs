//! Canonical encoding and the hash chain.
//!
//! * Canonical JSON: objects with keys sorted by their UTF-8 bytes, no whitespace, strings
//!   escaped as serde_json escapes them (`"` `\` and control characters only; everything else,
//!   Chinese included, as raw UTF-8), numbers as serde_json prints them (integers in decimal;
//!   masses are integer grams, so bodies carry no floats in practice).
//! * Row encoding: the fields `seq, id, recorded_at, occurred_at, kind, body, photos` each as a
//!   netstring (`<byte length in decimal>:<bytes>,`), concatenated. `seq` is decimal, times are
//!   `YYYY-MM-DDTHH:MM:SS.ffffffZ`, `photos` is the canonical JSON array of hex photo hashes.
//! * `hash(n) = SHA-256(hash(n-1) || row encoding(n))`, with `hash(0)` = 32 zero bytes.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

pub type Hash = [u8; 32];

/// The `prev_hash` of the first event.
pub const GENESIS: Hash = [0u8; 32];

/// Canonical JSON text of any serializable value.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(512);
    write_canonical(&v, &mut out)?;
    // Only valid UTF-8 was written (JSON text from serde_json and `&str` keys).
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// Append `s` as a JSON string (escaped as serde_json escapes it) to canonical text.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(map) => {
            // Sort explicitly: serde_json keeps insertion order when another crate in the build
            // turns on its `preserve_order` feature, and the hash must not depend on that.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}

/// The stored columns of one event row that the hash covers.
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    pub seq: i64,
    pub id: &'a str,
    pub recorded_at: &'a str,
    pub occurred_at: &'a str,
    pub kind: &'a str,
    pub body: &'a str,
    pub photos: &'a str,
}

fn netstring(h: &mut Sha256, bytes: &[u8]) {
    let mut len = String::with_capacity(8);
    let _ = write!(len, "{}:", bytes.len());
    h.update(len.as_bytes());
    h.update(bytes);
    h.update(b",");
}

/// `SHA-256(prev || netstrings of the row)`.
pub fn row_hash(prev: &Hash, row: &RowFields<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    netstring(&mut h, row.seq.to_string().as_bytes());
    netstring(&mut h, row.id.as_bytes());
    netstring(&mut h, row.recorded_at.as_bytes());
    netstring(&mut h, row.occurred_at.as_bytes());
    netstring(&mut h, row.kind.as_bytes());
    netstring(&mut h, row.body.as_bytes());
    netstring(&mut h, row.photos.as_bytes());
    h.finalize().into()
}

/// Hash from a stored blob, which must be exactly 32 bytes.
pub fn hash_from_slice(b: &[u8]) -> Option<Hash> {
    b.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_keeps_utf8() {
        let v = json!({"b": 1, "a": {"z": [1, "豫A12345"], "y": null}, "\"q": "x\ny"});
        let s = canonical_json(&v).unwrap();
        assert_eq!(
            s,
            r#"{"\"q":"x\ny","a":{"y":null,"z":[1,"豫A12345"]},"b":1}"#
        );
    }

    #[test]
    fn row_hash_depends_on_every_field_and_on_prev() {
        let base = RowFields {
            seq: 1,
            id: "a-1",
            recorded_at: "2026-01-01T00:00:00.000000Z",
            occurred_at: "2026-01-01T00:00:00.000000Z",
            kind: "alarm",
            body: "{}",
            photos: "[]",
        };
        let h0 = row_hash(&GENESIS, &base);
        let variants = [
            RowFields { seq: 2, ..base },
            RowFields { id: "a-2", ..base },
            RowFields {
                recorded_at: "2026-01-01T00:00:00.000001Z",
                ..base
            },
            RowFields {
                occurred_at: "2026-01-01T00:00:01.000000Z",
                ..base
            },
            RowFields {
                kind: "purge",
                ..base
            },
            RowFields {
                body: "{\"a\":1}",
                ..base
            },
            RowFields {
                photos: "[\"00\"]",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(row_hash(&GENESIS, &v), h0);
        }
        assert_ne!(row_hash(&[1u8; 32], &base), h0);
        // Netstrings make field boundaries unambiguous: moving a byte across fields changes it.
        let shifted = RowFields {
            kind: "alar",
            body: "m{}",
            ..base
        };
        assert_ne!(row_hash(&GENESIS, &shifted), h0);
    }
}
