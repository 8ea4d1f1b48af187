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
    /// This record's part (1-based) of the batch: a large batch is split so
    /// no record exceeds the broker's message size; award keys are unchanged.
    pub part: u32,
    /// How many parts the batch has.
    pub parts: u32,
    pub awards: Vec<Award>,
}

/// Largest serialized prize record: well under librdkafka's default 1 MB
/// `message.max.bytes`, with room for headers.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Splits `awards` into numbered parts of `base`, each at most `max_bytes`
/// of JSON (deterministic: the same awards give the same parts). A batch
/// without awards is one empty part.
pub fn split_batch(base: PrizeBatch, awards: Vec<Award>, max_bytes: usize) -> Vec<PrizeBatch> {
    let overhead = serde_json::to_vec(&base).map_or(512, |v| v.len()) + 32;
    let mut parts: Vec<Vec<Award>> = vec![Vec::new()];
    let mut size = overhead;
    for award in awards {
        let len = serde_json::to_vec(&award).map_or(256, |v| v.len()) + 1;
        let last = parts.last().map_or(0, Vec::len);
        if last > 0 && size + len > max_bytes {
            parts.push(Vec::new());
            size = overhead;
        }
        size += len;
        if let Some(p) = parts.last_mut() {
            p.push(award);
        }
    }
    let n = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, awards)| PrizeBatch { part: i as u32 + 1, parts: n, awards, ..base.clone() })
        .collect()
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

    fn award(i: usize) -> Award {
        Award {
            idempotency_key: chest_award_key("h", &format!("chest-{i}")),
            kind: "chest".into(),
            player_id: format!("player-{i}"),
            amount: 5,
            rank: None,
            chest_key: Some(format!("chest-{i}")),
            event_id: Some(format!("shard-0-{i}")),
        }
    }

    #[test]
    fn a_twenty_thousand_chest_batch_splits_into_parts_under_the_limit_losing_nothing() {
        let base = PrizeBatch {
            batch_id: "h/gold/0".into(),
            hunt_id: "h".into(),
            tier: "gold".into(),
            currency: "gems".into(),
            window_start: 0,
            window_end: 60_000,
            part: 1,
            parts: 1,
            awards: Vec::new(),
        };
        let awards: Vec<Award> = (0..20_000).map(award).collect();
        let parts = split_batch(base.clone(), awards.clone(), MAX_BATCH_BYTES);
        assert!(parts.len() > 1, "20,000 awards need several parts");
        for (i, p) in parts.iter().enumerate() {
            assert_eq!((p.part, p.parts, p.batch_id.as_str()), (i as u32 + 1, parts.len() as u32, "h/gold/0"));
            assert!(serde_json::to_vec(p).unwrap().len() <= MAX_BATCH_BYTES);
        }
        let joined: Vec<Award> = parts.into_iter().flat_map(|p| p.awards).collect();
        assert_eq!(joined, awards);
        let empty = split_batch(base, Vec::new(), MAX_BATCH_BYTES);
        assert_eq!((empty.len(), empty[0].parts, empty[0].awards.len()), (1, 1, 0));
    }

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
