//! Hooks for the criterion micro-benchmarks in `benches/`: drives a stage's
//! per-record logic (claim, score, rank) against a real RocksDB store the
//! way the stage runtime does (reads see uncommitted writes; `commit`
//! applies them), without Kafka. Not used by the pipeline itself.

use std::collections::BTreeMap;
use std::path::Path;

use crate::stage::{Input, Lineage, PartitionState, Processed, StageError, StageLogic, POSITION_KEY};
use crate::state::{StateError, StateStore, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One partition of a stage, fed record by record.
pub struct StageDriver<L: StageLogic> {
    logic: L,
    store: StateStore,
    partition: i32,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    next_offset: i64,
    upstream: Option<&'static str>,
    watermark: i64,
}

impl<L: StageLogic> StageDriver<L> {
    /// A driver on a new store in `dir`; `upstream` names the stage that
    /// wrote the input (`Some("claim")` for score, `Some("score")` for rank).
    pub fn new(logic: L, dir: &Path, partition: i32, upstream: Option<&'static str>) -> Result<Self, DriverError> {
        let store = StateStore::open(dir, StoreOptions::default())?;
        Ok(Self { logic, store, partition, pending: BTreeMap::new(), next_offset: 0, upstream, watermark: i64::MIN })
    }

    /// Processes one record, as from upstream partition `from` (lineage
    /// offsets increase with every record).
    pub fn feed(&mut self, key: &[u8], payload: &[u8], from: i32) -> Result<Processed, DriverError> {
        let offset = self.next_offset;
        let mut state = PartitionState {
            store: &self.store,
            partition: self.partition,
            pending: &mut self.pending,
            watermark: self.watermark,
        };
        let upstream = self.upstream.map(|s| (s, Lineage { partition: from, offset, index: 0 }));
        let input = Input { partition: self.partition, offset, key: Some(key), payload, upstream };
        let processed = self.logic.process(&mut state, &input)?;
        if let Some(t) = processed.event_time {
            // Simplification: one upstream clock, so the watermark is the
            // highest event time seen (the runtime takes the minimum over
            // upstream partitions).
            self.watermark = self.watermark.max(t);
        }
        state.put(POSITION_KEY.to_vec(), (offset + 1).to_be_bytes().to_vec());
        self.next_offset = offset + 1;
        Ok(processed)
    }

    /// `before_commit`, then the pending writes applied to the store.
    pub fn commit(&mut self) -> Result<usize, DriverError> {
        let mut state = PartitionState {
            store: &self.store,
            partition: self.partition,
            pending: &mut self.pending,
            watermark: self.watermark,
        };
        self.logic.before_commit(&mut state)?;
        let writes: Vec<_> = std::mem::take(&mut self.pending).into_iter().collect();
        self.store.apply(self.partition, &writes, None)?;
        Ok(writes.len())
    }

    /// Uncommitted writes so far.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}
