//! The stage runtime with a real broker and RocksDB. Its error policy: a record
//! the stage cannot process is dead-lettered (stage, partition, offset and
//! the error in its reason) after a replay up to it, its half-applied state
//! is rolled back, and the partition keeps flowing.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{read_topic, test_topology};
use huntflow::claim::ClaimStage;
use huntflow::event::{EventKind, GameEvent};
use huntflow::kafka::{header_str, Cluster, EventProducer};
use huntflow::stage::{
    run_worker, Input, Output, PartitionState, Processed, Sink, StageError, StageLogic, WorkerMetrics,
    REASON_PROCESSING_FAILED,
};
use prometheus::Registry;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

/// The claim stage, except that it fails on events of player `poison`
/// after writing some state (which must not survive).
struct FailsOnPoison(ClaimStage);

impl StageLogic for FailsOnPoison {
    fn name(&self) -> &'static str {
        "claim"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        if std::str::from_utf8(input.payload).is_ok_and(|p| p.contains("\"player_id\":\"poison\"")) {
            state.put(b"x/half-done".to_vec(), b"1".to_vec());
            return Err(StageError::Poison("the stage cannot handle this player".into()));
        }
        self.0.process(state, input)
    }
}

fn event(id: usize, player: &str) -> GameEvent {
    GameEvent {
        v: 1,
        event_id: format!("ev-{id}"),
        hunt_id: "winter-2026".into(),
        shard_id: "shard-0".into(),
        region: "eu".into(),
        player_id: player.into(),
        tier: "gold".into(),
        kind: EventKind::ClueSolved,
        chest_key: None,
        points: 10,
        event_time: 1_000 + id as i64,
    }
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?.iter().find(|h| h.key == name).map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_stage_cannot_process_is_dead_lettered_and_its_partition_keeps_flowing() {
    // One events partition: the poison record sits between healthy ones.
    let topology = test_topology(|s| {
        s.topics.events.partitions = 1;
        s.topics.accepted.partitions = 2;
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = huntflow::config::Settings::default();
    settings.state_dir = dir.path().to_path_buf();
    let cluster = Cluster::connect(&settings, &topology).unwrap();
    let events: Vec<GameEvent> = (0..300).map(|i| event(i, if i == 150 { "poison" } else { "healthy" })).collect();
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(10)).unwrap();
    for r in producer.send_events(&events).await {
        r.unwrap();
    }

    let cfg =
        huntflow::pipeline::worker_config(huntflow::pipeline::StageKind::Claim, &settings, &cluster, &topology, 0);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn({
        let (cancel, logic) = (cancel.clone(), FailsOnPoison(ClaimStage::new(&topology)));
        async move { run_worker(cfg, logic, WorkerMetrics::new(&Registry::new()), cancel).await }
    });
    let t = &topology.spec().topics;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (accepted, dead) = loop {
        let acc = read_topic(cluster.bootstrap(), &t.accepted.name, 299, Duration::from_secs(2)).await;
        let dead = read_topic(cluster.bootstrap(), &t.dead_letter.name, 1, Duration::from_millis(300)).await;
        let ids: BTreeSet<String> = acc
            .iter()
            .filter_map(|m| huntflow::event::decode(m.payload()?, 1 << 20).ok())
            .map(|e| e.event_id)
            .collect();
        if (ids.len() >= 299 && !dead.is_empty()) || Instant::now() > deadline {
            break (ids, dead);
        }
    };
    cancel.cancel();
    let report = worker.await.unwrap().expect("the worker survives the poison record");

    assert_eq!(accepted.len(), 299, "every healthy event, before and after the poison one");
    assert!(!accepted.contains("ev-150"));
    let dead: Vec<&OwnedMessage> =
        dead.iter().filter(|m| header(m, "huntflow-stage").as_deref() == Some("claim")).collect();
    assert_eq!(dead.len(), 1, "dead-lettered once");
    let d = dead[0];
    assert_eq!(header(d, "huntflow-reason-code").as_deref(), Some(REASON_PROCESSING_FAILED));
    let reason = header(d, "huntflow-reason").unwrap();
    assert!(reason.contains(&format!("{} partition 0 offset 150", t.events.name)), "{reason}");
    assert!(reason.contains("cannot handle this player"), "{reason}");
    assert_eq!(d.payload().unwrap(), events[150].encode().as_slice(), "the original bytes");
    assert!(header_str(d, "huntflow-lineage").is_some());
    assert!(report.aborts >= 1, "the failed transaction was aborted and replayed");

    // Within a transaction the runtime's own keys (`\0pos`, lineage, time)
    // follow the state they cover: the changelog starts with state and ends
    // with the position.
    let changelog =
        read_topic(cluster.bootstrap(), &format!("{}claim", t.changelog_prefix), usize::MAX, Duration::from_secs(30))
            .await;
    let keys: Vec<&[u8]> =
        changelog.iter().filter(|m| m.partition() == 0).map(|m| m.key().unwrap_or_default()).collect();
    assert!(keys.first().is_some_and(|k| !k.starts_with(b"\0")), "state first");
    assert!(keys.last().is_some_and(|k| k.starts_with(b"\0")), "position last");

    // The half-applied write of the failed attempt did not survive.
    let store = huntflow::state::StateStore::open(
        &settings.state_dir.join("claim-0"),
        huntflow::state::StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(store.get(0, b"x/half-done").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_built_with_another_reward_table_is_refused_unless_allowed() {
    let topology = test_topology(|s| {
        s.topics.events.partitions = 1;
        s.topics.accepted.partitions = 1;
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = huntflow::config::Settings::default();
    settings.state_dir = dir.path().to_path_buf();
    let cluster = Cluster::connect(&settings, &topology).unwrap();
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(10)).unwrap();
    for r in producer.send_events(&[event(1, "a")]).await {
        r.unwrap();
    }
    let start = |topology: huntflow::topology::Topology, allow: bool| {
        let mut cfg =
            huntflow::pipeline::worker_config(huntflow::pipeline::StageKind::Claim, &settings, &cluster, &topology, 0);
        cfg.allow_topology_change = allow;
        let (cancel, registry) = (CancellationToken::new(), Registry::new());
        let metrics = WorkerMetrics::new(&registry);
        let worker = tokio::spawn({
            let (cancel, logic) = (cancel.clone(), ClaimStage::new(&topology));
            async move { run_worker(cfg, logic, metrics, cancel).await }
        });
        (worker, cancel, registry)
    };
    // Waits until the worker counted `at_least` of metric `name` (read to a
    // known state, not slept for).
    let reached = |registry: &Registry, name: &str, at_least: f64| {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).collect::<Vec<_>>())
            .sum::<f64>()
            >= at_least
    };
    let wait_for = |registry: Registry, name: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reached(&registry, name, 1.0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // First run: state (and its topology record) committed.
    let (worker, cancel, registry) = start(topology.clone(), false);
    wait_for(registry, "huntflow_stage_transactions_total").await;
    cancel.cancel();
    assert!(worker.await.unwrap().unwrap().commits >= 1);

    // The gold tier pays differently now: the old standings must not be reused.
    let mut spec = topology.spec().clone();
    let gold = spec.hunts[0].tiers.iter_mut().find(|t| t.name == "gold").unwrap();
    gold.chest_reward += 1;
    let changed = huntflow::topology::Topology::from_spec(spec).unwrap();
    let (worker, _cancel, _) = start(changed.clone(), false);
    let err = tokio::time::timeout(Duration::from_secs(90), worker).await.expect("stops by itself").unwrap();
    let err = err.unwrap_err().to_string();
    assert!(err.contains("winter-2026/gold changed"), "{err}");
    assert!(err.contains("--allow-topology-change"), "{err}");

    let (worker, cancel, registry) = start(changed, true);
    wait_for(registry, "huntflow_stage_rebalances_total").await;
    cancel.cancel();
    worker.await.unwrap().expect("allowed explicitly");
}

/// Remembers every event id it sees (`k/<id>`); an event of player `forget`
/// deletes them all, as a closed window's state is dropped. Each output says
/// how many of the ids `ev-0..ev-9` the state holds.
struct Keeper;

impl StageLogic for Keeper {
    fn name(&self) -> &'static str {
        "claim"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        let e = huntflow::event::decode(input.payload, 1 << 20).map_err(|e| StageError::Poison(e.to_string()))?;
        let key = |id: &str| format!("k/{id}").into_bytes();
        if e.player_id == "forget" {
            (0..10).for_each(|i| state.delete(key(&format!("ev-{i}"))));
        } else {
            state.put(key(&e.event_id), b"1".to_vec());
        }
        let mut held = 0;
        for i in 0..10 {
            held += usize::from(state.get(&key(&format!("ev-{i}")))?.is_some());
        }
        let payload = format!("{} held={held}", e.event_id).into_bytes();
        let out = Output { sink: Sink::Primary, key: b"k".to_vec(), payload, partition: None, headers: Vec::new() };
        Ok(Processed::new("accepted", vec![out]))
    }
}

/// Runs a `Keeper` worker on `dir` until the accepted topic holds `outputs`
/// records, then stops it cleanly; returns them.
async fn keep_until(
    cluster: &Cluster,
    topology: &huntflow::topology::Topology,
    dir: &std::path::Path,
    outputs: usize,
) -> Vec<String> {
    let mut settings = huntflow::config::Settings::default();
    settings.state_dir = dir.to_path_buf();
    let cfg = huntflow::pipeline::worker_config(huntflow::pipeline::StageKind::Claim, &settings, cluster, topology, 0);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn({
        let cancel = cancel.clone();
        async move { run_worker(cfg, Keeper, WorkerMetrics::new(&Registry::new()), cancel).await }
    });
    let topic = &topology.spec().topics.accepted.name;
    let got = read_topic(cluster.bootstrap(), topic, outputs, Duration::from_secs(60)).await;
    cancel.cancel();
    worker.await.unwrap().expect("the worker stops cleanly");
    got.iter().map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_returning_to_its_old_store_applies_what_the_other_owner_deleted() {
    let topology = test_topology(|s| {
        s.topics.events.partitions = 1;
        s.topics.accepted.partitions = 1;
    });
    let cluster = Cluster::connect(&huntflow::config::Settings::default(), &topology).unwrap();
    let producer = EventProducer::new(&cluster, &topology, Duration::from_secs(10)).unwrap();
    let send = |events: Vec<GameEvent>| {
        let producer = &producer;
        async move { producer.send_events(&events).await.into_iter().for_each(|r| r.unwrap()) }
    };
    let (old, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // The first owner builds state for ten ids...
    send((0..10).map(|i| event(i, "p1")).collect()).await;
    let out = keep_until(&cluster, &topology, old.path(), 10).await;
    assert_eq!(out.last().map(String::as_str), Some("ev-9 held=10"));
    // ...another owner restores it from the changelog and drops it...
    send(vec![event(10, "forget")]).await;
    let out = keep_until(&cluster, &topology, other.path(), 11).await;
    assert_eq!(out.last().map(String::as_str), Some("ev-10 held=0"));
    // ...and when the partition returns to the first owner's store, the
    // dropped state stays dropped (the tail it restores holds the deletes).
    send(vec![event(11, "p1")]).await;
    let out = keep_until(&cluster, &topology, old.path(), 12).await;
    assert_eq!(out.last().map(String::as_str), Some("ev-11 held=0"), "{out:?}");
}
