//! The transactional producer of the stage workers: one record path (waits
//! for queue room), a flush that does not sleep in 100 ms slices, delivery
//! bookkeeping, and commit with the one retry policy ([`backoff`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

/// Attempts at a commit whose outcome is unknown (timed out) before giving up.
const COMMIT_ATTEMPTS: u32 = 5;

/// The one retry policy: exponential from 100 ms, capped at 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// Delivery bookkeeping of one transaction.
#[derive(Default)]
pub struct Deliveries {
    failures: AtomicU64,
    /// Highest acknowledged offset per partition of `tracked_topic`.
    last: Mutex<HashMap<i32, i64>>,
    tracked_topic: String,
}

impl Deliveries {
    pub fn reset(&self) {
        self.failures.store(0, Ordering::SeqCst);
        if let Ok(mut last) = self.last.lock() {
            last.clear();
        }
    }

    /// An error if any record of this transaction was not acknowledged.
    pub fn check(&self, what: &str) -> Result<(), KafkaError> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            tracing::warn!("{what} was not acknowledged");
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTransactionalState));
        }
        Ok(())
    }

    pub fn changelog_last(&self) -> HashMap<i32, i64> {
        self.last.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

pub struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.0.tracked_topic => {
                if let Ok(mut last) = self.0.last.lock() {
                    let e = last.entry(m.partition()).or_insert(-1);
                    *e = (*e).max(m.offset());
                }
            }
            Ok(_) => {}
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed inside a transaction; it will abort");
                self.0.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// A transactional producer; blocking calls, for a worker's own thread.
pub struct TxnProducer {
    inner: BaseProducer<DeliveryContext>,
    deliveries: Arc<Deliveries>,
}

impl TxnProducer {
    /// Creates the producer and fences any predecessor with the same id.
    /// `tracked_topic`'s acknowledged offsets are kept per transaction.
    pub fn new(
        client: &ClientConfig,
        transactional_id: &str,
        timeout: Duration,
        tracked_topic: &str,
    ) -> Result<Self, KafkaError> {
        let deliveries = Arc::new(Deliveries { tracked_topic: tracked_topic.to_owned(), ..Default::default() });
        let inner: BaseProducer<DeliveryContext> = client
            .clone()
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // JSON compresses well; it also keeps the embedded broker (5 MB per
            // partition, no compaction) from dropping old records.
            .set("compression.type", "lz4")
            .set("partitioner", "murmur2_random")
            .set("transaction.timeout.ms", timeout.as_millis().max(1000).to_string())
            .create_with_context(DeliveryContext(deliveries.clone()))?;
        super::init_transactions(&inner, timeout)?;
        Ok(Self { inner, deliveries })
    }

    pub fn deliveries(&self) -> Arc<Deliveries> {
        self.deliveries.clone()
    }

    /// Begins a transaction with fresh delivery bookkeeping.
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.deliveries.reset();
        self.inner.begin_transaction()
    }

    /// Queues one record, waiting for queue room instead of failing.
    pub fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        partition: Option<i32>,
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::to(topic).key(key).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    super::serve_acks(&self.inner);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        super::flush(&self.inner, timeout)
    }

    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        metadata: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        self.inner.send_offsets_to_transaction(offsets, metadata, timeout)
    }

    /// Commits; a timed-out (retriable) commit is retried, never aborted:
    /// librdkafka refuses an abort while the commit may still complete.
    pub fn commit(&self, timeout: Duration) -> Result<(), KafkaError> {
        let mut attempt = 0;
        loop {
            match self.inner.commit_transaction(timeout) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < COMMIT_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "commit_transaction failed; retrying");
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Aborts: drops what is still queued, serves the delivery reports of
    /// the dropped records (librdkafka refuses to abort while they are
    /// unpolled), then aborts the transaction on the broker.
    pub fn abort(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::PurgeConfig;
        self.inner.purge(PurgeConfig::default().queue().inflight());
        let _ = super::flush(&self.inner, timeout);
        self.deliveries.reset();
        match self.inner.abort_transaction(timeout) {
            Ok(()) => Ok(()),
            // Nothing was begun.
            Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::State => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The high watermark librdkafka last saw for a partition (no broker call).
pub fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: a live client handle, a NUL-terminated topic and two valid out
    // pointers; rd_kafka_get_watermark_offsets only reads its local cache.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}
