//! End to end through all three stages on the embedded broker over TCP:
//! ingest -> claim -> score -> rank -> leaderboards + prizes, checked by
//! `verify`'s reference model.

mod common;

use std::time::Duration;

use huntflow::config::Settings;
use huntflow::kafka::Cluster;
use huntflow::pipeline::Pipeline;
use huntflow::run::{drain_and_verify, main_job, start_query, RunOptions};
use huntflow::simulate::{self, SimulateOptions, Target, TrafficShape};
use huntflow::stage::WorkerMetrics;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.ingest.listen = "127.0.0.1:0".parse().unwrap();
    s.query_listen = "127.0.0.1:0".parse().unwrap();
    s.state_dir = dir.to_path_buf();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_thousand_simulated_events_give_exact_prizes_and_leaderboards() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        simulate: SimulateOptions { events: Some(200_000), shards: 8, ..Default::default() },
        verify: true,
        drain_timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let report = main_job(settings(dir.path()), opts, CancellationToken::new()).await.expect("main job");
    let verify = report.verify.as_ref().expect("verify ran");
    assert!(verify.passed(), "{report}");
    // The traffic really exercised every path the verifier checks.
    assert_eq!(report.simulate.posted, 200_000);
    assert!(verify.accepted_logical > 150_000, "{verify}");
    // Events carry the wall clock; the run keeps the heartbeats going until
    // the last window closed, so every window of every tier paid out.
    assert!(verify.batches_logical >= 5, "a closed window for every tier: {verify}");
    assert!(verify.watermark.is_some(), "{verify}");
    assert!(verify.dead_letters.get("claim/chest_already_claimed").is_some_and(|n| *n > 0), "{verify}");
    assert!(verify.dead_letters.get("score/late_event").is_some_and(|n| *n > 0), "{verify}");
    assert_eq!(report.leaderboards.len(), 5, "a lifetime top-10 per tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_api_answers_from_published_snapshots_and_names_unknown_hunts_and_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let topology = common::test_topology(|_| {});
    let cluster = Cluster::connect(&settings, &topology).unwrap();
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await.unwrap();
    let registry = Registry::new();
    let pipeline = Pipeline::start(&settings, &cluster, &topology, 1, WorkerMetrics::new(&registry));
    let query = start_query(settings.query_listen, &cluster, &topology, registry).await.unwrap();
    let producer = huntflow::kafka::EventProducer::new(&cluster, &topology, Duration::from_secs(30)).unwrap();
    let sim = SimulateOptions {
        events: Some(5_000),
        shape: TrafficShape { late_ratio: 0.0, ..Default::default() },
        ..Default::default()
    };
    simulate::run(&topology, Target::Kafka(producer), sim, CancellationToken::new()).await.unwrap();
    let verify = drain_and_verify(&cluster, &topology, Duration::from_secs(120)).await.unwrap();
    assert!(verify.passed(), "{verify}");

    let base = format!("http://{}/v1/hunts", query.addr);
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = get(format!("{base}/winter-2026/tiers/gold/leaderboard?limit=5")).await;
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["rank"], 1);
    assert!(entries[0]["points"].as_u64() >= entries[4]["points"].as_u64());
    assert!(body["version"].as_i64().unwrap() > 0);
    // Null until every score partition has reported a watermark.
    assert!(body.get("watermark").is_some(), "{body}");

    let (status, body) = get(format!("{base}/nope/tiers/gold/leaderboard")).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("unknown hunt `nope`"), "{body}");
    let (status, body) = get(format!("{base}/winter-2026/tiers/wood/leaderboard")).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no tier `wood`"), "{body}");
    let (status, _) = get(format!("{base}/winter-2026/tiers/gold/leaderboard?board=yesterday")).await;
    assert_eq!(status, 400);
    let (status, body) = get(format!("{base}/winter-2026/tiers/gold/leaderboard?board=42")).await;
    assert_eq!(status, 404, "{body}");

    query.stop().await.unwrap();
    pipeline.stop().await.unwrap();
}
