//! Claim logic against a real RocksDB store (no Kafka), and against the
//! reference model in `verify`, which shares no code with it.

use proptest::prelude::*;

use super::*;
use crate::pipeline::{time_config, StageKind};
use crate::stage::testing::LogicHarness;
use crate::topology::TopologySpec;
use crate::verify::reference;

const SHIPPED: &str = include_str!("../../topology/treasure-hunt.yaml");

/// The shipped topology plus a second hunt `spring-2027` with the same tiers.
fn two_hunts(ttl_ms: u64) -> Topology {
    let mut spec: TopologySpec = Topology::parse(SHIPPED).expect("shipped topology").spec().clone();
    let mut second = spec.hunts[0].clone();
    second.id = "spring-2027".into();
    spec.hunts.push(second);
    spec.stages.dedup_ttl = crate::topology::HumanDuration::from_millis(ttl_ms);
    Topology::from_spec(spec).expect("valid topology")
}

fn event(shard: &str, id: &str, hunt: &str, chest: Option<&str>, points: u64, time: i64) -> GameEvent {
    GameEvent {
        v: 1,
        event_id: id.into(),
        hunt_id: hunt.into(),
        shard_id: shard.into(),
        region: "eu".into(),
        player_id: format!("p-{id}"),
        tier: "gold".into(),
        kind: if chest.is_some() { EventKind::ChestOpened } else { EventKind::ClueSolved },
        chest_key: chest.map(Into::into),
        points,
        event_time: time,
    }
}

/// Feeds every event to partition 0; returns (outcome, reason code) each.
fn run_stage(topology: &Topology, events: &[GameEvent], commit_every: usize) -> Vec<(String, Option<String>)> {
    run_stage_restoring(topology, events, commit_every, false)
}

/// As `run_stage`; with `restore`, every commit is followed by a move to a
/// fresh store restored from the changelog.
fn run_stage_restoring(
    topology: &Topology,
    events: &[GameEvent],
    commit_every: usize,
    restore: bool,
) -> Vec<(String, Option<String>)> {
    let mut h = LogicHarness::new(ClaimStage::new(topology), time_config(StageKind::Claim, topology));
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let p = h.feed(0, e.claim_key().as_bytes(), &e.encode());
        let code = p.outputs.iter().find(|o| o.sink == Sink::DeadLetter).and_then(|o| {
            o.headers.iter().find(|(k, _)| *k == crate::kafka::HEADER_REASON_CODE).map(|(_, v)| v.clone())
        });
        out.push((p.outcome.to_owned(), code));
        if commit_every > 0 && (i + 1) % commit_every == 0 {
            h.commit();
            if restore {
                h.restore_to_fresh_store();
            }
        }
    }
    out
}

fn run_reference(topology: &Topology, events: &[GameEvent]) -> reference::ClaimOutcome {
    let encoded: Vec<Vec<u8>> = events.iter().map(GameEvent::encode).collect();
    let records: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    reference::claim(&records, topology)
}

#[test]
fn two_hunts_may_reuse_a_chest_name_and_each_has_one_winner() {
    let t = two_hunts(86_400_000);
    let events = [
        event("shard-0", "a", "winter-2026", Some("chest-1"), 10, 1_000),
        event("shard-0", "b", "spring-2027", Some("chest-1"), 10, 1_001),
        event("shard-1", "c", "spring-2027", Some("chest-1"), 10, 1_002),
    ];
    let got = run_stage(&t, &events, 0);
    assert_eq!(got[0].0, "accepted");
    assert_eq!(got[1].0, "accepted", "another hunt's chest of the same name is a different chest");
    assert_eq!(got[2], ("chest_rejected".into(), Some("chest_already_claimed".into())));
    let r = run_reference(&t, &events);
    assert_eq!((r.accepted.len(), r.chest_rejected), (2, 1));
}

#[test]
fn a_shard_cannot_suppress_another_shards_event_by_posting_its_id_first() {
    let t = two_hunts(86_400_000);
    let events = [
        event("shard-evil", "shard-0-17", "winter-2026", None, 1, 1_000),
        event("shard-0", "shard-0-17", "winter-2026", None, 50, 1_001),
        event("shard-0", "shard-0-17", "winter-2026", None, 50, 1_001),
    ];
    let got = run_stage(&t, &events, 0);
    let outcomes: Vec<&str> = got.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["accepted", "accepted", "duplicate"]);
    let r = run_reference(&t, &events);
    assert_eq!((r.accepted.len(), r.retries, r.conflicting), (2, 1, 0));
}

#[test]
fn a_reused_event_id_with_other_content_is_dead_lettered_and_the_first_copy_counts() {
    let t = two_hunts(86_400_000);
    let first = event("shard-0", "e-1", "winter-2026", None, 10, 1_000);
    let changed = GameEvent { points: 999, ..first.clone() };
    let mut h = LogicHarness::new(ClaimStage::new(&t), time_config(StageKind::Claim, &t));
    assert_eq!(h.feed(0, b"e-1", &first.encode()).outcome, "accepted");
    h.commit();
    let p = h.feed(0, b"e-1", &changed.encode());
    assert_eq!(p.outcome, "conflicting_duplicate");
    let headers = &p.outputs[0].headers;
    let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
    assert_eq!(header(crate::kafka::HEADER_REASON_CODE), Some(CONFLICTING_DUPLICATE));
    let reason = header(crate::kafka::HEADER_REASON).unwrap_or_default();
    assert!(reason.contains("e-1") && reason.contains("different content"), "{reason}");
    assert_eq!(p.outputs[0].payload, changed.encode(), "the conflicting copy is kept verbatim");
    // An identical retry stays a silent duplicate, also after the conflict.
    assert_eq!(h.feed(0, b"e-1", &first.encode()).outcome, "duplicate");

    let r = run_reference(&t, &[first.clone(), changed, first]);
    assert_eq!((r.accepted.len(), r.retries, r.conflicting), (1, 1, 1));
}

#[test]
fn after_the_ttl_an_event_id_counts_again_whatever_its_content() {
    let t = two_hunts(100);
    let first = event("shard-0", "e-1", "winter-2026", None, 10, 1_000);
    let later = event("shard-0", "e-1", "winter-2026", None, 20, 1_200);
    let filler = event("shard-0", "e-2", "winter-2026", None, 1, 1_150);
    let got = run_stage(&t, &[first.clone(), filler.clone(), later.clone()], 1);
    let outcomes: Vec<&str> = got.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["accepted", "accepted", "accepted"]);
    assert_eq!(run_reference(&t, &[first, filler, later]).accepted.len(), 3);
}

#[test]
fn a_store_restored_from_the_changelog_rebuilds_the_expiry_index_and_still_expires() {
    let t = two_hunts(100);
    let mut h = LogicHarness::new(ClaimStage::new(&t), time_config(StageKind::Claim, &t));
    let events: Vec<GameEvent> =
        (0..20).map(|i| event("shard-0", &format!("e-{i}"), "winter-2026", None, 1, 1_000 + i)).collect();
    for e in &events {
        assert_eq!(h.feed(0, e.claim_key().as_bytes(), &e.encode()).outcome, "accepted");
    }
    h.commit();
    h.restore_to_fresh_store();
    assert_eq!(h.committed(0, b"d/"), 20, "dedup entries come back from the changelog");
    assert_eq!(h.committed(0, b"e/"), 20, "the expiry index is rebuilt, not restored");
    assert_eq!(h.feed(0, events[3].claim_key().as_bytes(), &events[3].encode()).outcome, "duplicate");
    let much_later = event("shard-0", "late-1", "winter-2026", None, 1, 5_000);
    assert_eq!(h.feed(0, much_later.claim_key().as_bytes(), &much_later.encode()).outcome, "accepted");
    h.commit();
    assert_eq!((h.committed(0, b"d/"), h.committed(0, b"e/")), (1, 1), "expired entries are purged");
}

fn arb_event() -> impl Strategy<Value = GameEvent> {
    (0..2usize, 0..5usize, 0..2usize, prop::option::of(0..3usize), 0..3u64, 0..400i64).prop_map(
        |(shard, id, hunt, chest, points, time)| {
            let hunt = ["winter-2026", "spring-2027"][hunt];
            let chest = chest.map(|c| format!("chest-{c}"));
            event(&format!("shard-{shard}"), &format!("ev-{id}"), hunt, chest.as_deref(), points, time)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Same accepted events, in order, and the same counts of retries,
    /// conflicting copies and lost chest claims, whatever the interleaving
    /// of shards, hunts, reused ids, changed copies, expiry and commits, and
    /// also when every commit moves the partition to a store restored from
    /// the changelog.
    #[test]
    fn the_stage_decides_as_the_reference_model(
        events in prop::collection::vec(arb_event(), 1..60),
        commit_every in 0..8usize,
        ttl in prop::sample::select(vec![50u64, 150, 86_400_000]),
        restore in any::<bool>(),
    ) {
        let t = two_hunts(ttl);
        let stage = run_stage_restoring(&t, &events, commit_every, restore);
        let r = run_reference(&t, &events);
        let count = |o: &str| stage.iter().filter(|(x, _)| x == o).count() as u64;
        let accepted: Vec<(String, String)> = events
            .iter()
            .zip(&stage)
            .filter(|(_, (o, _))| o == "accepted")
            .map(|(e, _)| (e.shard_id.clone(), e.event_id.clone()))
            .collect();
        let want: Vec<(String, String)> = r.accepted.iter().map(|e| (e.shard.clone(), e.event_id.clone())).collect();
        prop_assert_eq!(accepted, want);
        prop_assert_eq!(count("duplicate"), r.retries);
        prop_assert_eq!(count("conflicting_duplicate"), r.conflicting);
        prop_assert_eq!(count("chest_rejected"), r.chest_rejected);
    }
}
