//! The pipeline on a second, independent Kafka-protocol broker (Tansu): it
//! stores transactional offsets and fences stale producers, which the
//! embedded mock cluster does not; like the mock, it shows aborted records
//! to read_committed consumers, so exactness still rests on lineage.

mod common;

use std::time::Duration;

use common::{random_suffix, shipped_spec, tansu::Tansu};
use huntflow::config::Settings;
use huntflow::kafka::{create_topics, Cluster, EventProducer, TopicPlan};
use huntflow::pipeline::{run_stage, worker_config, Pipeline, StageKind};
use huntflow::run::drain_and_verify;
use huntflow::simulate::{self, SimulateOptions, Target, TrafficShape};
use huntflow::stage::WorkerMetrics;
use huntflow::topology::Topology;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Small partition counts with random names; rf 1 (one broker).
fn small_topology() -> Topology {
    let mut spec = shipped_spec();
    let suffix = random_suffix();
    spec.ingest.events_per_second_per_shard = 1_000_000;
    spec.ingest.burst_per_shard = 100_000;
    let t = &mut spec.topics;
    for (topic, partitions) in [
        (&mut t.events, 4),
        (&mut t.accepted, 4),
        (&mut t.candidates, 2),
        (&mut t.leaderboards, 2),
        (&mut t.prizes, 1),
        (&mut t.dead_letter, 1),
    ] {
        topic.name = format!("{}-{suffix}", topic.name);
        topic.partitions = partitions;
        topic.replication_factor = 1;
    }
    t.changelog_prefix = format!("changelog-{suffix}.");
    Topology::from_spec(spec).unwrap()
}

async fn start(broker: &Tansu, topology: &Topology, dir: &std::path::Path) -> (Settings, Cluster) {
    let mut settings = Settings::default();
    settings.brokers = Some(broker.bootstrap.clone());
    settings.state_dir = dir.to_path_buf();
    settings.worker_session_timeout = Duration::from_secs(6);
    // Tansu makes a fenced producer's commit hang until this timeout.
    settings.worker_transaction_timeout = Duration::from_secs(5);
    let cluster = Cluster::connect(&settings, topology).unwrap();
    create_topics(&cluster, &TopicPlan::from_topology(topology), Duration::from_secs(20)).await.unwrap();
    (settings, cluster)
}

fn traffic(events: u64) -> SimulateOptions {
    // 200 ms of event time per shard event: the run spans a few prize windows.
    // No writer heartbeats here (straight into Kafka): time follows event times.
    let shape = TrafficShape { event_interval_ms: 200, start_time_ms: Some(1_767_225_600_000), ..Default::default() };
    SimulateOptions { events: Some(events), shape, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_on_tansu_verifies_exactly() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let topology = small_topology();
    let (settings, cluster) = start(&broker, &topology, dir.path()).await;
    let registry = Registry::new();
    let pipeline = Pipeline::start(&settings, &cluster, &topology, 1, WorkerMetrics::new(&registry));
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(30)).unwrap();
    simulate::run(&topology, Target::Kafka(producer), traffic(5_000), CancellationToken::new()).await.unwrap();
    let verify = drain_and_verify(&cluster, &topology, Duration::from_secs(240)).await.unwrap();
    pipeline.stop().await.unwrap();
    assert!(verify.passed(), "{verify}");
    assert!(verify.batches_logical > 0, "windows closed: {verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_instance_fences_its_zombie_and_results_stay_exact() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let topology = small_topology();
    let (settings, cluster) = start(&broker, &topology, dir.path()).await;
    let registry = Registry::new();
    let metrics = WorkerMetrics::new(&registry);
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(30)).unwrap();
    simulate::run(&topology, Target::Kafka(producer), traffic(3_000), CancellationToken::new()).await.unwrap();

    // The "zombie": claim instance 0, still running when its replacement
    // (same instance, so the same transactional.id, another state dir)
    // starts and calls init_transactions.
    let zombie_stop = CancellationToken::new();
    let zombie = tokio::spawn({
        let cfg = worker_config(StageKind::Claim, &settings, &cluster, &topology, 0);
        let (topology, metrics, stop) = (topology.clone(), metrics.clone(), zombie_stop.clone());
        async move { run_stage(StageKind::Claim, cfg, &topology, metrics, stop).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut replacement_settings = settings.clone();
    replacement_settings.state_dir = dir.path().join("replacement");
    let pipeline = Pipeline::start(&replacement_settings, &cluster, &topology, 1, metrics.clone());

    // The zombie's next commit is refused: it stops with an error instead
    // of writing on behalf of the instance.
    let zombie_result = tokio::time::timeout(Duration::from_secs(60), zombie).await.expect("zombie stops").unwrap();
    zombie_stop.cancel();
    assert!(zombie_result.is_err(), "the fenced worker must not keep running: {zombie_result:?}");

    let verify = drain_and_verify(&cluster, &topology, Duration::from_secs(240)).await.unwrap();
    pipeline.stop().await.unwrap();
    assert!(verify.passed(), "{verify}");
}
