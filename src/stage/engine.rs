//! The transactional engine of one worker: applies input records to state
//! through the stage logic, writes outputs and changelog in one Kafka
//! transaction, and decides what an error means (retry, dead-letter, stop).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};

use super::metrics::*;
use super::restore::{restore_partitions, HEADER_TXN};
use super::time::{self, Clock};
use super::{
    ErrorAction, Input, Lineage, Output, PartitionState, Processed, Sink, StageError, StageLogic, HEADER_LINEAGE,
    POSITION_KEY,
};
use crate::kafka::transactional::{cached_high_watermark, Deliveries, TxnProducer};
use crate::kafka::{header_str, HEADER_REASON_CODE, HEADER_SCHEMA, HEADER_TOPOLOGY_HASH};
use crate::state::StateStore;

use super::worker::{WorkerConfig, WorkerReport};

/// Lineage indexes of tick outputs start here, above any per-record index.
const TICK_INDEX_BASE: u32 = 1 << 30;
/// Reason code of a record the stage failed on (poison input).
pub const REASON_PROCESSING_FAILED: &str = "processing_failed";
/// Header on prize batches: epoch ms at which their window closed (end + grace).
pub const HEADER_WINDOW_CLOSES_AT: &str = "huntflow-window-closes-at";

type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// State key of the topology the partition's state was built with.
const TOPOLOGY_KEY: &[u8] = b"\0topology";

pub(crate) struct Engine<L: StageLogic> {
    pub logic: L,
    pub clock: Clock,
    pub store: StateStore,
    pub producer: TxnProducer,
    pub deliveries: Arc<Deliveries>,
    pub cfg: WorkerConfig,
    pub metrics: WorkerMetrics,
    pub report: WorkerReport,
    pub assigned: BTreeSet<i32>,
    /// Next input offset per partition, including this transaction's records.
    pub positions: HashMap<i32, i64>,
    pub pending: HashMap<i32, Pending>,
    pub txn_open: bool,
    pub txn_started: Instant,
    pub fatal: Option<String>,
    /// Input records the stage failed on: dead-lettered when replayed.
    pub poison: HashMap<(i32, i64), String>,
    /// Consecutive retried failures (backoff), reset by a commit.
    pub failures: u32,
    /// Broker timestamp (ms) of the last record read per partition.
    pub last_read_ms: HashMap<i32, i64>,
    /// Tags changelog records with their transaction (`<run>:<seq>`).
    pub run: String,
    pub txn_seq: u64,
    /// `huntflow_stage_records_total{stage, outcome}` children, looked up
    /// once per outcome instead of hashing the labels for every record.
    pub outcomes: Vec<(&'static str, prometheus::IntCounter)>,
}

use crate::event::now_ms;

impl<L: StageLogic> Engine<L> {
    pub fn stage(&self) -> &'static str {
        self.logic.name()
    }

    /// Restores every newly assigned partition (one changelog reader for all)
    /// and seeks each to the position its state holds.
    pub fn on_assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<(), StageError> {
        self.logic.on_rewind();
        self.clock.on_rewind();
        let started = Instant::now();
        let logic = &self.logic;
        let restored = restore_partitions(&self.cfg, &self.store, partitions, &|k, v| logic.index_for(k, v))?;
        self.metrics.restore_seconds.with_label_values(&[self.stage()]).observe(started.elapsed().as_secs_f64());
        let mut tpl = TopicPartitionList::new();
        for (p, r) in restored {
            self.report.restored += r.applied;
            self.report.already_local += r.already_local;
            self.metrics.restored.with_label_values(&[self.stage()]).inc_by(r.applied);
            self.check_topology(p)?;
            let position =
                self.store.get(p, POSITION_KEY)?.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes);
            tpl.add_partition_offset(&self.cfg.input_topic, p, position.map_or(Offset::Beginning, Offset::Offset))?;
            if let Some(pos) = position {
                self.positions.insert(p, pos);
            }
            self.assigned.insert(p);
            tracing::info!(stage = self.stage(), partition = p, restored = r.applied, already_local = r.already_local, position = ?position, "partition assigned");
        }
        self.metrics.rebalances.with_label_values(&[self.stage(), "assign"]).inc();
        self.metrics.assigned.with_label_values(&[self.stage()]).set(self.assigned.len() as i64);
        // The default handler assigned with stored group offsets; replace that
        // with the positions our state holds.
        consumer.assign(&tpl)?;
        Ok(())
    }

    /// State built with other hunts, tiers or reward tables is refused
    /// (unless allowed): its keys and standings would be paid by the wrong
    /// table. A partition without a record gets one with its next commit.
    fn check_topology(&mut self, p: i32) -> Result<(), StageError> {
        let current = &self.cfg.tier_fingerprints;
        let stored = self.store.get(p, TOPOLOGY_KEY)?;
        let old: Option<BTreeMap<String, String>> = stored.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        if old.as_ref() == Some(current) {
            return Ok(());
        }
        if let Some(old) = old {
            let mut changes = Vec::new();
            for (k, v) in current {
                match old.get(k) {
                    None => changes.push(format!("{k} added")),
                    Some(o) if o != v => changes.push(format!("{k} changed (tier spec or reward table)")),
                    Some(_) => {}
                }
            }
            changes.extend(old.keys().filter(|k| !current.contains_key(*k)).map(|k| format!("{k} removed")));
            let what = format!(
                "{} partition {p} holds state built with another topology: {}",
                self.cfg.changelog_topic,
                changes.join(", ")
            );
            if !self.cfg.allow_topology_change {
                return Err(StageError::Stop(format!("{what}; restart with --allow-topology-change to keep it")));
            }
            tracing::warn!("{what}; kept (--allow-topology-change)");
        }
        let value = serde_json::to_vec(current).map_err(|e| StageError::Stop(e.to_string()))?;
        self.pending.entry(p).or_default().insert(TOPOLOGY_KEY.to_vec(), Some(value));
        Ok(())
    }

    /// Commits what is open, then forgets every partition: nothing of a
    /// revoked partition may be written after it moved.
    pub fn on_revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.commit(consumer) {
            self.fatal.get_or_insert(e.to_string());
        }
        self.pending.clear();
        self.assigned.clear();
        self.positions.clear();
        self.logic.on_rewind();
        self.clock.on_rewind();
        self.metrics.rebalances.with_label_values(&[self.stage(), "revoke"]).inc();
        self.metrics.assigned.with_label_values(&[self.stage()]).set(0);
    }

    fn begin(&mut self) -> Result<(), StageError> {
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.txn_open = true;
            self.txn_started = Instant::now();
        }
        Ok(())
    }

    pub fn handle(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), StageError> {
        let (p, offset) = (msg.partition(), msg.offset());
        if !self.assigned.contains(&p) || self.positions.get(&p).is_some_and(|pos| offset < *pos) {
            self.report.skipped += 1;
            return Ok(());
        }
        self.begin()?;
        if let Some(ts) = msg.timestamp().to_millis() {
            self.last_read_ms.insert(p, ts);
        }
        let upstream = header_str(msg, HEADER_LINEAGE).as_deref().and_then(Lineage::decode);
        let schema = header_str(msg, HEADER_SCHEMA);
        let stage = self.logic.name();
        let pending = self.pending.entry(p).or_default();
        let mut state = PartitionState { store: &self.store, partition: p, pending, watermark: i64::MIN };
        let mut replay = false;
        if let Some((up_stage, lineage)) = &upstream {
            let key = format!("\0lin/{up_stage}/{}", lineage.partition).into_bytes();
            let seen = state.get(&key)?.and_then(|b| Lineage::from_bytes(&b));
            if seen.is_some_and(|s| *lineage <= s) {
                replay = true;
            } else {
                state.put(key, lineage.to_bytes());
            }
        }
        // Before the stage runs: snapshots taken on a watermark carry it as version.
        state.put(POSITION_KEY.to_vec(), (offset + 1).to_be_bytes().to_vec());
        self.positions.insert(p, offset + 1);
        if replay {
            self.report.skipped += 1;
            self.count("replay_skipped");
            return Ok(());
        }
        let input = Input {
            partition: p,
            offset,
            key: msg.key(),
            payload: msg.payload().unwrap_or_default(),
            upstream: upstream.as_ref().map(|(s, l)| (s.as_str(), *l)),
        };
        let processed = match self.poison.get(&(p, offset)) {
            Some(reason) => Processed::new(
                "dead_lettered",
                vec![Output::dead_letter(stage, &input, REASON_PROCESSING_FAILED, reason.clone())],
            ),
            None => time::apply(&mut self.logic, &mut self.clock, &mut state, &input, schema.as_deref())?,
        };
        self.report.processed += 1;
        self.count(processed.outcome);
        for (i, out) in processed.outputs.iter().enumerate() {
            self.emit(Lineage { partition: p, offset, index: i as u32 }, out)?;
        }
        Ok(())
    }

    fn count(&mut self, outcome: &'static str) {
        match self.outcomes.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => c.inc(),
            None => {
                let c = self.metrics.records.with_label_values(&[self.logic.name(), outcome]);
                c.inc();
                self.outcomes.push((outcome, c));
            }
        }
    }

    fn emit(&self, lineage: Lineage, out: &Output) -> Result<(), StageError> {
        let lineage = lineage.encode(self.logic.name());
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: HEADER_TOPOLOGY_HASH, value: Some(self.cfg.topology_hash.as_str()) })
            .insert(Header { key: HEADER_LINEAGE, value: Some(lineage.as_str()) });
        for (k, v) in &out.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
        }
        let topic = match (out.sink, &self.cfg.secondary_topic) {
            (Sink::Primary, _) => &self.cfg.output_topic,
            (Sink::Secondary, Some(t)) => t,
            (Sink::Secondary, None) => return Err(StageError::Stop("stage has no secondary output topic".into())),
            (Sink::DeadLetter, _) => &self.cfg.dead_letter_topic,
        };
        // An empty payload on a stage's own topics is a tombstone (null
        // value); a dead letter keeps its original bytes, even none.
        let payload = (out.sink == Sink::DeadLetter || !out.payload.is_empty()).then_some(out.payload.as_slice());
        self.producer.send(topic, &out.key, payload, out.partition, headers)?;
        self.observe_output(out);
        Ok(())
    }

    fn observe_output(&self, out: &Output) {
        let header = |name: &str| out.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
        match out.sink {
            Sink::DeadLetter => {
                let reason = header(HEADER_REASON_CODE).unwrap_or("unknown");
                self.metrics.dead_letters.with_label_values(&[self.stage(), reason]).inc();
            }
            Sink::Secondary => {
                if let Some(at) = header(HEADER_WINDOW_CLOSES_AT).and_then(|v| v.parse::<i64>().ok()) {
                    let delay = (now_ms() - at).max(0) as f64 / 1000.0;
                    self.metrics.close_delay.with_label_values(&[self.stage()]).observe(delay);
                }
            }
            Sink::Primary => {}
        }
    }

    /// Wall-clock paced output (snapshots). Its lineage points past the last
    /// input applied, with indexes no input record uses.
    pub fn tick(&mut self, now: Instant) -> Result<(), StageError> {
        for p in self.assigned.clone() {
            let pending = self.pending.entry(p).or_default();
            let mut state = PartitionState { store: &self.store, partition: p, pending, watermark: i64::MIN };
            state.watermark = self.clock.watermark(&state)?;
            let outputs = self.logic.tick(&mut state, now)?;
            if outputs.is_empty() {
                continue;
            }
            self.begin()?;
            let offset = self.positions.get(&p).copied().unwrap_or(0) - 1;
            for (i, out) in outputs.iter().enumerate() {
                self.emit(Lineage { partition: p, offset, index: TICK_INDEX_BASE + i as u32 }, out)?;
            }
        }
        Ok(())
    }

    /// What an error from `handle` or `tick` means: stop, dead-letter the
    /// record (after a replay up to it), or retry after a backoff.
    pub fn on_error<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        err: StageError,
        at: Option<(i32, i64)>,
    ) -> Result<(), StageError> {
        let topic = self.cfg.input_topic.clone();
        let place = at.map_or_else(|| "a tick".to_owned(), |(p, o)| format!("{topic} partition {p} offset {o}"));
        match (err.action(), at) {
            (ErrorAction::Stop, _) => Err(StageError::Stop(format!("{} stopped at {place}: {err}", self.stage()))),
            (ErrorAction::DeadLetter, Some(at)) => {
                tracing::warn!(stage = self.stage(), error = %err, "cannot process {place}; dead-lettering it after a replay");
                self.poison.insert(at, format!("{} failed on {place}: {err}", self.stage()));
                self.abort(consumer, &err)
            }
            _ => {
                self.failures += 1;
                let wait = crate::kafka::backoff(self.failures);
                tracing::warn!(stage = self.stage(), error = %err, ?wait, "failed at {place}; aborting and retrying");
                self.abort(consumer, &err)?;
                std::thread::sleep(wait);
                Ok(())
            }
        }
    }

    /// Flushes outputs, writes the changelog last, commits, then applies the
    /// same changes to RocksDB. A failure aborts and rewinds.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), StageError> {
        if !self.txn_open {
            return Ok(());
        }
        let started = Instant::now();
        match self.try_commit(consumer) {
            Ok(()) => {
                self.report.commits += 1;
                self.failures = 0;
                self.poison.clear();
                self.metrics.transactions.with_label_values(&[self.stage(), "committed"]).inc();
                self.step(STEP_TOTAL, started);
                Ok(())
            }
            Err(e) if e.action() == ErrorAction::Stop => {
                Err(StageError::Stop(format!("{} cannot commit: {e}", self.stage())))
            }
            Err(e) => {
                tracing::warn!(stage = self.stage(), error = %e, "transaction failed; aborting and rewinding");
                self.abort(consumer, &e)
            }
        }
    }

    fn step(&self, step: &str, since: Instant) {
        self.metrics.commit_seconds.with_label_values(&[self.stage(), step]).observe(since.elapsed().as_secs_f64());
    }

    fn try_commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), StageError> {
        let timeout = self.cfg.transaction_timeout;
        let t = Instant::now();
        let partitions: Vec<i32> = self.pending.keys().copied().collect();
        // Every committed transaction leaves the topology record behind (an
        // abort may have dropped the one queued at assignment).
        let record = serde_json::to_vec(&self.cfg.tier_fingerprints).map_err(|e| StageError::Stop(e.to_string()))?;
        for p in &partitions {
            if self.store.get(*p, TOPOLOGY_KEY)?.is_none() {
                self.pending
                    .entry(*p)
                    .or_default()
                    .entry(TOPOLOGY_KEY.to_vec())
                    .or_insert_with(|| Some(record.clone()));
            }
        }
        for p in &partitions {
            let pending = self.pending.entry(*p).or_default();
            let mut state = PartitionState { store: &self.store, partition: *p, pending, watermark: i64::MIN };
            state.watermark = self.clock.watermark(&state)?;
            self.logic.before_commit(&mut state)?;
        }
        // A partition whose transaction holds only runtime or purge writes
        // (a heartbeat-free stretch, expiry, the topology record) still
        // ends with its position: restore applies a group only with it.
        for (p, writes) in self.pending.iter_mut() {
            if let (false, Some(pos)) = (writes.contains_key(POSITION_KEY), self.positions.get(p)) {
                writes.insert(POSITION_KEY.to_vec(), Some(pos.to_be_bytes().to_vec()));
            }
        }
        self.step(STEP_BEFORE_COMMIT, t);
        let t = Instant::now();
        self.producer.flush(timeout)?;
        self.deliveries.check("an output")?;
        self.step(STEP_FLUSH_OUTPUTS, t);
        let t = Instant::now();
        // State first, then the runtime's own keys (`\0pos` the very last)
        // after a flush: a visible position implies all the state it covers,
        // and restore applies a transaction's records only with its `\0pos`.
        self.txn_seq += 1;
        let txn = format!("{}:{}", self.run, self.txn_seq);
        let runtime = |k: &[u8]| k.first() == Some(&0);
        for group in [0, 1, 2] {
            for (p, writes) in &self.pending {
                let in_group = |k: &[u8]| match group {
                    0 => !runtime(k),
                    1 => runtime(k) && k != POSITION_KEY,
                    _ => k == POSITION_KEY,
                };
                for (k, v) in writes.iter().filter(|(k, _)| in_group(k) && !self.logic.is_local_index(k)) {
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: HEADER_SCHEMA, value: Some("changelog/v1") })
                        .insert(Header { key: HEADER_TXN, value: Some(&txn) });
                    self.producer.send(&self.cfg.changelog_topic, k, v.as_deref(), Some(*p), headers)?;
                }
            }
            if group != 1 {
                self.producer.flush(timeout)?;
                self.deliveries.check("a changelog record")?;
            }
        }
        self.step(STEP_CHANGELOG, t);
        let t = Instant::now();
        let mut offsets = TopicPartitionList::new();
        for (p, pos) in &self.positions {
            offsets.add_partition_offset(&self.cfg.input_topic, *p, Offset::Offset(*pos))?;
        }
        let metadata =
            consumer.group_metadata().ok_or_else(|| StageError::Stop("consumer has no group metadata".into()))?;
        self.producer.send_offsets(&offsets, &metadata, timeout)?;
        self.step(STEP_SEND_OFFSETS, t);
        let t = Instant::now();
        self.producer.commit(timeout)?;
        self.txn_open = false;
        self.step(STEP_END_TXN, t);
        let t = Instant::now();
        let last = self.deliveries.changelog_last();
        for (p, writes) in std::mem::take(&mut self.pending) {
            let writes: Vec<_> = writes.into_iter().collect();
            self.store.apply(p, &writes, last.get(&p).map(|o| o + 1))?;
        }
        self.step(STEP_STATE_APPLY, t);
        Ok(())
    }

    pub fn abort<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &StageError,
    ) -> Result<(), StageError> {
        self.report.aborts += 1;
        self.metrics.transactions.with_label_values(&[self.stage(), "aborted"]).inc();
        if cause.action() == ErrorAction::Stop {
            return Err(StageError::Stop(format!("producer fenced or failed fatally: {cause}")));
        }
        if self.txn_open {
            self.producer.abort(self.cfg.transaction_timeout)?;
        }
        self.txn_open = false;
        self.pending.clear();
        self.logic.on_rewind();
        self.clock.on_rewind();
        // Rewind to what the committed state says.
        for p in self.assigned.clone() {
            let pos =
                self.store.get(p, POSITION_KEY)?.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes);
            match pos {
                Some(pos) => {
                    self.positions.insert(p, pos);
                    consumer.seek(&self.cfg.input_topic, p, Offset::Offset(pos), Duration::from_secs(10))?;
                }
                None => {
                    self.positions.remove(&p);
                    consumer.seek(&self.cfg.input_topic, p, Offset::Beginning, Duration::from_secs(10))?;
                }
            }
        }
        Ok(())
    }

    /// Lag and watermark gauges; cheap (cached broker offsets, cached state).
    pub fn observe_lag<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let stage = self.stage();
        let now = now_ms();
        let mut lowest = i64::MAX;
        for p in self.assigned.clone() {
            let pos = self.positions.get(&p).copied().unwrap_or(0);
            let high = cached_high_watermark(consumer, &self.cfg.input_topic, p);
            let lag = high.map_or(0, |h| (h - pos).max(0));
            let label = p.to_string();
            self.metrics.lag_records.with_label_values(&[stage, &label]).set(lag);
            let age = match (lag, self.last_read_ms.get(&p)) {
                (l, Some(ts)) if l > 0 => (now - ts).max(0) as f64 / 1000.0,
                _ => 0.0,
            };
            self.metrics.lag_seconds.with_label_values(&[stage, &label]).set(age);
            let pending = self.pending.entry(p).or_default();
            let state = PartitionState { store: &self.store, partition: p, pending, watermark: i64::MIN };
            if let Ok(wm) = self.clock.watermark(&state) {
                lowest = lowest.min(wm);
            }
        }
        if lowest != i64::MAX && lowest != i64::MIN {
            self.metrics.watermark_lag.with_label_values(&[stage]).set((now - lowest) as f64 / 1000.0);
        }
    }
}
