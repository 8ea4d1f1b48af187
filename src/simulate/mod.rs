//! `huntflow simulate`: S game shards posting Zipf-skewed player events, with
//! retried duplicates, chest collisions across shards, malformed and late
//! events. Posts to ingest over HTTP (NDJSON batches) or produces straight
//! to the events topic.

mod generator;
mod http;
mod kinesis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

pub use generator::{Item, ItemKind, ShardGenerator, TrafficShape};

use crate::kafka::EventProducer;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("shard {shard}: ingest answered {status}: {body}")]
    Refused { shard: String, status: u16, body: String },
    #[error("shard {shard}: {message}")]
    Transport { shard: String, message: String },
    #[error("no token for shard {0}")]
    MissingToken(String),
}

/// Where simulated shards send their events.
#[derive(Clone)]
pub enum Target {
    /// The ingest HTTP API at `base_url`, one bearer token per shard.
    Http { base_url: String, tokens: Vec<(String, String)> },
    /// Straight to the events topic, bypassing ingest validation.
    Kafka(EventProducer),
    /// A Kinesis stream, for `huntflow kinesis-bridge` to copy.
    Kinesis { client: aws_sdk_kinesis::Client, stream: String },
}

#[derive(Clone)]
pub struct SimulateOptions {
    pub shards: usize,
    /// Total items to send; `None` runs until cancelled.
    pub events: Option<u64>,
    pub batch_size: usize,
    /// Overall items per second (wall clock); `None` is as fast as possible.
    pub rate: Option<f64>,
    pub shape: TrafficShape,
    pub progress: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            shards: 8,
            events: Some(20_000),
            batch_size: 500,
            rate: None,
            shape: TrafficShape::default(),
            progress: false,
        }
    }
}

/// Final accounting. `posted == accepted + rejected` when nothing failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimulateReport {
    pub posted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates_sent: u64,
    pub malformed_sent: u64,
    pub late_sent: u64,
    pub throttled: u64,
    pub retried: u64,
    pub elapsed: Duration,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub posted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    pub late: AtomicU64,
    pub throttled: AtomicU64,
    pub retried: AtomicU64,
}

/// Runs every shard until its share of `events` is sent or `cancel` fires.
pub async fn run(
    topology: &Topology,
    target: Target,
    opts: SimulateOptions,
    cancel: CancellationToken,
) -> Result<SimulateReport, SimulateError> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let bar = progress_bar(opts.progress, opts.events);
    let shards = opts.shards.max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(shards)
        .build()
        .map_err(|e| SimulateError::Transport { shard: "-".into(), message: e.to_string() })?;

    let mut tasks = Vec::new();
    for i in 0..shards {
        let shard = crate::config::shard_name(i);
        let quota = opts.events.map(|n| n / shards as u64 + u64::from((i as u64) < n % shards as u64));
        let per_shard_rate = opts.rate.map(|r| r / shards as f64);
        let mut generator = ShardGenerator::new(topology, &opts.shape, i, shard.clone());
        let sink = match &target {
            Target::Http { base_url, tokens } => {
                let token = tokens
                    .iter()
                    .find(|(s, _)| *s == shard)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| SimulateError::MissingToken(shard.clone()))?;
                Sink::Http(http::HttpShard::new(client.clone(), base_url, &shard, token))
            }
            Target::Kafka(p) => Sink::Kafka(p.clone()),
            Target::Kinesis { client, stream } => {
                Sink::Kinesis(kinesis::KinesisShard { client: client.clone(), stream: stream.clone() })
            }
        };
        let (counters, cancel, bar, batch) = (counters.clone(), cancel.clone(), bar.clone(), opts.batch_size.max(1));
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let begun = Instant::now();
            while quota.is_none_or(|q| sent < q) && !cancel.is_cancelled() {
                let n = quota.map_or(batch as u64, |q| (q - sent).min(batch as u64)) as usize;
                let items: Vec<Item> = (0..n).map(|_| generator.next_item()).collect();
                for item in &items {
                    let counter = match item.kind {
                        ItemKind::Duplicate => &counters.duplicates,
                        ItemKind::Malformed(_) => &counters.malformed,
                        ItemKind::Late => &counters.late,
                        ItemKind::Fresh => continue,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                counters.posted.fetch_add(n as u64, Ordering::Relaxed);
                sink.send(&shard, &items, &counters, &cancel).await?;
                sent += n as u64;
                bar.inc(n as u64);
                if let Some(rate) = per_shard_rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate);
                    if let Some(wait) = due.checked_sub(begun.elapsed()) {
                        tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = cancel.cancelled() => {} }
                    }
                }
            }
            Ok::<(), SimulateError>(())
        }));
    }
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                cancel.cancel();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(SimulateError::Transport { shard: "-".into(), message: e.to_string() });
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = first_error {
        return Err(e);
    }
    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(SimulateReport {
        posted: get(&c.posted),
        accepted: get(&c.accepted),
        rejected: get(&c.rejected),
        duplicates_sent: get(&c.duplicates),
        malformed_sent: get(&c.malformed),
        late_sent: get(&c.late),
        throttled: get(&c.throttled),
        retried: get(&c.retried),
        elapsed: started.elapsed(),
    })
}

enum Sink {
    Http(http::HttpShard),
    Kafka(EventProducer),
    Kinesis(kinesis::KinesisShard),
}

impl Sink {
    async fn send(
        &self,
        shard: &str,
        items: &[Item],
        counters: &Counters,
        cancel: &CancellationToken,
    ) -> Result<(), SimulateError> {
        match self {
            Sink::Http(h) => h.post(items, counters, cancel).await,
            Sink::Kinesis(k) => k.put(shard, items, counters, cancel).await,
            Sink::Kafka(p) => {
                let records: Vec<(&str, &[u8])> = items.iter().map(|i| (i.key.as_str(), i.bytes.as_slice())).collect();
                for r in p.send_raw_events(&records).await {
                    r.map_err(|e| SimulateError::Transport { shard: shard.into(), message: e.to_string() })?;
                }
                counters.accepted.fetch_add(items.len() as u64, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

fn progress_bar(enabled: bool, total: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

impl std::fmt::Display for SimulateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "posted        {:>10}  ({:.0} events/s over {:.1}s)",
            self.posted,
            self.posted as f64 / secs,
            secs
        )?;
        writeln!(f, "accepted      {:>10}  (acknowledged by the broker)", self.accepted)?;
        writeln!(f, "dead-lettered {:>10}  (rejected with a reason)", self.rejected)?;
        writeln!(
            f,
            "duplicates    {:>10}  (retries of events already sent; counted once downstream)",
            self.duplicates_sent
        )?;
        writeln!(
            f,
            "malformed     {:>10}  late {} | throttled (429) {} | re-sent after 503 {}",
            self.malformed_sent, self.late_sent, self.throttled, self.retried
        )
    }
}
