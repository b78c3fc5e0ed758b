//! Reads a byte string as written by `serialize_bytes` (serde's `Vec<u8>` impl expects a
//! sequence instead). Hand-written: a few lines do not justify the `serde_bytes` crate.

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

/// An owned byte string.
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = ByteBuf;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
        Ok(ByteBuf(bytes.to_vec()))
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
        Ok(ByteBuf(bytes))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(ByteBuf(bytes))
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(ByteBufVisitor)
    }
}

/// `#[serde(with = "crate::bytes::field")]` for a `Vec<u8>` field: one `serialize_bytes`
/// call instead of a sequence of `u8`s, and a byte-string read back. In postcard both are a
/// varint length and the raw bytes, so records written either way decode alike; what
/// changes is the cost, a copy instead of a call per byte.
pub(crate) mod field {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        super::ByteBuf::deserialize(deserializer).map(|bytes| bytes.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSequence {
        key: Vec<u8>,
        lease: i64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "super::field")]
        key: Vec<u8>,
        lease: i64,
    }

    proptest! {
        /// Logs and snapshots written before the fields were annotated still decode, and
        /// new ones decode with the old layout.
        #[test]
        fn a_byte_field_encodes_as_a_sequence_of_bytes_did(
            key in proptest::collection::vec(any::<u8>(), 0..300),
            lease in any::<i64>(),
        ) {
            let old = postcard::to_allocvec(&AsSequence { key: key.clone(), lease }).unwrap();
            let new = postcard::to_allocvec(&AsBytes { key: key.clone(), lease }).unwrap();
            prop_assert_eq!(&old, &new);
            let decoded: AsBytes = postcard::from_bytes(&old).unwrap();
            prop_assert_eq!(decoded, AsBytes { key, lease });
        }
    }
}
