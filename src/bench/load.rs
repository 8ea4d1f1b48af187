//! Bulk input for the restart and memory benchmarks: valid game events
//! produced straight to the events topic by a raw idempotent producer,
//! and topology copies with fresh topic names for shared clusters.

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::event::{EventKind, GameEvent};
use crate::kafka::KafkaError;
use crate::topology::{Topology, TopologyError};

/// Event time of the first of `count` bulk events: `count` ms before now,
/// so the last one carries about the wall clock (neither late nor ahead).
pub fn base_time_ms(count: u64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    now.unwrap_or(0) - count as i64
}

/// Which player event `i` belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Players {
    /// Event `i` is player `i % n`: with n >= events, every event a new player.
    RoundRobin(u64),
}

/// Clue event `i`: unique `event_id` (`<prefix>-<i>`), event time `base + i`
/// ms (10M events span 2.8 h, inside claim's 24 h dedup horizon), tier by player.
pub fn bulk_event(topology: &Topology, prefix: &str, i: u64, base: i64, players: Players) -> GameEvent {
    let hunt = &topology.spec().hunts[0];
    let Players::RoundRobin(n) = players;
    let player = i % n.max(1);
    let tier = &hunt.tiers[(player as usize) % hunt.tiers.len()];
    GameEvent {
        v: 1,
        event_id: format!("{prefix}-{i}"),
        hunt_id: hunt.id.clone(),
        shard_id: format!("shard-{}", i % 8),
        region: "eu".into(),
        player_id: format!("player-{player}"),
        tier: tier.name.clone(),
        kind: EventKind::ClueSolved,
        chest_key: None,
        points: 5 + i % 46,
        event_time: base + i as i64,
    }
}

/// Produces `count` events made by `event(i)` for i in `from..from+count`
/// to `topic`, keyed like ingest (claim key); returns the wall time taken.
pub fn produce(
    client: ClientConfig,
    topic: &str,
    from: u64,
    count: u64,
    event: impl Fn(u64) -> GameEvent,
) -> Result<Duration, KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> = client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .create()?;
    let started = Instant::now();
    let mut said = Instant::now();
    for i in from..from + count {
        let e = event(i);
        let payload = e.encode();
        let mut record = BaseRecord::to(topic).key(e.claim_key()).payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1)); // its own thread serves the acks
                }
            }
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!("  produced {} of {count} events", i - from);
            said = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(600))?;
    Ok(started.elapsed())
}

/// The topology with every topic renamed `<name>-<suffix>` (changelogs
/// too), replication 1 and, if given, `partitions` per topic (events,
/// accepted; the others keep theirs, capped at it).
pub fn fresh_topics(topology: &Topology, suffix: &str, partitions: Option<i32>) -> Result<Topology, TopologyError> {
    let mut spec = topology.spec().clone();
    let t = &mut spec.topics;
    for topic in
        [&mut t.events, &mut t.accepted, &mut t.candidates, &mut t.leaderboards, &mut t.prizes, &mut t.dead_letter]
    {
        topic.name = format!("{}-{suffix}", topic.name);
        topic.replication_factor = 1;
        if let Some(p) = partitions {
            topic.partitions = topic.partitions.min(p).max(1);
        }
    }
    if let Some(p) = partitions {
        t.events.partitions = p;
        t.accepted.partitions = p;
    }
    t.changelog_prefix = format!("{}{suffix}.", t.changelog_prefix);
    Topology::from_spec(spec)
}

/// A suffix unique enough for topic names on a shared cluster.
pub fn run_suffix() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("bench{}", ms % 100_000_000)
}
