//! `huntflow bench memory`: peak RSS and open file descriptors of a score
//! worker process that sees `--players` distinct players (one event each by
//! default), with a claim worker process in front of it. Runs on the
//! embedded broker (started in this process) unless `--brokers` is given.

use std::time::{Duration, Instant};

use super::load::{base_time_ms, bulk_event, fresh_topics, produce, run_suffix, Players};
use super::proc::{dir_size, ChildWorker, WorkerFiles};
use super::restart::BenchError;
use crate::config::Settings;
use crate::kafka::{create_topics, Cluster, KafkaError, TopicPlan};
use crate::topology::Topology;

#[derive(Clone, Debug)]
pub struct MemoryOptions {
    pub players: u64,
    pub events: u64,
    pub partitions: Option<i32>,
}

/// Peak and final resources of one worker process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resources {
    pub peak_rss: u64,
    pub final_rss: u64,
    pub peak_fds: usize,
    pub final_fds: usize,
    pub store_bytes: u64,
    pub store_files: usize,
}

#[derive(Debug, Default)]
pub struct MemoryBench {
    pub players: u64,
    pub events: u64,
    pub partitions: i32,
    pub broker: String,
    pub seconds: f64,
    pub score: Resources,
    pub claim: Resources,
}

impl std::fmt::Display for MemoryBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "memory benchmark: {} events, {} distinct players, {} partitions, {} broker; claim+score done in {:.0} s",
            self.events, self.players, self.partitions, self.broker, self.seconds
        )?;
        let mib = |b: u64| b as f64 / 1048576.0;
        for (name, r) in [("score", self.score), ("claim", self.claim)] {
            writeln!(
                f,
                "  {name} worker: peak RSS {:.0} MiB (final {:.0} MiB), open fds peak {} (final {}), \
                 store {:.0} MiB in {} files",
                mib(r.peak_rss),
                mib(r.final_rss),
                r.peak_fds,
                r.final_fds,
                mib(r.store_bytes),
                r.store_files
            )?;
        }
        Ok(())
    }
}

fn sample(worker: &ChildWorker, r: &mut Resources) {
    if let Some((rss, hwm, fds)) = worker.resources() {
        r.final_rss = rss;
        r.peak_rss = r.peak_rss.max(hwm).max(rss);
        r.final_fds = fds;
        r.peak_fds = r.peak_fds.max(fds);
    }
}

pub async fn memory(settings: &Settings, o: MemoryOptions) -> Result<MemoryBench, BenchError> {
    let suffix = run_suffix();
    let shipped = Topology::load(&settings.topology)?;
    let topology = fresh_topics(&shipped, &suffix, o.partitions)?;
    // Without --brokers this starts the embedded broker with the topics.
    let cluster = Cluster::connect(settings, &topology)?;
    if !cluster.is_embedded() {
        create_topics(&cluster, &TopicPlan::from_topology(&topology), Duration::from_secs(60)).await?;
    }
    let dir = std::env::temp_dir().join(format!("huntflow-bench-memory-{suffix}"));
    let files = WorkerFiles::new(&dir, &topology, cluster.bootstrap(), 10_000, 30_000)?;
    let mut bench = MemoryBench {
        players: o.players,
        events: o.events,
        partitions: topology.spec().topics.accepted.partitions,
        broker: if cluster.is_embedded() { "embedded".into() } else { cluster.bootstrap().to_owned() },
        ..Default::default()
    };
    let (client, t) = (cluster.client_config(), topology.clone());
    let (topic, players, events) = (t.spec().topics.events.name.clone(), o.players, o.events);
    eprintln!("producing {events} events for {players} players");
    let base = base_time_ms(events);
    tokio::task::spawn_blocking(move || {
        produce(client, &topic, 0, events, |i| bulk_event(&t, "memory", i, base, Players::RoundRobin(players)))
    })
    .await
    .map_err(|e| KafkaError::Join(e.to_string()))??;

    let started = Instant::now();
    let claim = ChildWorker::spawn(&files, "claim", "claim", &dir.join("state-claim"))?;
    let score = ChildWorker::spawn(&files, "score", "score", &dir.join("state-score"))?;
    let deadline = started + Duration::from_secs(24 * 3600);
    let mut said = Instant::now();
    loop {
        sample(&score, &mut bench.score);
        sample(&claim, &mut bench.claim);
        let accepted = claim.records(Some("accepted")).await.unwrap_or(0.0);
        let scored = score.records(None).await.unwrap_or(0.0);
        if accepted >= o.events as f64 && scored >= accepted {
            break;
        }
        if Instant::now() > deadline {
            return Err(super::proc::ProcError::Timeout(format!("score: {scored} of {accepted}")).into());
        }
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  claim accepted {accepted:.0}, score processed {scored:.0} ({:.0} s); score peak RSS {} MiB, fds {}",
                started.elapsed().as_secs_f64(),
                bench.score.peak_rss >> 20,
                bench.score.peak_fds
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bench.seconds = started.elapsed().as_secs_f64();
    // Let the last commit and memtable flushes happen, then sample again.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sample(&score, &mut bench.score);
        sample(&claim, &mut bench.claim);
    }
    (bench.score.store_bytes, bench.score.store_files) = dir_size(&dir.join("state-score"));
    (bench.claim.store_bytes, bench.claim.store_files) = dir_size(&dir.join("state-claim"));
    score.kill();
    claim.kill();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bench)
}
