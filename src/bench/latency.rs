//! `huntflow bench latency`: end-to-end latency through the whole pipeline
//! on the embedded broker, traffic posted to the HTTP ingest gateway with
//! event time = wall clock:
//! 1. the pipeline's maximum (events posted as fast as possible, time until
//!    every stage went quiet), unless `--rate` is given;
//! 2. a fixed offered rate (default 50% of that maximum) for `--seconds`,
//!    with a probe event every `--probe-ms`: event time -> the probe's points
//!    visible on the query API (lifetime board), p50/p99;
//! 3. in the same run, window close (window end + grace) -> prize batch
//!    readable on the prizes topic, p50/p99. Traffic keeps flowing past the
//!    windows, so they close with or without ingest heartbeats.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::stats::summary_ms;
use super::traffic::{post_paced, Poster};
use crate::config::{Settings, ShardTokens};
use crate::kafka::{Cluster, KafkaError};
use crate::pipeline::Pipeline;
use crate::rank::{PrizeBatch, Snapshot};
use crate::run::{start_ingest, start_query, RunError};
use crate::stage::WorkerMetrics;
use crate::topology::{HumanDuration, Topology};

/// Knobs of `bench latency`.
#[derive(Clone, Debug)]
pub struct LatencyOptions {
    /// Offered events/s; `None` measures the maximum first and offers `share` of it.
    pub rate: Option<f64>,
    pub share: f64,
    /// Events posted as fast as possible to find the maximum.
    pub max_events: u64,
    pub seconds: u64,
    pub probe_ms: u64,
    pub window_secs: u64,
    pub grace_secs: u64,
    pub workers: u32,
    pub shards: usize,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        Self {
            rate: None,
            share: 0.5,
            max_events: 100_000,
            seconds: 120,
            probe_ms: 200,
            window_secs: 10,
            grace_secs: 2,
            workers: 1,
            shards: 8,
        }
    }
}

#[derive(Debug, Default)]
pub struct LatencyBench {
    pub options: Option<LatencyOptions>,
    pub max_eps: Option<f64>,
    pub offered_eps: f64,
    pub achieved_eps: f64,
    pub rejected: u64,
    pub probes_sent: usize,
    /// Event time -> visible on the query API, ms, per probe seen.
    pub visible_ms: Vec<f64>,
    /// Window end + grace -> prize batch readable, ms, per batch.
    pub prize_ms: Vec<f64>,
}

impl std::fmt::Display for LatencyBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = self.options.clone().unwrap_or_default();
        writeln!(
            f,
            "latency benchmark: embedded broker, HTTP ingest ({} shard clients), {} worker(s)/stage, \
             prize windows {} s + {} s grace",
            o.shards, o.workers, o.window_secs, o.grace_secs
        )?;
        if let Some(max) = self.max_eps {
            writeln!(f, "  maximum (HTTP ingest -> all stages quiet, {} events): {max:.0} events/s", o.max_events)?;
        }
        writeln!(
            f,
            "  offered {:.0} events/s for {} s, achieved {:.0} events/s accepted by ingest, {} rejected/throttled",
            self.offered_eps, o.seconds, self.achieved_eps, self.rejected
        )?;
        writeln!(
            f,
            "  event time -> visible on the query API: {} ({} probes sent)",
            summary_ms(&self.visible_ms),
            self.probes_sent
        )?;
        writeln!(f, "  window end + grace -> prize batch on the prizes topic: {}", summary_ms(&self.prize_ms))
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn bench_topology(settings: &Settings, o: &LatencyOptions) -> Result<Topology, RunError> {
    let mut spec = Topology::load(&settings.topology)?.spec().clone();
    spec.ingest.events_per_second_per_shard = u32::MAX / 2;
    spec.ingest.burst_per_shard = 1_000_000;
    spec.windows.prize.size = HumanDuration(Duration::from_secs(o.window_secs.max(1)));
    spec.windows.prize.grace = HumanDuration(Duration::from_secs(o.grace_secs));
    Ok(Topology::from_spec(spec)?)
}

/// Data records through all stages (heartbeats and watermarks keep flowing
/// while the pipeline is idle, so they do not count).
fn stage_totals(registry: &Registry) -> f64 {
    let counts = crate::stage::records_by_stage(registry);
    counts.iter().filter(|((_, outcome), _)| !crate::stage::is_time_outcome(outcome)).map(|(_, v)| v).sum()
}

/// Seconds until the stages' record counters stop moving for `quiet`
/// after at least `min_claimed` claim inputs, measured from `since`.
async fn until_quiet(registry: &Registry, since: Instant, min_claimed: f64, quiet: Duration) -> Duration {
    let claimed = |r: &Registry| {
        let counts = crate::stage::records_by_stage(r);
        counts
            .iter()
            .filter(|((s, o), _)| s == "claim" && !crate::stage::is_time_outcome(o))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let (mut last, mut last_change) = (stage_totals(registry), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = stage_totals(registry);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if claimed(registry) >= min_claimed && last_change.elapsed() >= quiet {
            break;
        }
    }
    last_change.duration_since(since)
}

pub async fn latency(settings: &Settings, o: LatencyOptions) -> Result<LatencyBench, RunError> {
    let topology = bench_topology(settings, &o)?;
    let mut settings = settings.clone();
    settings.brokers = None;
    let state = std::env::temp_dir().join(format!("huntflow-bench-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    settings.state_dir = state.clone();
    settings.ingest.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let cluster = Arc::new(Cluster::connect(&settings, &topology)?);
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;

    let registry = Registry::new();
    let pipeline = Pipeline::start(&settings, &cluster, &topology, o.workers, WorkerMetrics::new(&registry));
    let (tokens, pairs) = ShardTokens::generate(o.shards.max(1));
    let stop_ingest = CancellationToken::new();
    let ingest = start_ingest(&settings, &topology, cluster.clone(), tokens, stop_ingest.clone()).await?;
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let query = start_query(any_port, &cluster, &topology, Registry::new()).await?;
    let poster = Poster::new(&topology, format!("http://{}", ingest.addr), pairs);
    // Let every worker get its partitions before the clock starts.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut bench = LatencyBench { options: Some(o.clone()), ..Default::default() };
    let offered = match o.rate {
        Some(r) => r,
        None => {
            let started = Instant::now();
            let sent = post_paced(&poster, None, o.max_events, Duration::from_secs(600)).await;
            let took = until_quiet(&registry, started, sent.accepted as f64, Duration::from_secs(2)).await;
            let max = sent.accepted as f64 / took.as_secs_f64().max(1e-3);
            eprintln!("maximum: {} events in {:.1} s = {max:.0} events/s", sent.accepted, took.as_secs_f64());
            bench.max_eps = Some(max);
            max * o.share
        }
    };
    bench.offered_eps = offered;
    eprintln!("offering {offered:.0} events/s for {} s", o.seconds);

    let prizes = PrizeWatch::start(&cluster, &topology, o.grace_secs as i64 * 1000, now_ms())?;
    let phase = Duration::from_secs(o.seconds);
    let board_url = board_url(&topology, query.addr);
    let probes = tokio::spawn(probe(poster.clone(), board_url, Duration::from_millis(o.probe_ms.max(10)), phase));
    let sent = post_paced(&poster, Some(offered), u64::MAX, phase).await;
    bench.achieved_eps = sent.accepted as f64 / phase.as_secs_f64();
    bench.rejected = sent.rejected;
    let (probes_sent, visible) = probes.await.map_err(|e| KafkaError::Join(e.to_string()))?;
    (bench.probes_sent, bench.visible_ms) = (probes_sent, visible);
    bench.prize_ms = prizes.stop();

    query.stop().await?;
    stop_ingest.cancel();
    ingest.join().await?;
    pipeline.stop().await?;
    let _ = std::fs::remove_dir_all(state);
    Ok(bench)
}

fn board_url(topology: &Topology, addr: std::net::SocketAddr) -> String {
    let hunt = &topology.spec().hunts[0];
    let tier = hunt.tiers.first().map(|t| t.name.clone()).unwrap_or_default();
    format!("http://{addr}/v1/hunts/{}/tiers/{tier}/leaderboard?board=lifetime&limit=10", hunt.id)
}

/// Points per probe: far above any simulated player, so the probe player
/// is always first on its tier's lifetime board.
const PROBE_POINTS: u64 = 1_000_000_000;
const PROBE_PLAYER: &str = "bench-probe";

/// Sends a probe every `every` for `phase` and polls the board every 5 ms;
/// returns how many probes were sent and event time -> visible per probe.
async fn probe(poster: Poster, url: String, every: Duration, phase: Duration) -> (usize, Vec<f64>) {
    let sent: Arc<Mutex<Vec<i64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, done) = (sent.clone(), done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(every);
            while started.elapsed() < phase {
                tick.tick().await;
                let k = sent.lock().map(|s| s.len()).unwrap_or(0);
                let t = now_ms();
                if poster.post_probe(PROBE_PLAYER, &format!("bench-probe-{k}"), PROBE_POINTS, t).await {
                    if let Ok(mut s) = sent.lock() {
                        s.push(t);
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let client = reqwest::Client::new();
    let mut visible = Vec::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seen = probe_points(&client, &url).await.unwrap_or(0) / PROBE_POINTS;
        let now = now_ms();
        let times = sent.lock().map(|s| s.clone()).unwrap_or_default();
        while (visible.len() as u64) < seen.min(times.len() as u64) {
            visible.push((now - times[visible.len()]) as f64);
        }
        if done.load(Ordering::SeqCst) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if visible.len() >= times.len() || since.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
    }
    let _ = sender.await;
    let n = sent.lock().map(|s| s.len()).unwrap_or(0);
    (n, visible)
}

async fn probe_points(client: &reqwest::Client, url: &str) -> Option<u64> {
    let snap: Snapshot = client.get(url).send().await.ok()?.json().await.ok()?;
    snap.entries.iter().find(|e| e.player_id == PROBE_PLAYER).map(|e| e.points)
}

/// Follows the prizes topic and records, per batch (first sight), wall
/// time minus (window end + grace) for windows that started after `from_ms`.
struct PrizeWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl PrizeWatch {
    fn start(cluster: &Cluster, topology: &Topology, grace_ms: i64, from_ms: i64) -> Result<Self, KafkaError> {
        let topic = topology.spec().topics.prizes.name.clone();
        let consumer: BaseConsumer = cluster
            .client_config()
            .set("group.id", "huntflow-bench-prizes")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: BTreeMap<String, f64> = BTreeMap::new();
            while !flag.load(Ordering::SeqCst) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else { continue };
                let now = now_ms();
                let Some(batch) = m.payload().and_then(|p| serde_json::from_slice::<PrizeBatch>(p).ok()) else {
                    continue;
                };
                if batch.window_start >= from_ms {
                    seen.entry(batch.batch_id).or_insert((now - (batch.window_end + grace_ms)) as f64);
                }
            }
            seen.into_values().collect()
        });
        Ok(Self { stop, thread })
    }

    fn stop(self) -> Vec<f64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}
