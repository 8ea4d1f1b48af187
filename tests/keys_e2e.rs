//! Keys with the right scope and leaderboard retention, end to end on the
//! embedded broker with real RocksDB: two shards share an event id, a shard
//! reuses one with other content, and the closed window's leaderboard key is
//! tombstoned after retention; `verify` agrees with all of it.

mod common;

use std::time::{Duration, Instant};

use common::{read_topic, test_topology, Running};
use huntflow::event::{now_ms, GameEvent};
use huntflow::topology::HumanDuration;
use rdkafka::Message;

fn event(shard: &str, id: &str, player: &str, points: u64, time: i64) -> GameEvent {
    common::game_event(shard, id, player, "gold", None, points, time)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_and_conflicting_event_ids_and_leaderboard_tombstones_pass_verify() {
    let topology = test_topology(|spec| {
        spec.windows.prize.size = HumanDuration::from_millis(5_000);
        spec.windows.prize.grace = HumanDuration::from_millis(1_000);
        spec.windows.leaderboard_retention = HumanDuration::from_millis(2_000);
        spec.ingest.heartbeat_interval = HumanDuration::from_millis(200);
        spec.ingest.heartbeat_writer_timeout = HumanDuration::from_millis(2_000);
    });
    let r = Running::start(topology).await;
    let h = &r.h;

    let (t, id) = (now_ms(), format!("ev-{}", common::random_suffix()));
    let first = event("shard-0", &id, "p1", 10, t);
    let changed = event("shard-0", &id, "p1", 99, t);
    assert_eq!(h.post("shard-0", &[first.clone(), first, changed]).await.accepted, 3);
    assert_eq!(h.post("shard-1", &[event("shard-1", &id, "p2", 20, t)]).await.accepted, 1);

    // The window closes on heartbeats, then its key is tombstoned 2 s later.
    let key = format!("winter-2026/gold/{}", t.div_euclid(5_000) * 5_000);
    let topic = h.topology.spec().topics.leaderboards.name.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tombstoned = loop {
        let got = read_topic(h.cluster.bootstrap(), &topic, usize::MAX, Duration::from_secs(1)).await;
        let found = got.iter().any(|m| m.key() == Some(key.as_bytes()) && m.payload().is_none());
        if found || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(tombstoned, "a null-value record for {key}");

    let report = r.stop_and_verify().await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.accepted_logical, 2, "one event of each shard: {report}");
    assert_eq!(report.dead_letters.get("claim/conflicting_duplicate"), Some(&1), "{report}");
}
