//! Kinesis Data Streams as the event source: `huntflow kinesis-bridge` reads
//! a stream (polling or one enhanced fan-out consumer) and writes its records
//! to the events topic exactly once, with a checkpoint per shard committed in
//! the same Kafka transaction. The claim -> score -> rank pipeline downstream
//! does not know where its events came from.

mod bridge;
mod checkpoint;
mod commit;
mod efo;
mod heartbeat;
mod metrics;
mod polling;
mod reader;
mod shards;

use std::fmt::Display;

pub use bridge::{run_bridge, BridgeOptions, BridgeReport};
pub use checkpoint::Checkpoint;
pub use commit::STAGE;
pub use metrics::BridgeMetrics;
pub use shards::{list_shards, owner, seq_cmp, ShardInfo};

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    #[error("topology has no `source.kinesis` section")]
    NotConfigured,
    #[error("{0}")]
    Invalid(String),
    #[error("Kinesis {call} failed: {message}")]
    Api { call: &'static str, message: String },
    #[error("enhanced fan-out consumer: {0}")]
    Consumer(String),
    #[error("checkpoint topic: {0}")]
    Checkpoints(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("a record of the transaction was not delivered")]
    Delivery,
    #[error("bridge task failed: {0}")]
    Task(String),
}

impl KinesisError {
    /// Keeps the whole error chain: the SDK's Display alone says only
    /// "service error".
    pub fn api<E: std::error::Error>(call: &'static str, e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        KinesisError::Api { call, message }
    }
}

/// A Kinesis client from the standard AWS config chain (environment, profile,
/// web identity, IMDS), with the endpoint and region overrides of `settings`.
pub async fn connect(settings: &Settings) -> aws_sdk_kinesis::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.kinesis_region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &settings.kinesis_endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    aws_sdk_kinesis::Client::new(&config)
}

fn join_error(e: impl Display) -> KinesisError {
    KinesisError::Task(e.to_string())
}
