//! The game event: the versioned JSON envelope shards post, and its codec.
//!
//! Wire format (version 1), one JSON object per event:
//! `{"v":1,"event_id":"..","hunt_id":"..","shard_id":"..","region":"..",
//!   "player_id":"..","tier":"..","kind":"chest_opened","chest_key":"..",
//!   "points":10,"event_time":1767225600000}` — `event_time` in epoch
//! milliseconds, `chest_key` required for `chest_opened` and absent otherwise.

use serde::{Deserialize, Serialize};

use crate::topology::Topology;

/// The only envelope version this build reads and writes.
pub const ENVELOPE_VERSION: u32 = 1;
/// Upper bound on identifiers, so one event cannot smuggle a megabyte key.
pub const MAX_ID_LEN: usize = 128;

/// The writer's wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ChestOpened,
    ClueSolved,
    MilestoneReached,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::ChestOpened => "chest_opened",
            EventKind::ClueSolved => "clue_solved",
            EventKind::MilestoneReached => "milestone_reached",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::ChestOpened, Self::ClueSolved, Self::MilestoneReached].into_iter().find(|k| k.as_str() == s)
    }
}

/// A decoded, well-formed game event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameEvent {
    pub v: u32,
    /// Idempotency token: retries of one event carry the same id.
    pub event_id: String,
    pub hunt_id: String,
    pub shard_id: String,
    pub region: String,
    pub player_id: String,
    pub tier: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chest_key: Option<String>,
    pub points: u64,
    /// Event time, epoch milliseconds.
    pub event_time: i64,
}

/// The envelope as it arrives: loose types so we can say precisely what is
/// wrong (negative points, unknown kind) instead of a generic serde error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    v: u32,
    event_id: String,
    hunt_id: String,
    shard_id: String,
    region: String,
    player_id: String,
    tier: String,
    kind: String,
    #[serde(default)]
    chest_key: Option<String>,
    points: i64,
    event_time: i64,
}

/// Why an event was refused. `code()` is a bounded metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event is {size} bytes, above the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("event is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    BadUtf8 { valid_up_to: usize },
    #[error("malformed JSON event: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}, expected {ENVELOPE_VERSION}")]
    UnsupportedVersion(u32),
    #[error("field `{0}` must not be empty")]
    EmptyField(&'static str),
    #[error("field `{field}` is {len} bytes, above the limit of {MAX_ID_LEN}")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("points must not be negative (got {0})")]
    NegativePoints(i64),
    #[error("event_time must not be negative (got {0})")]
    NegativeEventTime(i64),
    #[error("unknown kind `{0}` (expected chest_opened, clue_solved or milestone_reached)")]
    UnknownKind(String),
    #[error("chest_opened events need a chest_key")]
    MissingChestKey,
    #[error("only chest_opened events may carry a chest_key")]
    UnexpectedChestKey,
    #[error("unknown hunt `{0}`")]
    UnknownHunt(String),
    #[error("unknown tier `{tier}` for hunt `{hunt}`")]
    UnknownTier { hunt: String, tier: String },
    #[error("event says shard `{event}` but was posted for shard `{path}`")]
    ShardMismatch { event: String, path: String },
    #[error(
        "event_time {event_time} from shard `{shard}` is {ahead_ms} ms ahead of the writer's clock \
         (allowed skew {max_skew_ms} ms)"
    )]
    EventTimeInFuture { shard: String, event_time: i64, ahead_ms: i64, max_skew_ms: i64 },
}

impl DecodeError {
    /// Stable, low-cardinality reason code for metrics and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::BadUtf8 { .. } => "bad_utf8",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::EmptyField(_) | DecodeError::FieldTooLong { .. } => "bad_field",
            DecodeError::NegativePoints(_) => "negative_points",
            DecodeError::NegativeEventTime(_) => "negative_event_time",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::MissingChestKey | DecodeError::UnexpectedChestKey => "bad_chest_key",
            DecodeError::UnknownHunt(_) => "unknown_hunt",
            DecodeError::UnknownTier { .. } => "unknown_tier",
            DecodeError::ShardMismatch { .. } => "shard_mismatch",
            DecodeError::EventTimeInFuture { .. } => "event_time_in_future",
        }
    }
}

/// Decodes one event's bytes. Never panics, whatever the input.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<GameEvent, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::Oversized { size: bytes.len(), limit: max_bytes });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::BadUtf8 { valid_up_to: e.valid_up_to() })?;
    let wire: WireEvent = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if wire.v != ENVELOPE_VERSION {
        return Err(DecodeError::UnsupportedVersion(wire.v));
    }
    for (field, value) in [
        ("event_id", &wire.event_id),
        ("hunt_id", &wire.hunt_id),
        ("shard_id", &wire.shard_id),
        ("region", &wire.region),
        ("player_id", &wire.player_id),
        ("tier", &wire.tier),
    ] {
        check_id(field, value)?;
    }
    if let Some(key) = &wire.chest_key {
        check_id("chest_key", key)?;
    }
    if wire.points < 0 {
        return Err(DecodeError::NegativePoints(wire.points));
    }
    if wire.event_time < 0 {
        return Err(DecodeError::NegativeEventTime(wire.event_time));
    }
    let kind = EventKind::parse(&wire.kind).ok_or_else(|| DecodeError::UnknownKind(truncate(&wire.kind)))?;
    match (kind, &wire.chest_key) {
        (EventKind::ChestOpened, None) => return Err(DecodeError::MissingChestKey),
        (k, Some(_)) if k != EventKind::ChestOpened => return Err(DecodeError::UnexpectedChestKey),
        _ => {}
    }
    Ok(GameEvent {
        v: wire.v,
        event_id: wire.event_id,
        hunt_id: wire.hunt_id,
        shard_id: wire.shard_id,
        region: wire.region,
        player_id: wire.player_id,
        tier: wire.tier,
        kind,
        chest_key: wire.chest_key,
        points: wire.points as u64,
        event_time: wire.event_time,
    })
}

fn check_id(field: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::EmptyField(field));
    }
    if value.len() > MAX_ID_LEN {
        return Err(DecodeError::FieldTooLong { field, len: value.len() });
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

impl GameEvent {
    /// Canonical encoding written to the events topic.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the event against the frozen topology and the shard it was
    /// posted for.
    pub fn check_against(&self, topology: &Topology, posted_shard: &str) -> Result<(), DecodeError> {
        if self.shard_id != posted_shard {
            return Err(DecodeError::ShardMismatch { event: self.shard_id.clone(), path: posted_shard.to_owned() });
        }
        if topology.hunt(&self.hunt_id).is_none() {
            return Err(DecodeError::UnknownHunt(self.hunt_id.clone()));
        }
        if topology.tier_index(&self.hunt_id, &self.tier).is_none() {
            return Err(DecodeError::UnknownTier { hunt: self.hunt_id.clone(), tier: self.tier.clone() });
        }
        Ok(())
    }

    /// Refuses an event time more than `max_skew_ms` ahead of `now_ms` (the
    /// writer's clock): one broken shard clock must not close every window.
    pub fn check_clock(&self, now_ms: i64, max_skew_ms: i64) -> Result<(), DecodeError> {
        let ahead_ms = self.event_time.saturating_sub(now_ms);
        if ahead_ms > max_skew_ms {
            return Err(DecodeError::EventTimeInFuture {
                shard: self.shard_id.clone(),
                event_time: self.event_time,
                ahead_ms,
                max_skew_ms,
            });
        }
        Ok(())
    }

    /// Partition key for the claim stage: every claim of one chest, and every
    /// retry of one event, must land in the same partition.
    pub fn claim_key(&self) -> &str {
        match (&self.kind, &self.chest_key) {
            (EventKind::ChestOpened, Some(key)) => key,
            _ => &self.event_id,
        }
    }
}

#[cfg(test)]
mod tests;
