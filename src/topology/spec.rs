//! The shape of `topology.yaml`.
//!
//! Unknown keys are rejected by the loader (`serde_ignored` collects every one
//! with its path), not by `#[serde(deny_unknown_fields)]`, which would stop at
//! the first and hide the rest of the problems from the operator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

/// The whole pipeline: hunts, topics, stages, windows, limits and source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TopologySpec {
    /// Format version of this file; only `1` exists.
    pub version: u32,
    /// The hunts this deployment serves. Frozen for the lifetime of the process.
    pub hunts: Vec<HuntSpec>,
    /// Kafka topics the pipeline reads and writes, by role.
    pub topics: TopicsSpec,
    /// Where game events come from.
    #[serde(default)]
    pub source: SourceSpec,
    /// Per-stage settings of the claim -> score -> rank workers.
    #[serde(default)]
    pub stages: StagesSpec,
    /// Event-time windows for prizes and leaderboards.
    #[serde(default)]
    pub windows: WindowsSpec,
    /// Limits applied at the HTTP ingest.
    #[serde(default)]
    pub ingest: IngestLimitsSpec,
}

/// One hunt: ordered tiers and its reward table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct HuntSpec {
    /// Stable identifier, `[a-z0-9_-]`, used in event `hunt_id` and in URLs.
    pub id: String,
    /// Unit of every reward amount (e.g. `gems`).
    pub currency: String,
    /// Ordered tiers, lowest first (e.g. bronze .. legendary), each with its
    /// row of the reward table.
    pub tiers: Vec<TierSpec>,
}

/// One tier and its rewards.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TierSpec {
    /// Tier name, `[a-z0-9_-]`, used in event `tier` and in URLs.
    pub name: String,
    /// Paid for every chest a player wins (first claim) in this tier.
    pub chest_reward: u64,
    /// Paid by rank in each closed prize window's ranking. Ranges must not overlap.
    #[serde(default)]
    pub rank_rewards: Vec<RankRewardSpec>,
}

/// `reward` for every rank in `from..=to` (1-based).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RankRewardSpec {
    /// First rank of the range, 1-based.
    pub from: u32,
    /// Last rank of the range, inclusive; at most the leaderboard size.
    pub to: u32,
    /// Amount paid to each rank in the range.
    pub reward: u64,
}

/// Topics by role. Each stage's changelog is derived from `changelog_prefix`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TopicsSpec {
    /// Raw game events, keyed by chest key (chests) or event id.
    pub events: TopicSpec,
    /// Events that passed the claim stage, keyed by player.
    pub accepted: TopicSpec,
    /// Per-partition top-K candidates and watermarks, keyed by tier.
    pub candidates: TopicSpec,
    /// Leaderboard snapshots (compacted).
    pub leaderboards: TopicSpec,
    /// Prize batches.
    pub prizes: TopicSpec,
    /// Records no stage could process, with the reason and the original bytes.
    pub dead_letter: TopicSpec,
    /// Prefix of the compacted per-stage changelog topics (`<prefix><stage>`).
    #[serde(default = "default_changelog_prefix")]
    pub changelog_prefix: String,
}

fn default_changelog_prefix() -> String {
    "hunt.changelog.".into()
}

impl TopicsSpec {
    /// Every topic with its role name, in a stable order.
    pub fn all(&self) -> Vec<(&'static str, &TopicSpec)> {
        vec![
            ("events", &self.events),
            ("accepted", &self.accepted),
            ("candidates", &self.candidates),
            ("leaderboards", &self.leaderboards),
            ("prizes", &self.prizes),
            ("dead_letter", &self.dead_letter),
        ]
    }
}

/// One topic's name, layout and broker-side configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TopicSpec {
    /// Kafka topic name.
    pub name: String,
    /// Partition count; fixes the parallelism of the stage reading it.
    pub partitions: i32,
    /// Replication factor; 3 in production.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Topic-level configs (`cleanup.policy`, `retention.ms`, ...). Safe
    /// defaults are added by `huntflow topics create` where absent.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_replication() -> i32 {
    3
}

/// Where events enter the pipeline.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SourceSpec {
    /// `kafka` (shards post to the HTTP ingest) or `kinesis` (`huntflow
    /// kinesis-bridge` copies a Kinesis stream into the events topic).
    #[serde(default)]
    pub kind: SourceKind,
    /// The Kinesis stream and how to read it; required when `kind: kinesis`.
    #[serde(default)]
    pub kinesis: Option<KinesisSourceSpec>,
}

/// How the Kinesis bridge reads its stream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct KinesisSourceSpec {
    /// Kinesis stream name.
    pub stream: String,
    /// `polling` (GetRecords on every shard, several instances may split the
    /// shards) or `enhanced-fan-out` (one registered consumer, SubscribeToShard
    /// per shard, one instance; strict per-shard order at push latency).
    #[serde(default)]
    pub mode: KinesisMode,
    /// Name of the registered stream consumer in `enhanced-fan-out` mode;
    /// reused when it already exists.
    #[serde(default = "default_consumer_name")]
    pub consumer_name: String,
    /// Compacted topic holding the last sequence number written per shard,
    /// committed in the same transaction as the records.
    #[serde(default = "default_checkpoint_topic")]
    pub checkpoints: TopicSpec,
    /// GetRecords `Limit` (1..=10000).
    #[serde(default = "default_max_records")]
    pub max_records_per_call: i32,
    /// Polling: wait after a GetRecords that returned nothing. At least 200ms
    /// (Kinesis allows 5 GetRecords per second per shard).
    #[serde(default = "default_idle_poll")]
    pub idle_poll_interval: HumanDuration,
    /// Enhanced fan-out: resubscribe when a subscription sent nothing for this
    /// long, so a half-open subscription cannot stall a shard unnoticed.
    #[serde(default = "default_silence")]
    pub subscription_silence_timeout: HumanDuration,
    /// How often the shard list is re-read to find shards created by a split
    /// or merge.
    #[serde(default = "default_shard_refresh")]
    pub shard_refresh_interval: HumanDuration,
    /// The bridge commits its Kafka transaction at least this often.
    #[serde(default = "default_bridge_commit")]
    pub commit_interval: HumanDuration,
}

/// Kinesis consumer mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KinesisMode {
    #[default]
    Polling,
    EnhancedFanOut,
}

fn default_consumer_name() -> String {
    "huntflow".into()
}

fn default_checkpoint_topic() -> TopicSpec {
    TopicSpec {
        name: "hunt.kinesis-checkpoints".into(),
        partitions: 1,
        replication_factor: default_replication(),
        config: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
    }
}

fn default_max_records() -> i32 {
    10_000
}

fn default_idle_poll() -> HumanDuration {
    HumanDuration::from_millis(1_000)
}

fn default_silence() -> HumanDuration {
    HumanDuration::from_millis(15_000)
}

fn default_shard_refresh() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

fn default_bridge_commit() -> HumanDuration {
    HumanDuration::from_millis(200)
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Kafka,
    Kinesis,
}

/// Settings of the three stages.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct StagesSpec {
    /// How long a retried `event_id` is remembered (event time).
    #[serde(default = "default_dedup_ttl")]
    pub dedup_ttl: HumanDuration,
    /// Leaderboard size per hunt, tier and board.
    #[serde(default = "default_top_n")]
    pub top_n: u32,
    /// Transactions commit at least this often.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: HumanDuration,
    /// At most one leaderboard snapshot per tier per interval.
    #[serde(default = "default_publish_interval")]
    pub leaderboard_publish_interval: HumanDuration,
}

fn default_dedup_ttl() -> HumanDuration {
    HumanDuration::from_millis(24 * 3_600_000)
}
fn default_top_n() -> u32 {
    100
}
fn default_commit_interval() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_publish_interval() -> HumanDuration {
    HumanDuration::from_millis(250)
}

impl Default for StagesSpec {
    fn default() -> Self {
        Self {
            dedup_ttl: default_dedup_ttl(),
            top_n: default_top_n(),
            commit_interval: default_commit_interval(),
            leaderboard_publish_interval: default_publish_interval(),
        }
    }
}

/// Event-time windows.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct WindowsSpec {
    /// Tumbling prize window; one prize batch per hunt, tier and window.
    #[serde(default)]
    pub prize: TumblingWindowSpec,
    /// Also keep a lifetime (whole-hunt) leaderboard.
    #[serde(default = "default_true")]
    pub lifetime_board: bool,
    /// Event time a closed window's leaderboard key stays on the compacted
    /// leaderboards topic after its close (end + grace); then rank writes its
    /// tombstone.
    #[serde(default = "default_leaderboard_retention")]
    pub leaderboard_retention: HumanDuration,
}

fn default_true() -> bool {
    true
}
fn default_leaderboard_retention() -> HumanDuration {
    HumanDuration::from_millis(600_000)
}

impl Default for WindowsSpec {
    fn default() -> Self {
        Self {
            prize: TumblingWindowSpec::default(),
            lifetime_board: true,
            leaderboard_retention: default_leaderboard_retention(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TumblingWindowSpec {
    /// Window length.
    #[serde(default = "default_window_size")]
    pub size: HumanDuration,
    /// How long after the window end late events are still counted.
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
}

fn default_window_size() -> HumanDuration {
    HumanDuration::from_millis(60_000)
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

impl Default for TumblingWindowSpec {
    fn default() -> Self {
        Self { size: default_window_size(), grace: default_grace() }
    }
}

/// Ingest limits; the rate limit is per shard.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct IngestLimitsSpec {
    /// Sustained events per second each shard may post.
    #[serde(default = "default_rate")]
    pub events_per_second_per_shard: u32,
    /// Events a shard may post at once above the sustained rate; also the
    /// largest batch a shard can send.
    #[serde(default = "default_burst")]
    pub burst_per_shard: u32,
    /// Largest accepted event, in bytes of its JSON encoding.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How far ahead of the writer's clock (ingest, Kinesis bridge) an
    /// event_time may be; later ones are dead-lettered `event_time_in_future`.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
    /// How often each writer of the events topic appends a heartbeat (its
    /// clock) to every events partition, so windows close without traffic.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// A writer whose latest heartbeat on a partition is this far behind the
    /// newest heartbeat there is dead and no longer holds the partition's time.
    #[serde(default = "default_writer_timeout")]
    pub heartbeat_writer_timeout: HumanDuration,
}

fn default_rate() -> u32 {
    2_000
}
fn default_burst() -> u32 {
    5_000
}
fn default_max_event_bytes() -> usize {
    16 * 1024
}
fn default_max_clock_skew() -> HumanDuration {
    HumanDuration::from_millis(5 * 60_000)
}
fn default_heartbeat_interval() -> HumanDuration {
    HumanDuration::from_millis(1_000)
}
fn default_writer_timeout() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}

impl Default for IngestLimitsSpec {
    fn default() -> Self {
        Self {
            events_per_second_per_shard: default_rate(),
            burst_per_shard: default_burst(),
            max_event_bytes: default_max_event_bytes(),
            max_clock_skew: default_max_clock_skew(),
            heartbeat_interval: default_heartbeat_interval(),
            heartbeat_writer_timeout: default_writer_timeout(),
        }
    }
}
