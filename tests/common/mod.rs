//! Shared test helpers: real brokers (the embedded mock cluster over TCP, or
//! a Tansu process), a real ingest server on port 0, and a plain rdkafka
//! consumer that reads what was written.
#![allow(dead_code)]

pub mod kinesis;
pub mod tansu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use huntflow::config::{Settings, ShardTokens};
use huntflow::kafka::Cluster;
use huntflow::run::{start_ingest, IngestHandle};
use huntflow::topology::{Topology, TopologySpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub const SHIPPED: &str = include_str!("../../topology/treasure-hunt.yaml");

pub fn shipped_spec() -> TopologySpec {
    Topology::parse(SHIPPED).expect("shipped topology").spec().clone()
}

/// The shipped topology with limits loose enough not to interfere.
pub fn test_topology(tweak: impl FnOnce(&mut TopologySpec)) -> Topology {
    let mut spec = shipped_spec();
    spec.ingest.events_per_second_per_shard = 1_000_000;
    spec.ingest.burst_per_shard = 100_000;
    tweak(&mut spec);
    Topology::from_spec(spec).expect("valid test topology")
}

pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10).map(|_| (b'a' + rng.random_range(0..26u8)) as char).collect()
}

pub struct Harness {
    pub topology: Topology,
    pub cluster: Arc<Cluster>,
    pub ingest: Option<IngestHandle>,
    pub stop: CancellationToken,
    pub tokens: Vec<(String, String)>,
    pub base_url: String,
}

impl Harness {
    /// Embedded broker + ingest on 127.0.0.1:0 with `shards` shard tokens.
    pub async fn start(topology: Topology, shards: usize, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::default();
        settings.ingest.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut settings);
        let cluster = Arc::new(Cluster::connect(&settings, &topology).expect("embedded broker"));
        let (tokens, pairs) = ShardTokens::generate(shards);
        let stop = CancellationToken::new();
        let ingest =
            start_ingest(&settings, &topology, cluster.clone(), tokens, stop.clone()).await.expect("ingest starts");
        let base_url = format!("http://{}", ingest.addr);
        Self { topology, cluster, ingest: Some(ingest), stop, tokens: pairs, base_url }
    }

    pub fn token(&self, shard: &str) -> String {
        self.tokens.iter().find(|(s, _)| s == shard).map(|(_, t)| t.clone()).expect("token")
    }

    /// Posts `events` as `shard` (a JSON array) and returns ingest's answer.
    pub async fn post(&self, shard: &str, events: &[huntflow::event::GameEvent]) -> huntflow::ingest::IngestResponse {
        let r = reqwest::Client::new()
            .post(self.events_url(shard))
            .bearer_auth(self.token(shard))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(events).expect("events encode"))
            .send()
            .await
            .expect("ingest answers");
        r.json().await.expect("ingest's JSON answer")
    }

    pub fn events_url(&self, shard: &str) -> String {
        format!("{}/v1/shards/{shard}/events", self.base_url)
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(i) = self.ingest.take() {
            i.join().await.expect("ingest drains");
        }
    }
}

/// True for heartbeat and forwarded-watermark records (time as data), which
/// tests that look at data records skip.
pub fn is_time_record<M: Message>(m: &M) -> bool {
    use rdkafka::message::Headers;
    m.headers().is_some_and(|h| {
        h.iter().any(|h| h.key == "huntflow-schema" && matches!(h.value, Some(b"heartbeat/v1") | Some(b"watermark/v1")))
    })
}

/// Reads `topic` from the beginning until at least `expected` data records
/// (time records are skipped) arrived and every partition is at its end
/// (read_committed: the last stable offset), or `timeout` passed; returns
/// what it got. `usize::MAX` means "everything committed now".
pub async fn read_topic(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("test-{}", random_suffix()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let partitions = md.topics()[0].partitions().len();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning).expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut at_end = std::collections::BTreeSet::new();
        let enough = |n: usize| expected == usize::MAX || n >= expected;
        while !(enough(out.len()) && at_end.len() == partitions) && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    if !is_time_record(&m) {
                        out.push(m.detach());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        out
    })
    .await
    .expect("reader thread")
}

pub fn payload_str(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

/// A `winter-2026` event: a chest opening when `chest` is given, else a clue.
pub fn game_event(
    shard: &str,
    id: &str,
    player: &str,
    tier: &str,
    chest: Option<&str>,
    points: u64,
    time: i64,
) -> huntflow::event::GameEvent {
    use huntflow::event::{EventKind, GameEvent};
    GameEvent {
        v: 1,
        event_id: id.into(),
        hunt_id: "winter-2026".into(),
        shard_id: shard.into(),
        region: "eu".into(),
        player_id: player.into(),
        tier: tier.into(),
        kind: if chest.is_some() { EventKind::ChestOpened } else { EventKind::ClueSolved },
        chest_key: chest.map(Into::into),
        points,
        event_time: time,
    }
}

/// Ingest (a [`Harness`]) plus one worker per stage on a fresh state directory.
pub struct Running {
    pub h: Harness,
    pub pipeline: huntflow::pipeline::Pipeline,
    _dir: tempfile::TempDir,
}

impl Running {
    pub async fn start(topology: Topology) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().to_path_buf();
        let h = Harness::start(topology, 2, |s| s.state_dir = state).await;
        let mut settings = Settings::default();
        settings.state_dir = dir.path().to_path_buf();
        let metrics = huntflow::stage::WorkerMetrics::new(&prometheus::Registry::new());
        let pipeline = huntflow::pipeline::Pipeline::start(&settings, &h.cluster, &h.topology, 1, metrics);
        Running { h, pipeline, _dir: dir }
    }

    /// Stops the writers (their heartbeats), drains, stops the workers and
    /// returns what `verify` found.
    pub async fn stop_and_verify(self) -> huntflow::verify::VerifyReport {
        let Running { h, pipeline, _dir } = self;
        let (cluster, topology) = (h.cluster.clone(), h.topology.clone());
        h.shutdown().await;
        let report = huntflow::run::drain_and_verify(&cluster, &topology, Duration::from_secs(120)).await.unwrap();
        pipeline.stop().await.expect("workers stop cleanly");
        report
    }
}
