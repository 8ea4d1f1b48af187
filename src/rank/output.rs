//! What the rank stage publishes: leaderboard snapshots (compacted topic,
//! keyed `<hunt>/<tier>/<board>`) and prize batches (keyed by batch id).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One board's top-N at a point of the rank partition's input.
///
/// `version` is the number of rank input records applied when it was taken
/// (the partition's next offset), so a snapshot with a given version always
/// has the same content, even when a replay publishes it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub hunt_id: String,
    pub tier: String,
    /// `lifetime` or the window start in epoch ms.
    pub board: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<i64>,
    pub version: i64,
    /// Event-time watermark of the rank partition (min over score partitions).
    pub watermark: Option<i64>,
    /// True for a window's final snapshot, taken when its prizes were emitted.
    pub closed: bool,
    pub entries: Vec<RankedEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedEntry {
    pub rank: u32,
    pub player_id: String,
    pub points: u64,
    pub reached_at: i64,
}

impl Snapshot {
    pub fn record_key(hunt_id: &str, tier: &str, board: &str) -> String {
        format!("{hunt_id}/{tier}/{board}")
    }
}

/// All awards of one (hunt, tier, window), emitted once when it closes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrizeBatch {
    /// `<hunt>/<tier>/<window start>`.
    pub batch_id: String,
    pub hunt_id: String,
    pub tier: String,
    pub currency: String,
    pub window_start: i64,
    pub window_end: i64,
    pub awards: Vec<Award>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// Deterministic: the distributor pays each key at most once.
    pub idempotency_key: String,
    /// `rank` or `chest`.
    pub kind: String,
    pub player_id: String,
    pub amount: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chest_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"huntflow-award/v1");
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Key of a rank award: the same window ranking gives the same keys.
pub fn rank_award_key(hunt_id: &str, tier: &str, window_start: i64, rank: u32, player_id: &str) -> String {
    digest(&[hunt_id, tier, &window_start.to_string(), "rank", &rank.to_string(), player_id])
}

/// Key of a chest award: a chest is won once per hunt, so it is paid once.
pub fn chest_award_key(hunt_id: &str, chest_key: &str) -> String {
    digest(&[hunt_id, "chest", chest_key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn award_keys_are_stable_and_distinct() {
        let a = rank_award_key("h", "gold", 60_000, 1, "p1");
        assert_eq!(a, rank_award_key("h", "gold", 60_000, 1, "p1"));
        assert_ne!(a, rank_award_key("h", "gold", 60_000, 2, "p1"));
        assert_ne!(a, rank_award_key("h", "gold", 120_000, 1, "p1"));
        assert_ne!(chest_award_key("h", "c1"), chest_award_key("h", "c2"));
        assert_eq!(a.len(), 32);
    }
}
