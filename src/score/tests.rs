use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::event::GameEvent;
use crate::pipeline::{time_config, StageKind};
use crate::stage::testing::LogicHarness;
use crate::topology::{RankRewardSpec, Topology};
use crate::windowing::TimeRecord;

pub(crate) fn small_topology() -> Topology {
    let mut spec = Topology::parse(include_str!("../../topology/treasure-hunt.yaml")).expect("shipped").spec().clone();
    spec.topics.events.partitions = 1;
    spec.topics.accepted.partitions = 2;
    spec.topics.candidates.partitions = 3;
    spec.stages.top_n = 3;
    for hunt in &mut spec.hunts {
        for tier in &mut hunt.tiers {
            tier.rank_rewards =
                vec![RankRewardSpec { from: 1, to: 1, reward: 500 }, RankRewardSpec { from: 2, to: 3, reward: 100 }];
        }
    }
    Topology::from_spec(spec).expect("valid")
}

pub(crate) fn event(id: u32, player: u32, tier: &str, points: u64, time: i64, chest: bool) -> Vec<u8> {
    GameEvent {
        v: 1,
        event_id: format!("e{id}"),
        hunt_id: "winter-2026".into(),
        shard_id: "shard-0".into(),
        region: "eu".into(),
        player_id: format!("p{player}"),
        tier: tier.into(),
        kind: if chest { EventKind::ChestOpened } else { EventKind::ClueSolved },
        chest_key: chest.then(|| format!("c{id}")),
        points,
        event_time: time,
    }
    .encode()
}

fn harness(topology: &Topology) -> LogicHarness<ScoreStage> {
    LogicHarness::new(ScoreStage::new(topology).unwrap(), time_config(StageKind::Score, topology))
}

#[test]
fn event_beyond_grace_goes_to_dead_letter_and_counts_nowhere() {
    let mut h = harness(&small_topology());
    assert_eq!(h.feed(0, b"p1", &event(1, 1, "gold", 10, 1_000, false)).outcome, "scored");
    // Window [0, 60s) closes at 70 s: this moves the watermark there.
    h.feed(0, b"p2", &event(2, 2, "gold", 10, 70_000, false));
    let late = h.feed(0, b"p1", &event(3, 1, "gold", 10, 59_999, false));
    assert_eq!(late.outcome, "late");
    assert_eq!(late.outputs.len(), 1);
    assert_eq!(late.outputs[0].sink, Sink::DeadLetter);
    assert!(late.outputs[0].headers.iter().any(|(k, v)| *k == crate::kafka::HEADER_REASON_CODE && v == "late_event"));
    // Within grace for the next window: counted.
    assert_eq!(h.feed(0, b"p1", &event(4, 1, "gold", 10, 60_000, false)).outcome, "scored");
}

#[test]
fn watermark_is_broadcast_to_every_rank_partition_once_per_second() {
    let mut h = harness(&small_topology());
    let marks = |p: &Processed| {
        p.outputs.iter().filter(|o| o.partition.is_some()).map(|o| (o.partition.unwrap(), o.payload.clone())).count()
    };
    assert_eq!(marks(&h.feed(1, b"p", &event(1, 1, "gold", 1, 1_500, false))), 3);
    assert_eq!(marks(&h.feed(1, b"p", &event(2, 1, "gold", 1, 1_999, false))), 0);
    let p = h.feed(1, b"p", &event(3, 1, "gold", 1, 2_000, false));
    assert_eq!(marks(&p), 3);
    let forwarded: Vec<TimeRecord> =
        p.outputs.iter().filter(|o| o.partition.is_some()).map(|o| TimeRecord::decode(&o.payload).unwrap()).collect();
    assert!(forwarded.contains(&TimeRecord::Watermark { partition: 1, partitions: 2, watermark: 2_000 }));
    // Older events never move it back.
    assert_eq!(marks(&h.feed(1, b"p", &event(4, 1, "gold", 1, 500, false))), 0);
}

#[test]
fn forwarded_claim_watermarks_close_windows_without_any_event() {
    let mut h = harness(&small_topology());
    h.feed(0, b"p1", &event(1, 1, "gold", 10, 1_000, false));
    h.commit();
    let heartbeat = |t| TimeRecord::Watermark { partition: 0, partitions: 1, watermark: t };
    let p = h.feed_time(0, Some(0), &heartbeat(69_000));
    assert_eq!(p.outcome, "watermark");
    assert_eq!(p.outputs.len(), 3, "forwarded to every rank partition");
    h.feed_time(0, Some(0), &heartbeat(70_000));
    assert_eq!(h.feed(0, b"p1", &event(2, 1, "gold", 10, 59_000, false)).outcome, "late");
    h.commit();
    assert_eq!(h.committed(0, b"w/"), 0, "the closed window's sums are purged");
}

#[test]
fn watermark_is_the_slowest_claim_partition_so_a_burst_from_one_makes_nothing_late() {
    let topology = {
        let mut spec = small_topology().spec().clone();
        spec.topics.events.partitions = 2;
        Topology::from_spec(spec).unwrap()
    };
    let mut h = harness(&topology);
    // Claim partition 0 runs far ahead: no watermark until partition 1 reports.
    h.feed_from(0, Some(0), b"p", &event(1, 1, "gold", 10, 500_000, false));
    assert_eq!(h.feed_from(0, Some(1), b"p", &event(2, 1, "gold", 10, 1_000, false)).outcome, "scored");
    // Now the watermark is min(500 s, 1 s): an event at 2 s is still on time.
    assert_eq!(h.feed_from(0, Some(1), b"p", &event(3, 1, "gold", 10, 2_000, false)).outcome, "scored");
    h.feed_from(0, Some(1), b"p", &event(4, 1, "gold", 10, 100_000, false));
    // Both partitions passed 70 s: window [0, 60 s) is closed.
    assert_eq!(h.feed_from(0, Some(1), b"p", &event(5, 1, "gold", 10, 3_000, false)).outcome, "late");
}

#[test]
fn closed_windows_are_purged_from_state() {
    let mut h = harness(&small_topology());
    h.feed(0, b"p1", &event(1, 1, "gold", 10, 1_000, false));
    h.commit();
    assert_eq!(h.committed(0, b"w/"), 1);
    assert_eq!(h.committed(0, b"t/"), 2);
    h.feed(0, b"p1", &event(2, 1, "gold", 10, 200_000, false));
    h.commit();
    // Window 0 closed: its sum and top-N are gone; the new window's remain.
    assert_eq!(h.committed(0, b"w/"), 1);
    assert_eq!(h.committed(0, b"t/"), 2);
    assert_eq!(h.committed(0, b"l/"), 1);
}

type Boards = BTreeMap<(String, Board), BTreeMap<String, (u64, i64)>>;

fn apply(view: &mut Boards, c: &Candidate) {
    match c {
        Candidate::Entry { tier, board, player_id, points, reached_at, .. } => {
            view.entry((tier.clone(), *board)).or_default().insert(player_id.clone(), (*points, *reached_at));
        }
        Candidate::Evict { tier, board, player_id, .. } => {
            view.entry((tier.clone(), *board)).or_default().remove(player_id);
        }
        _ => {}
    }
}

/// What the partition's top-3 per board must be, computed the slow way.
fn reference(events: &[(u32, u64, i64, bool)]) -> Boards {
    let windows = TumblingWindows::new(60_000, 10_000).unwrap();
    let mut wm = i64::MIN;
    let mut sums: HashMap<(String, Board), HashMap<String, (u64, i64)>> = HashMap::new();
    for &(player, points, t, gold) in events {
        if windows.is_late(t, wm) {
            continue;
        }
        wm = wm.max(t);
        if points == 0 {
            continue;
        }
        let tier = if gold { "gold" } else { "bronze" };
        for board in [Board::Window(windows.window_start(t)), Board::Lifetime] {
            let s = sums.entry((tier.into(), board)).or_default().entry(format!("p{player}")).or_insert((0, i64::MIN));
            s.0 += points;
            s.1 = s.1.max(t);
        }
    }
    sums.into_iter()
        .map(|(b, players)| {
            let mut v: Vec<Entry> = players
                .into_iter()
                .map(|(player_id, (points, reached_at))| Entry { player_id, points, reached_at })
                .collect();
            v.sort();
            (b, v.into_iter().take(3).map(|e| (e.player_id, (e.points, e.reached_at))).collect())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Forwarded changes rebuild exactly the reference top-3 of every board,
    /// through commits and aborts; a replay after an abort writes the same bytes.
    #[test]
    fn forwarded_changes_rebuild_the_reference_top_n(
        events in proptest::collection::vec((0u32..12, 0u64..40, 0i64..400_000, any::<bool>()), 1..120),
        cuts in proptest::collection::vec(0usize..3, 120),
    ) {
        let mut h = harness(&small_topology());
        let mut view = Boards::new();
        let mut since_commit: Vec<(usize, Vec<Output>)> = Vec::new();
        for (i, &(player, points, t, gold)) in events.iter().enumerate() {
            let tier = if gold { "gold" } else { "bronze" };
            let p = h.feed(0, b"k", &event(i as u32, player, tier, points, t, false));
            since_commit.push((i, p.outputs.clone()));
            match cuts[i] {
                0 => {
                    h.commit();
                    for (_, outs) in since_commit.drain(..) {
                        for o in outs.iter().filter(|o| o.sink == Sink::Primary && o.partition.is_none()) {
                            apply(&mut view, &Candidate::decode(&o.payload).unwrap());
                        }
                    }
                }
                1 => {
                    h.abort();
                    for (j, outs) in std::mem::take(&mut since_commit) {
                        let (player, points, t, gold) = events[j];
                        let tier = if gold { "gold" } else { "bronze" };
                        let again = h.feed(0, b"k", &event(j as u32, player, tier, points, t, false));
                        prop_assert_eq!(&again.outputs, &outs);
                        since_commit.push((j, outs));
                    }
                }
                _ => {}
            }
        }
        for (_, outs) in since_commit {
            for o in outs.iter().filter(|o| o.sink == Sink::Primary && o.partition.is_none()) {
                apply(&mut view, &Candidate::decode(&o.payload).unwrap());
            }
        }
        view.retain(|_, v| !v.is_empty());
        prop_assert_eq!(view, reference(&events));
    }
}
