//! The embedded broker: librdkafka's in-process mock cluster, a real
//! Kafka-protocol server on 127.0.0.1 ports, so huntflow runs on a machine
//! with nothing installed.
//!
//! Limits (see DESIGN.md): no CreateTopics/DescribeConfigs (topics are made
//! through the mock API), no filtering of aborted transactions, no storage of
//! transactional offsets. Data lives in memory for the life of the process.

use std::net::SocketAddr;

use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::{KafkaError, TopicPlan};
use crate::topology::Topology;

/// `group.initial.rebalance.delay.ms` of the embedded broker. Kafka's
/// default (3 s, also the mock's) held every fresh worker idle for 3 s
/// before its first assignment; workers started together (`run`, the
/// benchmarks, the tests) still join one generation within this.
pub const INITIAL_REBALANCE_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

pub struct EmbeddedBroker {
    // Owns the mock cluster: it lives exactly as long as this handle.
    handle: ThreadedProducer<DefaultProducerContext>,
    bootstrap: String,
    forwarders: CancellationToken,
}

impl EmbeddedBroker {
    /// Starts `brokers` mock brokers. With `base_port`, broker `i` is also
    /// reachable (and advertised) at `base_port + i`, so other processes can
    /// use a fixed address.
    pub fn start(brokers: i32, base_port: Option<u16>) -> Result<Self, KafkaError> {
        let handle: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("test.mock.num.brokers", brokers.to_string()).set("log_level", "3").create()?;
        let mock = handle
            .client()
            .mock_cluster()
            .ok_or_else(|| KafkaError::Embedded("librdkafka did not start a mock cluster".into()))?;
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        // SAFETY: the pointer comes from the live handle we own; the call
        // only sets a value under the cluster lock.
        unsafe {
            let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(handle.client().native_ptr());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
                cluster,
                INITIAL_REBALANCE_DELAY.as_millis() as i32,
            );
        }
        let mut broker = Self { handle, bootstrap, forwarders: CancellationToken::new() };
        if let Some(base) = base_port {
            broker.listen_on_fixed_ports(base)?;
        }
        Ok(broker)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates every topic of the topology (replication capped at the broker count).
    pub fn create_topics(&self, topology: &Topology) -> Result<(), KafkaError> {
        let mock = self.mock()?;
        let brokers = self.bootstrap.split(',').count() as i32;
        for t in TopicPlan::from_topology(topology) {
            match mock.create_topic(&t.name, t.partitions, t.replication_factor.min(brokers)) {
                Err(rdkafka::error::KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) | Ok(()) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates one topic (tests and stages use it for their own topics).
    pub fn create_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<(), KafkaError> {
        Ok(self.mock()?.create_topic(name, partitions, replication)?)
    }

    /// Ids of the mock brokers (1..=count).
    pub fn broker_ids(&self) -> Vec<i32> {
        (1..=self.bootstrap.split(',').count() as i32).collect()
    }

    /// Fault injection: delay every response of `broker` by `rtt`.
    pub fn set_round_trip_time(&self, broker: i32, rtt: std::time::Duration) -> Result<(), KafkaError> {
        Ok(self.mock()?.broker_round_trip_time(broker, rtt)?)
    }

    /// Fault injection: take `broker` down (connections refused) or back up.
    pub fn set_broker_up(&self, broker: i32, up: bool) -> Result<(), KafkaError> {
        let mock = self.mock()?;
        Ok(if up { mock.broker_up(broker)? } else { mock.broker_down(broker)? })
    }

    /// Fault injection: the next requests of `api` fail with `errors`, in order.
    pub fn inject_request_errors(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[rdkafka::types::RDKafkaRespErr],
    ) -> Result<(), KafkaError> {
        self.mock()?.request_errors(api, errors);
        Ok(())
    }

    fn mock(&self) -> Result<rdkafka::mocking::MockCluster<'_, DefaultProducerContext>, KafkaError> {
        self.handle.client().mock_cluster().ok_or_else(|| KafkaError::Embedded("mock cluster is gone".into()))
    }

    /// The mock brokers bind random ports. For a fixed address we forward
    /// `base+i` to broker `i` and make the broker advertise the fixed port,
    /// so clients that follow metadata stay on the fixed ports too.
    fn listen_on_fixed_ports(&mut self, base: u16) -> Result<(), KafkaError> {
        let real: Vec<SocketAddr> = self
            .bootstrap
            .split(',')
            .map(|a| a.parse().map_err(|_| KafkaError::Embedded(format!("unexpected mock address {a}"))))
            .collect::<Result<_, _>>()?;
        let ids = self.broker_ids_by_address(&real)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| KafkaError::Embedded("fixed ports need a tokio runtime".into()))?;
        let mut fixed = Vec::new();
        for (i, (addr, id)) in real.iter().zip(ids).enumerate() {
            let port = base + i as u16;
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .map_err(|e| KafkaError::Embedded(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
            listener.set_nonblocking(true).map_err(|e| KafkaError::Embedded(e.to_string()))?;
            let cancel = self.forwarders.clone();
            let target = *addr;
            runtime.spawn(async move {
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    forward(listener, target, cancel).await;
                }
            });
            // SAFETY: the pointer comes from the live handle we own; the
            // function only copies the host string under the cluster lock.
            unsafe {
                let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(self.handle.client().native_ptr());
                let host = std::ffi::CString::new("127.0.0.1").map_err(|e| KafkaError::Embedded(e.to_string()))?;
                rdkafka::bindings::rd_kafka_mock_broker_set_host_port(cluster, id, host.as_ptr(), port as i32);
            }
            fixed.push(format!("127.0.0.1:{port}"));
        }
        self.bootstrap = fixed.join(",");
        Ok(())
    }

    fn broker_ids_by_address(&self, real: &[SocketAddr]) -> Result<Vec<i32>, KafkaError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        let md = consumer.fetch_metadata(None, std::time::Duration::from_secs(10))?;
        real.iter()
            .map(|addr| {
                md.brokers()
                    .iter()
                    .find(|b| b.port() == addr.port() as i32)
                    .map(|b| b.id())
                    .ok_or_else(|| KafkaError::Embedded(format!("no broker advertises {addr}")))
            })
            .collect()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.forwarders.cancel();
    }
}

async fn forward(listener: tokio::net::TcpListener, target: SocketAddr, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else { continue };
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
