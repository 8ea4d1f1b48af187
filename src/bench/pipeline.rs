//! `huntflow bench pipeline`: events/s through claim -> score -> rank next
//! to a raw consume->produce passthrough (no state, no transactions) over the
//! same events in the same run; then leaderboard query latency.

use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::{Cluster, EventProducer, KafkaError};
use crate::pipeline::Pipeline;
use crate::run::{start_query, RunError};
use crate::simulate::{self, SimulateOptions, Target};
use crate::stage::WorkerMetrics;
use crate::topology::Topology;

#[derive(Debug)]
pub struct PipelineBench {
    pub events: u64,
    pub passthrough_eps: f64,
    pub pipeline_eps: f64,
    pub query_requests: usize,
    pub query_rps: f64,
    pub query_p50_ms: f64,
    pub query_p99_ms: f64,
}

impl std::fmt::Display for PipelineBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pipeline benchmark: {} events on the embedded broker, 1 worker per stage", self.events)?;
        writeln!(f, "  raw passthrough (consume->produce, no state, no txn) {:>10.0} events/s", self.passthrough_eps)?;
        writeln!(
            f,
            "  claim -> score -> rank (exactly once, RocksDB)       {:>10.0} events/s  ratio {:.2}",
            self.pipeline_eps,
            self.pipeline_eps / self.passthrough_eps
        )?;
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

fn passthrough(client: ClientConfig, from: &str, to: &str, events: u64) -> Result<f64, KafkaError> {
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
    let mut copied = 0u64;
    while copied < events && started.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
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
    Ok(copied as f64 / started.elapsed().as_secs_f64())
}

pub async fn pipeline(settings: &Settings, events: u64) -> Result<PipelineBench, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let mut settings = settings.clone();
    settings.brokers = None;
    let cluster = Cluster::connect(&settings, &topology)?;
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;
    let events_topic = topology.spec().topics.events.name.clone();
    let copy_topic = "bench.passthrough";
    if let Some(embedded) = cluster.embedded() {
        embedded.create_topic(copy_topic, topology.spec().topics.accepted.partitions, 1)?;
    }
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(60))?;
    let sim = SimulateOptions { events: Some(events), ..Default::default() };
    let fed = simulate::run(&topology, Target::Kafka(producer), sim, CancellationToken::new()).await?;
    let events = fed.accepted;

    let pass = {
        let cluster = cluster.client_config();
        let (from, events) = (events_topic.clone(), events);
        tokio::task::spawn_blocking(move || passthrough(cluster, &from, copy_topic, events))
            .await
            .map_err(|e| KafkaError::Join(e.to_string()))??
    };

    let state = std::env::temp_dir().join(format!("huntflow-bench-{}", std::process::id()));
    settings.state_dir = state.clone();
    let registry = Registry::new();
    let started = Instant::now();
    let workers = Pipeline::start(&settings, &cluster, &topology, 1, WorkerMetrics::new(&registry));
    let mut last = stage_totals(&registry);
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stage_totals(&registry);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if now[0] >= events as f64 && last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let pipeline_eps = events as f64 / last_change.duration_since(started).as_secs_f64();

    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let query = start_query(any_port, &cluster, &topology, Registry::new()).await?;
    let tier = topology.spec().hunts.first().and_then(|h| h.tiers.first().map(|t| (h.id.clone(), t.name.clone())));
    let (hunt, tier) = tier.unwrap_or_default();
    let url = format!("http://{}/v1/hunts/{hunt}/tiers/{tier}/leaderboard?limit=100", query.addr);
    let (latencies, rps) = hammer(&url, 10_000.0, Duration::from_secs(5)).await;
    query.stop().await?;
    workers.stop().await?;
    let _ = std::fs::remove_dir_all(state);
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(PipelineBench {
        events,
        passthrough_eps: pass,
        pipeline_eps,
        query_requests: latencies.len(),
        query_rps: rps,
        query_p50_ms: pct(0.5),
        query_p99_ms: pct(0.99),
    })
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
