//! The claim stage on the embedded broker: real transactions, real RocksDB.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{read_topic, test_topology};
use huntflow::claim::ClaimStage;
use huntflow::event::{EventKind, GameEvent};
use huntflow::kafka::{header_str, Cluster, EventProducer, HEADER_REASON_CODE};
use huntflow::stage::{run_worker, WorkerConfig, WorkerReport, HEADER_LINEAGE};
use huntflow::topology::Topology;
use prometheus::Registry;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

fn event(id: &str, player: &str, chest: Option<&str>, time: i64) -> GameEvent {
    GameEvent {
        v: 1,
        event_id: id.into(),
        hunt_id: "winter-2026".into(),
        shard_id: "shard-0".into(),
        region: "eu".into(),
        player_id: player.into(),
        tier: "gold".into(),
        kind: if chest.is_some() { EventKind::ChestOpened } else { EventKind::ClueSolved },
        chest_key: chest.map(Into::into),
        points: 10,
        event_time: time,
    }
}

fn worker_config(cluster: &Cluster, topology: &Topology, state_dir: &Path, instance: u32) -> WorkerConfig {
    let mut settings = huntflow::config::Settings::default();
    settings.state_dir = state_dir.to_path_buf();
    let mut cfg =
        huntflow::pipeline::worker_config(huntflow::pipeline::StageKind::Claim, &settings, cluster, topology, instance);
    cfg.state_dir = state_dir.to_path_buf();
    cfg.transaction_timeout = Duration::from_secs(10);
    cfg.session_timeout = Duration::from_secs(6);
    cfg
}

/// Runs one claim worker until the accepted + dead-letter topics hold
/// `expected` records (counted logically, by lineage), then stops it cleanly.
async fn run_until(cluster: &Cluster, topology: &Topology, dir: &Path, expected: usize) -> WorkerReport {
    let cancel = CancellationToken::new();
    let registry = Registry::new();
    let cfg = worker_config(cluster, topology, dir, 0);
    let worker = tokio::spawn({
        let (cancel, logic) = (cancel.clone(), ClaimStage::new(topology));
        async move { run_worker(cfg, logic, huntflow::stage::WorkerMetrics::new(&registry), cancel).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (acc, dlq) = outputs(cluster, topology).await;
        if logical(&acc).len() + logical(&dlq).len() >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cancel.cancel();
    worker.await.unwrap().unwrap()
}

fn topology_clone() -> Topology {
    test_topology(|s| {
        for t in [&mut s.topics.events, &mut s.topics.accepted] {
            t.partitions = 4;
        }
    })
}

async fn outputs(cluster: &Cluster, topology: &Topology) -> (Vec<OwnedMessage>, Vec<OwnedMessage>) {
    let t = &topology.spec().topics;
    let acc = read_topic(cluster.bootstrap(), &t.accepted.name, usize::MAX, Duration::from_secs(30)).await;
    let dlq = read_topic(cluster.bootstrap(), &t.dead_letter.name, usize::MAX, Duration::from_secs(30)).await;
    (acc, dlq)
}

/// Records keyed by lineage: replays of one input collapse to one.
fn logical(msgs: &[OwnedMessage]) -> BTreeMap<String, &OwnedMessage> {
    msgs.iter().map(|m| (header_str(m, HEADER_LINEAGE).expect("lineage header"), m)).collect()
}

fn accepted_ids(msgs: &[OwnedMessage]) -> BTreeSet<String> {
    logical(msgs).values().map(|m| huntflow::event::decode(m.payload().unwrap(), 1 << 20).unwrap().event_id).collect()
}

async fn produce(cluster: &Cluster, topology: &Topology, events: &[GameEvent], garbage: &[&[u8]]) {
    let producer = EventProducer::new(cluster, topology, Duration::from_secs(10)).unwrap();
    let encoded: Vec<(String, Vec<u8>)> = events.iter().map(|e| (e.claim_key().to_owned(), e.encode())).collect();
    let mut records: Vec<(&str, &[u8])> = encoded.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    records.extend(garbage.iter().map(|g| ("garbage", *g)));
    for r in producer.send_raw_events(&records).await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_events_count_once_and_the_first_chest_claim_wins() {
    let topology = topology_clone();
    let settings = huntflow::config::Settings::default();
    let cluster = Cluster::connect(&settings, &topology).unwrap();
    let mut events = Vec::new();
    for i in 0..200 {
        events.push(event(
            &format!("ev-{i}"),
            &format!("p{}", i % 13),
            (i % 4 == 0).then(|| format!("chest-{}", i % 20)).as_deref(),
            1_000 + i,
        ));
    }
    let retries: Vec<GameEvent> = events.iter().step_by(3).cloned().collect();
    events.extend(retries);
    produce(&cluster, &topology, &events, &[b"{not json", b"\xff\xfe"]).await;

    // Reference: first sighting of each id counts; first claim of each chest wins.
    let mut seen = BTreeSet::new();
    let mut chests = BTreeSet::new();
    let mut expect_accepted = BTreeSet::new();
    let mut expect_rejected = 0;
    for e in &events {
        if !seen.insert(e.event_id.clone()) {
            continue;
        }
        match &e.chest_key {
            Some(c) if !chests.insert(c.clone()) => expect_rejected += 1,
            _ => {
                expect_accepted.insert(e.event_id.clone());
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let report = run_until(&cluster, &topology, dir.path(), expect_accepted.len() + expect_rejected + 2).await;
    assert!(report.commits >= 1);

    let (acc, dlq) = outputs(&cluster, &topology).await;
    assert_eq!(accepted_ids(&acc), expect_accepted);
    assert_eq!(logical(&acc).len(), expect_accepted.len(), "no logical duplicates");
    let dlq = logical(&dlq);
    let codes: Vec<String> = dlq.values().map(|m| header_str(*m, HEADER_REASON_CODE).unwrap()).collect();
    assert_eq!(codes.iter().filter(|c| *c == "chest_already_claimed").count(), expect_rejected);
    assert_eq!(codes.iter().filter(|c| *c == "malformed" || *c == "bad_utf8").count(), 2);
    // Accepted events are re-keyed by player for the score stage.
    for m in &acc {
        let e = huntflow::event::decode(m.payload().unwrap(), 1 << 20).unwrap();
        assert_eq!(m.key().unwrap(), e.player_id.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_only_the_changelog_tail_and_keeps_deduplicating() {
    let topology = topology_clone();
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let first: Vec<GameEvent> = (0..100).map(|i| event(&format!("a-{i}"), "p1", None, 1_000 + i)).collect();
    produce(&cluster, &topology, &first, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let r1 = run_until(&cluster, &topology, dir.path(), 100).await;
    assert_eq!(r1.restored, 0, "nothing to restore on a fresh changelog");

    // Same local store: it already reflects the whole changelog.
    let second: Vec<GameEvent> =
        (0..50).map(|i| event(&format!("b-{i}"), "p2", None, 2_000 + i)).chain(first[..10].iter().cloned()).collect();
    produce(&cluster, &topology, &second, &[]).await;
    let r2 = run_until(&cluster, &topology, dir.path(), 150).await;
    assert_eq!(r2.restored, 0, "a restart with its own store restores no records");

    // A new owner with an empty disk restores the changelog and still knows
    // every event seen so far.
    let third: Vec<GameEvent> =
        first[10..20].iter().cloned().chain((0..5).map(|i| event(&format!("c-{i}"), "p3", None, 3_000 + i))).collect();
    produce(&cluster, &topology, &third, &[]).await;
    let fresh = tempfile::tempdir().unwrap();
    let r3 = run_until(&cluster, &topology, fresh.path(), 155).await;
    assert!(r3.restored >= 150, "restored {} records", r3.restored);

    let (acc, _) = outputs(&cluster, &topology).await;
    let ids = accepted_ids(&acc);
    assert_eq!(ids.len(), 155);
    assert_eq!(logical(&acc).len(), 155);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abortable_commit_failure_rewinds_and_the_result_stays_exact() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let topology = topology_clone();
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let events: Vec<GameEvent> =
        (0..300).map(|i| event(&format!("f-{i}"), &format!("p{}", i % 9), None, 5_000 + i)).collect();
    produce(&cluster, &topology, &events, &[]).await;
    // The first EndTxn (commit) fails with an error librdkafka treats as
    // abortable: the worker must abort, rewind to its committed position,
    // and replay with the same lineage.
    cluster
        .embedded()
        .unwrap()
        .inject_request_errors(RDKafkaApiKey::EndTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = run_until(&cluster, &topology, dir.path(), 300).await;
    assert!(report.aborts >= 1, "{report:?}");

    let (acc, _) = outputs(&cluster, &topology).await;
    assert_eq!(accepted_ids(&acc).len(), 300);
    assert_eq!(logical(&acc).len(), 300, "replays collapse by lineage");
    // The mock broker shows aborted records to read_committed readers: the
    // physical count may be higher, which is exactly why lineage exists.
    assert!(acc.len() >= 300);
}

/// The test topology plus a second hunt, `spring-2027`, with the same tiers.
fn two_hunt_topology() -> Topology {
    test_topology(|s| {
        for t in [&mut s.topics.events, &mut s.topics.accepted] {
            t.partitions = 4;
        }
        let mut second = s.hunts[0].clone();
        second.id = format!("spring-{}", common::random_suffix());
        s.hunts.push(second);
    })
}

fn in_hunt(mut e: GameEvent, hunt: &str, shard: &str) -> GameEvent {
    e.hunt_id = hunt.into();
    e.shard_id = shard.into();
    e
}

fn dead_letters_by_code(dlq: &[OwnedMessage]) -> BTreeMap<String, Vec<&OwnedMessage>> {
    let mut out: BTreeMap<String, Vec<&OwnedMessage>> = BTreeMap::new();
    for m in logical(dlq).into_values() {
        out.entry(header_str(m, HEADER_REASON_CODE).unwrap_or_default()).or_default().push(m);
    }
    out
}

/// (shard, event id) of every logically accepted event.
fn accepted_scoped_ids(msgs: &[OwnedMessage]) -> BTreeSet<(String, String)> {
    logical(msgs)
        .values()
        .map(|m| huntflow::event::decode(m.payload().unwrap(), 1 << 20).unwrap())
        .map(|e| (e.shard_id, e.event_id))
        .collect()
}

/// verify's claim checks (accepted set, dead-letter counts) on what was written.
async fn verify_claim_rows(cluster: &Cluster, topology: &Topology) -> Vec<String> {
    let report = huntflow::verify::verify(cluster.client_config(), topology, Duration::from_secs(20)).await.unwrap();
    report.problems.into_iter().filter(|p| p.starts_with("claim ") || p.contains("accepted")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hunts_with_the_same_chest_key_both_have_a_winner() {
    let topology = two_hunt_topology();
    let (winter, spring) = (topology.spec().hunts[0].id.clone(), topology.spec().hunts[1].id.clone());
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let chest = format!("chest-{}", common::random_suffix());
    let events = vec![
        in_hunt(event("w-1", "p1", Some(&chest), 1_000), &winter, "shard-0"),
        in_hunt(event("s-1", "p2", Some(&chest), 1_001), &spring, "shard-1"),
        in_hunt(event("s-2", "p3", Some(&chest), 1_002), &spring, "shard-1"),
    ];
    produce(&cluster, &topology, &events, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    run_until(&cluster, &topology, dir.path(), 3).await;

    let (acc, dlq) = outputs(&cluster, &topology).await;
    assert_eq!(accepted_ids(&acc), BTreeSet::from(["w-1".to_owned(), "s-1".to_owned()]));
    let codes = dead_letters_by_code(&dlq);
    assert_eq!(codes.keys().collect::<Vec<_>>(), ["chest_already_claimed"]);
    let lost = codes["chest_already_claimed"][0];
    assert_eq!(huntflow::event::decode(lost.payload().unwrap(), 1 << 20).unwrap().event_id, "s-2");
    // The events topic stays keyed by the chest key alone (a contract).
    let events_topic = &topology.spec().topics.events.name;
    let written = read_topic(cluster.bootstrap(), events_topic, 3, Duration::from_secs(10)).await;
    assert!(written.iter().all(|m| m.key() == Some(chest.as_bytes())));
    assert_eq!(verify_claim_rows(&cluster, &topology).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_cannot_suppress_another_shards_event_by_posting_its_id_first() {
    let topology = topology_clone();
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let id = format!("shard-0-{}", common::random_suffix());
    let hunt = topology.spec().hunts[0].id.clone();
    let squatter = in_hunt(event(&id, "p-evil", None, 1_000), &hunt, "shard-9");
    let genuine = in_hunt(event(&id, "p-good", None, 1_001), &hunt, "shard-0");
    // A retry of the genuine event, then a changed copy: the dead letter of
    // the latter (same partition, later offset) shows the retry was handled.
    let changed = GameEvent { points: 77, ..genuine.clone() };
    produce(&cluster, &topology, &[squatter, genuine.clone(), genuine, changed], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    run_until(&cluster, &topology, dir.path(), 3).await;

    let (acc, dlq) = outputs(&cluster, &topology).await;
    let want = BTreeSet::from([("shard-9".to_owned(), id.clone()), ("shard-0".to_owned(), id.clone())]);
    assert_eq!(accepted_scoped_ids(&acc), want, "both shards' events count");
    assert_eq!(logical(&acc).len(), 2, "the retry is dropped");
    let codes = dead_letters_by_code(&dlq);
    assert_eq!(codes.keys().collect::<Vec<_>>(), ["conflicting_duplicate"]);
    assert_eq!(verify_claim_rows(&cluster, &topology).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_with_different_content_is_dead_lettered_as_a_conflicting_duplicate() {
    let topology = topology_clone();
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let id = format!("ev-{}", common::random_suffix());
    let first = event(&id, "p1", None, 1_000);
    let more_points = GameEvent { points: 500, ..first.clone() };
    let other_player = GameEvent { player_id: "p2".into(), ..first.clone() };
    // One partition (same key), in this order: the last dead letter shows
    // that the retries before it were handled (and dropped).
    let events = [first.clone(), first.clone(), more_points.clone(), first.clone(), other_player.clone()];
    produce(&cluster, &topology, &events, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    run_until(&cluster, &topology, dir.path(), 3).await;

    let (acc, dlq) = outputs(&cluster, &topology).await;
    assert_eq!(logical(&acc).len(), 1);
    let accepted = huntflow::event::decode(logical(&acc).values().next().unwrap().payload().unwrap(), 1 << 20).unwrap();
    assert_eq!(accepted, first, "the first copy counts");
    let codes = dead_letters_by_code(&dlq);
    assert_eq!(codes.keys().collect::<Vec<_>>(), ["conflicting_duplicate"]);
    let conflicts = &codes["conflicting_duplicate"];
    assert_eq!(conflicts.len(), 2);
    let payloads: BTreeSet<Vec<u8>> = conflicts.iter().map(|m| m.payload().unwrap().to_vec()).collect();
    assert_eq!(payloads, BTreeSet::from([more_points.encode(), other_player.encode()]), "kept verbatim");
    for m in conflicts {
        let reason = header_str(*m, huntflow::kafka::HEADER_REASON).unwrap();
        assert!(reason.contains(&id) && reason.contains("different content"), "{reason}");
        assert_eq!(header_str(*m, huntflow::kafka::HEADER_STAGE).as_deref(), Some("claim"));
    }
    assert_eq!(verify_claim_rows(&cluster, &topology).await, Vec::<String>::new());
}
