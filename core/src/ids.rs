//! Identifiers shared by every layer: the cluster id (fences foreign clusters) and node ids.
//!
//! They live in the core so that the simulator, the shims and the wire codec agree on one
//! spelling (lower-case hex for the cluster id) and one error when parsing fails.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's Raft id. Assigned once at join, never reused after removal.
pub type NodeId = u64;

/// 128 random bits chosen at `tandem init`; every frame, certificate and state dir carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClusterId(pub [u8; 16]);

/// A string that is not 32 hex digits was given where a cluster id was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cluster id {given:?}: expected 32 hex digits")]
pub struct ParseClusterIdError {
    pub given: String,
}

impl ClusterId {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The first 8 hex digits, enough for humans to tell clusters apart in logs.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl FromStr for ClusterId {
    type Err = ParseClusterIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseClusterIdError {
            given: text.to_string(),
        };
        let bytes = crate::hex::decode(text).ok_or_else(error)?;
        let array: [u8; 16] = bytes.try_into().map_err(|_| error())?;
        Ok(ClusterId(array))
    }
}

impl Serialize for ClusterId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_round_trips_through_hex() {
        let id = ClusterId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<ClusterId>(), Ok(id));
        assert_eq!(id.short(), "abababab");
    }

    #[test]
    fn cluster_id_rejects_wrong_length_and_non_hex() {
        assert!("abcd".parse::<ClusterId>().is_err());
        assert!("zz".repeat(16).parse::<ClusterId>().is_err());
    }
}
