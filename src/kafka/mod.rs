//! Everything that talks the Kafka protocol: the embedded broker, topic
//! administration and the idempotent producer used by ingest.

mod admin;
mod embedded;
mod headers;
mod producer;
pub mod transactional;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

pub use admin::{check_topics, create_topics, Drift, TopicPlan};
pub use embedded::EmbeddedBroker;
pub use headers::{
    header_str, HEADER_KINESIS_SEQUENCE, HEADER_KINESIS_SHARD, HEADER_KINESIS_TXN, HEADER_ORIGINAL_SIZE, HEADER_REASON,
    HEADER_REASON_CODE, HEADER_SCHEMA, HEADER_SHARD, HEADER_STAGE, HEADER_TOPOLOGY_HASH,
};
pub use producer::{DeadLetter, EventProducer, ProduceError, MAX_DEAD_LETTER_BYTES};
pub use transactional::backoff;

use crate::config::Settings;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("topic administration: {0}")]
    Admin(String),
    #[error("blocking task failed: {0}")]
    Join(String),
}

/// Where the brokers are, plus the librdkafka passthrough settings.
/// Holding a `Cluster` keeps an embedded broker alive.
pub struct Cluster {
    bootstrap: String,
    passthrough: BTreeMap<String, String>,
    embedded: Option<EmbeddedBroker>,
}

/// Partition ids of `topic` as the brokers report them (empty if unknown).
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default())
}

impl Cluster {
    /// Connects to the configured brokers, or starts the embedded 3-broker
    /// mock cluster with the topology's topics when none are configured.
    pub fn connect(settings: &Settings, topology: &Topology) -> Result<Self, KafkaError> {
        match &settings.brokers {
            Some(bootstrap) => {
                Ok(Self { bootstrap: bootstrap.clone(), passthrough: settings.kafka.clone(), embedded: None })
            }
            None => {
                let broker = EmbeddedBroker::start(3, None)?;
                broker.create_topics(topology)?;
                Ok(Self {
                    bootstrap: broker.bootstrap().to_owned(),
                    passthrough: settings.kafka.clone(),
                    embedded: Some(broker),
                })
            }
        }
    }

    /// A cluster at an explicit bootstrap address (tests, tools).
    pub fn at(bootstrap: impl Into<String>) -> Self {
        Self { bootstrap: bootstrap.into(), passthrough: BTreeMap::new(), embedded: None }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Base client config: bootstrap plus passthrough settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.passthrough {
            c.set(k, v);
        }
        c
    }

    /// True when the brokers answer a metadata request and every named topic exists.
    pub async fn topics_present(&self, names: Vec<String>, timeout: Duration) -> Result<Vec<String>, KafkaError> {
        let config = self.client_config();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = config.create()?;
            let md = consumer.fetch_metadata(None, timeout)?;
            let present: Vec<&str> = md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name()).collect();
            Ok(names.into_iter().filter(|n| !present.contains(&n.as_str())).collect())
        })
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))?
    }
}

impl Cluster {
    /// Records per topic (sum of high minus low watermarks). Exact for topics
    /// written without transactions, which is all of ingest's.
    pub async fn record_counts(
        &self,
        topics: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<(String, i64)>, KafkaError> {
        let config = self.client_config();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = config.create()?;
            let mut out = Vec::new();
            for topic in topics {
                let md = consumer.fetch_metadata(Some(&topic), timeout)?;
                let mut total = 0;
                for t in md.topics() {
                    for p in t.partitions() {
                        let (low, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
                        total += high - low;
                    }
                }
                out.push((topic, total));
            }
            Ok(out)
        })
        .await
        .map_err(|e| KafkaError::Join(e.to_string()))?
    }

    /// Ensures the topology's topics exist: through the mock API on the
    /// embedded broker, through CreateTopics elsewhere.
    pub async fn ensure_topics(&self, topology: &Topology, timeout: Duration) -> Result<(), KafkaError> {
        match &self.embedded {
            Some(b) => b.create_topics(topology),
            None => create_topics(self, &TopicPlan::from_topology(topology), timeout).await.map(|_| ()),
        }
    }
}

impl Cluster {
    /// librdkafka settings applied to every client of this cluster.
    pub fn set_passthrough(&mut self, passthrough: BTreeMap<String, String>) {
        self.passthrough = passthrough;
    }
}

impl Cluster {
    /// The embedded broker, when this cluster is one (fault injection in tests).
    pub fn embedded(&self) -> Option<&EmbeddedBroker> {
        self.embedded.as_ref()
    }
}

/// `init_transactions`, fencing any predecessor with the same
/// transactional.id. Its transaction may still be open (a restarted pod, or a
/// zombie being fenced): the broker answers CONCURRENT_TRANSACTIONS or times
/// out until it has aborted it, so retry for a while. Blocks the thread.
pub fn init_transactions<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError as E;
    use rdkafka::producer::Producer;
    let mut attempt = 0;
    loop {
        match producer.init_transactions(timeout) {
            Ok(()) => return Ok(()),
            Err(E::Transaction(e)) if e.is_fatal() => return Err(E::Transaction(e)),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "init_transactions failed; retrying");
                std::thread::sleep(backoff(attempt + 2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `fetch.wait.max.ms` of the pipeline's own consumers (stages, query),
/// unless the `kafka:` settings name it. librdkafka's 500 ms default is
/// how long a caught-up consumer's fetch may wait at a broker that does not
/// answer as soon as data arrives (the embedded one waits it out in full):
/// up to 500 ms per hop of event -> leaderboard. Against Kafka it only
/// bounds an idle consumer's fetch rate (40 requests/s per broker).
pub const FETCH_WAIT: Duration = Duration::from_millis(25);

/// `client` with [`FETCH_WAIT`] unless it already sets `fetch.wait.max.ms`.
pub fn quick_fetch(client: &ClientConfig) -> ClientConfig {
    let mut c = client.clone();
    if c.get("fetch.wait.max.ms").is_none() {
        c.set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string());
    }
    c
}

/// How long a producer waiting for acknowledgements sleeps when no
/// delivery report is ready.
const ACK_WAIT: Duration = Duration::from_micros(200);

/// Serves the delivery reports that are ready without blocking; when none
/// is, sleeps [`ACK_WAIT`]. `BaseProducer::poll(d)` must not be used to
/// wait: it loops until its deadline and hands librdkafka the remaining
/// time truncated to whole milliseconds, so below 1 ms it busy-polls
/// (`poll(1ms)` is a 1 ms spin). On a 2-core box that spin took the CPU
/// the broker threads needed to acknowledge the very records it waited for.
pub fn serve_acks<C: rdkafka::producer::ProducerContext>(producer: &rdkafka::producer::BaseProducer<C>) {
    use rdkafka::producer::Producer;
    let before = producer.in_flight_count();
    producer.poll(Duration::ZERO);
    if producer.in_flight_count() >= before {
        std::thread::sleep(ACK_WAIT);
    }
}

/// Waits until every queued record of `producer` is acknowledged, serving
/// delivery reports as they arrive. rdkafka's own `flush` polls in slices of
/// 100 ms that always run to their end (`BaseProducer::poll` loops until its
/// deadline), which cost every stage commit ~200 ms of pure waiting.
pub fn flush<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(rdkafka::error::KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::MessageTimedOut));
        }
        serve_acks(producer);
    }
}
