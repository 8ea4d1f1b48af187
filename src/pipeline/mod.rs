//! Wiring of the three stages: which topics each reads and writes, its
//! deterministic `transactional.id`, its state directory, and running
//! several workers in one process (`huntflow run`).

use tokio_util::sync::CancellationToken;

use crate::claim::ClaimStage;
use crate::config::Settings;
use crate::kafka::Cluster;
use crate::rank::RankStage;
use crate::score::ScoreStage;
use crate::stage::{run_worker, StageError, TimeConfig, WorkerConfig, WorkerMetrics, WorkerReport};
use crate::topology::Topology;
use crate::windowing::ProgressRules;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageKind {
    Claim,
    Score,
    Rank,
}

impl StageKind {
    pub const ALL: [StageKind; 3] = [StageKind::Claim, StageKind::Score, StageKind::Rank];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Claim => "claim",
            StageKind::Score => "score",
            StageKind::Rank => "rank",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A stage worker's configuration for `instance` (e.g. the pod ordinal):
/// `transactional.id` = `huntflow-<stage>-<instance>`, so a restarted
/// instance fences its predecessor; one state directory per instance.
pub fn worker_config(
    kind: StageKind,
    settings: &Settings,
    cluster: &Cluster,
    topology: &Topology,
    instance: u32,
) -> WorkerConfig {
    let spec = topology.spec();
    let topics = &spec.topics;
    let (input, output, secondary) = match kind {
        StageKind::Claim => (&topics.events, &topics.accepted, None),
        StageKind::Score => (&topics.accepted, &topics.candidates, None),
        StageKind::Rank => (&topics.candidates, &topics.leaderboards, Some(topics.prizes.name.clone())),
    };
    let stage = kind.name();
    let time = time_config(kind, topology);
    WorkerConfig {
        client: cluster.client_config(),
        group_id: format!("huntflow-{stage}"),
        transactional_id: format!("huntflow-{stage}-{instance}"),
        input_topic: input.name.clone(),
        output_topic: output.name.clone(),
        secondary_topic: secondary,
        dead_letter_topic: topics.dead_letter.name.clone(),
        changelog_topic: format!("{}{stage}", topics.changelog_prefix),
        topology_hash: topology.hash().to_owned(),
        state_dir: settings.state_dir.join(format!("{stage}-{instance}")),
        commit_interval: spec.stages.commit_interval.0,
        transaction_timeout: settings.worker_transaction_timeout,
        session_timeout: settings.worker_session_timeout,
        time,
        tier_fingerprints: topology.tier_fingerprints(),
        allow_topology_change: false,
    }
}

/// How a stage's input partitions keep event time: claim follows the
/// writers' heartbeats and forwards to every accepted partition; score
/// follows every claim partition and forwards to every rank partition; rank
/// follows every score partition.
pub fn time_config(kind: StageKind, topology: &Topology) -> TimeConfig {
    let spec = topology.spec();
    let topics = &spec.topics;
    let (input, upstream_partitions, forward_to) = match kind {
        StageKind::Claim => (&topics.events, 0, topics.accepted.partitions),
        StageKind::Score => (&topics.accepted, topics.events.partitions, topics.candidates.partitions),
        StageKind::Rank => (&topics.candidates, topics.accepted.partitions, 0),
    };
    TimeConfig {
        rules: ProgressRules {
            upstream_partitions: upstream_partitions.max(0) as usize,
            writer_timeout_ms: spec.ingest.heartbeat_writer_timeout.as_millis() as i64,
        },
        input_partitions: input.partitions,
        forward_to,
    }
}

/// Runs one worker of `kind` until `cancel` (commits, then returns).
pub async fn run_stage(
    kind: StageKind,
    cfg: WorkerConfig,
    topology: &Topology,
    metrics: WorkerMetrics,
    cancel: CancellationToken,
) -> Result<WorkerReport, StageError> {
    match kind {
        StageKind::Claim => run_worker(cfg, ClaimStage::new(topology), metrics, cancel).await,
        StageKind::Score => run_worker(cfg, ScoreStage::new(topology)?, metrics, cancel).await,
        StageKind::Rank => run_worker(cfg, RankStage::new(topology)?, metrics, cancel).await,
    }
}

/// Workers of every stage inside one process.
pub struct Pipeline {
    cancel: CancellationToken,
    workers: Vec<(StageKind, u32, tokio::task::JoinHandle<Result<WorkerReport, StageError>>)>,
}

impl Pipeline {
    /// Starts `per_stage` workers of each stage; they share `metrics`.
    pub fn start(
        settings: &Settings,
        cluster: &Cluster,
        topology: &Topology,
        per_stage: u32,
        metrics: WorkerMetrics,
    ) -> Self {
        let cancel = CancellationToken::new();
        let mut workers = Vec::new();
        for kind in StageKind::ALL {
            for instance in 0..per_stage {
                let cfg = worker_config(kind, settings, cluster, topology, instance);
                let (topology, metrics, cancel) = (topology.clone(), metrics.clone(), cancel.clone());
                let task = tokio::spawn(async move { run_stage(kind, cfg, &topology, metrics, cancel).await });
                workers.push((kind, instance, task));
            }
        }
        Self { cancel, workers }
    }

    /// True while every worker runs (a fatal error ends one).
    pub fn all_running(&self) -> bool {
        self.workers.iter().all(|(_, _, t)| !t.is_finished())
    }

    /// Commits and stops every worker; the first error wins.
    pub async fn stop(self) -> Result<Vec<(StageKind, u32, WorkerReport)>, StageError> {
        self.cancel.cancel();
        let mut reports = Vec::new();
        let mut first_error = None;
        for (kind, instance, task) in self.workers {
            match task.await {
                Ok(Ok(r)) => reports.push((kind, instance, r)),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(StageError::Stop(format!("{} worker panicked: {e}", kind.name())));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}
