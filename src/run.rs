//! The long-running commands: `huntflow ingest` and the self-contained main
//! job `huntflow run` (embedded broker + ingest + simulated shards).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, ShardTokens};
use crate::ingest::{self, IngestState};
use crate::kafka::{Cluster, EventProducer, KafkaError};
use crate::pipeline::{self, StageKind};
use crate::simulate::{self, SimulateOptions, SimulateReport, Target};
use crate::topology::{Topology, TopologyError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Simulate(#[from] simulate::SimulateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
    #[error("no shard tokens configured: set HUNTFLOW_SHARD_TOKENS or shard_tokens_file")]
    NoTokens,
}

/// A running ingest server.
pub struct IngestHandle {
    pub addr: SocketAddr,
    pub cluster: Arc<Cluster>,
    pub registry: Registry,
    task: tokio::task::JoinHandle<Result<(), ingest::IngestError>>,
}

impl IngestHandle {
    /// Waits for the server to finish draining after its shutdown token fired.
    pub async fn join(self) -> Result<(), RunError> {
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(RunError::Ingest(ingest::IngestError::Serve(std::io::Error::other(e.to_string())))),
        }
    }
}

/// Starts ingest on `settings.ingest.listen` (port 0 picks a free one) and
/// serves until `shutdown` is cancelled.
pub async fn start_ingest(
    settings: &Settings,
    topology: &Topology,
    cluster: Arc<Cluster>,
    tokens: ShardTokens,
    shutdown: CancellationToken,
) -> Result<IngestHandle, RunError> {
    let registry = Registry::new();
    let producer = EventProducer::new(&cluster, topology, settings.ingest.delivery_timeout)?;
    let state = Arc::new(IngestState::new(
        topology.clone(),
        &settings.ingest,
        tokens,
        producer,
        cluster.clone(),
        registry.clone(),
    ));
    let listener = TcpListener::bind(settings.ingest.listen)
        .await
        .map_err(|source| RunError::Bind { addr: settings.ingest.listen, source })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind { addr: settings.ingest.listen, source })?;
    let max_body = settings.ingest.max_body_bytes;
    let task = tokio::spawn(ingest::serve(listener, state, max_body, async move { shutdown.cancelled().await }));
    Ok(IngestHandle { addr, cluster, registry, task })
}

/// `huntflow ingest`: serve until SIGTERM, then drain and return.
pub async fn ingest_until(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    if settings.shard_tokens.is_empty() {
        return Err(RunError::NoTokens);
    }
    let topology = Topology::load(&settings.topology)?;
    let cluster = Arc::new(Cluster::connect(&settings, &topology)?);
    if cluster.is_embedded() {
        tracing::info!(bootstrap = cluster.bootstrap(), "no brokers configured: started the embedded broker");
    }
    let handle = start_ingest(&settings, &topology, cluster, settings.shard_tokens.clone(), shutdown).await?;
    tracing::info!(addr = %handle.addr, topology_hash = topology.hash(), "ingest listening");
    handle.join().await
}

/// Options of the main job.
#[derive(Clone)]
pub struct RunOptions {
    pub simulate: SimulateOptions,
}

/// What the main job did, with what the topics hold afterwards.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub simulate: SimulateReport,
    pub bootstrap: String,
    pub ingest_addr: SocketAddr,
    pub events_in_topic: i64,
    pub dead_letters_in_topic: i64,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.simulate)?;
        writeln!(f, "events topic  {:>10}  records", self.events_in_topic)?;
        writeln!(f, "dead-letter   {:>10}  records", self.dead_letters_in_topic)
    }
}

/// `huntflow run`: broker (embedded unless configured) + ingest + simulated
/// shards over HTTP. Stops after `events` or when `shutdown` fires.
pub async fn main_job(
    settings: Settings,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let cluster = Cluster::connect(&settings, &topology)?;
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;
    let cluster = Arc::new(cluster);
    let (tokens, pairs) = ShardTokens::generate(opts.simulate.shards);
    let ingest_stop = CancellationToken::new();
    let ingest = start_ingest(&settings, &topology, cluster.clone(), tokens, ingest_stop.clone()).await?;
    tracing::info!(bootstrap = cluster.bootstrap(), ingest = %ingest.addr, "main job started");

    let target = Target::Http { base_url: format!("http://{}", ingest.addr), tokens: pairs };
    let result = simulate::run(&topology, target, opts.simulate.clone(), shutdown.clone()).await;
    ingest_stop.cancel();
    let addr = ingest.addr;
    let bootstrap = cluster.bootstrap().to_owned();
    ingest.join().await?;
    let report = result?;
    let topics = &topology.spec().topics;
    let counts = cluster
        .record_counts(vec![topics.events.name.clone(), topics.dead_letter.name.clone()], Duration::from_secs(10))
        .await?;
    Ok(RunReport {
        simulate: report,
        bootstrap,
        ingest_addr: addr,
        events_in_topic: counts[0].1,
        dead_letters_in_topic: counts[1].1,
    })
}

/// `huntflow worker --stage X`: runs until SIGTERM, then commits the open
/// transaction and returns.
pub async fn stage_worker(
    settings: Settings,
    kind: StageKind,
    instance: u32,
    shutdown: CancellationToken,
) -> Result<crate::stage::WorkerReport, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let cluster = Cluster::connect(&settings, &topology)?;
    let registry = Registry::new();
    let metrics = crate::stage::WorkerMetrics::new(&registry);
    let cfg = pipeline::worker_config(kind, &settings, &cluster, &topology, instance);
    Ok(pipeline::run_stage(kind, cfg, &topology, metrics, shutdown).await?)
}
