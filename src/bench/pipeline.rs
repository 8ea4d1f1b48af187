//! `huntflow bench pipeline`: events/s through claim -> score -> rank next
//! to a raw consume->produce passthrough (no state, no transactions) over the
//! same events, interleaved run by run (each on a fresh embedded broker), with
//! 1 or more workers per stage; then leaderboard query latency.

use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::stats::{median, percentile};
use crate::config::Settings;
use crate::kafka::{Cluster, EventProducer, KafkaError};
use crate::pipeline::Pipeline;
use crate::run::{start_query, RunError};
use crate::simulate::{self, SimulateOptions, Target};
use crate::stage::WorkerMetrics;
use crate::topology::Topology;

/// One measured run: events/s over the whole run (start-up included) and
/// from the first processed record on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub eps: f64,
    pub eps_after_start: f64,
}

#[derive(Debug, Default)]
pub struct Round {
    pub passthrough: Throughput,
    /// (workers per stage, throughput)
    pub pipeline: Vec<(u32, Throughput)>,
}

#[derive(Debug, Default)]
pub struct PipelineBench {
    pub events: u64,
    pub workers: Vec<u32>,
    pub rounds: Vec<Round>,
    pub query_requests: usize,
    pub query_rps: f64,
    pub query_p50_ms: f64,
    pub query_p99_ms: f64,
    /// Mean seconds per commit step, by stage, over every pipeline run:
    /// (stage, step) -> (commits, mean seconds).
    pub commit_steps: std::collections::BTreeMap<(String, String), (u64, f64)>,
    /// Offsets written per topic by the last pipeline run (records plus
    /// transaction markers): what the broker had to take per input event.
    pub topic_offsets: Vec<(String, i64)>,
}

impl PipelineBench {
    /// Median over rounds of (pipeline / passthrough of the same round).
    pub fn median_ratio(&self, workers: u32) -> f64 {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| {
                let p = r.pipeline.iter().find(|(w, _)| *w == workers)?;
                Some(p.1.eps / r.passthrough.eps.max(f64::MIN_POSITIVE))
            })
            .collect();
        median(&ratios)
    }

    fn median_eps(&self, workers: u32) -> f64 {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|r| r.pipeline.iter().filter(|(w, _)| *w == workers).map(|p| p.1.eps))
            .collect();
        median(&v)
    }
}

impl std::fmt::Display for PipelineBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pipeline benchmark: {} events, {} interleaved rounds on fresh embedded brokers; workers per stage {:?}",
            self.events,
            self.rounds.len(),
            self.workers
        )?;
        for (i, r) in self.rounds.iter().enumerate() {
            let p = r.passthrough;
            writeln!(
                f,
                "  round {}: raw passthrough (no state, no txn)  {:>9.0} events/s ({:.0} after start-up)",
                i + 1,
                p.eps,
                p.eps_after_start
            )?;
            for (w, t) in &r.pipeline {
                writeln!(
                    f,
                    "  round {}: claim->score->rank, {w} worker(s)/stage {:>9.0} events/s ({:.0} after start-up)  ratio {:.3}",
                    i + 1,
                    t.eps,
                    t.eps_after_start,
                    t.eps / p.eps.max(f64::MIN_POSITIVE)
                )?;
            }
        }
        let pass: Vec<f64> = self.rounds.iter().map(|r| r.passthrough.eps).collect();
        writeln!(f, "  median passthrough {:.0} events/s", median(&pass))?;
        for w in &self.workers {
            writeln!(
                f,
                "  median pipeline, {w} worker(s)/stage: {:.0} events/s, median ratio {:.3}",
                self.median_eps(*w),
                self.median_ratio(*w)
            )?;
        }
        if let (Some(first), Some(last)) = (self.workers.first(), self.workers.last()) {
            if first != last {
                let scale = self.median_eps(*last) / self.median_eps(*first).max(f64::MIN_POSITIVE);
                writeln!(f, "  scaling {last} vs {first} worker(s)/stage: x{scale:.2}")?;
            }
        }
        for stage in ["claim", "score", "rank"] {
            let steps: Vec<String> = self
                .commit_steps
                .iter()
                .filter(|((s, _), _)| s == stage)
                .map(|((_, step), (n, secs))| {
                    let commits = if step == "total" { format!(" ({n} commits)") } else { String::new() };
                    format!("{step} {:.1}{commits}", secs * 1000.0)
                })
                .collect();
            if !steps.is_empty() {
                writeln!(f, "  {stage} commit, mean ms per step: {}", steps.join(", "))?;
            }
        }
        if !self.topic_offsets.is_empty() {
            let per_event = |n: i64| n as f64 / (self.events.max(1) as f64);
            let total: i64 = self.topic_offsets.iter().map(|(_, n)| n).sum();
            let each: Vec<String> =
                self.topic_offsets.iter().map(|(t, n)| format!("{t} {n} ({:.2}/event)", per_event(*n))).collect();
            writeln!(f, "  offsets written by the last pipeline run: {}", each.join(", "))?;
            writeln!(f, "  all topics: {total} offsets, {:.2} per input event", per_event(total))?;
        }
        writeln!(
            f,
            "  leaderboard query: {} requests at {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            self.query_requests, self.query_rps, self.query_p50_ms, self.query_p99_ms
        )
    }
}

fn stage_totals(registry: &Registry) -> [f64; 3] {
    let counts = crate::stage::records_by_stage(registry);
    let total = |stage: &str| counts.iter().filter(|((s, _), _)| s == stage).map(|(_, v)| v).sum::<f64>();
    [total("claim"), total("score"), total("rank")]
}

fn passthrough(client: ClientConfig, from: &str, to: &str, events: u64) -> Result<Throughput, KafkaError> {
    let consumer: BaseConsumer =
        client.clone().set("group.id", "huntflow-bench-passthrough").set("enable.auto.commit", "false").create()?;
    let md = consumer.fetch_metadata(Some(from), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(from, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        client.clone().set("linger.ms", "5").set("acks", "all").set("compression.type", "lz4").create()?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut copied = 0u64;
    while copied < events && started.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            let mut record =
                BaseRecord::to(to).payload(m.payload().unwrap_or_default()).key(m.key().unwrap_or_default());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            copied += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let first = first.unwrap_or(started);
    Ok(Throughput {
        eps: copied as f64 / started.elapsed().as_secs_f64(),
        eps_after_start: copied as f64 / first.elapsed().as_secs_f64(),
    })
}

/// A fresh embedded broker with the topology's topics and `events` simulated
/// events on the events topic; returns it and how many events it holds.
async fn fed_cluster(settings: &Settings, topology: &Topology, events: u64) -> Result<(Cluster, u64), RunError> {
    let cluster = Cluster::connect(settings, topology)?;
    cluster.ensure_topics(topology, Duration::from_secs(30)).await?;
    let producer = EventProducer::new(&cluster, topology, Duration::from_secs(60))?;
    let sim = SimulateOptions { events: Some(events), ..Default::default() };
    let fed = simulate::run(topology, Target::Kafka(producer), sim, CancellationToken::new()).await?;
    Ok((cluster, fed.accepted))
}

async fn measure_passthrough(settings: &Settings, topology: &Topology, events: u64) -> Result<Throughput, RunError> {
    let (cluster, events) = fed_cluster(settings, topology, events).await?;
    let copy_topic = "bench.passthrough";
    if let Some(embedded) = cluster.embedded() {
        embedded.create_topic(copy_topic, topology.spec().topics.accepted.partitions, 1)?;
    }
    let client = cluster.client_config();
    let from = topology.spec().topics.events.name.clone();
    let t = tokio::task::spawn_blocking(move || passthrough(client, &from, copy_topic, events))
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))??;
    Ok(t)
}

/// Query latency measured on a pipeline's leaderboards.
#[derive(Default)]
struct QueryLatency {
    requests: usize,
    rps: f64,
    p50: f64,
    p99: f64,
}

async fn measure_pipeline(
    settings: &Settings,
    topology: &Topology,
    events: u64,
    workers: u32,
    query: bool,
    bench: &mut PipelineBench,
) -> Result<(Throughput, Option<QueryLatency>), RunError> {
    let (cluster, events) = fed_cluster(settings, topology, events).await?;
    let state = std::env::temp_dir().join(format!("huntflow-bench-{}-{workers}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut settings = settings.clone();
    settings.state_dir = state.clone();
    let registry = Registry::new();
    let started = Instant::now();
    let pipeline = Pipeline::start(&settings, &cluster, topology, workers, WorkerMetrics::new(&registry));
    let mut last = stage_totals(&registry);
    let (mut first, mut last_change) = (None, Instant::now());
    while pipeline.all_running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stage_totals(&registry);
        if now != last {
            last = now;
            last_change = Instant::now();
            first.get_or_insert(last_change);
        } else if now[0] >= events as f64 && last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let secs = last_change.duration_since(started).as_secs_f64();
    let after = last_change.duration_since(first.unwrap_or(started)).as_secs_f64();
    let t = Throughput { eps: events as f64 / secs, eps_after_start: events as f64 / after.max(1e-3) };
    let latency = if query { Some(query_latency(&cluster, topology).await?) } else { None };
    pipeline.stop().await?;
    let names = &topology.spec().topics;
    let mut topics = vec![names.events.name.clone(), names.accepted.name.clone(), names.candidates.name.clone()];
    topics.extend([names.leaderboards.name.clone(), names.prizes.name.clone(), names.dead_letter.name.clone()]);
    topics.extend(["claim", "score", "rank"].map(|s| format!("{}{s}", names.changelog_prefix)));
    bench.topic_offsets = cluster.record_counts(topics, Duration::from_secs(10)).await?;
    for (key, (n, mean)) in crate::stage::commit_steps(&registry) {
        let e = bench.commit_steps.entry(key).or_default();
        let total = e.0 + n;
        e.1 = (e.1 * e.0 as f64 + mean * n as f64) / (total as f64).max(1.0);
        e.0 = total;
    }
    let _ = std::fs::remove_dir_all(state);
    Ok((t, latency))
}

async fn query_latency(cluster: &Cluster, topology: &Topology) -> Result<QueryLatency, RunError> {
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let query = start_query(any_port, cluster, topology, Registry::new()).await?;
    let tier = topology.spec().hunts.first().and_then(|h| h.tiers.first().map(|t| (h.id.clone(), t.name.clone())));
    let (hunt, tier) = tier.unwrap_or_default();
    let url = format!("http://{}/v1/hunts/{hunt}/tiers/{tier}/leaderboard?limit=100", query.addr);
    // Wait until the board is published before hammering it.
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (latencies, rps) = hammer(&url, 10_000.0, Duration::from_secs(5)).await;
    query.stop().await?;
    Ok(QueryLatency {
        requests: latencies.len(),
        rps,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    })
}

/// `rounds` rounds of: passthrough, then the pipeline with each of `workers`
/// per stage; each measurement on a fresh embedded broker with the same
/// simulated events. Query latency on the last round's first pipeline.
pub async fn pipeline(
    settings: &Settings,
    events: u64,
    rounds: u32,
    workers: &[u32],
) -> Result<PipelineBench, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let mut settings = settings.clone();
    settings.brokers = None;
    let workers: Vec<u32> = if workers.is_empty() { vec![1] } else { workers.to_vec() };
    let mut bench = PipelineBench { events, workers: workers.clone(), ..Default::default() };
    for round in 0..rounds.max(1) {
        let passthrough = measure_passthrough(&settings, &topology, events).await?;
        eprintln!("round {}: passthrough {:.0} events/s", round + 1, passthrough.eps);
        let mut r = Round { passthrough, pipeline: Vec::new() };
        for (i, w) in workers.iter().enumerate() {
            let query = round + 1 == rounds.max(1) && i == 0;
            let (t, q) = measure_pipeline(&settings, &topology, events, *w, query, &mut bench).await?;
            eprintln!("round {}: pipeline {w} worker(s)/stage {:.0} events/s", round + 1, t.eps);
            r.pipeline.push((*w, t));
            if let Some(q) = q {
                (bench.query_requests, bench.query_rps, bench.query_p50_ms, bench.query_p99_ms) =
                    (q.requests, q.rps, q.p50, q.p99);
            }
        }
        bench.rounds.push(r);
    }
    Ok(bench)
}

/// Paced GETs at `rate` per second for `duration` from 32 connections;
/// sorted latencies in ms and the achieved rate.
async fn hammer(url: &str, rate: f64, duration: Duration) -> (Vec<f64>, f64) {
    let client = reqwest::Client::new();
    let tasks = 32;
    let per_task = Duration::from_secs_f64(tasks as f64 / rate);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, url) = (client.clone(), url.to_owned());
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_task);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut out = Vec::new();
            while started.elapsed() < duration {
                tick.tick().await;
                let t = Instant::now();
                if let Ok(r) = client.get(&url).send().await {
                    if r.status().is_success() && r.bytes().await.is_ok() {
                        out.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap_or_default());
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    (all, rps)
}
