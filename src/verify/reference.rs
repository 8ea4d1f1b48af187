//! The reference model: what the pipeline must have produced, recomputed in
//! memory from the topics with plain maps and sorts. It deliberately shares
//! no code with the stages (no event codec, no windowing or ranking module),
//! so a bug there cannot hide here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::topology::Topology;

/// A valid event, as the model sees it: every field of the envelope, so two
/// copies of one id can be compared field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefEvent {
    pub event_id: String,
    pub shard: String,
    pub hunt: String,
    pub region: String,
    pub tier: String,
    pub player: String,
    pub kind: String,
    pub chest: Option<String>,
    pub points: u64,
    pub time: i64,
}

impl RefEvent {
    /// Names of the fields in which `other` differs from `self`.
    pub fn differences(&self, other: &RefEvent) -> Vec<&'static str> {
        let mut d = Vec::new();
        let mut cmp = |name: &'static str, same: bool| {
            if !same {
                d.push(name);
            }
        };
        cmp("event_id", self.event_id == other.event_id);
        cmp("shard_id", self.shard == other.shard);
        cmp("hunt_id", self.hunt == other.hunt);
        cmp("region", self.region == other.region);
        cmp("tier", self.tier == other.tier);
        cmp("player_id", self.player == other.player);
        cmp("kind", self.kind == other.kind);
        cmp("chest_key", self.chest == other.chest);
        cmp("points", self.points == other.points);
        cmp("event_time", self.time == other.time);
        d
    }
}

const FIELDS: [&str; 11] = [
    "v",
    "event_id",
    "hunt_id",
    "shard_id",
    "region",
    "player_id",
    "tier",
    "kind",
    "chest_key",
    "points",
    "event_time",
];

/// Parses and validates one event against the topology; `None` if the
/// pipeline must refuse it.
pub fn parse_event(bytes: &[u8], topology: &Topology) -> Option<RefEvent> {
    if bytes.len() > topology.spec().ingest.max_event_bytes.max(1 << 16) {
        return None;
    }
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let o = v.as_object()?;
    if o.keys().any(|k| !FIELDS.contains(&k.as_str())) || o.get("v")?.as_u64()? != 1 {
        return None;
    }
    let text = |name: &str| -> Option<String> {
        let s = o.get(name)?.as_str()?;
        (!s.is_empty() && s.len() <= 128).then(|| s.to_owned())
    };
    let (event_id, hunt, tier, player) = (text("event_id")?, text("hunt_id")?, text("tier")?, text("player_id")?);
    let (shard, region) = (text("shard_id")?, text("region")?);
    let kind = o.get("kind")?.as_str()?;
    if !["chest_opened", "clue_solved", "milestone_reached"].contains(&kind) {
        return None;
    }
    let chest = match o.get("chest_key") {
        None | Some(Value::Null) => None,
        Some(_) => Some(text("chest_key")?),
    };
    if (kind == "chest_opened") != chest.is_some() {
        return None;
    }
    let points = o.get("points")?.as_u64()?;
    let time = o.get("event_time")?.as_i64().filter(|t| *t >= 0)?;
    let hunt_spec = topology.spec().hunts.iter().find(|h| h.id == hunt)?;
    hunt_spec.tiers.iter().find(|t| t.name == tier)?;
    let kind = kind.to_owned();
    Some(RefEvent { event_id, shard, hunt, region, tier, player, kind, chest, points, time })
}

/// The claim stage's contract over one events partition, in log order:
/// dedup per (shard, event id) within the TTL on the partition's event-time
/// clock (an identical copy is a retry, a copy with any field changed is a
/// conflict and the first copy counts), then the first claim of each
/// (hunt, chest) wins.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    pub accepted: Vec<RefEvent>,
    pub invalid: u64,
    pub retries: u64,
    pub conflicting: u64,
    pub chest_rejected: u64,
}

pub fn claim(records: &[&[u8]], topology: &Topology) -> ClaimOutcome {
    let ttl = topology.spec().stages.dedup_ttl.as_millis() as i64;
    let mut out = ClaimOutcome::default();
    let mut seen: HashMap<(String, String), RefEvent> = HashMap::new();
    let mut chests: BTreeSet<(String, String)> = BTreeSet::new();
    let mut clock = i64::MIN;
    for bytes in records {
        let Some(e) = parse_event(bytes, topology) else {
            out.invalid += 1;
            continue;
        };
        clock = clock.max(e.time);
        let id = (e.shard.clone(), e.event_id.clone());
        if let Some(first) = seen.get(&id).filter(|first| first.time >= clock - ttl) {
            if first.differences(&e).is_empty() {
                out.retries += 1;
            } else {
                out.conflicting += 1;
            }
            continue;
        }
        seen.insert(id, e.clone());
        if let Some(c) = &e.chest {
            if !chests.insert((e.hunt.clone(), c.clone())) {
                out.chest_rejected += 1;
                continue;
            }
        }
        out.accepted.push(e);
    }
    out
}

pub type BoardKey = (String, String, Option<i64>); // hunt, tier, window start (None = lifetime)

/// (player, points, reached_at) in rank order.
pub type Ranking = Vec<(String, u64, i64)>;

#[derive(Default)]
pub struct ScoreOutcome {
    pub boards: BTreeMap<BoardKey, Ranking>,
    /// (hunt, tier, window) -> chests (chest key, player, event id).
    pub chests: BTreeMap<(String, String, i64), Vec<(String, String, String)>>,
    pub late: u64,
    /// Min over all accepted partitions of the floored partition watermark.
    pub watermark: Option<i64>,
}

/// One record of an accepted partition: an event, or a watermark claim
/// forwarded from the writers' heartbeats.
#[derive(Clone, Debug)]
pub enum Accepted {
    Event(RefEvent),
    Watermark(i64),
}

/// The score stage's contract: `partitions[p]` is accepted partition p in
/// log order, each record with the events partition it was claimed from. A
/// partition's watermark is the minimum over events partitions of the
/// latest time seen from each (event times and forwarded watermarks), once
/// all have been seen; it never goes back.
pub fn score(partitions: &[Vec<(i32, Accepted)>], topology: &Topology, step_ms: i64) -> ScoreOutcome {
    let spec = topology.spec();
    let size = spec.windows.prize.size.as_millis() as i64;
    let grace = spec.windows.prize.grace.as_millis() as i64;
    let start_of = |t: i64| t.div_euclid(size) * size;
    let mut out = ScoreOutcome::default();
    let mut sums: HashMap<BoardKey, HashMap<String, (u64, i64)>> = HashMap::new();
    let mut marks = Vec::new();
    let upstreams = spec.topics.events.partitions.max(1) as usize;
    for events in partitions {
        let mut wm = i64::MIN;
        let mut latest: HashMap<i32, i64> = HashMap::new();
        for (upstream, record) in events {
            let e = match record {
                Accepted::Event(e) => e,
                Accepted::Watermark(t) => {
                    let latest_t = latest.entry(*upstream).or_insert(*t);
                    *latest_t = (*latest_t).max(*t);
                    if latest.len() >= upstreams {
                        wm = wm.max(latest.values().copied().min().unwrap_or(i64::MIN));
                    }
                    continue;
                }
            };
            let start = start_of(e.time);
            if wm != i64::MIN && start + size + grace <= wm {
                out.late += 1;
                continue;
            }
            let t = latest.entry(*upstream).or_insert(e.time);
            *t = (*t).max(e.time);
            if latest.len() >= upstreams {
                wm = wm.max(latest.values().copied().min().unwrap_or(i64::MIN));
            }
            if e.points > 0 {
                let mut boards = vec![Some(start)];
                if spec.windows.lifetime_board {
                    boards.push(None);
                }
                for b in boards {
                    let s = sums
                        .entry((e.hunt.clone(), e.tier.clone(), b))
                        .or_default()
                        .entry(e.player.clone())
                        .or_insert((0, i64::MIN));
                    s.0 += e.points;
                    s.1 = s.1.max(e.time);
                }
            }
            if let Some(c) = &e.chest {
                out.chests.entry((e.hunt.clone(), e.tier.clone(), start)).or_default().push((
                    c.clone(),
                    e.player.clone(),
                    e.event_id.clone(),
                ));
            }
        }
        marks.push((wm != i64::MIN).then(|| wm.div_euclid(step_ms) * step_ms));
    }
    out.watermark = marks.iter().copied().collect::<Option<Vec<i64>>>().and_then(|m| m.into_iter().min());
    let top_n = spec.stages.top_n as usize;
    for (key, players) in sums {
        let mut ranking: Ranking = players.into_iter().map(|(p, (points, at))| (p, points, at)).collect();
        ranking.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        ranking.truncate(top_n);
        out.boards.insert(key, ranking);
    }
    out
}

/// An expected award: (kind, player, amount).
pub type RefAward = (String, String, u64);

fn award_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"huntflow-award/v1");
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Expected prize batches of every closed window: batch id -> key -> award.
pub fn prizes(score: &ScoreOutcome, topology: &Topology) -> BTreeMap<String, BTreeMap<String, RefAward>> {
    let spec = topology.spec();
    let size = spec.windows.prize.size.as_millis() as i64;
    let grace = spec.windows.prize.grace.as_millis() as i64;
    let closed = |start: i64| score.watermark.is_some_and(|w| w >= start + size + grace);
    let mut windows: BTreeSet<(String, String, i64)> = BTreeSet::new();
    windows.extend(score.boards.keys().filter_map(|(h, t, w)| w.map(|w| (h.clone(), t.clone(), w))));
    windows.extend(score.chests.keys().cloned());
    let mut out = BTreeMap::new();
    for (hunt, tier, start) in windows.into_iter().filter(|(_, _, s)| closed(*s)) {
        let Some(tier_spec) = topology.hunt(&hunt).and_then(|h| h.tiers.iter().find(|t| t.name == tier)) else {
            continue;
        };
        let mut awards = BTreeMap::new();
        let ranking = score.boards.get(&(hunt.clone(), tier.clone(), Some(start))).cloned().unwrap_or_default();
        for (i, (player, _, _)) in ranking.iter().enumerate() {
            let rank = i as u32 + 1;
            if let Some(r) = tier_spec.rank_rewards.iter().find(|r| r.from <= rank && rank <= r.to) {
                let key = award_key(&[&hunt, &tier, &start.to_string(), "rank", &rank.to_string(), player]);
                awards.insert(key, ("rank".into(), player.clone(), r.reward));
            }
        }
        for (chest, player, _) in score.chests.get(&(hunt.clone(), tier.clone(), start)).into_iter().flatten() {
            awards
                .insert(award_key(&[&hunt, "chest", chest]), ("chest".into(), player.clone(), tier_spec.chest_reward));
        }
        out.insert(format!("{hunt}/{tier}/{start}"), awards);
    }
    out
}
