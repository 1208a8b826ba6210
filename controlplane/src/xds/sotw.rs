//! Reading State-of-the-World requests without their repeated names.
//!
//! A State-of-the-World proxy repeats its whole subscription in every
//! request, ACKs included: with 1,000 clusters, each EDS ACK names 1,000
//! load assignments (about 40 KB). Decoding those names into strings and
//! comparing them with the subscription, on every ACK of every proxy, was
//! most of what an endpoint change cost for State-of-the-World proxies
//! (`meshd-load --protocol mix`: memcmp, sorting and UTF-8 checks on top).
//! A stream remembers a hash of the names each type last asked for; a
//! request naming the same ones, in the same order, is decoded without
//! them and marked as such, and the session leaves the subscription as
//! it is. Anything else is decoded whole, as before.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};

use super::request::SotwRequestFields;
use crate::translate::Kind;

/// `DiscoveryRequest.resource_names`.
const RESOURCE_NAMES: u32 = 3;
/// `DiscoveryRequest.type_url`.
const TYPE_URL: u32 = 4;

/// A State-of-the-World request as the stream reads it.
#[derive(Debug)]
pub(super) struct SotwRequest {
    pub request: SotwRequestFields,
    /// The request names the same resources as the last one of its type
    /// on this stream; `request.resource_names` is left empty.
    pub same_names: bool,
}

/// What one stream's requests last named, per type: a hash, not the names.
/// Only the types meshd serves are remembered (a proxy choosing type URLs
/// cannot grow it), and not secrets: their names are checked one by one
/// on every request.
#[derive(Debug, Default)]
pub(super) struct SeenNames {
    /// Seeded per stream: a proxy cannot precompute a collision, and one
    /// would only leave its own subscription as it was.
    hasher: foldhash::quality::RandomState,
    by_type: HashMap<Kind, u64>,
}

impl SeenNames {
    pub fn decode(&mut self, bytes: &[u8]) -> Result<SotwRequest, prost::DecodeError> {
        let Some(scan) = scan(bytes, &self.hasher) else {
            // Not a message this walk understands (groups, a truncated
            // field): prost decides, and says what is wrong.
            return Ok(SotwRequest {
                request: SotwRequestFields::decode(bytes)?,
                same_names: false,
            });
        };
        let kind = Kind::from_type_url(scan.type_url).filter(|k| *k != Kind::Secret);
        if let Some(kind) = kind
            && self.by_type.get(&kind) == Some(&scan.names)
        {
            let mut rest = Vec::with_capacity(scan.kept.iter().map(|r| r.len()).sum());
            for range in scan.kept {
                rest.extend_from_slice(&bytes[range]);
            }
            return Ok(SotwRequest {
                request: SotwRequestFields::decode(rest.as_slice())?,
                same_names: true,
            });
        }
        let request = SotwRequestFields::decode(bytes)?;
        if let Some(kind) = kind {
            self.by_type.insert(kind, scan.names);
        }
        Ok(SotwRequest {
            request,
            same_names: false,
        })
    }
}

/// One pass over a request's top-level fields.
struct Scan<'a> {
    type_url: &'a str,
    /// A hash of every resource name, in order.
    names: u64,
    /// The byte ranges of every other field.
    kept: Vec<Range<usize>>,
}

fn scan<'a>(bytes: &'a [u8], hasher: &impl BuildHasher) -> Option<Scan<'a>> {
    let mut names = hasher.build_hasher();
    let mut count = 0usize;
    let mut type_url = "";
    let mut kept: Vec<Range<usize>> = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = bytes.len() - buf.len();
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
            }
            WireType::SixtyFourBit => buf = buf.get(8..)?,
            WireType::ThirtyTwoBit => buf = buf.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let value = buf.get(..len)?;
                buf = &buf[len..];
                if tag == RESOURCE_NAMES {
                    // The length first: ["ab", "c"] and ["a", "bc"] differ.
                    names.write_usize(len);
                    names.write(value);
                    count += 1;
                    continue;
                }
                if tag == TYPE_URL {
                    // As prost: the last occurrence wins.
                    type_url = std::str::from_utf8(value).ok()?;
                }
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
        let end = bytes.len() - buf.len();
        match kept.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => kept.push(start..end),
        }
    }
    names.write_usize(count);
    Some(Scan {
        type_url,
        names: names.finish(),
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::core::v3::Node;

    fn request(type_url: &str, names: &[&str], nonce: &str) -> Vec<u8> {
        meshd_proto::envoy::service::discovery::v3::DiscoveryRequest {
            version_info: "7".into(),
            node: Some(Node {
                id: "web-0.shop".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_repeated_subscription_is_read_without_its_names_and_nothing_else_is_lost() {
        let eds = Kind::Endpoint.type_url();
        let mut seen = SeenNames::default();
        let first = seen.decode(&request(eds, &["a", "b"], "")).unwrap();
        assert!(!first.same_names);
        assert_eq!(first.request.resource_names, ["a", "b"]);

        let ack = seen.decode(&request(eds, &["a", "b"], "3")).unwrap();
        assert!(ack.same_names);
        assert!(ack.request.resource_names.is_empty());
        // Every other field is as sent.
        let mut expected = SotwRequestFields::decode(request(eds, &[], "3").as_slice()).unwrap();
        expected.resource_names.clear();
        assert_eq!(ack.request, expected);

        // Another set, another order, the same bytes split otherwise, or
        // none at all: decoded whole.
        for names in [&["a"][..], &["b", "a"], &["ab"], &[]] {
            let changed = seen.decode(&request(eds, names, "4")).unwrap();
            assert!(!changed.same_names, "{names:?}");
            assert_eq!(changed.request.resource_names, names);
        }
        // The last whole one is what the next is compared with.
        assert!(seen.decode(&request(eds, &[], "5")).unwrap().same_names);
    }

    #[test]
    fn types_are_remembered_apart_and_secrets_and_unknown_types_never() {
        let mut seen = SeenNames::default();
        let eds = Kind::Endpoint.type_url();
        let rds = Kind::Route.type_url();
        seen.decode(&request(eds, &["80"], "")).unwrap();
        assert!(!seen.decode(&request(rds, &["80"], "")).unwrap().same_names);
        assert!(seen.decode(&request(rds, &["80"], "1")).unwrap().same_names);
        assert!(seen.decode(&request(eds, &["80"], "2")).unwrap().same_names);

        for type_url in [Kind::Secret.type_url(), "type.example/Unknown"] {
            for nonce in ["", "1", "2"] {
                let again = seen
                    .decode(&request(type_url, &["default"], nonce))
                    .unwrap();
                assert!(!again.same_names, "{type_url}");
                assert_eq!(again.request.resource_names, ["default"]);
            }
        }
        assert_eq!(seen.by_type.len(), 2);
    }

    #[test]
    fn what_the_walk_cannot_read_is_left_to_prost() {
        let mut seen = SeenNames::default();
        let whole = request(Kind::Cluster.type_url(), &["a"], "");
        // Cut inside a field: prost's error, not a guess.
        assert!(seen.decode(&whole[..whole.len() - 1]).is_err());
        assert!(seen.by_type.is_empty());
    }
}
