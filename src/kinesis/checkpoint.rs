//! Checkpoints: the last Kinesis sequence number written to the events topic
//! per shard, committed in the same Kafka transaction as the records. The
//! compacted checkpoint topic is read (read_committed) by a tail thread, which
//! gives a restarted bridge its resume points and every instance the shards
//! other instances finished (a child may wait for another instance's parent).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::KinesisError;

/// One shard's progress, the value of the checkpoint record keyed
/// `<stream>/<shard>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub stream: String,
    pub shard: String,
    /// Last sequence number written; `None` when the shard had no record.
    pub sequence: Option<String>,
    /// The shard is closed and every record of it is written.
    pub finished: bool,
}

impl Checkpoint {
    pub fn key(stream: &str, shard: &str) -> String {
        format!("{stream}/{shard}")
    }
}

/// A record a bridge writes to prove it has read everything before it.
#[derive(Serialize, Deserialize)]
struct Barrier {
    barrier: String,
}

/// What the tail has read so far.
#[derive(Clone, Debug, Default)]
pub struct TailView {
    pub checkpoints: BTreeMap<String, Checkpoint>,
    barriers: BTreeMap<String, BTreeSet<i32>>,
}

impl TailView {
    /// Whether the barrier `id` was seen on every partition in `partitions`.
    pub fn saw_barrier(&self, id: &str, partitions: &[i32]) -> bool {
        self.barriers.get(id).is_some_and(|seen| partitions.iter().all(|p| seen.contains(p)))
    }

    /// Checkpoints of `stream`, by shard.
    pub fn of_stream(&self, stream: &str) -> BTreeMap<String, Checkpoint> {
        self.checkpoints.values().filter(|c| c.stream == stream).map(|c| (c.shard.clone(), c.clone())).collect()
    }
}

pub fn barrier_record(id: &str) -> (String, Vec<u8>) {
    let value = serde_json::to_vec(&Barrier { barrier: id.to_owned() }).unwrap_or_default();
    (format!("barrier/{id}"), value)
}

/// Reads the checkpoint topic from the beginning and keeps following it on a
/// dedicated thread (librdkafka polls block) until dropped.
pub struct CheckpointTail {
    pub view: watch::Receiver<TailView>,
    pub partitions: Vec<i32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CheckpointTail {
    pub fn start(client: &ClientConfig, topic: &str) -> Result<Self, KinesisError> {
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", "huntflow-kinesis-checkpoints")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let partitions = crate::kafka::topic_partitions(&consumer, topic, Duration::from_secs(10))
            .map_err(|e| KinesisError::Checkpoints(format!("{topic}: {e}")))?;
        if partitions.is_empty() {
            return Err(KinesisError::Checkpoints(format!(
                "topic {topic} does not exist; run `huntflow topics create`"
            )));
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (tx, rx) = watch::channel(TailView::default());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kinesis-checkpoints".into())
            .spawn(move || follow(consumer, tx, stop_thread))
            .map_err(|e| KinesisError::Checkpoints(format!("cannot start the tail thread: {e}")))?;
        Ok(Self { view: rx, partitions, stop, thread: Some(thread) })
    }
}

fn follow(consumer: BaseConsumer, tx: watch::Sender<TailView>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint topic read failed; retrying");
                continue;
            }
        };
        let Some(payload) = msg.payload() else { continue };
        let partition = msg.partition();
        if let Ok(cp) = serde_json::from_slice::<Checkpoint>(payload) {
            tx.send_modify(|v| {
                v.checkpoints.insert(Checkpoint::key(&cp.stream, &cp.shard), cp);
            });
        } else if let Ok(b) = serde_json::from_slice::<Barrier>(payload) {
            tx.send_modify(|v| {
                v.barriers.entry(b.barrier).or_default().insert(partition);
            });
        } else {
            tracing::warn!(partition, offset = msg.offset(), "unreadable record on the checkpoint topic; skipped");
        }
    }
}

impl Drop for CheckpointTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_counts_only_when_seen_on_every_partition() {
        let mut v = TailView::default();
        v.barriers.entry("b1".into()).or_default().insert(0);
        assert!(!v.saw_barrier("b1", &[0, 1]));
        v.barriers.entry("b1".into()).or_default().insert(1);
        assert!(v.saw_barrier("b1", &[0, 1]));
        assert!(!v.saw_barrier("b2", &[0]));
    }

    #[test]
    fn checkpoints_are_filtered_by_stream() {
        let mut v = TailView::default();
        for (stream, shard) in [("a", "s0"), ("b", "s0"), ("a", "s1")] {
            let cp =
                Checkpoint { stream: stream.into(), shard: shard.into(), sequence: Some("1".into()), finished: false };
            v.checkpoints.insert(Checkpoint::key(stream, shard), cp);
        }
        assert_eq!(v.of_stream("a").keys().collect::<Vec<_>>(), vec!["s0", "s1"]);
    }
}
