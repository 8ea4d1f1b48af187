//! The Kinesis bridge against a real Kinesis emulator (kinesis-local, started
//! per test) and a real Kafka-protocol broker: every record copied exactly
//! once, per-shard order in enhanced fan-out, parents before children across
//! a split and a merge, a SIGKILLed bridge resuming from its checkpoints, and
//! the claim -> score -> rank pipeline verifying on the copied events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::StreamStatus;
use common::kinesis::KinesisLocal;
use huntflow::config::Settings;
use huntflow::kafka::{Cluster, HEADER_KINESIS_SEQUENCE, HEADER_KINESIS_SHARD, HEADER_KINESIS_TXN};
use huntflow::kinesis::{list_shards, run_bridge, seq_cmp, BridgeOptions, BridgeReport};
use huntflow::pipeline::Pipeline;
use huntflow::run::drain_and_verify;
use huntflow::simulate::{self, SimulateOptions, Target, TrafficShape};
use huntflow::stage::WorkerMetrics;
use huntflow::topology::{HumanDuration, KinesisSourceSpec, SourceKind, Topology, TopologySpec};
use huntflow::verify::read_topic;
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn aws_env() {
    // The emulator accepts any credentials; the region is set explicitly.
    std::env::set_var("AWS_ACCESS_KEY_ID", "huntflowtest");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "huntflowtest");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

fn kinesis_settings(endpoint: &str, dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.kinesis_endpoint = Some(endpoint.into());
    s.kinesis_region = Some("us-east-1".into());
    s.state_dir = dir.to_path_buf();
    s.query_listen = "127.0.0.1:0".parse().unwrap();
    s
}

fn topology(stream: &str, mode: &str, tweak: fn(&mut TopologySpec)) -> Topology {
    let yaml = format!(
        "stream: {stream}\nmode: {mode}\nidle_poll_interval: 200ms\nsubscription_silence_timeout: 3s\nshard_refresh_interval: 1s\ncommit_interval: 100ms\n"
    );
    let k: KinesisSourceSpec = serde_yaml::from_str(&yaml).unwrap();
    common::test_topology(|spec| {
        spec.source.kind = SourceKind::Kinesis;
        spec.source.kinesis = Some(k);
        tweak(spec);
    })
}

/// 5 s windows, 1 s grace, heartbeats every 200 ms.
fn fast_windows(spec: &mut TopologySpec) {
    spec.windows.prize.size = HumanDuration::from_millis(5_000);
    spec.windows.prize.grace = HumanDuration::from_millis(1_000);
    spec.ingest.heartbeat_interval = HumanDuration::from_millis(200);
    spec.stages.commit_interval = HumanDuration::from_millis(100);
}

async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = client.describe_stream_summary().stream_name(stream).send().await.unwrap();
        let status = out.stream_description_summary().map(|d| d.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(Instant::now() < deadline, "stream {stream} not ACTIVE: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_stream(client: &aws_sdk_kinesis::Client, stream: &str, shards: i32) {
    client.create_stream().stream_name(stream).shard_count(shards).send().await.unwrap();
    wait_active(client, stream).await;
}

/// A fresh stream of 4 shards on `endpoint`, the embedded broker with the
/// topology's topics (checkpoints included), and a client for the test.
struct Setup {
    dir: tempfile::TempDir,
    settings: Settings,
    stream: String,
    topology: Topology,
    cluster: Cluster,
    client: aws_sdk_kinesis::Client,
}

impl Setup {
    async fn new(endpoint: &str, mode: &str) -> Self {
        Self::with(endpoint, mode, |_| {}).await
    }

    async fn with(endpoint: &str, mode: &str, tweak: fn(&mut TopologySpec)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = kinesis_settings(endpoint, dir.path());
        let stream = format!("hunt-{}", common::random_suffix());
        let topology = topology(&stream, mode, tweak);
        let cluster = Cluster::connect(&settings, &topology).unwrap();
        cluster.ensure_topics(&topology, Duration::from_secs(30)).await.unwrap();
        let client = huntflow::kinesis::connect(&settings).await;
        create_stream(&client, &stream, 4).await;
        Self { dir, settings, stream, topology, cluster, client }
    }
}

/// Simulated shard traffic (duplicates, malformed, late) put on the stream.
async fn put(client: &aws_sdk_kinesis::Client, topology: &Topology, stream: &str, events: u64, seed: u64) -> u64 {
    put_at(client, topology, stream, events, seed, None).await
}

async fn put_at(
    client: &aws_sdk_kinesis::Client,
    topology: &Topology,
    stream: &str,
    events: u64,
    seed: u64,
    rate: Option<f64>,
) -> u64 {
    // Event times follow the wall clock: the bridge's heartbeats follow the
    // records' arrival in Kinesis.
    let shape = TrafficShape { seed, ..Default::default() };
    let opts = SimulateOptions { events: Some(events), shards: 8, shape, rate, batch_size: 100, ..Default::default() };
    let target = Target::Kinesis { client: client.clone(), stream: stream.into() };
    let report = simulate::run(topology, target, opts, CancellationToken::new()).await.unwrap();
    assert_eq!(report.accepted, events, "the emulator accepted every record");
    events
}

struct Bridge {
    cancel: CancellationToken,
    task: JoinHandle<Result<BridgeReport, huntflow::kinesis::KinesisError>>,
    registry: Registry,
}

impl Bridge {
    async fn start(settings: &Settings, cluster: &Cluster, topology: &Topology) -> Self {
        Self::start_instance(settings, cluster, topology, 0, 1).await
    }

    async fn start_instance(
        settings: &Settings,
        cluster: &Cluster,
        topology: &Topology,
        instance: u32,
        instances: u32,
    ) -> Self {
        let opts = BridgeOptions {
            topology: topology.clone(),
            kafka: cluster.client_config(),
            kinesis: huntflow::kinesis::connect(settings).await,
            instance,
            instances,
            transaction_timeout: Duration::from_secs(10),
        };
        let (cancel, registry) = (CancellationToken::new(), Registry::new());
        let (c, r) = (cancel.clone(), registry.clone());
        let task = tokio::spawn(async move { run_bridge(opts, &r, c).await });
        Self { cancel, task, registry }
    }

    fn committed_records(&self) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "huntflow_kinesis_records_total")
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).collect::<Vec<_>>())
            .sum()
    }

    async fn wait_for(&self, records: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.committed_records() < records as f64 {
            assert!(!self.task.is_finished(), "the bridge stopped early");
            assert!(Instant::now() < deadline, "bridge committed {} of {records} records", self.committed_records());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) -> BridgeReport {
        self.cancel.cancel();
        self.task.await.unwrap().expect("bridge ran cleanly")
    }
}

/// One copied record: where it landed and where it came from.
#[derive(Debug)]
struct Copied {
    partition: i32,
    offset: i64,
    shard: String,
    sequence: String,
    /// `<run>:<n>`: the bridge process run and its transaction number.
    txn: String,
}

/// Everything the bridge wrote (events and dead letters), read_committed.
fn copied(cluster: &Cluster, topology: &Topology) -> (Vec<Copied>, Vec<Copied>) {
    let topics = &topology.spec().topics;
    let read = |topic: &str| -> Vec<Copied> {
        read_topic(&cluster.client_config(), topic, Duration::from_secs(120))
            .unwrap()
            .into_iter()
            .filter_map(|r| {
                Some(Copied {
                    partition: r.partition,
                    offset: r.offset,
                    shard: r.header(HEADER_KINESIS_SHARD)?.to_owned(),
                    sequence: r.header(HEADER_KINESIS_SEQUENCE)?.to_owned(),
                    txn: r.header(HEADER_KINESIS_TXN)?.to_owned(),
                })
            })
            .collect()
    };
    (read(&topics.events.name), read(&topics.dead_letter.name))
}

/// Every record put is in Kafka exactly once (as an event or a dead letter).
fn assert_exactly_once(events: &[Copied], dead: &[Copied], put: u64) {
    let mut seen = BTreeSet::new();
    let mut twice = 0;
    for c in events.iter().chain(dead) {
        if !seen.insert((c.shard.clone(), c.sequence.clone())) {
            twice += 1;
        }
    }
    assert_eq!(twice, 0, "records written twice");
    assert_eq!(
        seen.len() as u64,
        put,
        "distinct records copied ({} events, {} dead letters)",
        events.len(),
        dead.len()
    );
    assert!(!dead.is_empty(), "the malformed records were dead-lettered");
}

/// Within each Kafka partition, each Kinesis shard's records appear in
/// sequence order.
fn assert_per_shard_order(events: &[Copied]) {
    let mut last: BTreeMap<(i32, &str), (&str, i64)> = BTreeMap::new();
    let mut sorted: Vec<&Copied> = events.iter().collect();
    sorted.sort_by_key(|c| (c.partition, c.offset));
    for c in sorted {
        if let Some((prev, at)) = last.get(&(c.partition, c.shard.as_str())) {
            assert_eq!(
                seq_cmp(prev, &c.sequence),
                std::cmp::Ordering::Less,
                "shard {} out of order in partition {} at offsets {at} and {}",
                c.shard,
                c.partition,
                c.offset
            );
        }
        last.insert((c.partition, c.shard.as_str()), (c.sequence.as_str(), c.offset));
    }
}

async fn pipeline_verifies(settings: &Settings, cluster: &Cluster, topology: &Topology) {
    let registry = Registry::new();
    let pipeline = Pipeline::start(settings, cluster, topology, 1, WorkerMetrics::new(&registry));
    let report = drain_and_verify(cluster, topology, Duration::from_secs(300)).await.unwrap();
    pipeline.stop().await.expect("workers stop cleanly");
    assert!(report.passed(), "{report}");
    assert!(report.accepted_logical > 10_000, "{report}");
}

async fn copy_and_verify(kinesis_endpoint: &str, mode: &str) -> Vec<Copied> {
    aws_env();
    let Setup { dir: _dir, settings, stream, topology, cluster, client } = Setup::new(kinesis_endpoint, mode).await;

    let bridge = Bridge::start(&settings, &cluster, &topology).await;
    let put = put(&client, &topology, &stream, 20_000, 7).await;
    bridge.wait_for(put, Duration::from_secs(300)).await;
    let report = bridge.stop().await;
    assert_eq!(report.records, put);
    assert_eq!(report.aborts, 0);

    let (events, dead) = copied(&cluster, &topology);
    assert_exactly_once(&events, &dead, put);
    let shards: BTreeSet<&str> = events.iter().map(|c| c.shard.as_str()).collect();
    assert_eq!(shards.len(), 4, "records from every shard");
    pipeline_verifies(&settings, &cluster, &topology).await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_copies_twenty_thousand_records_exactly_once_and_the_pipeline_verifies() {
    let kinesis = KinesisLocal::start();
    copy_and_verify(&kinesis.plain_url, "polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enhanced_fan_out_over_tls_http2_keeps_per_shard_order_and_the_pipeline_verifies() {
    aws_env();
    let kinesis = KinesisLocal::start();
    let _ = CA_FILE.set(kinesis.ca_file.clone());
    let Setup { dir, settings, stream, topology, cluster, client } =
        Setup::new(&kinesis.plain_url, "enhanced-fan-out").await;
    write_files(dir.path(), &topology);

    // The bridge process talks https to the emulator's TLS port (HTTP/2, as
    // SubscribeToShard needs on AWS), trusting the test CA through the
    // standard SSL_CERT_FILE; the test itself puts records over plain http.
    let mut bridge = spawn_bridge(dir.path(), cluster.bootstrap(), &kinesis.tls_url, 0);
    let put = put(&client, &topology, &stream, 20_000, 5).await;
    wait_copied(&cluster, &topology, put, Duration::from_secs(300)).await;
    stop_bridge(&mut bridge).await;
    let log = std::fs::read_to_string(dir.path().join("bridge-0.log")).unwrap();
    assert!(log.contains("registered the enhanced fan-out consumer"), "{log}");

    let (events, dead) = copied(&cluster, &topology);
    assert_exactly_once(&events, &dead, put);
    assert_per_shard_order(&events);
    let shards: BTreeSet<&str> = events.iter().map(|c| c.shard.as_str()).collect();
    assert_eq!(shards.len(), 4, "records from every shard");
    pipeline_verifies(&settings, &cluster, &topology).await;
}

/// Shard ids with their hash-key ranges, straight from ListShards.
async fn hash_ranges(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, u128, u128, bool)> {
    let out = client.list_shards().stream_name(stream).send().await.unwrap();
    out.shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().unwrap();
            let open = s.sequence_number_range().is_none_or(|r| r.ending_sequence_number().is_none());
            (
                s.shard_id().to_owned(),
                r.starting_hash_key().parse().unwrap(),
                r.ending_hash_key().parse().unwrap(),
                open,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_and_a_merge_mid_run_lose_nothing_and_children_follow_their_parents() {
    split_and_merge("polling", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_polling_instances_split_the_shards_and_children_wait_for_the_other_instances_parents() {
    split_and_merge("polling", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enhanced_fan_out_reads_children_after_parents_across_a_split_and_a_merge() {
    // kinesis-local never ends a subscription on a closed parent: the
    // bridge must notice the closed shard by itself.
    split_and_merge("enhanced-fan-out", 1).await;
}

async fn split_and_merge(mode: &str, instances: u32) {
    aws_env();
    let kinesis = KinesisLocal::start();
    let Setup { dir: _dir, settings, stream, topology, cluster, client } = Setup::new(&kinesis.plain_url, mode).await;

    let mut bridges = Vec::new();
    for i in 0..instances {
        bridges.push(Bridge::start_instance(&settings, &cluster, &topology, i, instances).await);
    }
    let committed = |bridges: &[Bridge]| -> u64 {
        assert!(!bridges.iter().any(|b| b.task.is_finished()), "a bridge stopped early");
        bridges.iter().map(Bridge::committed_records).sum::<f64>() as u64
    };
    let mut total = put(&client, &topology, &stream, 8_000, 1).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while committed(&bridges) < total / 4 {
        assert!(Instant::now() < deadline, "bridges committed {} of {}", committed(&bridges), total / 4);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Split the first shard at the middle of its range; merge the last two.
    let ranges = hash_ranges(&client, &stream).await;
    let (first, lo, hi, _) = ranges[0].clone();
    client
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&first)
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .unwrap();
    wait_active(&client, &stream).await;
    client
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&ranges[2].0)
        .adjacent_shard_to_merge(&ranges[3].0)
        .send()
        .await
        .unwrap();
    wait_active(&client, &stream).await;
    total += put(&client, &topology, &stream, 8_000, 2).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while committed(&bridges) < total {
        assert!(Instant::now() < deadline, "bridges committed {} of {total}", committed(&bridges));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reports = Vec::new();
    for b in bridges {
        reports.push(b.stop().await);
    }
    assert_eq!(reports.iter().map(|r| r.records).sum::<u64>(), total);
    if instances > 1 {
        assert!(reports.iter().all(|r| r.records > 0), "every instance read some shards");
    }
    // The last report knows every instance's committed checkpoints.
    let mut checkpoints = BTreeMap::new();
    for r in &reports {
        checkpoints.extend(r.checkpoints.iter().filter(|(_, c)| c.finished).map(|(k, v)| (k.clone(), v.clone())));
    }

    let shards = list_shards(&client, &stream).await.unwrap();
    let children: Vec<_> = shards.iter().filter(|s| !s.parents.is_empty()).collect();
    assert_eq!(children.len(), 3, "two from the split, one from the merge: {shards:?}");
    for parent in [&first, &ranges[2].0, &ranges[3].0] {
        assert!(checkpoints.contains_key(parent), "closed parent {parent} is checkpointed as finished");
    }

    let (events, dead) = copied(&cluster, &topology);
    assert_exactly_once(&events, &dead, total);
    assert_per_shard_order(&events);
    for child in &children {
        assert!(events.iter().any(|c| c.shard == child.id), "child {} received records", child.id);
        // Offsets compare within one topic partition: events, then dead letters.
        for topic in [&events, &dead] {
            for c in topic.iter().filter(|c| c.shard == child.id) {
                for p in topic.iter().filter(|p| p.partition == c.partition && child.parents.contains(&p.shard)) {
                    assert!(
                        p.offset < c.offset,
                        "parent {} record at {} after child {} record at {} (partition {})",
                        p.shard,
                        p.offset,
                        child.id,
                        c.offset,
                        c.partition
                    );
                }
            }
        }
    }
}

fn write_files(dir: &std::path::Path, topology: &Topology) {
    std::fs::write(dir.join("topology.yaml"), serde_yaml::to_string(topology.spec()).unwrap()).unwrap();
    std::fs::write(dir.join("settings.yaml"), "worker:\n  transaction_timeout_ms: 10000\n").unwrap();
}

/// `huntflow kinesis-bridge` as its own process; an https endpoint trusts the
/// emulator's test CA (`ca.pem` next to the test's files).
fn spawn_bridge(dir: &std::path::Path, bootstrap: &str, endpoint: &str, round: usize) -> tokio::process::Child {
    let log = std::fs::File::create(dir.join(format!("bridge-{round}.log"))).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_huntflow"));
    cmd.args(["--brokers", bootstrap, "--topology"])
        .arg(dir.join("topology.yaml"))
        .arg("--config")
        .arg(dir.join("settings.yaml"))
        .arg("kinesis-bridge")
        .env("HUNTFLOW_KINESIS_ENDPOINT", endpoint)
        .env("HUNTFLOW_KINESIS_REGION", "us-east-1")
        .env("HUNTFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info,librdkafka=off,rdkafka=off")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    if endpoint.starts_with("https") {
        cmd.env("SSL_CERT_FILE", CA_FILE.get().expect("the emulator's CA is known"));
    }
    cmd.spawn().expect("bridge process starts")
}

static CA_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Until every put record is in Kafka (events or dead letters).
async fn wait_copied(cluster: &Cluster, topology: &Topology, total: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (events, dead) = copied(cluster, topology);
        let distinct: BTreeSet<(&str, &str)> =
            events.iter().chain(&dead).map(|c| (c.shard.as_str(), c.sequence.as_str())).collect();
        if distinct.len() as u64 >= total {
            return;
        }
        assert!(Instant::now() < deadline, "only {} of {total} records arrived", distinct.len());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// SIGTERM: the bridge commits what it read and exits 0.
async fn stop_bridge(bridge: &mut tokio::process::Child) {
    let pid = bridge.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(60), bridge.wait()).await.expect("stops in time").unwrap();
    assert!(exit.success(), "SIGTERM drains and exits 0, got {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_bridge_resumes_from_its_checkpoints_without_loss_or_repeats() {
    aws_env();
    let kinesis = KinesisLocal::start();
    let Setup { dir, settings: _, stream, topology, cluster, client } = Setup::new(&kinesis.plain_url, "polling").await;
    write_files(dir.path(), &topology);

    let bootstrap = cluster.bootstrap().to_owned();
    let (c, t, s) = (client.clone(), topology.clone(), stream.clone());
    // 20k records over ~40 s, so the kills land while records flow.
    let putter = tokio::spawn(async move { put_at(&c, &t, &s, 20_000, 3, Some(500.0)).await });
    let mut bridge = spawn_bridge(dir.path(), &bootstrap, &kinesis.plain_url, 0);
    let count = || {
        let (events, dead) = copied(&cluster, &topology);
        events.len() + dead.len()
    };
    let mut kills = 0;
    let mut before = 0;
    'rounds: while kills < 3 {
        // Kill only once this run has committed something of its own; stop
        // killing once every record is copied.
        let deadline = Instant::now() + Duration::from_secs(120);
        while count() <= before {
            if putter.is_finished() && count() >= 20_000 {
                break 'rounds;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join(format!("bridge-{kills}.log"))).unwrap_or_default();
                panic!("bridge run {kills} wrote nothing in 120 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(200 + 400 * kills as u64)).await;
        bridge.start_kill().unwrap();
        bridge.wait().await.unwrap();
        kills += 1;
        before = count();
        bridge = spawn_bridge(dir.path(), &bootstrap, &kinesis.plain_url, kills);
    }
    assert!(kills >= 2, "the bridge was killed at least twice mid-stream");
    let total = putter.await.unwrap();

    // Every record in Kafka, then the last bridge stops cleanly.
    wait_copied(&cluster, &topology, total, Duration::from_secs(240)).await;
    stop_bridge(&mut bridge).await;

    let (events, dead) = copied(&cluster, &topology);
    let runs: BTreeSet<&str> = events.iter().map(|c| c.txn.split(':').next().unwrap()).collect();
    assert!(runs.len() >= 2, "records from several bridge runs: {runs:?}");
    // The test brokers (like librdkafka's mock) show aborted records to
    // read_committed readers, so the transaction open at each SIGKILL is
    // visible. Only those may repeat a record; a real Kafka hides them.
    let mut last_txn: BTreeMap<&str, u64> = BTreeMap::new();
    for c in events.iter().chain(&dead) {
        let (run, n) = c.txn.split_once(':').unwrap();
        let n: u64 = n.parse().unwrap();
        let e = last_txn.entry(run).or_default();
        *e = (*e).max(n);
    }
    let open_at_kill = |txn: &str| {
        let (run, n) = txn.split_once(':').unwrap();
        last_txn.get(run) == Some(&n.parse().unwrap())
    };
    let mut copies: BTreeMap<(&str, &str), (u32, u32)> = BTreeMap::new();
    for c in events.iter().chain(&dead) {
        let e = copies.entry((c.shard.as_str(), c.sequence.as_str())).or_default();
        if open_at_kill(&c.txn) {
            e.1 += 1
        } else {
            e.0 += 1
        }
    }
    assert_eq!(copies.len() as u64, total, "no record lost");
    let repeated: Vec<_> = copies.iter().filter(|(_, (committed, _))| *committed > 1).collect();
    assert!(
        repeated.is_empty(),
        "records written twice by committed transactions: {:?}",
        &repeated[..repeated.len().min(5)]
    );
    let tolerated = copies.values().filter(|(c, open)| c + open > 1).count();
    eprintln!("{kills} kills, {} runs, {tolerated} records repeated only by a transaction open at a kill", runs.len());
}

/// Three events on one of four shards, then nothing: the bridge's heartbeats
/// (the minimum clock of the shards it reads) close the windows anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_stream_still_closes_every_window_on_the_bridges_heartbeats() {
    aws_env();
    let kinesis = KinesisLocal::start();
    let Setup { dir: _dir, settings, stream, topology, cluster, client } =
        Setup::with(&kinesis.plain_url, "polling", fast_windows).await;
    let bridge = Bridge::start(&settings, &cluster, &topology).await;
    let registry = Registry::new();
    let pipeline = Pipeline::start(&settings, &cluster, &topology, 1, WorkerMetrics::new(&registry));

    let t = huntflow::event::now_ms();
    for (id, player, tier) in [("a", "p1", "gold"), ("b", "p2", "gold"), ("c", "p3", "silver")] {
        let e = serde_json::json!({
            "v": 1, "event_id": id, "hunt_id": "winter-2026", "shard_id": "shard-0", "region": "eu",
            "player_id": player, "tier": tier, "kind": "clue_solved", "points": 10, "event_time": t,
        });
        let data = aws_sdk_kinesis::primitives::Blob::new(serde_json::to_vec(&e).unwrap());
        client.put_record().stream_name(&stream).partition_key("shard-0").data(data).send().await.unwrap();
    }
    let window = t.div_euclid(5_000) * 5_000;
    let want = vec![format!("winter-2026/gold/{window}"), format!("winter-2026/silver/{window}")];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ids: Vec<String> = Vec::new();
    while ids != want {
        assert!(Instant::now() < deadline, "prize batches so far: {ids:?}; want {want:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let prizes = read_topic(&cluster.client_config(), &topology.spec().topics.prizes.name, Duration::from_secs(30));
        ids = prizes
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
            .filter_map(|v| v["batch_id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
    }
    let metrics = prometheus::TextEncoder::new().encode_to_string(&bridge.registry.gather()).unwrap();
    assert!(metrics.contains("huntflow_kinesis_heartbeats_total"), "{metrics}");
    let report = bridge.stop().await;
    assert_eq!(report.records, 3);
    let report = drain_and_verify(&cluster, &topology, Duration::from_secs(120)).await.unwrap();
    pipeline.stop().await.expect("workers stop cleanly");
    assert!(report.passed(), "{report}");
}
