//! `huntflow bench ...`: throughput numbers measured next to a raw rdkafka
//! baseline in the same run, so ratios stay meaningful on a noisy machine;
//! end-to-end latency, restart time and worker memory. Nothing here asserts
//! a threshold. `micro` holds hooks for the criterion benches in `benches/`.

mod kinesis;
mod latency;
mod load;
mod memory;
pub mod micro;
mod pipeline;
mod proc;
mod restart;
mod stats;
mod traffic;
mod window_close;

pub use kinesis::{kinesis, KinesisBench};
pub use latency::{latency, LatencyBench, LatencyOptions};
pub use memory::{memory, MemoryBench, MemoryOptions};
pub use pipeline::{pipeline, PipelineBench};
pub use restart::{restart_bench, BenchError, RestartBench, RestartOptions};
pub use window_close::{window_close, WindowCloseBench};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, ShardTokens};
use crate::event::GameEvent;
use crate::kafka::{Cluster, EventProducer};
use crate::run::{start_ingest, RunError};
use crate::simulate::{ShardGenerator, TrafficShape};
use crate::topology::Topology;

const BATCH: usize = 500;
const CLIENTS: usize = 8;

#[derive(Debug)]
pub struct IngestBench {
    pub events: u64,
    pub payload_bytes: u64,
    pub raw_producer_eps: f64,
    pub event_producer_eps: f64,
    pub http_ingest_eps: f64,
}

impl std::fmt::Display for IngestBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ingest benchmark: {} events, {:.0} bytes/event avg, batches of {BATCH}, {CLIENTS} shard clients",
            self.events,
            self.payload_bytes as f64 / self.events.max(1) as f64
        )?;
        writeln!(f, "  raw rdkafka producer (acks=all, idempotent) {:>10.0} events/s", self.raw_producer_eps)?;
        writeln!(
            f,
            "  huntflow event producer                     {:>10.0} events/s  ratio {:.2}",
            self.event_producer_eps,
            self.event_producer_eps / self.raw_producer_eps
        )?;
        writeln!(
            f,
            "  huntflow HTTP ingest (validate+auth+limit)  {:>10.0} events/s  ratio {:.2}",
            self.http_ingest_eps,
            self.http_ingest_eps / self.raw_producer_eps
        )
    }
}

pub async fn ingest(settings: &Settings, events: u64) -> Result<IngestBench, RunError> {
    let shipped = Topology::load(&settings.topology)?;
    let mut spec = shipped.spec().clone();
    // The benchmark measures the pipeline, not the rate limiter.
    spec.ingest.events_per_second_per_shard = u32::MAX / 2;
    spec.ingest.burst_per_shard = 1_000_000;
    let topology = Topology::from_spec(spec)?;
    let cluster = Arc::new(Cluster::connect(settings, &topology)?);
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;

    let per_client = (events as usize).div_ceil(CLIENTS);
    let shape = TrafficShape { duplicate_ratio: 0.0, malformed_ratio: 0.0, late_ratio: 0.0, ..TrafficShape::default() };
    let batches: Vec<(String, Vec<GameEvent>)> = (0..CLIENTS)
        .flat_map(|c| {
            let shard = crate::config::shard_name(c);
            let mut g = ShardGenerator::new(&topology, &shape, c, shard.clone());
            let items: Vec<GameEvent> =
                (0..per_client).filter_map(|_| crate::event::decode(&g.next_item().bytes, 1 << 20).ok()).collect();
            items.chunks(BATCH).map(|c| (shard.clone(), c.to_vec())).collect::<Vec<_>>()
        })
        .collect();
    let total: u64 = batches.iter().map(|(_, b)| b.len() as u64).sum();
    let payload_bytes: u64 = batches.iter().flat_map(|(_, b)| b.iter()).map(|e| e.encode().len() as u64).sum();

    let raw_eps = raw_producer(&cluster, &topology, &batches, total).await?;

    let producer = EventProducer::new(&cluster, &topology, settings.ingest.delivery_timeout)?;
    let started = Instant::now();
    let failures: usize = stream::iter(batches.iter())
        .map(|(_, b)| producer.send_events(b))
        .buffer_unordered(CLIENTS)
        .map(|r| r.iter().filter(|x| x.is_err()).count())
        .fold(0, |a, b| async move { a + b })
        .await;
    let producer_eps = total as f64 / started.elapsed().as_secs_f64();
    if failures > 0 {
        tracing::warn!(failures, "event producer deliveries failed during the benchmark");
    }

    let (tokens, pairs) = ShardTokens::generate(CLIENTS);
    let stop = CancellationToken::new();
    let mut local = settings.clone();
    local.ingest.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = start_ingest(&local, &topology, cluster.clone(), tokens, stop.clone()).await?;
    let client = reqwest::Client::new();
    let bodies: Vec<(String, String, Vec<u8>)> = batches
        .iter()
        .map(|(shard, b)| {
            let token = pairs.iter().find(|(s, _)| s == shard).map(|(_, t)| t.clone()).unwrap_or_default();
            let mut body = Vec::new();
            for e in b {
                body.extend_from_slice(&e.encode());
                body.push(b'\n');
            }
            (format!("http://{}/v1/shards/{shard}/events", server.addr), token, body)
        })
        .collect();
    let started = Instant::now();
    let accepted: usize = stream::iter(bodies)
        .map(|(url, token, body)| {
            let client = client.clone();
            async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                r.json::<crate::ingest::IngestResponse>().await.ok().map(|r| r.accepted)
            }
        })
        .buffer_unordered(CLIENTS)
        .map(|r| r.unwrap_or(0))
        .fold(0, |a, b| async move { a + b })
        .await;
    let http_eps = accepted as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    server.join().await?;

    Ok(IngestBench {
        events: total,
        payload_bytes,
        raw_producer_eps: raw_eps,
        event_producer_eps: producer_eps,
        http_ingest_eps: http_eps,
    })
}

/// The baseline: a bare librdkafka producer with the same delivery guarantees
/// (acks=all, idempotence, lz4) sending the same payloads and keys.
async fn raw_producer(
    cluster: &Cluster,
    topology: &Topology,
    batches: &[(String, Vec<GameEvent>)],
    total: u64,
) -> Result<f64, RunError> {
    let records: Vec<(String, Vec<u8>)> =
        batches.iter().flat_map(|(_, b)| b.iter()).map(|e| (e.claim_key().to_owned(), e.encode())).collect();
    let topic = topology.spec().topics.events.name.clone();
    let config = cluster.client_config();
    let elapsed = tokio::task::spawn_blocking(move || -> Result<Duration, rdkafka::error::KafkaError> {
        let producer: ThreadedProducer<DefaultProducerContext> = config
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("partitioner", "murmur2_random")
            .create()?;
        let started = Instant::now();
        for (key, payload) in &records {
            let mut record = BaseRecord::to(&topic).key(key.as_str()).payload(payload.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(started.elapsed())
    })
    .await
    .map_err(|e| crate::kafka::KafkaError::Join(e.to_string()))?
    .map_err(crate::kafka::KafkaError::from)?;
    Ok(total as f64 / elapsed.as_secs_f64())
}
