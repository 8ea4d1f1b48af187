use std::time::{Duration, Instant};

use super::*;
use crate::pipeline::{time_config, StageKind};
use crate::score::tests::small_topology;
use crate::stage::testing::LogicHarness;
use crate::windowing::TimeRecord;

fn entry(tier: &str, board: Board, player: &str, points: u64, reached_at: i64) -> Vec<u8> {
    Candidate::Entry {
        hunt_id: "winter-2026".into(),
        tier: tier.into(),
        board,
        player_id: player.into(),
        points,
        reached_at,
    }
    .encode()
}

fn mark(partition: i32, watermark: i64) -> TimeRecord {
    TimeRecord::Watermark { partition, partitions: 2, watermark }
}

fn harness() -> LogicHarness<RankStage> {
    let topology = small_topology();
    LogicHarness::new(RankStage::new(&topology).unwrap(), time_config(StageKind::Rank, &topology))
}

fn chest(player: &str, key: &str, window_start: i64) -> Vec<u8> {
    Candidate::Chest {
        hunt_id: "winter-2026".into(),
        tier: "gold".into(),
        window_start,
        player_id: player.into(),
        chest_key: key.into(),
        event_id: format!("ev-{key}"),
        reward: 40,
    }
    .encode()
}

fn batches(p: &Processed) -> Vec<PrizeBatch> {
    p.outputs
        .iter()
        .filter(|o| o.sink == Sink::Secondary)
        .map(|o| serde_json::from_slice(&o.payload).unwrap())
        .collect()
}

fn snapshots(outputs: &[Output]) -> Vec<Snapshot> {
    outputs.iter().filter(|o| o.sink == Sink::Primary).map(|o| serde_json::from_slice(&o.payload).unwrap()).collect()
}

#[test]
fn window_closes_once_when_every_score_partition_passed_end_plus_grace() {
    let mut h = harness();
    let w = Board::Window(0);
    for (player, points, at) in [("a", 30, 5), ("b", 50, 9), ("c", 30, 4), ("d", 10, 1)] {
        h.feed(0, b"k", &entry("gold", w, player, points, at));
    }
    h.feed(0, b"k", &entry("gold", w, "e", 5, 1));
    h.feed(
        0,
        b"k",
        &Candidate::Evict { hunt_id: "winter-2026".into(), tier: "gold".into(), board: w, player_id: "e".into() }
            .encode(),
    );
    h.feed(0, b"k", &chest("a", "chest-1", 0));
    h.commit();
    // A restart between commit and close: caches reload from RocksDB.
    h.abort();

    assert!(batches(&h.feed_time(0, None, &mark(0, 90_000))).is_empty(), "partition 1 has not reported");
    assert!(batches(&h.feed_time(0, None, &mark(1, 69_000))).is_empty(), "min watermark is below end + grace");
    let closing = h.feed_time(0, None, &mark(1, 70_000));
    assert_eq!(closing.outcome, "windows_closed");
    let b = batches(&closing);
    assert_eq!(b.len(), 1);
    let b = &b[0];
    assert_eq!((b.batch_id.as_str(), b.window_start, b.window_end), ("winter-2026/gold/0", 0, 60_000));
    let got: Vec<(&str, &str, u64, Option<u32>)> =
        b.awards.iter().map(|a| (a.kind.as_str(), a.player_id.as_str(), a.amount, a.rank)).collect();
    // Ties on points go to whoever reached them first (c at 4 before a at 5).
    assert_eq!(
        got,
        vec![
            ("rank", "b", 500, Some(1)),
            ("rank", "c", 100, Some(2)),
            ("rank", "a", 100, Some(3)),
            ("chest", "a", 40, None)
        ]
    );
    assert_eq!(b.awards[0].idempotency_key, rank_award_key("winter-2026", "gold", 0, 1, "b"));
    let finals = snapshots(&closing.outputs);
    assert_eq!(finals.len(), 1);
    assert!(finals[0].closed);
    assert_eq!(finals[0].version, 10);

    assert!(batches(&h.feed_time(0, None, &mark(0, 200_000))).is_empty(), "never twice");
    assert!(batches(&h.feed_time(0, None, &mark(1, 200_000))).is_empty(), "never twice");
    let late = h.feed(0, b"k", &entry("gold", w, "z", 99, 1));
    assert_eq!(late.outcome, "after_close");
    assert_eq!(late.outputs[0].sink, Sink::DeadLetter);
    h.commit();
    assert_eq!(h.committed(0, b"e/"), 0, "closed window state is dropped");
    assert_eq!(h.committed(0, b"k/"), 0);
}

#[test]
fn snapshots_are_paced_per_board_and_versioned_by_input_position() {
    let mut h = harness();
    let t0 = Instant::now();
    assert!(h.tick(0, t0).is_empty(), "nothing changed yet");
    h.feed(0, b"k", &entry("gold", Board::Lifetime, "a", 10, 1));
    let first = snapshots(&h.tick(0, t0));
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].board.as_str(), first[0].version, first[0].entries.len()), ("lifetime", 1, 1));
    assert!(h.tick(0, t0 + Duration::from_millis(10)).is_empty(), "not dirty");
    h.feed(0, b"k", &entry("gold", Board::Lifetime, "b", 20, 2));
    assert!(h.tick(0, t0 + Duration::from_millis(100)).is_empty(), "within the publish interval");
    let second = snapshots(&h.tick(0, t0 + Duration::from_millis(300)));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].version, 2);
    assert_eq!(second[0].entries[0].player_id, "b");
    assert_eq!(second[0].watermark, None, "no score partition reported yet");
}

#[test]
fn a_closed_windows_leaderboard_key_is_tombstoned_once_after_retention() {
    let mut h = harness();
    let retention = small_topology().spec().windows.leaderboard_retention.as_millis() as i64;
    h.feed(0, b"k", &entry("gold", Board::Window(0), "a", 30, 5));
    h.feed_time(0, None, &mark(0, 70_000));
    let closing = h.feed_time(0, None, &mark(1, 70_000));
    assert_eq!(batches(&closing).len(), 1);
    let tombstones = |p: &Processed| -> Vec<String> {
        let primary = p.outputs.iter().filter(|o| o.sink == Sink::Primary && o.payload.is_empty());
        primary.map(|o| String::from_utf8_lossy(&o.key).into_owned()).collect()
    };
    assert!(tombstones(&closing).is_empty(), "the final snapshot stays for the retention");
    h.commit();
    h.abort(); // reload from RocksDB: the pending tombstone is state
    h.feed_time(0, None, &mark(0, 70_000 + retention));
    assert!(tombstones(&h.feed_time(0, None, &mark(1, 70_000 + retention - 1_000))).is_empty());
    let due = h.feed_time(0, None, &mark(1, 70_000 + retention));
    assert_eq!(tombstones(&due), ["winter-2026/gold/0"]);
    h.feed_time(0, None, &mark(0, 10 * retention));
    assert!(tombstones(&h.feed_time(0, None, &mark(1, 10 * retention))).is_empty(), "only once");
    h.commit();
    assert_eq!(h.committed(0, b"t/"), 0);
}
