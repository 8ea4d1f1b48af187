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
use crate::pipeline::{self, Pipeline, StageKind};
use crate::query::{self, Boards, QueryError};
use crate::simulate::{self, SimulateOptions, SimulateReport, Target};
use crate::stage::{WorkerMetrics, WorkerReport};
use crate::topology::{Topology, TopologyError};
use crate::verify::{self, VerifyReport};

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
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Kinesis(#[from] crate::kinesis::KinesisError),
    #[error("no shard tokens configured: set HUNTFLOW_SHARD_TOKENS or shard_tokens_file")]
    NoTokens,
    #[error("benchmark: {0}")]
    Bench(String),
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
    /// Workers per stage inside this process.
    pub workers_per_stage: u32,
    /// Print the live top-10 per tier every few seconds.
    pub live: bool,
    /// Run `verify` once the pipeline has drained.
    pub verify: bool,
    /// Longest wait for the pipeline to drain after the last event.
    pub drain_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            simulate: SimulateOptions::default(),
            workers_per_stage: 1,
            live: false,
            verify: false,
            drain_timeout: Duration::from_secs(300),
        }
    }
}

/// What the main job did, with what the topics hold afterwards.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub simulate: SimulateReport,
    pub bootstrap: String,
    pub ingest_addr: SocketAddr,
    pub query_addr: SocketAddr,
    pub topic_counts: Vec<(String, i64)>,
    pub workers: Vec<(StageKind, u32, WorkerReport)>,
    pub leaderboards: Vec<String>,
    pub verify: Option<VerifyReport>,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.simulate)?;
        for (topic, n) in &self.topic_counts {
            writeln!(f, "{topic:<24} {n:>10}  records")?;
        }
        for (kind, i, r) in &self.workers {
            writeln!(
                f,
                "{}-{i}: {} processed, {} skipped, {} commits, {} aborts, {} restored",
                kind.name(),
                r.processed,
                r.skipped,
                r.commits,
                r.aborts,
                r.restored
            )?;
        }
        writeln!(f, "lifetime top-10 per tier:")?;
        for line in &self.leaderboards {
            writeln!(f, "  {line}")?;
        }
        if let Some(v) = &self.verify {
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Query API: materializer thread + HTTP server.
pub struct QueryHandle {
    pub addr: SocketAddr,
    pub boards: Boards,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), QueryError>>,
    thread: std::thread::JoinHandle<()>,
}

impl QueryHandle {
    pub async fn stop(self) -> Result<(), RunError> {
        self.stop.cancel();
        let served = self.task.await.map_err(|e| QueryError::Serve(std::io::Error::other(e.to_string())))?;
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        Ok(served?)
    }
}

/// Starts the query API on `listen` (port 0 picks a free one), keeping
/// closed windows for the default retention.
pub async fn start_query(
    listen: SocketAddr,
    cluster: &Cluster,
    topology: &Topology,
    registry: Registry,
) -> Result<QueryHandle, RunError> {
    let retention = Settings::default().query_closed_window_retention;
    start_query_with(listen, cluster, topology, registry, Boards::new(topology, retention)).await
}

/// Starts the query API on `listen` serving (and filling) `boards`.
pub async fn start_query_with(
    listen: SocketAddr,
    cluster: &Cluster,
    topology: &Topology,
    registry: Registry,
    boards: Boards,
) -> Result<QueryHandle, RunError> {
    let stop = CancellationToken::new();
    let topic = topology.spec().topics.leaderboards.name.clone();
    let thread = query::materialize(&cluster.client_config(), &topic, boards.clone(), stop.clone())?;
    let listener = TcpListener::bind(listen).await.map_err(|source| RunError::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind { addr: listen, source })?;
    let shutdown = stop.clone();
    let task = tokio::spawn(query::serve(listener, topology.clone(), boards.clone(), registry, async move {
        shutdown.cancelled().await
    }));
    Ok(QueryHandle { addr, boards, stop, task, thread })
}

/// `huntflow serve`: the query API until SIGTERM.
pub async fn serve_until(settings: Settings, shutdown: CancellationToken) -> Result<(), RunError> {
    let topology = Topology::load(&settings.topology)?;
    let cluster = Cluster::connect(&settings, &topology)?;
    let boards = Boards::new(&topology, settings.query_closed_window_retention);
    let handle = start_query_with(settings.query_listen, &cluster, &topology, Registry::new(), boards).await?;
    tracing::info!(addr = %handle.addr, "query API listening");
    shutdown.cancelled().await;
    handle.stop().await
}

/// Output topics whose growth means the pipeline is still working.
fn pipeline_topics(topology: &Topology) -> Vec<String> {
    let t = &topology.spec().topics;
    [&t.events, &t.accepted, &t.candidates, &t.leaderboards, &t.prizes, &t.dead_letter]
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

/// Waits until no pipeline topic has grown for `quiet` (longer than a
/// commit plus a snapshot interval), or `timeout`.
pub async fn wait_quiet(
    cluster: &Cluster,
    topology: &Topology,
    quiet: Duration,
    timeout: Duration,
) -> Result<Vec<(String, i64)>, RunError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = cluster.record_counts(pipeline_topics(topology), Duration::from_secs(10)).await?;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cluster.record_counts(pipeline_topics(topology), Duration::from_secs(10)).await?;
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= quiet || tokio::time::Instant::now() >= deadline {
            return Ok(last);
        }
    }
}

/// Waits until claim has read every event in the events topic and score
/// every event claim accepted (read from the workers' metrics), so a quiet
/// period cannot be mistaken for the end while workers still join.
pub async fn wait_for_stages(
    registry: &Registry,
    cluster: &Cluster,
    topology: &Topology,
    timeout: Duration,
) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let events = topology.spec().topics.events.name.clone();
    let in_topic = cluster.record_counts(vec![events], Duration::from_secs(10)).await?;
    let in_topic = in_topic.first().map_or(0.0, |(_, n)| *n as f64);
    while tokio::time::Instant::now() < deadline {
        let counts = crate::stage::records_by_stage(registry);
        let stage = |s: &str| counts.iter().filter(|((st, _), _)| st == s).map(|(_, v)| v).sum::<f64>();
        let accepted = counts.get(&("claim".to_owned(), "accepted".to_owned())).copied().unwrap_or(0.0);
        if stage("claim") >= in_topic && stage("score") >= accepted {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Waits for quiet, verifies, and retries while the pipeline may still be
/// catching up (a rebalance after a crash pauses it for a session timeout).
pub async fn drain_and_verify(
    cluster: &Cluster,
    topology: &Topology,
    timeout: Duration,
) -> Result<VerifyReport, RunError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let quiet = (topology.spec().stages.leaderboard_publish_interval.0 * 4).max(Duration::from_secs(2));
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        wait_quiet(cluster, topology, quiet, left).await?;
        let report = verify::verify(cluster.client_config(), topology, Duration::from_secs(120)).await?;
        if report.passed() || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tracing::info!(problems = report.problems.len(), "verify not yet passing; waiting for the pipeline");
    }
}

/// Wall time until the window holding "now" closed and two heartbeats
/// carried that to the stages.
fn last_window_wait(topology: &Topology) -> Duration {
    let Ok(windows) = crate::windowing::prize_windows(topology) else { return Duration::ZERO };
    let now = crate::event::now_ms();
    let beat = topology.spec().ingest.heartbeat_interval.as_millis() as i64;
    let close = windows.closes_at(windows.window_start(now)) + 2 * beat;
    Duration::from_millis((close - now).max(0) as u64)
}

/// `huntflow run`: broker (embedded unless configured) + ingest + the three
/// stages + query API + simulated shards over HTTP. Stops after `events`
/// (then drains) or when `shutdown` fires.
pub async fn main_job(
    mut settings: Settings,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let cluster = Cluster::connect(&settings, &topology)?;
    cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;
    let cluster = Arc::new(cluster);
    // The embedded broker starts empty: so must the state beside it.
    let scratch = cluster.is_embedded().then(|| {
        let dir = settings.state_dir.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    });
    if let Some(dir) = &scratch {
        settings.state_dir = dir.clone();
    }
    let registry = Registry::new();
    let pipeline =
        Pipeline::start(&settings, &cluster, &topology, opts.workers_per_stage, WorkerMetrics::new(&registry));
    let boards = Boards::new(&topology, settings.query_closed_window_retention);
    let query = start_query_with(settings.query_listen, &cluster, &topology, registry.clone(), boards).await?;
    let (tokens, pairs) = ShardTokens::generate(opts.simulate.shards);
    let ingest_stop = CancellationToken::new();
    let ingest = start_ingest(&settings, &topology, cluster.clone(), tokens, ingest_stop.clone()).await?;
    tracing::info!(bootstrap = cluster.bootstrap(), ingest = %ingest.addr, query = %query.addr, "main job started");

    let live_stop = CancellationToken::new();
    let live = opts.live.then(|| {
        let (boards, topology, stop) = (query.boards.clone(), topology.clone(), live_stop.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        let lines = query::top_lines(&topology, &boards, 10);
                        if !lines.is_empty() {
                            eprintln!("\nlive top-10 (lifetime):\n  {}", lines.join("\n  "));
                        }
                    }
                }
            }
        })
    });

    let target = Target::Http { base_url: format!("http://{}", ingest.addr), tokens: pairs };
    let result = simulate::run(&topology, target, opts.simulate.clone(), shutdown.clone()).await;
    if result.is_ok() && !shutdown.is_cancelled() {
        // The last windows close on the ingest's heartbeats (wall clock):
        // keep the writer alive until they passed end + grace.
        let wait = last_window_wait(&topology);
        eprintln!("waiting {:.0} s for the last prize window to close on the heartbeats", wait.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    ingest_stop.cancel();
    let ingest_addr = ingest.addr;
    ingest.join().await?;
    let simulate = result?;

    let mut verify_report = None;
    if !shutdown.is_cancelled() {
        let drain = async {
            wait_for_stages(&registry, &cluster, &topology, opts.drain_timeout).await?;
            if opts.verify {
                verify_report = Some(drain_and_verify(&cluster, &topology, opts.drain_timeout).await?);
            } else {
                let quiet = (topology.spec().stages.leaderboard_publish_interval.0 * 4).max(Duration::from_secs(2));
                wait_quiet(&cluster, &topology, quiet, opts.drain_timeout).await?;
            }
            Ok::<(), RunError>(())
        };
        tokio::select! {
            r = drain => r?,
            _ = shutdown.cancelled() => {}
        }
    }
    live_stop.cancel();
    if let Some(task) = live {
        let _ = task.await;
    }
    // The query API follows the leaderboards topic on its own; give it a
    // moment to catch up with the last snapshots before printing them.
    let expected = topology.spec().hunts.iter().map(|h| h.tiers.len()).sum::<usize>();
    for _ in 0..40 {
        if query::top_lines(&topology, &query.boards, 10).len() >= expected || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let leaderboards = query::top_lines(&topology, &query.boards, 10);
    let query_addr = query.addr;
    query.stop().await?;
    let workers = pipeline.stop().await?;
    let topic_counts = cluster.record_counts(pipeline_topics(&topology), Duration::from_secs(10)).await?;
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(RunReport {
        simulate,
        bootstrap: cluster.bootstrap().to_owned(),
        ingest_addr,
        query_addr,
        topic_counts,
        workers,
        leaderboards,
        verify: verify_report,
    })
}

/// `huntflow worker --stage X`: runs until SIGTERM, then commits the open
/// transaction and returns.
pub async fn stage_worker(
    settings: Settings,
    kind: StageKind,
    instance: u32,
    allow_topology_change: bool,
    shutdown: CancellationToken,
) -> Result<crate::stage::WorkerReport, RunError> {
    let topology = Topology::load(&settings.topology)?;
    let cluster = Cluster::connect(&settings, &topology)?;
    let registry = Registry::new();
    let metrics = crate::stage::WorkerMetrics::new(&registry);
    let server = serve_metrics(settings.worker_metrics_listen, registry, shutdown.clone()).await?;
    let mut cfg = pipeline::worker_config(kind, &settings, &cluster, &topology, instance);
    cfg.allow_topology_change = allow_topology_change;
    let result = pipeline::run_stage(kind, cfg, &topology, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    Ok(result?)
}

/// `/metrics` and `/healthz` of a worker or bridge process, until `shutdown`.
async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, RunError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/metrics", axum::routing::get(move || async move { crate::telemetry::render(&registry) }));
    Ok(tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    }))
}

/// `huntflow kinesis-bridge`: copies the topology's Kinesis stream into the
/// events topic until `shutdown`, serving metrics on `worker.metrics_listen`.
pub async fn kinesis_bridge(
    settings: Settings,
    instance: u32,
    instances: u32,
    shutdown: CancellationToken,
) -> Result<crate::kinesis::BridgeReport, RunError> {
    let topology = Topology::load(&settings.topology)?;
    if topology.spec().source.kind != crate::topology::SourceKind::Kinesis {
        return Err(crate::kinesis::KinesisError::Invalid(format!(
            "{}: source.kind is not kinesis",
            settings.topology.display()
        ))
        .into());
    }
    if settings.brokers.is_none() {
        return Err(crate::kinesis::KinesisError::Invalid(
            "the bridge needs a Kafka cluster shared with the workers: set `brokers` (HUNTFLOW_BROKERS)".into(),
        )
        .into());
    }
    let cluster = Cluster::connect(&settings, &topology)?;
    let registry = Registry::new();
    let server = serve_metrics(settings.worker_metrics_listen, registry.clone(), shutdown.clone()).await?;
    let opts = crate::kinesis::BridgeOptions {
        kinesis: crate::kinesis::connect(&settings).await,
        kafka: cluster.client_config(),
        topology,
        instance,
        instances,
        transaction_timeout: settings.worker_transaction_timeout,
    };
    let result = crate::kinesis::run_bridge(opts, &registry, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    Ok(result?)
}
