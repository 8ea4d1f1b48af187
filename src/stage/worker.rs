//! One stage worker: a dedicated OS thread running a consumer-group member
//! and a transactional producer (blocking librdkafka and RocksDB calls stay
//! off the tokio runtime).
//!
//! Assignment is eager (`range`): every rebalance revokes everything, we
//! commit the open transaction inside the revoke callback, and on assign we
//! restore each partition's changelog tail and seek to the position kept in
//! state. Cooperative assignment would save little here (restores only read
//! tails) and would split the commit-on-revoke logic per partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::restore::restore_partition;
use super::{Input, Lineage, Output, PartitionState, Sink, StageError, StageLogic, HEADER_LINEAGE, POSITION_KEY};
use crate::kafka::{HEADER_SCHEMA, HEADER_TOPOLOGY_HASH};
use crate::state::{StateStore, StoreOptions};

/// Lineage indexes of tick outputs start here, above any per-record index.
const TICK_INDEX_BASE: u32 = 1 << 30;
use crate::telemetry::register;

/// Everything a worker needs to know; built by the caller from settings
/// and topology.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Client settings with `bootstrap.servers` and passthrough properties.
    pub client: ClientConfig,
    pub group_id: String,
    /// Stable per instance (e.g. the StatefulSet ordinal), so a restarted
    /// worker fences its predecessor.
    pub transactional_id: String,
    pub input_topic: String,
    pub output_topic: String,
    /// Target of `Sink::Secondary` outputs (rank: the prizes topic).
    pub secondary_topic: Option<String>,
    pub dead_letter_topic: String,
    pub changelog_topic: String,
    pub topology_hash: String,
    pub state_dir: PathBuf,
    pub commit_interval: Duration,
    pub transaction_timeout: Duration,
    pub session_timeout: Duration,
}

#[derive(Clone)]
pub struct WorkerMetrics {
    records: IntCounterVec,
    transactions: IntCounterVec,
    restored: IntCounterVec,
    commit_seconds: Histogram,
}

impl WorkerMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            records: register(
                registry,
                IntCounterVec::new(
                    Opts::new("huntflow_stage_records_total", "Input records by stage and outcome."),
                    &["stage", "outcome"],
                )
                .expect("valid metric"),
            ),
            transactions: register(
                registry,
                IntCounterVec::new(
                    Opts::new("huntflow_stage_transactions_total", "Transactions by stage and result."),
                    &["stage", "result"],
                )
                .expect("valid metric"),
            ),
            restored: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "huntflow_state_restored_records_total",
                        "Changelog records applied to local state while restoring.",
                    ),
                    &["stage"],
                )
                .expect("valid metric"),
            ),
            commit_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "huntflow_stage_commit_duration_seconds",
                        "Time to flush and commit one transaction.",
                    )
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub processed: u64,
    pub skipped: u64,
    pub commits: u64,
    pub aborts: u64,
    pub restored: u64,
    /// Changelog records not re-read on assignment because the local store
    /// already held them (a restart restores only the tail).
    pub already_local: u64,
}

/// Delivery bookkeeping of the transactional producer.
#[derive(Default)]
struct Deliveries {
    failures: AtomicU64,
    changelog_last: Mutex<HashMap<i32, i64>>,
    changelog_topic: String,
}

struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.0.changelog_topic => {
                if let Ok(mut last) = self.0.changelog_last.lock() {
                    let e = last.entry(m.partition()).or_insert(-1);
                    *e = (*e).max(m.offset());
                }
            }
            Ok(_) => {}
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed inside a transaction; it will abort");
                self.0.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

type TxnProducer = BaseProducer<DeliveryContext>;

/// The transactional engine. Lives behind a mutex shared with the rebalance
/// callbacks, which run on the same thread inside `poll`.
struct Engine<L: StageLogic> {
    logic: L,
    store: StateStore,
    producer: TxnProducer,
    deliveries: Arc<Deliveries>,
    cfg: WorkerConfig,
    metrics: WorkerMetrics,
    report: WorkerReport,
    assigned: BTreeSet<i32>,
    /// Next input offset per partition, including this transaction's records.
    positions: HashMap<i32, i64>,
    pending: HashMap<i32, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    txn_open: bool,
    txn_started: Instant,
    fatal: Option<String>,
}

struct StageContext<L: StageLogic> {
    engine: Arc<Mutex<Engine<L>>>,
}

impl<L: StageLogic> ClientContext for StageContext<L> {}

impl<L: StageLogic> ConsumerContext for StageContext<L> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            let Ok(mut engine) = self.engine.lock() else { return };
            if let Err(e) = engine.commit(consumer) {
                engine.fatal.get_or_insert(e.to_string());
            }
            engine.assigned.clear();
            engine.positions.clear();
            engine.logic.on_rewind();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let Ok(mut engine) = self.engine.lock() else { return };
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Err(e) = engine.on_assign(consumer, &partitions) {
                engine.fatal.get_or_insert(e.to_string());
            }
        }
    }
}

impl<L: StageLogic> Engine<L> {
    fn stage(&self) -> &'static str {
        self.logic.name()
    }

    fn on_assign(&mut self, consumer: &BaseConsumer<StageContext<L>>, partitions: &[i32]) -> Result<(), StageError> {
        self.logic.on_rewind();
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            let r = restore_partition(&self.cfg, &self.store, p)?;
            let restored = r.applied;
            self.report.restored += restored;
            self.report.already_local += r.already_local;
            self.metrics.restored.with_label_values(&[self.stage()]).inc_by(restored);
            let position =
                self.store.get(p, POSITION_KEY)?.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes);
            let offset = position.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&self.cfg.input_topic, p, offset)?;
            if let Some(pos) = position {
                self.positions.insert(p, pos);
            }
            self.assigned.insert(p);
            tracing::info!(stage = self.stage(), partition = p, restored, already_local = r.already_local, position = ?position, "partition assigned");
        }
        // The default handler assigned with stored group offsets; replace that
        // with the positions our state holds.
        consumer.assign(&tpl)?;
        Ok(())
    }

    fn begin(&mut self) -> Result<(), StageError> {
        if !self.txn_open {
            self.producer.begin_transaction()?;
            self.deliveries.failures.store(0, Ordering::SeqCst);
            if let Ok(mut last) = self.deliveries.changelog_last.lock() {
                last.clear();
            }
            self.txn_open = true;
            self.txn_started = Instant::now();
        }
        Ok(())
    }

    fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        partition: Option<i32>,
        headers: OwnedHeaders,
    ) -> Result<(), StageError> {
        let mut record = BaseRecord::to(topic).key(key).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), StageError> {
        let (p, offset) = (msg.partition(), msg.offset());
        if !self.assigned.contains(&p) || self.positions.get(&p).is_some_and(|pos| offset < *pos) {
            self.report.skipped += 1;
            return Ok(());
        }
        self.begin()?;
        let upstream = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == HEADER_LINEAGE).and_then(|h| h.value))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(Lineage::decode);
        let pending = self.pending.entry(p).or_default();
        let mut state = PartitionState { store: &self.store, partition: p, pending };
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
        let processed = if replay {
            None
        } else {
            let input = Input {
                partition: p,
                offset,
                key: msg.key(),
                payload: msg.payload().unwrap_or_default(),
                upstream: upstream.as_ref().map(|(s, l)| (s.as_str(), *l)),
            };
            Some(self.logic.process(&mut state, &input)?)
        };
        state.put(POSITION_KEY.to_vec(), (offset + 1).to_be_bytes().to_vec());
        self.positions.insert(p, offset + 1);
        let Some(processed) = processed else {
            self.report.skipped += 1;
            self.metrics.records.with_label_values(&[self.logic.name(), "replay_skipped"]).inc();
            return Ok(());
        };
        self.report.processed += 1;
        self.metrics.records.with_label_values(&[self.logic.name(), processed.outcome]).inc();
        for (i, out) in processed.outputs.iter().enumerate() {
            self.emit(Lineage { partition: p, offset, index: i as u32 }, out)?;
        }
        Ok(())
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
            (Sink::Secondary, None) => return Err(StageError::Fatal("stage has no secondary output topic".into())),
            (Sink::DeadLetter, _) => &self.cfg.dead_letter_topic,
        };
        self.send(topic, &out.key, Some(&out.payload), out.partition, headers)
    }

    /// Wall-clock paced output (snapshots). Its lineage points past the last
    /// input applied, with indexes no input record uses.
    fn tick(&mut self, now: Instant) -> Result<(), StageError> {
        for p in self.assigned.clone() {
            let pending = self.pending.entry(p).or_default();
            let mut state = PartitionState { store: &self.store, partition: p, pending };
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

    /// Flushes outputs, writes the changelog last, commits, then applies the
    /// same changes to RocksDB. Any failure aborts and rewinds.
    fn commit(&mut self, consumer: &BaseConsumer<StageContext<L>>) -> Result<(), StageError> {
        if !self.txn_open {
            return Ok(());
        }
        let started = Instant::now();
        match self.try_commit(consumer) {
            Ok(()) => {
                self.report.commits += 1;
                self.metrics.transactions.with_label_values(&[self.stage(), "committed"]).inc();
                self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(stage = self.stage(), error = %e, "transaction failed; aborting and rewinding");
                self.abort(consumer, &e)
            }
        }
    }

    fn try_commit(&mut self, consumer: &BaseConsumer<StageContext<L>>) -> Result<(), StageError> {
        let timeout = self.cfg.transaction_timeout;
        let partitions: Vec<i32> = self.pending.keys().copied().collect();
        for p in &partitions {
            let pending = self.pending.entry(*p).or_default();
            let mut state = PartitionState { store: &self.store, partition: *p, pending };
            self.logic.before_commit(&mut state)?;
        }
        crate::kafka::flush(&self.producer, timeout)?;
        if self.deliveries.failures.load(Ordering::SeqCst) > 0 {
            return Err(StageError::Fatal("an output was not acknowledged".into()));
        }
        for (p, writes) in &self.pending {
            for (k, v) in writes {
                let headers = OwnedHeaders::new().insert(Header { key: HEADER_SCHEMA, value: Some("changelog/v1") });
                self.send(&self.cfg.changelog_topic, k, v.as_deref(), Some(*p), headers)?;
            }
        }
        crate::kafka::flush(&self.producer, timeout)?;
        if self.deliveries.failures.load(Ordering::SeqCst) > 0 {
            return Err(StageError::Fatal("a changelog record was not acknowledged".into()));
        }
        let mut offsets = TopicPartitionList::new();
        for (p, pos) in &self.positions {
            offsets.add_partition_offset(&self.cfg.input_topic, *p, Offset::Offset(*pos))?;
        }
        let metadata =
            consumer.group_metadata().ok_or_else(|| StageError::Fatal("consumer has no group metadata".into()))?;
        self.producer.send_offsets_to_transaction(&offsets, &metadata, timeout)?;
        self.producer.commit_transaction(timeout)?;
        self.txn_open = false;
        let last = self.deliveries.changelog_last.lock().map(|m| m.clone()).unwrap_or_default();
        for (p, writes) in std::mem::take(&mut self.pending) {
            let writes: Vec<_> = writes.into_iter().collect();
            self.store.apply(p, &writes, last.get(&p).map(|o| o + 1))?;
        }
        Ok(())
    }

    fn abort(&mut self, consumer: &BaseConsumer<StageContext<L>>, cause: &StageError) -> Result<(), StageError> {
        self.report.aborts += 1;
        self.metrics.transactions.with_label_values(&[self.stage(), "aborted"]).inc();
        if let StageError::Kafka(KafkaError::Transaction(e)) = cause {
            if e.is_fatal() {
                return Err(StageError::Fatal(format!("producer fenced or failed fatally: {e}")));
            }
        }
        self.producer.abort_transaction(self.cfg.transaction_timeout)?;
        self.txn_open = false;
        self.pending.clear();
        self.logic.on_rewind();
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
}

/// Runs a worker on its own thread until `cancel` fires (then commits the
/// open transaction and returns) or a fatal error (fenced producer, broken
/// state). Await the returned future from async code.
pub async fn run_worker<L: StageLogic>(
    cfg: WorkerConfig,
    logic: L,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) -> Result<WorkerReport, StageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("huntflow-{}", logic.name()))
        .spawn(move || {
            let _ = tx.send(worker_thread(cfg, logic, metrics, cancel));
        })
        .map_err(|e| StageError::Fatal(format!("cannot start worker thread: {e}")))?;
    rx.await.map_err(|_| StageError::Fatal("worker thread died".into()))?
}

fn lock<L: StageLogic>(e: &Mutex<Engine<L>>) -> Result<std::sync::MutexGuard<'_, Engine<L>>, StageError> {
    e.lock().map_err(|_| StageError::Fatal("engine lock poisoned".into()))
}

fn worker_thread<L: StageLogic>(
    cfg: WorkerConfig,
    logic: L,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) -> Result<WorkerReport, StageError> {
    let store = StateStore::open(&cfg.state_dir, StoreOptions::default())?;
    let deliveries = Arc::new(Deliveries { changelog_topic: cfg.changelog_topic.clone(), ..Default::default() });
    let producer: TxnProducer = cfg
        .client
        .clone()
        .set("transactional.id", &cfg.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // JSON compresses well; it also keeps the embedded broker (5 MB per
        // partition, no compaction) from dropping old records.
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .set("transaction.timeout.ms", cfg.transaction_timeout.as_millis().max(1000).to_string())
        .create_with_context(DeliveryContext(deliveries.clone()))?;
    crate::kafka::init_transactions(&producer, cfg.transaction_timeout)?;
    let engine = Arc::new(Mutex::new(Engine {
        logic,
        store,
        producer,
        deliveries,
        cfg: cfg.clone(),
        metrics,
        report: WorkerReport::default(),
        assigned: BTreeSet::new(),
        positions: HashMap::new(),
        pending: HashMap::new(),
        txn_open: false,
        txn_started: Instant::now(),
        fatal: None,
    }));
    let consumer: BaseConsumer<StageContext<L>> = cfg
        .client
        .clone()
        .set("group.id", &cfg.group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (cfg.session_timeout.as_millis() / 4).max(100).to_string())
        .create_with_context(StageContext { engine: engine.clone() })?;
    consumer.subscribe(&[&cfg.input_topic])?;
    let tick_every = cfg.commit_interval.min(Duration::from_millis(50));
    let mut last_tick = Instant::now();

    loop {
        if cancel.is_cancelled() {
            let mut e = lock(&engine)?;
            e.commit(&consumer)?;
            break;
        }
        let polled = consumer.poll(Duration::from_millis(20));
        let mut e = lock(&engine)?;
        if let Some(fatal) = e.fatal.take() {
            return Err(StageError::Fatal(fatal));
        }
        match polled {
            Some(Ok(msg)) => {
                if let Err(err) = e.handle(&msg) {
                    drop(msg);
                    tracing::warn!(error = %err, "processing failed; aborting the transaction");
                    e.abort(&consumer, &err)?;
                }
            }
            Some(Err(err)) => tracing::debug!(error = %err, "consumer error"),
            None => {}
        }
        if last_tick.elapsed() >= tick_every {
            last_tick = Instant::now();
            if let Err(err) = e.tick(last_tick) {
                tracing::warn!(error = %err, "tick failed; aborting the transaction");
                e.abort(&consumer, &err)?;
            }
        }
        if e.txn_open && e.txn_started.elapsed() >= cfg.commit_interval {
            e.commit(&consumer)?;
        }
    }
    let report = lock(&engine)?.report.clone();
    drop(consumer);
    Ok(report)
}
