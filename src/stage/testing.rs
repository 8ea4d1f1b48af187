//! Drives a [`StageLogic`] against a real RocksDB store without Kafka: feed
//! records, commit, rewind. For unit tests of stage logic.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::time::{self, Clock, TimeConfig};
use super::{Input, Output, PartitionState, Processed, StageLogic, POSITION_KEY};
use crate::state::{StateStore, StoreOptions};
use crate::windowing::{TimeRecord, SCHEMA_HEARTBEAT, SCHEMA_WATERMARK};

pub struct LogicHarness<L: StageLogic> {
    pub logic: L,
    clock: Clock,
    store: StateStore,
    _dir: tempfile::TempDir,
    pending: HashMap<i32, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    next: HashMap<i32, i64>,
    /// What the runtime would have written to the changelog, per partition.
    changelog: HashMap<i32, Vec<crate::state::Write>>,
}

impl<L: StageLogic> LogicHarness<L> {
    /// A harness keeping time as a worker with `time` would.
    pub fn new(logic: L, time: TimeConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StateStore::open(dir.path(), StoreOptions::default()).expect("open store");
        Self {
            logic,
            clock: Clock::new(time),
            store,
            _dir: dir,
            pending: HashMap::new(),
            next: HashMap::new(),
            changelog: HashMap::new(),
        }
    }

    pub fn feed(&mut self, partition: i32, key: &[u8], payload: &[u8]) -> Processed {
        self.feed_from(partition, None, key, payload)
    }

    /// As `feed`, for a record written by an upstream stage's partition.
    pub fn feed_from(&mut self, partition: i32, upstream: Option<i32>, key: &[u8], payload: &[u8]) -> Processed {
        self.feed_record(partition, upstream, key, payload, None)
    }

    /// A time record (heartbeat or forwarded watermark) from `upstream`.
    pub fn feed_time(&mut self, partition: i32, upstream: Option<i32>, record: &TimeRecord) -> Processed {
        let schema = match record {
            TimeRecord::Heartbeat { .. } => SCHEMA_HEARTBEAT,
            TimeRecord::Watermark { .. } => SCHEMA_WATERMARK,
        };
        self.feed_record(partition, upstream, b"\0time", &record.encode(), Some(schema))
    }

    fn feed_record(
        &mut self,
        partition: i32,
        upstream: Option<i32>,
        key: &[u8],
        payload: &[u8],
        schema: Option<&str>,
    ) -> Processed {
        let offset = *self.next.entry(partition).or_insert(0);
        let pending = self.pending.entry(partition).or_default();
        let mut state = PartitionState { store: &self.store, partition, pending, watermark: i64::MIN };
        let lineage = upstream.map(|p| ("claim", super::Lineage { partition: p, offset, index: 0 }));
        let input = Input { partition, offset, key: Some(key), payload, upstream: lineage };
        state.put(POSITION_KEY.to_vec(), (offset + 1).to_be_bytes().to_vec());
        let processed = time::apply(&mut self.logic, &mut self.clock, &mut state, &input, schema).expect("apply");
        self.next.insert(partition, offset + 1);
        processed
    }

    pub fn tick(&mut self, partition: i32, now: Instant) -> Vec<Output> {
        let pending = self.pending.entry(partition).or_default();
        let mut state = PartitionState { store: &self.store, partition, pending, watermark: i64::MIN };
        state.watermark = self.clock.watermark(&state).expect("watermark");
        self.logic.tick(&mut state, now).expect("tick")
    }

    /// `before_commit` then the store write, as after a committed transaction.
    pub fn commit(&mut self) {
        for (p, pending) in self.pending.iter_mut() {
            let mut state = PartitionState { store: &self.store, partition: *p, pending, watermark: i64::MIN };
            state.watermark = self.clock.watermark(&state).expect("watermark");
            self.logic.before_commit(&mut state).expect("before_commit");
        }
        for (p, writes) in std::mem::take(&mut self.pending) {
            let writes: Vec<_> = writes.into_iter().collect();
            let logged = writes.iter().filter(|(k, _)| !self.logic.is_local_index(k)).cloned();
            self.changelog.entry(p).or_default().extend(logged);
            self.store.apply(p, &writes, None).expect("apply");
        }
    }

    /// Replaces the store with a fresh one restored from the changelog, as a
    /// new owner of every partition would (uncommitted state is dropped).
    pub fn restore_to_fresh_store(&mut self) {
        self.abort();
        let dir = tempfile::tempdir().expect("temp dir");
        self.store = StateStore::open(dir.path(), StoreOptions::default()).expect("open store");
        self._dir = dir;
        let logic = &self.logic;
        for (p, records) in &self.changelog {
            let mut batch = records.clone();
            super::restore::add_local_index(&mut batch, &|k, v| logic.index_for(k, v));
            self.store.apply(*p, &batch, None).expect("apply");
        }
        self.logic.on_rewind();
        self.clock.on_rewind();
    }

    /// Drops uncommitted state, as after an abort; returns to committed positions.
    pub fn abort(&mut self) {
        self.pending.clear();
        self.logic.on_rewind();
        self.clock.on_rewind();
        for (p, next) in self.next.iter_mut() {
            let pos = self.store.get(*p, POSITION_KEY).expect("get").and_then(|b| b.as_slice().try_into().ok());
            *next = pos.map(i64::from_be_bytes).unwrap_or(0);
        }
    }

    /// Committed keys under `prefix` of `partition`.
    pub fn committed(&self, partition: i32, prefix: &[u8]) -> usize {
        self.store.scan(partition, prefix, |_, _| true).expect("scan").len()
    }
}
