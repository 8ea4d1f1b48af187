//! Record headers huntflow writes. Values are UTF-8 text.

use rdkafka::message::{Headers, Message};

/// SHA-256 of the hunt/reward definitions that produced the record.
pub const HEADER_TOPOLOGY_HASH: &str = "huntflow-topology-hash";
/// Record schema, e.g. `game-event/v1`.
pub const HEADER_SCHEMA: &str = "huntflow-schema";
/// The shard that posted the event.
pub const HEADER_SHARD: &str = "huntflow-shard";
/// Dead letters: the stage that refused the record.
pub const HEADER_STAGE: &str = "huntflow-stage";
/// Dead letters: human-readable reason.
pub const HEADER_REASON: &str = "huntflow-reason";
/// Dead letters: stable reason code.
pub const HEADER_REASON_CODE: &str = "huntflow-reason-code";
/// Dead letters: size of the original when the stored bytes were truncated.
pub const HEADER_ORIGINAL_SIZE: &str = "huntflow-original-size";

/// Records copied from Kinesis: the Kinesis shard they were read from.
pub const HEADER_KINESIS_SHARD: &str = "huntflow-kinesis-shard";
/// Records copied from Kinesis: their Kinesis sequence number.
pub const HEADER_KINESIS_SEQUENCE: &str = "huntflow-kinesis-sequence";

/// Records copied from Kinesis: `<run>:<n>`, the bridge process run and its
/// n-th transaction. Brokers that show aborted records (test brokers) make
/// the transaction open at a crash visible; this tells it apart.
pub const HEADER_KINESIS_TXN: &str = "huntflow-kinesis-txn";

/// The first header named `name`, as text.
pub fn header_str<M: Message>(msg: &M, name: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
