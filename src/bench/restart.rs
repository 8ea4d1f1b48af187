//! `huntflow bench restart`: a claim worker (its state: one dedup entry per
//! event id) processes `--events` events, is SIGKILLed, and is started
//! again, once on its own store and once on an empty store (restore from
//! the changelog). Measured: seconds from the restart until it processes
//! new input. Needs a real cluster (`--brokers`, e.g. Tansu): the embedded
//! broker keeps only 5 MB per partition.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::load::{base_time_ms, bulk_event, fresh_topics, produce, run_suffix, Players};
use super::proc::{dir_size, ChildWorker, ProcError, WorkerFiles};
use crate::config::Settings;
use crate::kafka::{create_topics, Cluster, KafkaError, TopicPlan};
use crate::run::RunError;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("{0}")]
    Usage(String),
}

impl From<KafkaError> for BenchError {
    fn from(e: KafkaError) -> Self {
        BenchError::Run(e.into())
    }
}

impl From<crate::topology::TopologyError> for BenchError {
    fn from(e: crate::topology::TopologyError) -> Self {
        BenchError::Run(e.into())
    }
}

#[derive(Clone, Debug)]
pub struct RestartOptions {
    pub events: u64,
    pub probes: u64,
    pub partitions: Option<i32>,
    pub session_timeout_ms: u64,
    pub transaction_timeout_ms: u64,
}

/// One restart: seconds from spawn to /metrics answering, to the first new
/// record processed, to every probe processed; records restored.
#[derive(Debug, Default, Clone)]
pub struct Restart {
    pub up_s: f64,
    pub first_s: f64,
    pub all_s: f64,
    pub restored: f64,
}

#[derive(Debug, Default)]
pub struct RestartBench {
    pub events: u64,
    pub partitions: i32,
    pub produce_eps: f64,
    pub claim_eps: f64,
    pub store_bytes: u64,
    pub store_files: usize,
    pub own_store: Restart,
    pub empty_store: Restart,
    pub session_timeout_ms: u64,
    pub transaction_timeout_ms: u64,
}

impl std::fmt::Display for RestartBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "restart benchmark: claim worker process, {} events of state, {} partitions, session timeout {} ms, \
             transaction timeout {} ms",
            self.events, self.partitions, self.session_timeout_ms, self.transaction_timeout_ms
        )?;
        writeln!(
            f,
            "  produced at {:.0} events/s; claim processed at {:.0} events/s",
            self.produce_eps, self.claim_eps
        )?;
        writeln!(
            f,
            "  store after the run: {:.1} MiB in {} files",
            self.store_bytes as f64 / 1048576.0,
            self.store_files
        )?;
        for (label, r) in [("own store", &self.own_store), ("empty store", &self.empty_store)] {
            writeln!(
                f,
                "  SIGKILL, restart with {label:<11}: metrics up {:.2} s, first new record {:.2} s, \
                 all probes {:.2} s, {:.0} records restored",
                r.up_s, r.first_s, r.all_s, r.restored
            )?;
        }
        Ok(())
    }
}

async fn restart(
    files: &WorkerFiles,
    name: &str,
    state: &Path,
    probes: u64,
) -> Result<(ChildWorker, Restart), BenchError> {
    let started = Instant::now();
    let worker = ChildWorker::spawn(files, "claim", name, state)?;
    let mut r = Restart::default();
    while worker.records(None).await.is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(ProcError::Timeout(format!("{name}: no /metrics after 120 s")).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.up_s = started.elapsed().as_secs_f64();
    worker.wait_records(None, 1.0, Duration::from_secs(600)).await?;
    r.first_s = started.elapsed().as_secs_f64();
    worker.wait_records(None, probes as f64, Duration::from_secs(600)).await?;
    r.all_s = started.elapsed().as_secs_f64();
    r.restored = worker.metric("huntflow_state_restored_records_total").await.unwrap_or(0.0);
    Ok((worker, r))
}

/// Waits past a few commit intervals so everything processed is committed.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

pub async fn restart_bench(settings: &Settings, o: RestartOptions) -> Result<RestartBench, BenchError> {
    let Some(brokers) = settings.brokers.clone() else {
        return Err(BenchError::Usage("bench restart needs --brokers (e.g. Tansu, see README)".into()));
    };
    let suffix = run_suffix();
    let topology = fresh_topics(&Topology::load(&settings.topology)?, &suffix, o.partitions)?;
    let cluster = Cluster::connect(settings, &topology)?;
    create_topics(&cluster, &TopicPlan::from_topology(&topology), Duration::from_secs(60)).await?;
    let dir: PathBuf = std::env::temp_dir().join(format!("huntflow-bench-restart-{suffix}"));
    let files = WorkerFiles::new(&dir, &topology, &brokers, o.session_timeout_ms, o.transaction_timeout_ms)?;
    let mut bench = RestartBench {
        events: o.events,
        partitions: topology.spec().topics.events.partitions,
        session_timeout_ms: o.session_timeout_ms,
        transaction_timeout_ms: o.transaction_timeout_ms,
        ..Default::default()
    };
    let base = base_time_ms(o.events);
    let send = |from: u64, count: u64| {
        let (client, topology) = (cluster.client_config(), topology.clone());
        let topic = topology.spec().topics.events.name.clone();
        tokio::task::spawn_blocking(move || {
            let players = Players::RoundRobin(100_000);
            produce(client, &topic, from, count, |i| bulk_event(&topology, "restart", i, base, players))
        })
    };
    eprintln!("producing {} events to {}", o.events, topology.spec().topics.events.name);
    let took = send(0, o.events).await.map_err(|e| KafkaError::Join(e.to_string()))??;
    bench.produce_eps = o.events as f64 / took.as_secs_f64();

    let own = dir.join("state-own");
    let first = ChildWorker::spawn(&files, "claim", "claim-initial", &own)?;
    eprintln!("claim worker {} processing {} events", first.pid(), o.events);
    let took = first.wait_records(None, o.events as f64, Duration::from_secs(24 * 3600)).await?;
    bench.claim_eps = o.events as f64 / took.as_secs_f64();
    settle().await;
    (bench.store_bytes, bench.store_files) = dir_size(&own);
    first.kill();

    let mut next = o.events;
    send(next, o.probes).await.map_err(|e| KafkaError::Join(e.to_string()))??;
    next += o.probes;
    eprintln!("SIGKILLed; restarting on its own store");
    let (second, r) = restart(&files, "claim-own-store", &own, o.probes).await?;
    bench.own_store = r;
    settle().await;
    second.kill();

    send(next, o.probes).await.map_err(|e| KafkaError::Join(e.to_string()))??;
    eprintln!("SIGKILLed; restarting on an empty store");
    let (third, r) = restart(&files, "claim-empty-store", &dir.join("state-empty"), o.probes).await?;
    bench.empty_store = r;
    third.kill();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bench)
}
