//! Time as data in the log: heartbeats from the writers of the events topic
//! and watermarks forwarded by stages. Both are ordinary records on every
//! partition, told apart by their `huntflow-schema` header, so a replay of the
//! log advances time exactly as the first run did.

use serde::{Deserialize, Serialize};

/// Schema header of a writer's heartbeat on the events topic.
pub const SCHEMA_HEARTBEAT: &str = "heartbeat/v1";
/// Schema header of a watermark a stage forwards to every output partition.
pub const SCHEMA_WATERMARK: &str = "watermark/v1";
/// Record key of heartbeats (records are sent to explicit partitions).
pub const HEARTBEAT_KEY: &[u8] = b"\0heartbeat";
/// Record key of forwarded watermarks.
pub const WATERMARK_KEY: &[u8] = b"\0watermark";
/// Forwarded watermarks are floored to this step, so a partition forwards at
/// most once per event-time second instead of once per record.
pub const WATERMARK_STEP_MS: i64 = 1_000;

/// One time record, JSON with a `type` tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimeRecord {
    /// Writer `writer` (an ingest or bridge process) read `time` (epoch ms)
    /// on its clock when it appended this record.
    Heartbeat { writer: String, time: i64 },
    /// Everything input partition `partition` (of `partitions`) of the
    /// upstream stage had below `watermark` has been forwarded before this.
    Watermark { partition: i32, partitions: i32, watermark: i64 },
}

impl TimeRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Strings and integers always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether records with this schema header are time records.
    pub fn is_schema(schema: &str) -> bool {
        schema == SCHEMA_HEARTBEAT || schema == SCHEMA_WATERMARK
    }
}

/// `time` floored to [`WATERMARK_STEP_MS`].
pub fn floor_step(time: i64) -> i64 {
    time.div_euclid(WATERMARK_STEP_MS) * WATERMARK_STEP_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_records_round_trip_as_tagged_json() {
        let h = TimeRecord::Heartbeat { writer: "ingest-a".into(), time: 61_500 };
        let text = String::from_utf8(h.encode()).unwrap();
        assert_eq!(text, r#"{"type":"heartbeat","writer":"ingest-a","time":61500}"#);
        assert_eq!(TimeRecord::decode(text.as_bytes()).unwrap(), h);
        let w = TimeRecord::Watermark { partition: 3, partitions: 32, watermark: 60_000 };
        assert_eq!(TimeRecord::decode(&w.encode()).unwrap(), w);
        assert!(TimeRecord::decode(b"{\"type\":\"nope\"}").is_err());
        assert_eq!(floor_step(61_999), 61_000);
        assert_eq!(floor_step(-1), -1_000);
    }
}
