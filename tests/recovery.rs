//! Crashes and membership changes mid-stream: the results stay exact.
//! Workers are real `huntflow worker` processes against the embedded broker
//! over TCP, SIGKILLed and restarted; or in-process workers joining and
//! leaving the group.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use huntflow::config::Settings;
use huntflow::kafka::{Cluster, EventProducer};
use huntflow::pipeline::{run_stage, worker_config, Pipeline, StageKind};
use huntflow::run::drain_and_verify;
use huntflow::simulate::{self, SimulateOptions, Target, TrafficShape};
use huntflow::stage::WorkerMetrics;
use huntflow::topology::Topology;
use prometheus::Registry;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Straight into Kafka, without writer heartbeats: time follows event times,
/// spread over several prize windows.
fn spread() -> TrafficShape {
    TrafficShape { start_time_ms: Some(1_767_225_600_000), ..Default::default() }
}

fn spawn_worker(bootstrap: &str, state: &Path, stage: StageKind, instance: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_huntflow"))
        .args(["--brokers", bootstrap, "--state-dir"])
        .arg(state)
        .args(["worker", "--stage", stage.name(), "--instance", &instance.to_string()])
        .env("HUNTFLOW_WORKER_SESSION_TIMEOUT_MS", "3000")
        .env("HUNTFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,librdkafka=off,rdkafka=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("worker process starts")
}

/// SIGTERM, then the worker's own report line: it must exit 0.
async fn stop_worker(mut child: Child) -> String {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("stops in time").unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(exit.success(), "worker exited with {exit}: {out}");
    out
}

fn number_before(line: &str, what: &str) -> u64 {
    let at = line.find(what).unwrap_or_else(|| panic!("`{what}` in {line}"));
    line[..at].split_whitespace().last().and_then(|n| n.trim_end_matches(',').parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_and_restarted_workers_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::load(Path::new("topology/treasure-hunt.yaml")).unwrap();
    let cluster = Cluster::connect(&Settings::default(), &topology).unwrap();
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await.unwrap();
    let bootstrap = cluster.bootstrap().to_owned();

    let mut workers = Vec::new();
    for stage in StageKind::ALL {
        for i in 0..3 {
            workers.push((stage, i, spawn_worker(&bootstrap, dir.path(), stage, i)));
        }
    }
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(30)).unwrap();
    let sim = SimulateOptions { events: Some(60_000), rate: Some(3_000.0), shape: spread(), ..Default::default() };
    let feeding = tokio::spawn({
        let topology = topology.clone();
        async move { simulate::run(&topology, Target::Kafka(producer), sim, CancellationToken::new()).await }
    });

    // Kill one worker of each stage in turn while events flow; restart it
    // with its own state directory right away.
    let mut restarted = Vec::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let victim = (round * 4 + round / 3) % workers.len();
        let (stage, i, mut child) = workers.swap_remove(victim);
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        workers.push((stage, i, spawn_worker(&bootstrap, dir.path(), stage, i)));
        restarted.push((stage, i));
    }
    let fed = feeding.await.unwrap().unwrap();
    assert_eq!(fed.posted, 60_000);

    let verify = drain_and_verify(&cluster, &topology, Duration::from_secs(400)).await.unwrap();
    let mut already_local = 0;
    let mut restored = 0;
    for (stage, i, child) in workers {
        let line = stop_worker(child).await;
        if restarted.contains(&(stage, i)) {
            already_local += number_before(&line, "already local");
            restored += number_before(&line, "records restored");
        }
    }
    assert!(verify.passed(), "{verify}");
    assert!(verify.batches_logical > 0 && verify.accepted_logical > 40_000, "{verify}");
    // Restarted workers reused their RocksDB stores: they read only the
    // changelog tail, skipping what was already local.
    assert!(already_local > 0, "restarted workers restored {restored} records, none from local state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_and_leaving_mid_stream_keep_results_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.state_dir = dir.path().to_path_buf();
    settings.worker_session_timeout = Duration::from_secs(3);
    let topology = common::test_topology(|_| {});
    let cluster = Cluster::connect(&settings, &topology).unwrap();
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await.unwrap();
    let registry = Registry::new();
    let metrics = WorkerMetrics::new(&registry);
    let pipeline = Pipeline::start(&settings, &cluster, &topology, 1, metrics.clone());

    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(30)).unwrap();
    let sim = SimulateOptions { events: Some(60_000), rate: Some(4_000.0), shape: spread(), ..Default::default() };
    let feeding = tokio::spawn({
        let topology = topology.clone();
        async move { simulate::run(&topology, Target::Kafka(producer), sim, CancellationToken::new()).await }
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let extra = CancellationToken::new();
    let extra_registry = Registry::new();
    let extra_metrics = WorkerMetrics::new(&extra_registry);
    let mut joined = Vec::new();
    for stage in StageKind::ALL {
        let cfg = worker_config(stage, &settings, &cluster, &topology, 1);
        let (topology, metrics, cancel) = (topology.clone(), extra_metrics.clone(), extra.clone());
        joined.push(tokio::spawn(async move { run_stage(stage, cfg, &topology, metrics, cancel).await }));
    }
    // Leave once the newcomers got partitions (after the rebalance) and worked.
    let worked = || {
        extra_registry
            .gather()
            .iter()
            .filter(|f| f.name() == "huntflow_stage_records_total")
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
            .sum::<f64>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while worked() < 1_000.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The extra workers leave cleanly: they commit, and the group rebalances.
    extra.cancel();
    let mut extra_processed = 0;
    for j in joined {
        extra_processed += j.await.unwrap().expect("extra worker stops cleanly").processed;
    }
    feeding.await.unwrap().unwrap();

    let verify = drain_and_verify(&cluster, &topology, Duration::from_secs(300)).await.unwrap();
    let reports = pipeline.stop().await.unwrap();
    assert!(verify.passed(), "{verify}");
    assert!(extra_processed > 0, "the joining workers got partitions and did work");
    assert!(reports.iter().all(|(_, _, r)| r.processed > 0));
}
