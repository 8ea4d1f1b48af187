//! The bridge's control loop. Each epoch starts the readers of the owned,
//! ready shards from the committed checkpoints and commits what they deliver
//! every `commit_interval`. A failed commit aborts, ends the epoch (readers
//! stop, undelivered batches are dropped) and starts a new one from the last
//! committed checkpoints, so nothing is skipped and nothing is written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, CheckpointTail, TailView};
use super::commit::{is_fatal, Committed, Heartbeat, TxnWriter};
use super::heartbeat::ShardClocks;
use super::metrics::BridgeMetrics;
use super::reader::{ReaderCtx, ShardBatch};
use super::{efo, join_error, polling, shards, KinesisError};
use crate::topology::{KinesisMode, KinesisSourceSpec, Topology};

/// Commit early when this many records are waiting.
const MAX_RECORDS_PER_TXN: usize = 20_000;

pub struct BridgeOptions {
    pub topology: Topology,
    /// Kafka client settings (brokers, security).
    pub kafka: ClientConfig,
    pub kinesis: aws_sdk_kinesis::Client,
    /// This instance's index among `instances` (the StatefulSet ordinal).
    pub instance: u32,
    pub instances: u32,
    pub transaction_timeout: Duration,
}

/// Totals of one bridge run.
#[derive(Clone, Debug, Default)]
pub struct BridgeReport {
    pub records: u64,
    pub bytes: u64,
    pub dead_letters: u64,
    pub commits: u64,
    pub aborts: u64,
    /// Checkpoints of this stream when the bridge stopped, by shard.
    pub checkpoints: BTreeMap<String, Checkpoint>,
}

/// Runs until `cancel`, then commits what was read and returns.
pub async fn run_bridge(
    opts: BridgeOptions,
    registry: &Registry,
    cancel: CancellationToken,
) -> Result<BridgeReport, KinesisError> {
    let spec = opts.topology.spec().source.kinesis.clone().ok_or(KinesisError::NotConfigured)?;
    if opts.instances == 0 || opts.instance >= opts.instances {
        return Err(KinesisError::Invalid(format!(
            "instance {} is not below the instance count {}",
            opts.instance, opts.instances
        )));
    }
    if spec.mode == KinesisMode::EnhancedFanOut && opts.instances != 1 {
        return Err(KinesisError::Invalid(
            "enhanced-fan-out mode runs as exactly one instance (one registered consumer, strict order)".into(),
        ));
    }
    let metrics = BridgeMetrics::new(registry);
    let tail = CheckpointTail::start(&opts.kafka, &spec.checkpoints.name)?;

    // Deterministic: a restarted instance fences its predecessor.
    let txn_id = format!("huntflow-kinesis-{}-{}", spec.stream, opts.instance);
    let run = format!("{:016x}", rand::random::<u64>());
    tracing::info!(transactional_id = txn_id, run, "kinesis bridge starting");
    let writer = {
        let (kafka, topology, id, r, timeout) =
            (opts.kafka.clone(), opts.topology.clone(), txn_id.clone(), run.clone(), opts.transaction_timeout);
        tokio::task::spawn_blocking(move || TxnWriter::create(&kafka, &topology, &id, &r, timeout))
            .await
            .map_err(join_error)??
    };
    let writer = Arc::new(writer);

    // Everything committed before our barrier is what we resume from.
    let barrier = format!("{txn_id}-{run}");
    {
        let (w, id, parts) = (writer.clone(), barrier.clone(), tail.partitions.clone());
        tokio::task::spawn_blocking(move || w.commit_barrier(&id, &parts)).await.map_err(join_error)??;
    }
    let mut view = tail.view.clone();
    let wait = view.wait_for(|v| v.saw_barrier(&barrier, &tail.partitions));
    let loaded = matches!(tokio::time::timeout(Duration::from_secs(60), wait).await, Ok(Ok(_)));
    if !loaded {
        return Err(KinesisError::Checkpoints("did not read back our own barrier within 60 s".into()));
    }
    let mut committed = tail.view.borrow().of_stream(&spec.stream);
    tracing::info!(
        stream = spec.stream,
        instance = opts.instance,
        instances = opts.instances,
        checkpoints = committed.len(),
        mode = ?spec.mode,
        "kinesis bridge resuming from committed checkpoints"
    );

    let consumer_arn = match spec.mode {
        KinesisMode::EnhancedFanOut => {
            Some(efo::ensure_consumer(&opts.kinesis, &spec.stream, &spec.consumer_name).await?)
        }
        KinesisMode::Polling => None,
    };

    let mut report = BridgeReport::default();
    // Stable per instance: a restarted bridge continues its own time.
    let mut time = Time {
        writer: format!("kinesis-{}-{}", spec.stream, opts.instance),
        interval: opts.topology.spec().ingest.heartbeat_interval.0,
        clocks: ShardClocks::default(),
        active: watch::channel(BTreeSet::new()).1,
    };
    loop {
        let epoch = cancel.child_token();
        let (tx, rx) = mpsc::channel::<ShardBatch>(256);
        let (committed_tx, committed_rx) = watch::channel(committed.clone());
        let (active_tx, active_rx) = watch::channel(BTreeSet::new());
        time.active = active_rx;
        time.clocks.reset();
        let ctx = ReaderCtx {
            client: opts.kinesis.clone(),
            spec: spec.clone(),
            metrics: metrics.clone(),
            tx,
            cancel: epoch.clone(),
        };
        let scheduler = tokio::spawn(schedule(
            ctx,
            consumer_arn.clone(),
            committed_rx,
            tail.view.clone(),
            (opts.instance, opts.instances),
            active_tx,
        ));
        let channels = Channels { rx, committed_tx };
        let outcome =
            commit_loop(&writer, &spec, channels, &mut committed, &mut time, &metrics, &mut report, &cancel, &epoch)
                .await;
        epoch.cancel();
        let _ = scheduler.await;
        match outcome {
            Ok(()) => break,
            Err(e) if is_fatal(&e) => {
                tracing::error!(error = %e, "fatal producer error; the bridge stops");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "bridge transaction failed; aborting and re-reading from the last commit");
                metrics.aborts.inc();
                report.aborts += 1;
                let w = writer.clone();
                tokio::task::spawn_blocking(move || w.abort()).await.map_err(join_error)??;
                if cancel.is_cancelled() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    report.checkpoints = committed;
    Ok(report)
}

/// The bridge's event-time progress: its writer id on the events topic,
/// how often it heartbeats, the shard clocks, and which shards it reads.
struct Time {
    writer: String,
    interval: Duration,
    clocks: ShardClocks,
    active: watch::Receiver<BTreeSet<String>>,
}

/// An epoch's batches in, committed checkpoints out.
struct Channels {
    rx: mpsc::Receiver<ShardBatch>,
    committed_tx: watch::Sender<BTreeMap<String, Checkpoint>>,
}

/// Collects batches and commits them every `commit_interval` (or earlier when
/// many are waiting), with a heartbeat when the shard clocks moved, until the
/// epoch's readers have all stopped. With nothing to copy it still commits a
/// heartbeat every `ingest.heartbeat_interval`, so windows close.
#[allow(clippy::too_many_arguments)]
async fn commit_loop(
    writer: &Arc<TxnWriter>,
    spec: &KinesisSourceSpec,
    mut ch: Channels,
    committed: &mut BTreeMap<String, Checkpoint>,
    time: &mut Time,
    metrics: &BridgeMetrics,
    report: &mut BridgeReport,
    cancel: &CancellationToken,
    epoch: &CancellationToken,
) -> Result<(), KinesisError> {
    let interval: Duration = spec.commit_interval.0;
    let mut pending: Vec<ShardBatch> = Vec::new();
    let mut waiting_records = 0usize;
    let mut deadline: Option<Instant> = None;
    let mut beat = tokio::time::interval(time.interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat_due = false;
    loop {
        let due = deadline.map(|d| Instant::now() >= d).unwrap_or(false) || waiting_records >= MAX_RECORDS_PER_TXN;
        let heartbeat = time.clocks.due(&time.active.borrow());
        if due || (beat_due && heartbeat.is_some()) {
            let batches = std::mem::take(&mut pending);
            commit(writer, batches, committed, &ch.committed_tx, time, heartbeat, metrics, report).await?;
            waiting_records = 0;
            deadline = None;
            beat_due = false;
            continue;
        }
        tokio::select! {
            // SIGTERM: stop the readers; what they delivered is still committed.
            _ = cancel.cancelled(), if !epoch.is_cancelled() => epoch.cancel(),
            batch = ch.rx.recv() => match batch {
                Some(b) => {
                    if let Some(c) = b.clock {
                        time.clocks.observe(&b.shard, c);
                    }
                    if !b.records.is_empty() || b.finished {
                        waiting_records += b.records.len();
                        pending.push(b);
                        deadline.get_or_insert_with(|| Instant::now() + interval);
                    }
                }
                None => break,
            },
            _ = beat.tick() => beat_due = true,
            _ = sleep_until(deadline) => {}
        }
    }
    if !pending.is_empty() {
        let heartbeat = time.clocks.due(&time.active.borrow());
        commit(writer, pending, committed, &ch.committed_tx, time, heartbeat, metrics, report).await?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn commit(
    writer: &Arc<TxnWriter>,
    batches: Vec<ShardBatch>,
    committed: &mut BTreeMap<String, Checkpoint>,
    committed_tx: &watch::Sender<BTreeMap<String, Checkpoint>>,
    time: &mut Time,
    heartbeat: Option<i64>,
    metrics: &BridgeMetrics,
    report: &mut BridgeReport,
) -> Result<(), KinesisError> {
    let started = std::time::Instant::now();
    let (w, previous, who) = (writer.clone(), committed.clone(), time.writer.clone());
    let done: Committed = tokio::task::spawn_blocking(move || {
        w.commit(&batches, &previous, heartbeat.map(|t| Heartbeat { writer: &who, time: t }))
    })
    .await
    .map_err(join_error)??;
    metrics.commit_duration.observe(started.elapsed().as_secs_f64());
    metrics.commits.inc();
    if let Some(t) = heartbeat {
        time.clocks.sent(t);
        metrics.heartbeats.inc();
    }
    report.commits += 1;
    for (shard, n, bytes) in &done.per_shard {
        metrics.records.with_label_values(&[shard]).inc_by(*n);
        metrics.bytes.with_label_values(&[shard]).inc_by(*bytes);
        report.records += n;
        report.bytes += bytes;
    }
    for (code, n) in &done.dead_letters {
        metrics.dead_letters.with_label_values(&[super::STAGE, code]).inc_by(*n);
        report.dead_letters += n;
    }
    for cp in done.checkpoints {
        committed.insert(cp.shard.clone(), cp);
    }
    committed_tx.send_replace(committed.clone());
    Ok(())
}

/// Starts a reader for every owned shard whose parents are finished, and
/// looks again when the shard list may have changed (refresh interval, a
/// commit, another instance's checkpoint). Returns when the epoch ends and
/// every reader it started has stopped.
async fn schedule(
    ctx: ReaderCtx,
    consumer_arn: Option<String>,
    mut committed: watch::Receiver<BTreeMap<String, Checkpoint>>,
    mut tail: watch::Receiver<TailView>,
    (index, count): (u32, u32),
    active: watch::Sender<BTreeSet<String>>,
) {
    let mut readers = JoinSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut listing: Vec<shards::ShardInfo> = Vec::new();
    let mut last_listing: Option<Instant> = None;
    let mut known_finished = 0;
    let stream = ctx.spec.stream.clone();
    loop {
        let refresh = ctx.spec.shard_refresh_interval.0;
        if last_listing.is_none_or(|t| t.elapsed() >= refresh) {
            match shards::list_shards(&ctx.client, &stream).await {
                Ok(l) => {
                    listing = l;
                    last_listing = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "listing shards failed; retrying"),
            }
        }
        let own = committed.borrow_and_update().clone();
        let mut finished: BTreeSet<String> = own.values().filter(|c| c.finished).map(|c| c.shard.clone()).collect();
        // Other instances' parents: their committed checkpoints.
        finished
            .extend(tail.borrow_and_update().of_stream(&stream).into_values().filter(|c| c.finished).map(|c| c.shard));
        if finished.len() > known_finished {
            // A shard just finished: its children may be new to the listing.
            known_finished = finished.len();
            if let Ok(l) = shards::list_shards(&ctx.client, &stream).await {
                listing = l;
            }
        }
        let plan = shards::plan(&listing, &finished, &started, index, count);
        for shard in plan.ready {
            let start = own.get(&shard).and_then(|c| c.sequence.clone());
            tracing::info!(shard, start = start.as_deref().unwrap_or("TRIM_HORIZON"), "reading shard");
            started.insert(shard.clone());
            let ctx = ctx.clone();
            match &consumer_arn {
                Some(arn) => readers.spawn(efo::read_shard(ctx, arn.clone(), shard, start)),
                None => readers.spawn(polling::read_shard(ctx, shard, start)),
            };
        }
        let read: BTreeSet<String> = started.difference(&finished).cloned().collect();
        let reading = read.len();
        active.send_if_modified(|a| std::mem::replace(a, read) != *a);
        ctx.metrics.shards.with_label_values(&["reading"]).set(reading as i64);
        ctx.metrics.shards.with_label_values(&["waiting_for_parents"]).set(plan.waiting.len() as i64);
        ctx.metrics.shards.with_label_values(&["finished"]).set(plan.finished as i64);
        // A finished shard may unblock children: list again soon.
        let next_listing = if plan.waiting.is_empty() { refresh } else { refresh.min(Duration::from_millis(500)) };
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            // A dropped sender (tail thread gone) disables its branch
            // instead of waking this loop forever.
            Ok(()) = committed.changed() => {}
            Ok(()) = tail.changed() => {}
            _ = tokio::time::sleep(next_listing) => { last_listing = None; }
            Some(done) = readers.join_next(), if !readers.is_empty() => {
                if let Ok(Err(e)) = done {
                    tracing::error!(error = %e, "shard reader failed");
                }
            }
        }
    }
    drop(ctx);
    while readers.join_next().await.is_some() {}
}
