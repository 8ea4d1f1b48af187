//! Deterministic synthetic shard traffic. Same seed, same shard -> the same
//! events in the same order, so failures found by a simulated run replay.
//! Event times follow the wall clock (a live shard's), because the writers'
//! heartbeats close windows on it; a fixed `start_time_ms` gives fully
//! reproducible bytes instead.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::event::{EventKind, GameEvent};
use crate::topology::Topology;

/// Knobs of the synthetic traffic.
#[derive(Clone, Debug)]
pub struct TrafficShape {
    pub seed: u64,
    pub players: u64,
    /// Zipf exponent of player activity (1.0 = classic Zipf).
    pub zipf_exponent: f64,
    /// Distinct chest keys across the whole hunt; fewer keys, more collisions.
    pub chest_keys: u64,
    /// Share of items that are a retry of an event already sent.
    pub duplicate_ratio: f64,
    /// Share of items that are malformed or invalid in some way.
    pub malformed_ratio: f64,
    /// Share of events whose event time is beyond the prize window's grace.
    pub late_ratio: f64,
    /// Event time of the first event, epoch ms; `None`: each event is
    /// stamped with the wall clock when generated.
    pub start_time_ms: Option<i64>,
    /// With `start_time_ms`: event-time milliseconds between two events of
    /// one shard.
    pub event_interval_ms: i64,
    /// How far back late events are placed, ms.
    pub lateness_ms: i64,
}

impl Default for TrafficShape {
    fn default() -> Self {
        Self {
            seed: 42,
            players: 10_000,
            zipf_exponent: 1.1,
            chest_keys: 20_000,
            duplicate_ratio: 0.05,
            malformed_ratio: 0.01,
            late_ratio: 0.01,
            start_time_ms: None,
            event_interval_ms: 20,
            lateness_ms: 120_000,
        }
    }
}

/// What an item is, so the simulator can account for every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Fresh,
    Late,
    Duplicate,
    Malformed(&'static str),
}

pub struct Item {
    pub kind: ItemKind,
    pub bytes: Vec<u8>,
    /// Partition key for direct-to-Kafka mode (claim key, or the shard for garbage).
    pub key: String,
}

pub struct ShardGenerator {
    rng: StdRng,
    zipf: Zipf<f64>,
    shape: TrafficShape,
    shard: String,
    hunt: String,
    tiers: Vec<String>,
    seq: u64,
    recent: Vec<(Vec<u8>, String)>,
}

const MALFORMED: [&str; 7] =
    ["bad_json", "unknown_tier", "negative_points", "oversized", "bad_utf8", "missing_field", "unknown_hunt"];
const RECENT: usize = 256;

impl ShardGenerator {
    pub fn new(topology: &Topology, shape: &TrafficShape, shard_index: usize, shard: String) -> Self {
        let hunt = &topology.spec().hunts[0];
        let seed = shape.seed ^ (shard_index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            rng: StdRng::seed_from_u64(seed),
            zipf: Zipf::new(shape.players.max(1) as f64, shape.zipf_exponent)
                .unwrap_or_else(|_| Zipf::new(1.0, 1.0).expect("valid zipf")),
            shape: shape.clone(),
            shard,
            hunt: hunt.id.clone(),
            tiers: hunt.tiers.iter().map(|t| t.name.clone()).collect(),
            seq: 0,
            recent: Vec::with_capacity(RECENT),
        }
    }

    pub fn next_item(&mut self) -> Item {
        let roll: f64 = self.rng.random();
        if roll < self.shape.duplicate_ratio && !self.recent.is_empty() {
            let (bytes, key) = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            return Item { kind: ItemKind::Duplicate, bytes, key };
        }
        if roll < self.shape.duplicate_ratio + self.shape.malformed_ratio {
            return self.malformed();
        }
        let late = roll < self.shape.duplicate_ratio + self.shape.malformed_ratio + self.shape.late_ratio;
        let mut event = self.fresh_event();
        if late {
            event.event_time -= self.shape.lateness_ms;
        }
        let bytes = event.encode();
        let key = event.claim_key().to_owned();
        if self.recent.len() < RECENT {
            self.recent.push((bytes.clone(), key.clone()));
        } else {
            let slot = self.rng.random_range(0..RECENT);
            self.recent[slot] = (bytes.clone(), key.clone());
        }
        Item { kind: if late { ItemKind::Late } else { ItemKind::Fresh }, bytes, key }
    }

    fn fresh_event(&mut self) -> GameEvent {
        let seq = self.seq;
        self.seq += 1;
        let player = self.zipf.sample(&mut self.rng) as u64;
        let tier = self.tiers[(player as usize) % self.tiers.len()].clone();
        let kind_roll: f64 = self.rng.random();
        let (kind, chest_key, points) = if kind_roll < 0.3 {
            (
                EventKind::ChestOpened,
                Some(format!("chest-{}", self.rng.random_range(0..self.shape.chest_keys.max(1)))),
                25,
            )
        } else if kind_roll < 0.9 {
            (EventKind::ClueSolved, None, self.rng.random_range(5..=50))
        } else {
            (EventKind::MilestoneReached, None, 100)
        };
        GameEvent {
            v: 1,
            event_id: format!("{}-{seq}", self.shard),
            hunt_id: self.hunt.clone(),
            shard_id: self.shard.clone(),
            region: ["eu", "us", "apac"][(player % 3) as usize].into(),
            player_id: format!("player-{player}"),
            tier,
            kind,
            chest_key,
            points,
            event_time: match self.shape.start_time_ms {
                Some(start) => start + seq as i64 * self.shape.event_interval_ms,
                None => crate::event::now_ms(),
            },
        }
    }

    fn malformed(&mut self) -> Item {
        let which = MALFORMED[self.rng.random_range(0..MALFORMED.len())];
        let mut e = self.fresh_event();
        let bytes = match which {
            "bad_json" => format!("{{\"v\":1,\"event_id\":\"{}\",", e.event_id).into_bytes(),
            "unknown_tier" => {
                e.tier = "mythic-unknown".into();
                e.encode()
            }
            "negative_points" => String::from_utf8_lossy(&e.encode())
                .replace(&format!("\"points\":{}", e.points), "\"points\":-7")
                .into_bytes(),
            "oversized" => {
                e.region = "x".repeat(20_000);
                e.encode()
            }
            "bad_utf8" => {
                let mut b = e.encode();
                b.insert(10, 0xff);
                b
            }
            "missing_field" => String::from_utf8_lossy(&e.encode())
                .replace(&format!("\"player_id\":\"{}\",", e.player_id), "")
                .into_bytes(),
            _ => {
                e.hunt_id = "no-such-hunt".into();
                e.encode()
            }
        };
        Item { kind: ItemKind::Malformed(which), bytes, key: self.shard.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::parse(include_str!("../../topology/treasure-hunt.yaml")).unwrap()
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_other_seeds_differ() {
        let t = topology();
        let shape = TrafficShape { start_time_ms: Some(1_767_225_600_000), ..TrafficShape::default() };
        let take = |shape: &TrafficShape| {
            let mut g = ShardGenerator::new(&t, shape, 3, "shard-3".into());
            (0..500).map(|_| g.next_item().bytes).collect::<Vec<_>>()
        };
        assert_eq!(take(&shape), take(&shape));
        assert_ne!(take(&shape), take(&TrafficShape { seed: 7, ..shape.clone() }));
    }

    #[test]
    fn generated_items_decode_exactly_as_their_kind_says() {
        let t = topology();
        let shape = TrafficShape { malformed_ratio: 0.2, duplicate_ratio: 0.1, ..TrafficShape::default() };
        let mut g = ShardGenerator::new(&t, &shape, 0, "shard-0".into());
        let mut malformed = 0;
        for _ in 0..5_000 {
            let item = g.next_item();
            let ok = crate::event::decode(&item.bytes, 16_384).and_then(|e| e.check_against(&t, "shard-0")).is_ok();
            match item.kind {
                ItemKind::Malformed(_) => {
                    malformed += 1;
                    assert!(!ok, "{:?}", String::from_utf8_lossy(&item.bytes));
                }
                _ => assert!(ok),
            }
        }
        assert!(malformed > 500);
    }
}
