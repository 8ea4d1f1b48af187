//! The consume-transform-produce runtime shared by the claim, score and rank
//! stages: Kafka transactions, RocksDB state mirrored to a compacted
//! changelog, input positions and lineage kept in state.
//!
//! Exactly once rests on three things, so it holds even on brokers that show
//! aborted records to read_committed consumers (librdkafka's mock cluster,
//! Tansu):
//! 1. outputs, changelog and group offsets go into one transaction, and the
//!    changelog (with the next input offset) is written last, after every
//!    output was acknowledged: a visible position implies visible outputs;
//! 2. a stage is deterministic per input partition, so a replay writes the
//!    same outputs with the same lineage (stage, partition, offset, index);
//! 3. consumers keep the highest lineage applied per upstream partition in
//!    their state and skip anything at or below it.

mod engine;
mod metrics;
mod restore;
#[cfg(test)]
pub(crate) mod testing;
mod time;
mod worker;

use std::collections::BTreeMap;

pub use engine::{HEADER_WINDOW_CLOSES_AT, REASON_PROCESSING_FAILED};
pub use metrics::{commit_steps, WorkerMetrics};
pub use time::{is_time_outcome, TimeConfig};
pub use worker::{run_worker, WorkerConfig, WorkerReport};

use crate::state::{StateError, StateStore};

/// `huntflow_stage_records_total` by (stage, outcome), read back from a registry.
pub fn records_by_stage(registry: &prometheus::Registry) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for family in registry.gather().iter().filter(|f| f.name() == "huntflow_stage_records_total") {
        for m in family.get_metric() {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned());
            let key = (label("stage").unwrap_or_default(), label("outcome").unwrap_or_default());
            *out.entry(key).or_default() += m.get_counter().get_value();
        }
    }
    out
}

/// Header carrying an output record's lineage: `stage:partition:offset:index`.
pub const HEADER_LINEAGE: &str = "huntflow-lineage";

/// State key of the next input offset of a partition.
pub(crate) const POSITION_KEY: &[u8] = b"\0pos";

/// A stage error; [`StageError::action`] says what the runtime does with it.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Broker trouble: retried (abort, back off, replay) unless the producer
    /// was fenced or failed fatally, or a record is too large to produce.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Local state unreadable: stop.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// This input record cannot be processed: dead-letter it and move on.
    #[error("{0}")]
    Poison(String),
    /// Corrupt state or a broken setup: stop the worker with this error.
    #[error("{0}")]
    Stop(String),
}

/// What the runtime does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Abort the transaction, back off, replay from the committed positions.
    Retry,
    /// Replay up to the failing record, then dead-letter it instead.
    DeadLetter,
    /// Stop the worker; the process exits non-zero and is restarted.
    Stop,
}

impl StageError {
    pub fn action(&self) -> ErrorAction {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
        match self {
            StageError::Kafka(KafkaError::Transaction(e)) if e.is_fatal() => ErrorAction::Stop,
            StageError::Kafka(KafkaError::Global(Code::Fatal | Code::Fenced | Code::ProducerFenced)) => {
                ErrorAction::Stop
            }
            StageError::Kafka(KafkaError::MessageProduction(Code::MessageSizeTooLarge | Code::InvalidMessageSize)) => {
                ErrorAction::DeadLetter
            }
            StageError::Kafka(_) => ErrorAction::Retry,
            StageError::Poison(_) => ErrorAction::DeadLetter,
            StageError::State(_) | StageError::Stop(_) => ErrorAction::Stop,
        }
    }
}

/// Where a record came from: enough to recognise it when it is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lineage {
    pub partition: i32,
    pub offset: i64,
    pub index: u32,
}

impl Lineage {
    pub fn encode(&self, stage: &str) -> String {
        format!("{stage}:{}:{}:{}", self.partition, self.offset, self.index)
    }

    /// `(stage, lineage)` from a header value.
    pub fn decode(text: &str) -> Option<(String, Lineage)> {
        let mut parts = text.rsplitn(4, ':');
        let index = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let stage = parts.next()?.to_owned();
        Some((stage, Lineage { partition, offset, index }))
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&self.partition.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(&self.index.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self {
            partition: i32::from_be_bytes(b.get(0..4)?.try_into().ok()?),
            offset: i64::from_be_bytes(b.get(4..12)?.try_into().ok()?),
            index: u32::from_be_bytes(b.get(12..16)?.try_into().ok()?),
        })
    }
}

/// One input record handed to a stage.
pub struct Input<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// Upstream stage and lineage, when the record was written by a stage.
    pub upstream: Option<(&'a str, Lineage)>,
}

/// Which topic an output goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Primary,
    /// The stage's second output topic (rank: prize batches).
    Secondary,
    DeadLetter,
}

/// One record a stage writes. The runtime adds lineage and topology headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub sink: Sink,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// Explicit partition (watermark broadcast); `None` partitions by key.
    pub partition: Option<i32>,
    pub headers: Vec<(&'static str, String)>,
}

impl Output {
    /// The input record, untouched, for the dead-letter topic with its reason.
    pub fn dead_letter(stage: &'static str, input: &Input<'_>, code: &'static str, reason: String) -> Self {
        use crate::kafka::{HEADER_REASON, HEADER_REASON_CODE, HEADER_SCHEMA, HEADER_STAGE};
        Output {
            sink: Sink::DeadLetter,
            key: input.key.unwrap_or_default().to_vec(),
            payload: input.payload.to_vec(),
            partition: None,
            headers: vec![
                (HEADER_STAGE, stage.into()),
                (HEADER_REASON_CODE, code.into()),
                (HEADER_REASON, reason),
                (HEADER_SCHEMA, "dead-letter/v1".into()),
            ],
        }
    }
}

/// What a stage did with one input, for metrics (bounded label values).
pub struct Processed {
    pub outcome: &'static str,
    pub outputs: Vec<Output>,
    /// Event time this record adds to its upstream partition's progress
    /// (the runtime derives the partition watermark from it).
    pub event_time: Option<i64>,
}

impl Processed {
    pub fn new(outcome: &'static str, outputs: Vec<Output>) -> Self {
        Self { outcome, outputs, event_time: None }
    }
}

/// A partition's state during a transaction: uncommitted writes over the
/// committed store. Reads see this transaction's own writes.
pub struct PartitionState<'a> {
    pub(crate) store: &'a StateStore,
    pub(crate) partition: i32,
    pub(crate) pending: &'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The partition's event-time watermark before this record (`i64::MIN`
    /// while unknown); owned by the runtime.
    pub(crate) watermark: i64,
}

impl PartitionState<'_> {
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The partition's event-time watermark (`i64::MIN` while unknown).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(self.partition, key),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Committed keys under `prefix` while `keep` holds (this transaction's
    /// own writes are not included: used for expiry, where they are too new).
    pub fn scan_committed(
        &self,
        prefix: &[u8],
        keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        self.scan_committed_from(prefix, prefix, keep)
    }

    /// [`Self::scan_committed`] from key `from` on (see `StateStore::scan_from`).
    pub fn scan_committed_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let found = self.store.scan_from(self.partition, prefix, from, keep)?;
        Ok(found.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    /// Every key under `prefix` as this transaction sees it (committed keys
    /// overlaid with its own writes). For small prefixes only.
    pub fn scan(&self, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StateError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self.scan_committed(prefix, |_, _| true)?.into_iter().collect();
        for (k, v) in self.pending.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    /// Next input offset of this partition (0 before the first record).
    pub fn position(&self) -> Result<i64, StateError> {
        Ok(self.get(POSITION_KEY)?.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes).unwrap_or(0))
    }
}

/// A stage's logic. Must be deterministic per input partition: the same
/// input log and state give the same outputs (no wall clock, no randomness).
pub trait StageLogic: Send + 'static {
    fn name(&self) -> &'static str;
    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError>;
    /// The partition's watermark advanced to `watermark` (after the record
    /// just processed): close what is due.
    fn on_watermark(&mut self, _state: &mut PartitionState<'_>, _watermark: i64) -> Result<Vec<Output>, StageError> {
        Ok(Vec::new())
    }
    /// Housekeeping before each commit (expiry); may only change state.
    fn before_commit(&mut self, _state: &mut PartitionState<'_>) -> Result<(), StageError> {
        Ok(())
    }
    /// Called every few milliseconds per assigned partition, with or without
    /// input, for output paced by wall clock (leaderboard snapshots). What it
    /// writes must be harmless to replay (versioned snapshots).
    fn tick(&mut self, _state: &mut PartitionState<'_>, _now: std::time::Instant) -> Result<Vec<Output>, StageError> {
        Ok(Vec::new())
    }
    /// Uncommitted state was dropped (abort) or partitions moved: forget any
    /// in-memory cache of state and reload it lazily.
    fn on_rewind(&mut self) {}
    /// Keys of a local index derived from other state: kept in the local
    /// store, never written to the changelog (restore rebuilds them with
    /// [`StageLogic::index_for`]), so they cost no changelog record.
    fn is_local_index(&self, _key: &[u8]) -> bool {
        false
    }
    /// The local index entry that a restored changelog record implies. A
    /// deleted record implies none: an index must tolerate stale entries.
    fn index_for(&self, _key: &[u8], _value: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_round_trips_through_header_and_bytes() {
        let l = Lineage { partition: 7, offset: 123_456, index: 2 };
        assert_eq!(Lineage::decode(&l.encode("claim")), Some(("claim".into(), l)));
        assert_eq!(Lineage::from_bytes(&l.to_bytes()), Some(l));
        assert!(Lineage { partition: 7, offset: 123_456, index: 3 } > l);
        assert!(Lineage::decode("nope").is_none());
    }
}
