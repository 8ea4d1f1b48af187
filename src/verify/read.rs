//! Reads whole topics (read_committed) up to their current end.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::VerifyError;

/// One record as read, with its headers.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every record of `topic`, partition by partition in offset order.
pub fn read_topic(client: &ClientConfig, topic: &str, timeout: Duration) -> Result<Vec<Record>, VerifyError> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "huntflow-verify")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let partitions = crate::kafka::topic_partitions(&consumer, topic, Duration::from_secs(10))?;
    if partitions.is_empty() {
        return Err(VerifyError::MissingTopic(topic.into()));
    }
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    let mut ends = std::collections::HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.insert(p, high);
            remaining += 1;
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let (mut idle_since, mut checked) = (Instant::now(), Instant::now());
    while remaining > 0 {
        if Instant::now() > deadline {
            return Err(VerifyError::Timeout(topic.into()));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(Record::of(&m));
                idle_since = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            // Nothing new for 3 s: what read_committed can see is read (a
            // partition's end may sit behind a transaction marker or an open
            // transaction of a departed producer; some brokers, Tansu,
            // report wrong high watermarks).
            None if idle_since.elapsed() >= Duration::from_secs(3) => break,
            None => {}
        }
        // Done with the partitions whose position reached the end seen at
        // the start (the tail may be a transaction marker, never delivered
        // but counted in the end). Checked while records still arrive:
        // live writers (heartbeats) keep a topic from ever going idle.
        if checked.elapsed() >= Duration::from_millis(250) {
            checked = Instant::now();
            let positions = consumer.position()?;
            let done: Vec<i32> = ends
                .iter()
                .filter(|(p, end)| {
                    positions
                        .find_partition(topic, **p)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= **end))
                })
                .map(|(p, _)| *p)
                .collect();
            for p in done {
                ends.remove(&p);
                remaining -= 1;
            }
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
