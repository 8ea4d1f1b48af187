//! `huntflow bench kinesis`: records/s from a Kinesis stream into the events
//! topic, per consumer mode, against the endpoint in the settings (an
//! emulator such as kinesis-local, or AWS). Records are put first, then the
//! bridge copies the backlog; the time is split into waiting on Kinesis (per
//! shard reader), committing Kafka transactions, and huntflow's CPU.

use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::Cluster;
use crate::kinesis::{run_bridge, BridgeOptions, KinesisError};
use crate::run::RunError;
use crate::simulate::{self, SimulateOptions, Target, TrafficShape};
use crate::topology::{KinesisMode, KinesisSourceSpec, SourceKind, Topology};

#[derive(Debug)]
pub struct KinesisModeBench {
    pub mode: &'static str,
    pub records: u64,
    pub put_rps: f64,
    pub copy_rps: f64,
    pub elapsed: Duration,
    /// Mean over shard readers of the time spent awaiting Kinesis.
    pub kinesis_wait_share: f64,
    /// Time inside Kafka transactions (produce + commit).
    pub commit_share: f64,
    /// Process CPU time over wall time (2 cores = 2.0 at most).
    pub cpu_share: f64,
}

#[derive(Debug)]
pub struct KinesisBench {
    pub shards: i32,
    pub modes: Vec<KinesisModeBench>,
}

impl std::fmt::Display for KinesisBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kinesis bridge benchmark: {} shards, backlog copied into the embedded broker", self.shards)?;
        for m in &self.modes {
            writeln!(
                f,
                "  {:<17} {:>7} records: put {:>8.0} rec/s; copied {:>8.0} rec/s in {:.1} s; waiting on Kinesis {:>4.0}% per shard, in Kafka transactions {:>4.0}%, huntflow CPU {:>4.0}%",
                m.mode,
                m.records,
                m.put_rps,
                m.copy_rps,
                m.elapsed.as_secs_f64(),
                m.kinesis_wait_share * 100.0,
                m.commit_share * 100.0,
                m.cpu_share * 100.0
            )?;
        }
        Ok(())
    }
}

fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15: user and system time in clock ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn sum(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() + m.get_histogram().get_sample_sum())
                .collect::<Vec<_>>()
        })
        .sum()
}

pub async fn kinesis(settings: &Settings, records: u64, shards: i32) -> Result<KinesisBench, RunError> {
    let client = crate::kinesis::connect(settings).await;
    let mut modes = Vec::new();
    for (mode, name) in [(KinesisMode::Polling, "polling"), (KinesisMode::EnhancedFanOut, "enhanced-fan-out")] {
        let stream = format!("huntflow-bench-{}-{:08x}", name, rand::random::<u32>());
        let spec: KinesisSourceSpec = serde_yaml::from_str(&format!(
            "stream: {stream}\nmode: {name}\nidle_poll_interval: 200ms\nshard_refresh_interval: 1s\n"
        ))
        .map_err(|e| KinesisError::Invalid(e.to_string()))?;
        let mut topology = Topology::load(&settings.topology)?.spec().clone();
        topology.source.kind = SourceKind::Kinesis;
        topology.source.kinesis = Some(spec);
        let topology = Topology::from_spec(topology)?;
        debug_assert_eq!(topology.spec().source.kinesis.as_ref().map(|k| k.mode), Some(mode));

        client
            .create_stream()
            .stream_name(&stream)
            .shard_count(shards)
            .send()
            .await
            .map_err(|e| KinesisError::api("CreateStream", e))?;
        loop {
            let out = client
                .describe_stream_summary()
                .stream_name(&stream)
                .send()
                .await
                .map_err(|e| KinesisError::api("DescribeStreamSummary", e))?;
            let active = out
                .stream_description_summary()
                .is_some_and(|d| *d.stream_status() == aws_sdk_kinesis::types::StreamStatus::Active);
            if active {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let started = Instant::now();
        let shape = TrafficShape { malformed_ratio: 0.0, ..Default::default() };
        let sim = SimulateOptions { events: Some(records), shards: 8, shape, ..Default::default() };
        let target = Target::Kinesis { client: client.clone(), stream: stream.clone() };
        simulate::run(&topology, target, sim, CancellationToken::new()).await?;
        let put_rps = records as f64 / started.elapsed().as_secs_f64();

        let mut local = settings.clone();
        local.brokers = None;
        let cluster = Cluster::connect(&local, &topology)?;
        cluster.ensure_topics(&topology, Duration::from_secs(30)).await?;
        let registry = Registry::new();
        let cancel = CancellationToken::new();
        let opts = BridgeOptions {
            topology: topology.clone(),
            kafka: cluster.client_config(),
            kinesis: client.clone(),
            instance: 0,
            instances: 1,
            transaction_timeout: Duration::from_secs(30),
        };
        let (r, c) = (registry.clone(), cancel.clone());
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let task = tokio::spawn(async move { run_bridge(opts, &r, c).await });
        while sum(&registry, "huntflow_kinesis_records_total") < records as f64 {
            if task.is_finished() || started.elapsed() > Duration::from_secs(600) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed();
        let cpu = cpu_seconds() - cpu_before;
        let wait = sum(&registry, "huntflow_kinesis_wait_seconds_total");
        let commit = sum(&registry, "huntflow_kinesis_commit_duration_seconds");
        let copied = sum(&registry, "huntflow_kinesis_records_total") as u64;
        cancel.cancel();
        task.await.map_err(|e| KinesisError::Task(e.to_string()))??;
        let secs = elapsed.as_secs_f64();
        modes.push(KinesisModeBench {
            mode: name,
            records: copied,
            put_rps,
            copy_rps: copied as f64 / secs,
            elapsed,
            kinesis_wait_share: wait / f64::from(shards.max(1)) / secs,
            commit_share: commit / secs,
            cpu_share: cpu / secs,
        });
        let _ = client.delete_stream().stream_name(&stream).enforce_consumer_deletion(true).send().await;
    }
    Ok(KinesisBench { shards, modes })
}
