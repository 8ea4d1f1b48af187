//! One stage worker: a dedicated OS thread running a consumer-group member
//! and a transactional producer (blocking librdkafka and RocksDB calls stay
//! off the tokio runtime).
//!
//! Assignment is eager (`range`): every rebalance revokes everything, we
//! commit the open transaction inside the revoke callback, and on assign we
//! restore each partition's changelog tail and seek to the position kept in
//! state. Cooperative assignment would save little here (restores only read
//! tails) and would split the commit-on-revoke logic per partition.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::metrics::WorkerMetrics;
use super::time::{Clock, TimeConfig};
use super::{StageError, StageLogic};
use crate::kafka::transactional::TxnProducer;
use crate::state::{StateStore, StoreOptions};

/// How often lag and watermark gauges are refreshed.
const LAG_EVERY: Duration = Duration::from_secs(1);

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
    /// How input partitions keep event time and where it is forwarded.
    pub time: TimeConfig,
    /// `Topology::tier_fingerprints`, checked against what the state was built with.
    pub tier_fingerprints: std::collections::BTreeMap<String, String>,
    /// Keep state built with another topology (warn instead of stopping).
    pub allow_topology_change: bool,
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

struct StageContext<L: StageLogic> {
    /// Set right after the consumer joins (see `worker_thread`); callbacks
    /// run inside `poll`, which only starts once it is set.
    engine: Arc<OnceLock<Mutex<Engine<L>>>>,
}

impl<L: StageLogic> ClientContext for StageContext<L> {}

impl<L: StageLogic> ConsumerContext for StageContext<L> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            if let Some(Ok(mut engine)) = self.engine.get().map(Mutex::lock) {
                engine.on_revoke(consumer);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let Some(Ok(mut engine)) = self.engine.get().map(Mutex::lock) else { return };
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Err(e) = engine.on_assign(consumer, &partitions) {
                engine.fatal.get_or_insert(e.to_string());
            }
        }
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
        .map_err(|e| StageError::Stop(format!("cannot start worker thread: {e}")))?;
    rx.await.map_err(|_| StageError::Stop("worker thread died".into()))?
}

fn lock<L: StageLogic>(e: &Mutex<Engine<L>>) -> Result<std::sync::MutexGuard<'_, Engine<L>>, StageError> {
    e.lock().map_err(|_| StageError::Stop("engine lock poisoned".into()))
}

fn engine<L: StageLogic>(cfg: &WorkerConfig, logic: L, metrics: WorkerMetrics) -> Result<Engine<L>, StageError> {
    let store = StateStore::open(&cfg.state_dir, StoreOptions::default())?;
    let producer = TxnProducer::new(&cfg.client, &cfg.transactional_id, cfg.transaction_timeout, &cfg.changelog_topic)?;
    Ok(Engine {
        logic,
        clock: Clock::new(cfg.time),
        store,
        deliveries: producer.deliveries(),
        producer,
        cfg: cfg.clone(),
        metrics,
        report: WorkerReport::default(),
        assigned: BTreeSet::new(),
        positions: HashMap::new(),
        pending: HashMap::new(),
        txn_open: false,
        txn_started: Instant::now(),
        fatal: None,
        poison: HashMap::new(),
        failures: 0,
        last_read_ms: HashMap::new(),
        run: format!("{:016x}", rand::random::<u64>()),
        txn_seq: 0,
        outcomes: Vec::new(),
    })
}

fn worker_thread<L: StageLogic>(
    cfg: WorkerConfig,
    logic: L,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) -> Result<WorkerReport, StageError> {
    let slot = Arc::new(OnceLock::new());
    let consumer: BaseConsumer<StageContext<L>> = crate::kafka::quick_fetch(&cfg.client)
        .set("group.id", &cfg.group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        // Static membership: a restarted instance takes over its own member
        // (no rebalance of everyone else), and a fenced zombie that leaves
        // cannot strand its replacement (Tansu keeps a departed leader of a
        // re-forming group; see tests/tansu.rs).
        .set("group.instance.id", &cfg.transactional_id)
        .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (cfg.session_timeout.as_millis() / 4).max(100).to_string())
        .create_with_context(StageContext { engine: slot.clone() })?;
    consumer.subscribe(&[&cfg.input_topic])?;
    // Join first, then open the store and fence the predecessor
    // (init_transactions): workers started together then join within the
    // broker's initial rebalance delay instead of one after another, which
    // costs a second rebalance (on the embedded broker ~session timeout).
    let _ = slot.set(Mutex::new(engine(&cfg, logic, metrics)?));
    let engine = slot.get().ok_or_else(|| StageError::Stop("worker engine missing".into()))?;
    let tick_every = cfg.commit_interval.min(Duration::from_millis(50));
    let (mut last_tick, mut last_lag) = (Instant::now(), Instant::now());

    loop {
        if cancel.is_cancelled() {
            let mut e = lock(engine)?;
            e.commit(&consumer)?;
            break;
        }
        let polled = consumer.poll(Duration::from_millis(20));
        let mut e = lock(engine)?;
        if let Some(fatal) = e.fatal.take() {
            return Err(StageError::Stop(fatal));
        }
        match polled {
            Some(Ok(msg)) => {
                let at = (msg.partition(), msg.offset());
                if let Err(err) = e.handle(&msg) {
                    drop(msg);
                    e.on_error(&consumer, err, Some(at))?;
                }
            }
            Some(Err(err)) => tracing::debug!(error = %err, "consumer error"),
            None => {}
        }
        // One clock read per record: clock_gettime showed in profiles.
        let now = Instant::now();
        if now.duration_since(last_tick) >= tick_every {
            last_tick = now;
            if let Err(err) = e.tick(last_tick) {
                e.on_error(&consumer, err, None)?;
            }
        }
        if now.duration_since(last_lag) >= LAG_EVERY {
            last_lag = now;
            e.observe_lag(&consumer);
        }
        if e.txn_open && now.duration_since(e.txn_started) >= cfg.commit_interval {
            e.commit(&consumer)?;
        }
    }
    let report = lock(engine)?.report.clone();
    drop(consumer);
    Ok(report)
}
