//! The query API's view of the leaderboards topic on the embedded broker:
//! closed windows leave memory after the retention and on tombstones.

mod common;

use std::time::{Duration, Instant};

use common::test_topology;
use huntflow::kafka::Cluster;
use huntflow::query::Boards;
use huntflow::rank::{RankedEntry, Snapshot};
use huntflow::run::start_query_with;
use prometheus::Registry;
use rdkafka::producer::{FutureProducer, FutureRecord};

const MIN: i64 = 60_000;

fn snapshot(hunt: &str, tier: &str, window: Option<i64>, version: i64, watermark: i64) -> Snapshot {
    Snapshot {
        hunt_id: hunt.into(),
        tier: tier.into(),
        board: window.map_or("lifetime".into(), |w| w.to_string()),
        window_start: window,
        window_end: window.map(|w| w + MIN),
        version,
        watermark: Some(watermark),
        closed: window.is_some_and(|w| watermark >= w + MIN + 10_000),
        entries: vec![RankedEntry { rank: 1, player_id: "p1".into(), points: 10, reached_at: 1 }],
    }
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: Option<Vec<u8>>) {
    let mut record: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(topic).key(key);
    if let Some(p) = &payload {
        record = record.payload(p);
    }
    producer.send(record, Duration::from_secs(10)).await.expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_leave_the_query_view_after_retention_and_on_tombstones() {
    let topology = test_topology(|_| {});
    let hunt = topology.spec().hunts[0].id.clone();
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let topic = topology.spec().topics.leaderboards.name.clone();
    let producer: FutureProducer = cluster.client_config().create().unwrap();

    // gold: 20 windows closing one a minute; the last snapshot's watermark
    // (window 19 closed: 1,210 s) drops windows that closed before 610 s.
    for w in 0..20 {
        let snap = snapshot(&hunt, "gold", Some(w * MIN), w, w * MIN + MIN + 10_000);
        send(&producer, &topic, &format!("{hunt}/gold/{}", w * MIN), Some(serde_json::to_vec(&snap).unwrap())).await;
    }
    // A tombstone removes window 19 (written by rank after its retention).
    send(&producer, &topic, &format!("{hunt}/gold/{}", 19 * MIN), None).await;
    // silver: one closed window, its watermark only just past the close.
    let silver = snapshot(&hunt, "silver", Some(0), 1, MIN + 10_000);
    send(&producer, &topic, &format!("{hunt}/silver/0"), Some(serde_json::to_vec(&silver).unwrap())).await;

    let boards = Boards::new(&topology, Duration::from_secs(600));
    let query = start_query_with("127.0.0.1:0".parse().unwrap(), &cluster, &topology, Registry::new(), boards).await;
    let query = query.unwrap();
    let held = |w: i64| query.boards.get(&hunt, "gold", &(w * MIN).to_string()).is_some();
    let want = |b: &Boards| {
        (0..20).all(|w| held(w) == (10..19).contains(&w)) && b.get(&hunt, "silver", "0").is_some() && b.len() == 10
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !want(&query.boards) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept: Vec<i64> = (0..20).filter(|w| held(*w)).collect();
    assert_eq!(kept, (10..19).collect::<Vec<_>>(), "windows within retention, minus the tombstoned one");
    assert!(query.boards.get(&hunt, "silver", "0").is_some(), "silver's own watermark keeps its window");
    assert_eq!(query.boards.len(), 10);

    let url = |w: i64| format!("http://{}/v1/hunts/{hunt}/tiers/gold/leaderboard?board={}", query.addr, w * MIN);
    assert_eq!(reqwest::get(url(0)).await.unwrap().status(), 404, "dropped after retention");
    assert_eq!(reqwest::get(url(19)).await.unwrap().status(), 404, "tombstoned");
    assert_eq!(reqwest::get(url(12)).await.unwrap().status(), 200);
    let metrics = reqwest::get(format!("http://{}/metrics", query.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("huntflow_query_boards 10"), "{metrics}");
    query.stop().await.unwrap();
}
