//! Real-time traffic for the latency benchmark: game events with event
//! time = wall clock, posted as NDJSON batches to the ingest gateway, one
//! task per shard, paced or as fast as possible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use super::latency::now_ms;
use crate::event::{EventKind, GameEvent};
use crate::ingest::IngestResponse;
use crate::topology::Topology;

const PLAYERS: u64 = 10_000;
const CHEST_KEYS: u64 = 20_000;
const BATCH: usize = 500;
const TICK: Duration = Duration::from_millis(50);

/// Posts events for every shard of `tokens` to one ingest gateway.
#[derive(Clone)]
pub struct Poster {
    client: reqwest::Client,
    base_url: String,
    hunt: String,
    tiers: Arc<Vec<String>>,
    tokens: Arc<Vec<(String, String)>>,
    seq: Arc<AtomicU64>,
}

/// What ingest answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub accepted: u64,
    pub rejected: u64,
}

impl Poster {
    pub fn new(topology: &Topology, base_url: String, tokens: Vec<(String, String)>) -> Self {
        let hunt = &topology.spec().hunts[0];
        Self {
            client: reqwest::Client::new(),
            base_url,
            hunt: hunt.id.clone(),
            tiers: Arc::new(hunt.tiers.iter().map(|t| t.name.clone()).collect()),
            tokens: Arc::new(tokens),
            seq: Arc::default(),
        }
    }

    fn events(&self, shard: &str, n: usize) -> Vec<u8> {
        let mut rng = rand::rng();
        let first = self.seq.fetch_add(n as u64, Ordering::Relaxed);
        let now = now_ms();
        let mut body = Vec::with_capacity(n * 256);
        for i in 0..n as u64 {
            let player = rng.random_range(0..PLAYERS);
            let chest = rng.random_bool(0.3);
            let event = GameEvent {
                v: 1,
                event_id: format!("bench-{}", first + i),
                hunt_id: self.hunt.clone(),
                shard_id: shard.to_owned(),
                region: "eu".into(),
                player_id: format!("player-{player}"),
                tier: self.tiers[(player as usize) % self.tiers.len()].clone(),
                kind: if chest { EventKind::ChestOpened } else { EventKind::ClueSolved },
                chest_key: chest.then(|| format!("chest-{}", rng.random_range(0..CHEST_KEYS))),
                points: if chest { 25 } else { rng.random_range(5..=50) },
                event_time: now,
            };
            body.extend_from_slice(&event.encode());
            body.push(b'\n');
        }
        body
    }

    async fn post(&self, shard: usize, body: Vec<u8>) -> Sent {
        let Some((name, token)) = self.tokens.get(shard) else { return Sent::default() };
        let url = format!("{}/v1/shards/{name}/events", self.base_url);
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        match response {
            Ok(r) => match r.json::<IngestResponse>().await {
                Ok(r) => Sent { accepted: r.accepted as u64, rejected: (r.rejected + r.failed) as u64 },
                Err(_) => Sent { accepted: 0, rejected: 1 },
            },
            Err(_) => Sent { accepted: 0, rejected: 1 },
        }
    }

    /// One probe event (shard 0) for `player` at `event_time`; true if accepted.
    pub async fn post_probe(&self, player: &str, event_id: &str, points: u64, event_time: i64) -> bool {
        let Some((shard, _)) = self.tokens.first() else { return false };
        let event = GameEvent {
            v: 1,
            event_id: event_id.to_owned(),
            hunt_id: self.hunt.clone(),
            shard_id: shard.clone(),
            region: "eu".into(),
            player_id: player.to_owned(),
            tier: self.tiers.first().cloned().unwrap_or_default(),
            kind: EventKind::MilestoneReached,
            chest_key: None,
            points,
            event_time,
        };
        let mut body = event.encode();
        body.push(b'\n');
        self.post(0, body).await.accepted == 1
    }
}

/// Posts up to `max_events` over all shards within `duration`: at `rate`
/// events/s overall (batches every 50 ms per shard), or as fast as possible
/// in batches of 500 when `rate` is `None`.
pub async fn post_paced(poster: &Poster, rate: Option<f64>, max_events: u64, duration: Duration) -> Sent {
    let shards = poster.tokens.len().max(1);
    let per_shard = max_events.div_ceil(shards as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in 0..shards {
        let poster = poster.clone();
        tasks.push(tokio::spawn(async move {
            let mut total = Sent::default();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut owed, mut posted) = (0.0f64, 0u64);
            while posted < per_shard && started.elapsed() < duration {
                let n = match rate {
                    Some(r) => {
                        tick.tick().await;
                        owed += r / shards as f64 * TICK.as_secs_f64();
                        let n = owed.floor();
                        owed -= n;
                        n as u64
                    }
                    None => BATCH as u64,
                }
                .min(per_shard - posted);
                if n == 0 {
                    continue;
                }
                let body = poster.events(&poster.tokens[shard].0, n as usize);
                let sent = poster.post(shard, body).await;
                posted += n;
                total.accepted += sent.accepted;
                total.rejected += sent.rejected;
            }
            total
        }));
    }
    let mut total = Sent::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.accepted += s.accepted;
            total.rejected += s.rejected;
        }
    }
    total
}
