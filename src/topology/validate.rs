//! Semantic checks of a parsed topology. Every problem is collected with its
//! path so an operator fixes the file in one pass.

use std::collections::{BTreeMap, HashSet};

use super::spec::{KinesisMode, SourceKind, TopicSpec, TopologySpec};

/// One problem found in a topology, at a YAML path like `hunts[0].tiers[2]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }
}

/// Largest leaderboard we agree to keep per hunt, tier and board.
pub const MAX_TOP_N: u32 = 10_000;

pub fn validate(spec: &TopologySpec) -> Vec<Problem> {
    let mut p = Problems::default();
    if spec.version != 1 {
        p.push("version", format!("unsupported version {}, expected 1", spec.version));
    }
    check_hunts(spec, &mut p);
    check_topics(spec, &mut p);
    check_kinesis(spec, &mut p);
    let s = &spec.stages;
    if s.dedup_ttl.as_millis() == 0 {
        p.push("stages.dedup_ttl", "must be greater than 0");
    }
    if s.top_n == 0 || s.top_n > MAX_TOP_N {
        p.push("stages.top_n", format!("must be between 1 and {MAX_TOP_N}"));
    }
    if s.commit_interval.as_millis() == 0 {
        p.push("stages.commit_interval", "must be greater than 0");
    }
    if s.leaderboard_publish_interval.as_millis() == 0 {
        p.push("stages.leaderboard_publish_interval", "must be greater than 0");
    }
    if spec.windows.prize.size.as_millis() == 0 {
        p.push("windows.prize.size", "must be greater than 0");
    }
    let mut ids = std::collections::HashMap::new();
    for (hi, h) in spec.hunts.iter().enumerate() {
        for (ti, t) in h.tiers.iter().enumerate() {
            let name = format!("{}/{}", h.id, t.name);
            match ids.insert(super::tier_state_id(&h.id, &t.name), name.clone()) {
                // The same name twice is reported as a duplicate tier.
                Some(other) if other != name => p.push(
                    format!("hunts[{hi}].tiers[{ti}]"),
                    format!("state id collides with {other}; rename the tier"),
                ),
                _ => {}
            }
        }
    }
    let i = &spec.ingest;
    if i.events_per_second_per_shard == 0 {
        p.push("ingest.events_per_second_per_shard", "must be greater than 0");
    }
    if i.burst_per_shard == 0 {
        p.push("ingest.burst_per_shard", "must be greater than 0");
    }
    if !(256..=1024 * 1024).contains(&i.max_event_bytes) {
        p.push("ingest.max_event_bytes", "must be between 256 and 1048576");
    }
    if !(100..=60_000).contains(&i.heartbeat_interval.as_millis()) {
        p.push("ingest.heartbeat_interval", "must be between 100ms and 60s");
    }
    if i.heartbeat_writer_timeout.as_millis() < 2 * i.heartbeat_interval.as_millis() {
        p.push("ingest.heartbeat_writer_timeout", "must be at least twice ingest.heartbeat_interval");
    }
    p.0
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_hunts(spec: &TopologySpec, p: &mut Problems) {
    if spec.hunts.is_empty() {
        p.push("hunts", "at least one hunt is required");
    }
    let mut hunt_ids = HashSet::new();
    for (h, hunt) in spec.hunts.iter().enumerate() {
        let at = format!("hunts[{h}]");
        if !is_identifier(&hunt.id) {
            p.push(format!("{at}.id"), format!("`{}` must be 1-64 chars of [a-z0-9_-]", hunt.id));
        } else if !hunt_ids.insert(hunt.id.as_str()) {
            p.push(format!("{at}.id"), format!("duplicate hunt id `{}`", hunt.id));
        }
        if hunt.currency.trim().is_empty() {
            p.push(format!("{at}.currency"), "must not be empty");
        }
        if hunt.tiers.is_empty() {
            p.push(format!("{at}.tiers"), "at least one tier is required");
        }
        let mut names = HashSet::new();
        for (t, tier) in hunt.tiers.iter().enumerate() {
            let at = format!("{at}.tiers[{t}]");
            if !is_identifier(&tier.name) {
                p.push(format!("{at}.name"), format!("`{}` must be 1-64 chars of [a-z0-9_-]", tier.name));
            } else if !names.insert(tier.name.as_str()) {
                p.push(format!("{at}.name"), format!("duplicate tier `{}`", tier.name));
            }
            let mut seen: Vec<(u32, u32)> = Vec::new();
            for (r, range) in tier.rank_rewards.iter().enumerate() {
                let at = format!("{at}.rank_rewards[{r}]");
                if range.from == 0 {
                    p.push(&at, "ranks start at 1");
                    continue;
                }
                if range.to < range.from {
                    p.push(&at, format!("`to` ({}) is below `from` ({})", range.to, range.from));
                    continue;
                }
                if range.to > spec.stages.top_n {
                    p.push(&at, format!("rank {} is beyond the leaderboard size {}", range.to, spec.stages.top_n));
                }
                if let Some((a, b)) = seen.iter().find(|(a, b)| range.from <= *b && *a <= range.to) {
                    p.push(&at, format!("ranges overlap ({}-{} and {a}-{b})", range.from, range.to));
                }
                seen.push((range.from, range.to));
            }
        }
    }
}

fn is_topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_topics(spec: &TopologySpec, p: &mut Problems) {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (role, topic) in spec.topics.all() {
        let at = format!("topics.{role}");
        if !is_topic_name(&topic.name) {
            p.push(format!("{at}.name"), format!("`{}` is not a valid Kafka topic name", topic.name));
        } else if let Some(other) = names.insert(topic.name.as_str(), role) {
            p.push(format!("{at}.name"), format!("`{}` is already used by topics.{other}", topic.name));
        }
        if topic.partitions < 1 {
            p.push(format!("{at}.partitions"), "must be at least 1");
        }
        if topic.replication_factor < 1 {
            p.push(format!("{at}.replication_factor"), "must be at least 1");
        }
        check_topic_config(&at, topic, p);
    }
    let compacted = |t: &TopicSpec| t.config.get("cleanup.policy").is_none_or(|v| v.contains("compact"));
    if !compacted(&spec.topics.leaderboards) {
        p.push("topics.leaderboards.config.cleanup.policy", "the leaderboards topic must be compacted");
    }
    if !is_topic_name(&format!("{}claim", spec.topics.changelog_prefix)) {
        p.push("topics.changelog_prefix", "does not make valid Kafka topic names");
    }
}

fn check_topic_config(at: &str, topic: &TopicSpec, p: &mut Problems) {
    for (key, value) in &topic.config {
        let at = format!("{at}.config.{key}");
        match key.as_str() {
            "unclean.leader.election.enable" if value != "false" => {
                p.push(at, "must be false: unclean leader election loses acknowledged events")
            }
            "min.insync.replicas" => match value.parse::<i32>() {
                Ok(n) if n >= 1 && n <= topic.replication_factor => {}
                Ok(n) => {
                    p.push(at, format!("{n} must be between 1 and the replication factor {}", topic.replication_factor))
                }
                Err(_) => p.push(at, format!("`{value}` is not a whole number")),
            },
            "cleanup.policy" => {
                if !value.split(',').all(|v| matches!(v.trim(), "compact" | "delete")) {
                    p.push(at, format!("`{value}` must be compact, delete or compact,delete"));
                }
            }
            _ => {}
        }
    }
}

fn check_kinesis(spec: &TopologySpec, p: &mut Problems) {
    let Some(k) = &spec.source.kinesis else {
        if spec.source.kind == SourceKind::Kinesis {
            p.push("source.kinesis", "required when source.kind is kinesis (at least `stream`)");
        }
        return;
    };
    // Stream names: 1..=128 of [a-zA-Z0-9_.-] (Kinesis API reference).
    if !is_kinesis_name(&k.stream) {
        p.push(
            "source.kinesis.stream",
            format!("`{}` is not a Kinesis stream name ([a-zA-Z0-9_.-], 1..=128)", k.stream),
        );
    }
    if k.mode == KinesisMode::EnhancedFanOut && !is_kinesis_name(&k.consumer_name) {
        p.push(
            "source.kinesis.consumer_name",
            format!("`{}` is not a consumer name ([a-zA-Z0-9_.-], 1..=128)", k.consumer_name),
        );
    }
    if !is_topic_name(&k.checkpoints.name) {
        p.push("source.kinesis.checkpoints.name", format!("`{}` is not a valid topic name", k.checkpoints.name));
    }
    if k.checkpoints.partitions < 1 {
        p.push("source.kinesis.checkpoints.partitions", "must be at least 1");
    }
    if k.checkpoints.config.get("cleanup.policy").is_some_and(|v| !v.contains("compact")) {
        p.push("source.kinesis.checkpoints.config.cleanup.policy", "the checkpoint topic must be compacted");
    }
    check_topic_config("source.kinesis.checkpoints", &k.checkpoints, p);
    if !(1..=10_000).contains(&k.max_records_per_call) {
        p.push("source.kinesis.max_records_per_call", "must be between 1 and 10000");
    }
    if k.idle_poll_interval.as_millis() < 200 {
        p.push("source.kinesis.idle_poll_interval", "must be at least 200ms (5 GetRecords per second per shard)");
    }
    if k.subscription_silence_timeout.as_millis() < 1_000 {
        p.push("source.kinesis.subscription_silence_timeout", "must be at least 1s");
    }
    if k.shard_refresh_interval.as_millis() < 100 {
        p.push("source.kinesis.shard_refresh_interval", "must be at least 100ms");
    }
    if k.commit_interval.as_millis() == 0 {
        p.push("source.kinesis.commit_interval", "must be greater than 0");
    }
}

fn is_kinesis_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}
