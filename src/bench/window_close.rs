//! `huntflow bench window-close`: with no traffic at all, how long after a
//! window's end its prize batch is readable on the prizes topic. Only the
//! ingest's heartbeats move time: one event per tier opens each window, then
//! nothing is posted until its batches appeared.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, ShardTokens};
use crate::event::{now_ms, EventKind, GameEvent};
use crate::kafka::Cluster;
use crate::pipeline::Pipeline;
use crate::run::{start_ingest, RunError};
use crate::stage::WorkerMetrics;
use crate::topology::{HumanDuration, Topology};

/// Per window: wall time from its end (and from end + grace) until every
/// tier's prize batch was readable.
#[derive(Debug)]
pub struct WindowCloseBench {
    pub window_ms: i64,
    pub grace_ms: i64,
    pub heartbeat_ms: i64,
    /// (after end, after end + grace), milliseconds, one per window.
    pub delays: Vec<(i64, i64)>,
}

impl std::fmt::Display for WindowCloseBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "window close without traffic: {} windows of {} ms, grace {} ms, heartbeats every {} ms",
            self.delays.len(),
            self.window_ms,
            self.grace_ms,
            self.heartbeat_ms
        )?;
        for (i, (end, grace)) in self.delays.iter().enumerate() {
            writeln!(f, "  window {i}: prize batches readable {end} ms after its end ({grace} ms after end + grace)")?;
        }
        let mut after_grace: Vec<i64> = self.delays.iter().map(|d| d.1).collect();
        after_grace.sort_unstable();
        let pick = |q: f64| after_grace.get(((after_grace.len() as f64 - 1.0) * q).round() as usize).copied();
        writeln!(
            f,
            "  after end + grace: p50 {} ms, max {} ms (target: within 2 heartbeat intervals = {} ms)",
            pick(0.5).unwrap_or_default(),
            pick(1.0).unwrap_or_default(),
            2 * self.heartbeat_ms
        )
    }
}

/// Batch ids on the prizes topic with the wall time each was first read.
fn follow_prizes(mut client: ClientConfig, topic: String, stop: CancellationToken) -> BTreeMap<String, i64> {
    let mut seen = BTreeMap::new();
    let Ok(consumer) = client
        .set("group.id", "huntflow-bench-window-close")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create::<BaseConsumer>()
    else {
        return seen;
    };
    let partitions = crate::kafka::topic_partitions(&consumer, &topic, Duration::from_secs(10)).unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
    }
    if consumer.assign(&tpl).is_err() {
        return seen;
    }
    while !stop.is_cancelled() {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
            let id = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            seen.entry(id).or_insert_with(now_ms);
        }
    }
    seen
}

/// Runs `windows` windows of `window_ms` on the embedded broker.
pub async fn window_close(windows: usize, window_ms: u64, grace_ms: u64) -> Result<WindowCloseBench, RunError> {
    let mut spec = Topology::parse(include_str!("../../topology/treasure-hunt.yaml"))?.spec().clone();
    spec.windows.prize.size = HumanDuration::from_millis(window_ms);
    spec.windows.prize.grace = HumanDuration::from_millis(grace_ms);
    let topology = Topology::from_spec(spec)?;
    let dir = std::env::temp_dir().join(format!("huntflow-bench-window-{}", std::process::id()));
    let mut settings = Settings::default();
    settings.state_dir = dir.clone();
    settings.ingest.listen = "127.0.0.1:0".parse().map_err(|_| RunError::Bench("listen address".into()))?;
    let cluster = Arc::new(Cluster::connect(&settings, &topology)?);
    let pipeline =
        Pipeline::start(&settings, &cluster, &topology, 1, WorkerMetrics::new(&crate::telemetry::registry()));
    let (tokens, pairs) = ShardTokens::generate(1);
    let stop = CancellationToken::new();
    let ingest = start_ingest(&settings, &topology, cluster.clone(), tokens, stop.clone()).await?;
    let follow_stop = CancellationToken::new();
    let follower = {
        let (client, topic, s) =
            (cluster.client_config(), topology.spec().topics.prizes.name.clone(), follow_stop.clone());
        tokio::task::spawn_blocking(move || follow_prizes(client, topic, s))
    };
    let hunt = topology.spec().hunts[0].clone();
    let (shard, token) = pairs[0].clone();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/shards/{shard}/events", ingest.addr);
    let (size, grace) = (window_ms as i64, grace_ms as i64);
    let mut opened = Vec::new();
    for w in 0..windows {
        let t = now_ms();
        let events: Vec<GameEvent> = hunt
            .tiers
            .iter()
            .map(|tier| GameEvent {
                v: 1,
                event_id: format!("bench-{w}-{}", tier.name),
                hunt_id: hunt.id.clone(),
                shard_id: shard.clone(),
                region: "eu".into(),
                player_id: format!("player-{w}"),
                tier: tier.name.clone(),
                kind: EventKind::ClueSolved,
                chest_key: None,
                points: 10,
                event_time: t,
            })
            .collect();
        http.post(&url)
            .bearer_auth(&token)
            .json(&events)
            .send()
            .await
            .map_err(|e| RunError::Bench(format!("post: {e}")))?;
        let start = t.div_euclid(size) * size;
        opened.push(start);
        // Nothing more until this window closed, plus a margin.
        let close = start + size + grace;
        tokio::time::sleep(Duration::from_millis((close - now_ms()).max(0) as u64 + 3 * 1_000)).await;
    }
    follow_stop.cancel();
    let seen = follower.await.map_err(|e| RunError::Bench(e.to_string()))?;
    stop.cancel();
    ingest.join().await?;
    let _ = pipeline.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    let mut delays = Vec::new();
    for start in opened {
        let last = hunt
            .tiers
            .iter()
            .map(|t| seen.get(&format!("{}/{}/{start}", hunt.id, t.name)).copied())
            .collect::<Option<Vec<i64>>>()
            .and_then(|v| v.into_iter().max());
        if let Some(at) = last {
            delays.push((at - (start + size), at - (start + size + grace)));
        }
    }
    let heartbeat_ms = topology.spec().ingest.heartbeat_interval.as_millis() as i64;
    Ok(WindowCloseBench { window_ms: size, grace_ms: grace, heartbeat_ms, delays })
}
