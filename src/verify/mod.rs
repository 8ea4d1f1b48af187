//! `huntflow verify`: reads the input events and every output topic
//! (read_committed), recomputes the expected results with the reference
//! model and reports every difference. Physical duplicates (records a broker
//! showed twice, e.g. from aborted transactions) are counted; logical ones
//! (after lineage and idempotency keys) are errors.

mod read;
pub mod reference;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::ClientConfig;
use serde_json::Value;

pub use read::{read_topic, Record};
use reference::Accepted;

use crate::topology::Topology;

/// Must match the score stage's watermark step (a contract, not shared code).
const WATERMARK_STEP_MS: i64 = 1_000;
const LINEAGE: &str = "huntflow-lineage";
const SCHEMA: &str = "huntflow-schema";
/// Time records (contract: README "Record formats").
const SCHEMA_HEARTBEAT: &str = "heartbeat/v1";
const SCHEMA_WATERMARK: &str = "watermark/v1";
const STAGE: &str = "huntflow-stage";
const REASON_CODE: &str = "huntflow-reason-code";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    #[error("timed out reading topic {0}")]
    Timeout(String),
    #[error("reader thread failed: {0}")]
    Thread(String),
}

/// What verify found. `problems` empty means every check passed.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub events: usize,
    pub accepted_physical: usize,
    pub accepted_logical: usize,
    pub dead_letters: BTreeMap<String, u64>,
    pub batches_physical: usize,
    pub batches_logical: usize,
    pub awards: usize,
    pub boards: usize,
    pub watermark: Option<i64>,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "verify: {}", if self.passed() { "PASSED" } else { "FAILED" })?;
        writeln!(f, "  events          {:>10}", self.events)?;
        writeln!(
            f,
            "  accepted        {:>10}  ({} physical duplicates)",
            self.accepted_logical,
            self.accepted_physical - self.accepted_logical
        )?;
        for (k, v) in &self.dead_letters {
            writeln!(f, "  dead-letter     {v:>10}  {k}")?;
        }
        writeln!(
            f,
            "  prize batches   {:>10}  ({} physical duplicates), {} awards",
            self.batches_logical,
            self.batches_physical - self.batches_logical,
            self.awards
        )?;
        writeln!(f, "  leaderboards    {:>10}  boards checked, watermark {:?}", self.boards, self.watermark)?;
        for p in
            self.problems.iter().take(if std::env::var_os("HUNTFLOW_VERIFY_ALL").is_some() { usize::MAX } else { 25 })
        {
            writeln!(f, "  PROBLEM: {p}")?;
        }
        if self.problems.len() > 25 {
            writeln!(f, "  ... and {} more problems", self.problems.len() - 25)?;
        }
        Ok(())
    }
}

/// First record per lineage header; records without one are kept as is.
fn logical(records: &[Record]) -> Vec<&Record> {
    let mut seen = std::collections::HashSet::new();
    records.iter().filter(|r| r.header(LINEAGE).is_none_or(|l| seen.insert(l.to_owned()))).collect()
}

/// Reads every topic and checks it against the reference model.
pub async fn verify(client: ClientConfig, topology: &Topology, timeout: Duration) -> Result<VerifyReport, VerifyError> {
    let topics = topology.spec().topics.clone();
    let names = [
        topics.events.name,
        topics.accepted.name,
        topics.dead_letter.name,
        topics.prizes.name,
        topics.leaderboards.name,
    ];
    let mut read = Vec::new();
    for name in names {
        let client = client.clone();
        let records = tokio::task::spawn_blocking(move || read_topic(&client, &name, timeout))
            .await
            .map_err(|e| VerifyError::Thread(e.to_string()))??;
        read.push(records);
    }
    let [events, accepted, dead, prizes, boards] =
        <[Vec<Record>; 5]>::try_from(read).map_err(|_| VerifyError::Thread("topics".into()))?;
    Ok(check(topology, &events, &accepted, &dead, &prizes, &boards))
}

/// The checks, on records already read (also used by tests).
pub fn check(
    topology: &Topology,
    events: &[Record],
    accepted_all: &[Record],
    dead: &[Record],
    prizes: &[Record],
    boards: &[Record],
) -> VerifyReport {
    let is = |r: &Record, schema: &str| r.header(SCHEMA) == Some(schema);
    let events: Vec<&Record> = events.iter().filter(|e| !is(e, SCHEMA_HEARTBEAT)).collect();
    let mut r = VerifyReport { events: events.len(), ..Default::default() };

    // claim
    let mut by_partition: BTreeMap<i32, Vec<&[u8]>> = BTreeMap::new();
    for e in &events {
        by_partition.entry(e.partition).or_default().push(&e.payload);
    }
    // Events are identified by (shard, event id): dedup is scoped by shard.
    let (mut expected, mut invalid, mut chest_rejected, mut conflicting) = (HashMap::new(), 0, 0, 0);
    for records in by_partition.values() {
        let out = reference::claim(records, topology);
        invalid += out.invalid;
        chest_rejected += out.chest_rejected;
        conflicting += out.conflicting;
        for e in out.accepted {
            expected.insert(format!("{}/{}", e.shard, e.event_id), e);
        }
    }
    let accepted = logical(accepted_all);
    r.accepted_physical = accepted_all.iter().filter(|a| !is(a, SCHEMA_WATERMARK)).count();
    r.accepted_logical = accepted.iter().filter(|a| !is(a, SCHEMA_WATERMARK)).count();
    let partitions = topology.spec().topics.accepted.partitions.max(1) as usize;
    let mut score_input: Vec<Vec<(i32, Accepted)>> = vec![Vec::new(); partitions];
    let mut got: HashMap<String, usize> = HashMap::new();
    for rec in &accepted {
        // `claim:<partition>:<offset>:<index>`
        let upstream = rec.header(LINEAGE).and_then(|l| l.split(':').nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
        let input = score_input.get_mut(rec.partition as usize);
        if is(rec, SCHEMA_WATERMARK) {
            match serde_json::from_slice::<Value>(&rec.payload).ok().and_then(|v| v["watermark"].as_i64()) {
                Some(t) => input.into_iter().for_each(|list| list.push((upstream, Accepted::Watermark(t)))),
                None => r.problems.push(format!("watermark at {}:{} is unreadable", rec.partition, rec.offset)),
            }
            continue;
        }
        match reference::parse_event(&rec.payload, topology) {
            Some(e) => {
                *got.entry(format!("{}/{}", e.shard, e.event_id)).or_default() += 1;
                if let Some(list) = input {
                    list.push((upstream, Accepted::Event(e)));
                }
            }
            None => {
                r.problems.push(format!("accepted record at {}:{} is not a valid event", rec.partition, rec.offset))
            }
        }
    }
    for (id, n) in &got {
        if *n > 1 {
            r.problems.push(format!("event {id} accepted {n} times (logical duplicate)"));
        }
        if !expected.contains_key(id) {
            r.problems
                .push(format!("event {id} accepted but must not be (retry, conflicting copy, lost chest or invalid)"));
        }
    }
    let missing: Vec<&String> = expected.keys().filter(|id| !got.contains_key(*id)).collect();
    if !missing.is_empty() {
        r.problems.push(format!("{} accepted events missing, e.g. {}", missing.len(), missing[0]));
    }

    // score
    let score = reference::score(&score_input, topology, WATERMARK_STEP_MS);
    r.watermark = score.watermark;

    // dead letters written by stages
    for rec in logical(dead) {
        let stage = rec.header(STAGE).unwrap_or("?");
        let code = rec.header(REASON_CODE).unwrap_or("?");
        *r.dead_letters.entry(format!("{stage}/{code}")).or_default() += 1;
    }
    let count =
        |prefix: &str| -> u64 { r.dead_letters.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v).sum() };
    let claim_invalid = count("claim/") - count("claim/chest_already_claimed") - count("claim/conflicting_duplicate");
    for (what, got, want) in [
        ("claim dead letters for invalid events", claim_invalid, invalid),
        ("claim dead letters for lost chest claims", count("claim/chest_already_claimed"), chest_rejected),
        ("claim dead letters for conflicting duplicates", count("claim/conflicting_duplicate"), conflicting),
        ("score dead letters for late events", count("score/late_event"), score.late),
        ("rank dead letters", count("rank/"), 0),
    ] {
        if got != want {
            r.problems.push(format!("{what}: {got}, expected {want}"));
        }
    }

    check_prizes(&mut r, topology, &score, prizes);
    check_boards(&mut r, topology, &score, boards);
    r
}

fn check_prizes(r: &mut VerifyReport, topology: &Topology, score: &reference::ScoreOutcome, prizes: &[Record]) {
    r.batches_physical = prizes.len();
    // batch id -> part -> awards, and how many parts each part says there are.
    let mut parts: BTreeMap<String, BTreeMap<u64, BTreeMap<String, reference::RefAward>>> = BTreeMap::new();
    let mut declared: BTreeMap<String, u64> = BTreeMap::new();
    let mut key_owner: HashMap<String, (String, u64)> = HashMap::new();
    for rec in prizes {
        let Ok(v) = serde_json::from_slice::<Value>(&rec.payload) else {
            r.problems.push(format!("prize record at {}:{} is not JSON", rec.partition, rec.offset));
            continue;
        };
        let id = v["batch_id"].as_str().unwrap_or_default().to_owned();
        let (part, of) = (v["part"].as_u64().unwrap_or(1), v["parts"].as_u64().unwrap_or(1));
        if *declared.entry(id.clone()).or_insert(of) != of {
            r.problems.push(format!("batch {id}: parts disagree on how many parts there are"));
        }
        let mut awards = BTreeMap::new();
        for a in v["awards"].as_array().into_iter().flatten() {
            let key = a["idempotency_key"].as_str().unwrap_or_default().to_owned();
            let award = (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["player_id"].as_str().unwrap_or_default().to_owned(),
                a["amount"].as_u64().unwrap_or_default(),
            );
            if awards.insert(key.clone(), award).is_some() {
                r.problems.push(format!("batch {id} part {part} lists award {key} twice"));
            }
            if let Some(owner) = key_owner.insert(key.clone(), (id.clone(), part)) {
                if owner != (id.clone(), part) {
                    r.problems
                        .push(format!("award key {key} appears in {owner:?} and {id} part {part} (logical duplicate)"));
                }
            }
        }
        match parts.entry(id.clone()).or_default().get(&part) {
            Some(prev) if *prev != awards => {
                r.problems.push(format!("batch {id} part {part} was emitted twice with different awards"))
            }
            Some(_) => {}
            None => {
                parts.entry(id).or_default().insert(part, awards);
            }
        }
    }
    let mut batches: BTreeMap<String, BTreeMap<String, reference::RefAward>> = BTreeMap::new();
    for (id, by_part) in parts {
        let of = declared.get(&id).copied().unwrap_or(1);
        if by_part.keys().copied().ne(1..=of) {
            r.problems.push(format!("batch {id}: parts {:?} of {of}", by_part.keys().collect::<Vec<_>>()));
        }
        batches.insert(id, by_part.into_values().flatten().collect());
    }
    r.batches_logical = batches.len();
    r.awards = batches.values().map(BTreeMap::len).sum();
    let expected = reference::prizes(score, topology);
    for (id, want) in &expected {
        let Some(got) = batches.get(id) else {
            r.problems.push(format!("prize batch {id} missing"));
            continue;
        };
        for (key, award) in want {
            match got.get(key) {
                None => r.problems.push(format!("batch {id}: award {key} {award:?} missing")),
                Some(a) if a != award => {
                    r.problems.push(format!("batch {id}: award {key} is {a:?}, expected {award:?}"))
                }
                Some(_) => {}
            }
        }
        for (key, award) in got {
            if !want.contains_key(key) {
                r.problems.push(format!("batch {id}: unexpected award {key} {award:?}"));
            }
        }
    }
    for id in batches.keys().filter(|id| !expected.contains_key(*id)) {
        r.problems.push(format!("prize batch {id} emitted but its window is not closed or had no activity"));
    }
}

fn check_boards(r: &mut VerifyReport, topology: &Topology, score: &reference::ScoreOutcome, boards: &[Record]) {
    let spec = topology.spec();
    let closes = (spec.windows.prize.size.as_millis() + spec.windows.prize.grace.as_millis()) as i64;
    // Latest snapshot per board.
    let mut latest: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    // Windows whose key rank tombstoned after retention (compaction may
    // have removed their snapshots).
    let mut tombstoned = std::collections::BTreeSet::new();
    for rec in boards {
        if rec.payload.is_empty() {
            tombstoned.insert(String::from_utf8_lossy(&rec.key).into_owned());
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&rec.payload) else {
            r.problems.push(format!("leaderboard record at {}:{} is not JSON", rec.partition, rec.offset));
            continue;
        };
        let key = String::from_utf8_lossy(&rec.key).into_owned();
        let version = v["version"].as_i64().unwrap_or(-1);
        match latest.get(&key) {
            Some((ver, prev)) if *ver == version && prev["entries"] != v["entries"] => {
                r.problems.push(format!("board {key}: version {version} published with different entries"));
            }
            Some((ver, _)) if *ver >= version => {}
            _ => {
                latest.insert(key, (version, v));
            }
        }
    }
    for ((hunt, tier, window), ranking) in &score.boards {
        let board = window.map_or("lifetime".to_owned(), |w| w.to_string());
        let key = format!("{hunt}/{tier}/{board}");
        r.boards += 1;
        let closed = window.is_some_and(|w| score.watermark.is_some_and(|wm| wm >= w + closes));
        let Some((_, snap)) = latest.get(&key) else {
            if !(closed && tombstoned.contains(&key)) {
                r.problems.push(format!("board {key}: no snapshot published"));
            }
            continue;
        };
        let got: Vec<(String, u64, i64)> = snap["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["player_id"].as_str().unwrap_or_default().to_owned(),
                    e["points"].as_u64().unwrap_or_default(),
                    e["reached_at"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        if got != *ranking {
            let first = got.iter().zip(ranking).position(|(a, b)| a != b).unwrap_or(got.len().min(ranking.len()));
            r.problems.push(format!(
                "board {key}: snapshot v{} differs from the reference at rank {} (got {:?}, expected {:?})",
                snap["version"],
                first + 1,
                got.get(first),
                ranking.get(first)
            ));
        }
        if closed && snap["closed"] != Value::Bool(true) {
            r.problems.push(format!("board {key}: window closed but its final snapshot is missing"));
        }
    }
}
