//! The `huntflow` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use huntflow::config::{self, Overrides, Role, Settings};
use huntflow::simulate::{SimulateOptions, TrafficShape};
use huntflow::telemetry::LogFormat;
use huntflow::topology::Topology;

// glibc malloc's free-list work showed as ~10% of the stage threads' samples
// (consolidation across threads); mimalloc's thread-local heaps avoid it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
// args_override_self: a repeated flag takes its last value, so wrappers such as
// scripts/run-demo can pass defaults that the caller's flags override.
#[command(
    name = "huntflow",
    version,
    about = "Exactly-once stream processing for live treasure hunts",
    args_override_self = true
)]
struct Cli {
    /// Settings file (e.g. config/local.yaml). Precedence: defaults < file < HUNTFLOW_* env < flags.
    #[arg(long, global = true, env = "HUNTFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Bootstrap servers; empty starts the embedded broker.
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// topology.yaml to use.
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    /// Directory for local state.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Ingest listen address (port 0 picks a free port).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Log lines as text (colours only on a terminal) or one JSON object per line.
    #[arg(long, global = true, value_enum, env = "HUNTFLOW_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: broker (embedded unless configured) + ingest + simulated shards.
    Run {
        #[command(flatten)]
        sim: SimArgs,
        /// Workers per stage inside this process.
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// After the last event, wait for the pipeline to drain and run `verify` (exit 1 on mismatch).
        #[arg(long)]
        verify: bool,
        /// Do not print the live top-10 per tier.
        #[arg(long)]
        no_live: bool,
    },
    /// Serve the leaderboard query API until SIGTERM.
    Serve,
    /// Check every output topic against a reference model of the input events; exit 1 on any mismatch.
    Verify,
    /// Serve the HTTP ingest gateway until SIGTERM.
    Ingest,
    /// Run one stage worker (consumer-group member) until SIGTERM.
    Worker {
        /// Stage to run.
        #[arg(long, value_parser = ["claim", "score", "rank"])]
        stage: String,
        /// Stable instance number (the StatefulSet ordinal): fixes the
        /// transactional.id, so a restarted worker fences its predecessor.
        #[arg(long, env = "HUNTFLOW_INSTANCE", default_value_t = 0)]
        instance: u32,
        /// Keep local state built with other hunts, tiers or reward tables
        /// (refused by default: the state's keys and standings would be wrong).
        #[arg(long, env = "HUNTFLOW_ALLOW_TOPOLOGY_CHANGE")]
        allow_topology_change: bool,
    },
    /// Copy the topology's Kinesis stream into the events topic, exactly once, until SIGTERM.
    KinesisBridge {
        /// This instance's index (the StatefulSet ordinal); fixes its shards and transactional.id.
        #[arg(long, env = "HUNTFLOW_INSTANCE", default_value_t = 0)]
        instance: u32,
        /// How many bridge instances split the shards (polling mode; enhanced fan-out needs 1).
        #[arg(long, env = "HUNTFLOW_INSTANCES", default_value_t = 1)]
        instances: u32,
    },
    /// Simulated game shards posting to an ingest URL or straight to Kafka.
    Simulate {
        #[command(flatten)]
        sim: SimArgs,
        /// Ingest base URL; tokens come from HUNTFLOW_SHARD_TOKENS (shard-0=..,shard-1=..).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Produce straight to the events topic instead of posting over HTTP.
        #[arg(long, conflicts_with = "kinesis")]
        direct: bool,
        /// Put the events on the topology's Kinesis stream (PutRecords) instead.
        #[arg(long)]
        kinesis: bool,
    },
    /// Run the embedded broker alone and print its bootstrap address.
    Broker {
        /// Fixed first port; broker i listens on PORT+i.
        #[arg(long)]
        port: Option<u16>,
        /// Number of brokers.
        #[arg(long, default_value_t = 3)]
        count: i32,
    },
    /// Create or check the topology's topics on a cluster.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Topology file tools.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Print the effective settings, secrets redacted; --check also validates them.
    Config {
        /// Load settings and topology, validate librdkafka properties, name every wrong field; exit 0/1.
        #[arg(long)]
        check: bool,
        /// With --check: also what this command needs (e.g. ingest: shard tokens; worker: brokers).
        #[arg(long = "for", value_enum, requires = "check")]
        role: Option<Role>,
    },
    /// Benchmarks that print numbers (no thresholds).
    Bench {
        #[command(subcommand)]
        which: BenchWhich,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create missing topics with safe settings.
    Create,
    /// Report drift of existing topics, field by field (exit 1 on drift).
    Check,
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Report every problem of FILE at once (exit 1 if any).
    Validate { file: PathBuf },
}

#[derive(Subcommand)]
enum BenchWhich {
    /// Ingest over HTTP (batches of 500) and the event producer, each next to
    /// a raw rdkafka producer pushing the same payloads.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// Events/s through claim -> score -> rank next to a raw consume->produce
    /// passthrough, ROUNDS times interleaved (fresh embedded broker each),
    /// with each of WORKERS per stage; median ratios; then query latency.
    Pipeline {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Workers per stage to measure, comma-separated (e.g. 1,2).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        workers: Vec<u32>,
    },
    /// Event time -> visible on the query API and window close -> prize
    /// batch, p50/p99, at a fixed offered rate through HTTP ingest.
    Latency {
        /// Offered events/s (default: SHARE of a measured maximum).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 0.5)]
        share: f64,
        /// Events posted as fast as possible to measure the maximum.
        #[arg(long, default_value_t = 100_000)]
        max_events: u64,
        /// Length of the fixed-rate phase.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// One probe event every this many ms.
        #[arg(long, default_value_t = 200)]
        probe_ms: u64,
        /// Prize window size and grace for this run (seconds).
        #[arg(long, default_value_t = 10)]
        window_secs: u64,
        #[arg(long, default_value_t = 2)]
        grace_secs: u64,
        #[arg(long, default_value_t = 1)]
        workers: u32,
    },
    /// A claim worker process with EVENTS of state SIGKILLed and restarted
    /// (own store, empty store): seconds until it processes new input. Needs --brokers.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// New events sent before each restart.
        #[arg(long, default_value_t = 100)]
        probes: u64,
        /// Partitions of the events/accepted topics (default: the topology's).
        #[arg(long)]
        partitions: Option<i32>,
        #[arg(long, default_value_t = 6_000)]
        session_timeout_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        transaction_timeout_ms: u64,
    },
    /// Peak RSS and open fds of a score worker process seeing PLAYERS distinct players.
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        players: u64,
        /// Events (default: one per player).
        #[arg(long)]
        events: Option<u64>,
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Records/s from Kinesis into the events topic in polling and enhanced
    /// fan-out mode, against `kinesis.endpoint_url` (e.g. kinesis-local).
    Kinesis {
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        #[arg(long, default_value_t = 4)]
        shards: i32,
    },
    /// With no traffic, wall time from a window's end until its prize
    /// batches are readable (the ingest heartbeats alone close it).
    WindowClose {
        #[arg(long, default_value_t = 3)]
        windows: usize,
        #[arg(long, default_value_t = 10_000)]
        window_ms: u64,
        #[arg(long, default_value_t = 2_000)]
        grace_ms: u64,
    },
}

#[derive(Args, Clone)]
struct SimArgs {
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long)]
    events: Option<u64>,
    #[arg(long, default_value_t = 8)]
    shards: usize,
    #[arg(long, default_value_t = 10_000)]
    players: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Overall events per second (default: as fast as ingest allows).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Share of retried duplicates.
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Share of malformed or invalid events.
    #[arg(long, default_value_t = 0.01)]
    malformed: f64,
    /// Share of events later than the prize window's grace.
    #[arg(long, default_value_t = 0.01)]
    late: f64,
    /// Distinct chest keys (fewer keys, more collisions across shards).
    #[arg(long, default_value_t = 20_000)]
    chest_keys: u64,
    /// Event-time milliseconds between two events of one shard, with
    /// --start-time-ms (default: events carry the wall clock).
    #[arg(long, default_value_t = 20)]
    event_interval_ms: i64,
    /// Event time of each shard's first event, epoch ms (reproducible event
    /// times; far from now they are late or in the future for the pipeline).
    #[arg(long)]
    start_time_ms: Option<i64>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl SimArgs {
    fn options(&self) -> SimulateOptions {
        SimulateOptions {
            shards: self.shards,
            events: self.events,
            batch_size: self.batch_size,
            rate: self.rate,
            progress: !self.no_progress,
            shape: TrafficShape {
                seed: self.seed,
                players: self.players,
                chest_keys: self.chest_keys,
                duplicate_ratio: self.duplicates,
                malformed_ratio: self.malformed,
                late_ratio: self.late,
                event_interval_ms: self.event_interval_ms,
                start_time_ms: self.start_time_ms,
                ..TrafficShape::default()
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    huntflow::telemetry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let overrides =
        Overrides { brokers: cli.brokers, topology: cli.topology, state_dir: cli.state_dir, listen: cli.listen };
    let load = || Settings::load(cli.config.as_deref(), &config::process_env(), &overrides);
    match cli.command {
        Command::Topology { action: TopologyAction::Validate { file } } => Ok(validate(&file)),
        Command::Config { check: false, .. } => {
            print!("{}", load()?.describe());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { check: true, role } => Ok(check_config(load(), role)),
        Command::Run { sim, workers, verify, no_live } => {
            let settings = load()?;
            let opts = huntflow::run::RunOptions {
                simulate: sim.options(),
                workers_per_stage: workers.max(1),
                live: !no_live,
                verify,
                ..Default::default()
            };
            let report = huntflow::run::main_job(settings, opts, huntflow::signals::shutdown_token()).await?;
            println!(
                "broker {}  ingest http://{}  query http://{}",
                report.bootstrap, report.ingest_addr, report.query_addr
            );
            print!("{report}");
            Ok(if report.verify.as_ref().is_some_and(|v| !v.passed()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Serve => {
            huntflow::run::serve_until(load()?, huntflow::signals::shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let settings = load()?;
            let topology = Topology::load(&settings.topology)?;
            let cluster = huntflow::kafka::Cluster::connect(&settings, &topology)?;
            if cluster.is_embedded() {
                anyhow::bail!(
                    "verify reads an existing pipeline's topics: set --brokers (the embedded broker starts empty)"
                );
            }
            let report =
                huntflow::verify::verify(cluster.client_config(), &topology, std::time::Duration::from_secs(300))
                    .await?;
            print!("{report}");
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Ingest => {
            huntflow::run::ingest_until(load()?, huntflow::signals::shutdown_token()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { stage, instance, allow_topology_change } => {
            let kind = huntflow::pipeline::StageKind::parse(&stage).context("unknown stage")?;
            let shutdown = huntflow::signals::shutdown_token();
            let report = huntflow::run::stage_worker(load()?, kind, instance, allow_topology_change, shutdown).await?;
            println!(
                "{stage} worker {instance} stopped: {} processed, {} skipped, {} commits, {} aborts, {} records restored, {} already local",
                report.processed, report.skipped, report.commits, report.aborts, report.restored, report.already_local
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::KinesisBridge { instance, instances } => {
            let report =
                huntflow::run::kinesis_bridge(load()?, instance, instances, huntflow::signals::shutdown_token())
                    .await?;
            let finished = report.checkpoints.values().filter(|c| c.finished).count();
            println!(
                "kinesis bridge {instance}/{instances} stopped: {} records ({} bytes), {} dead letters, {} commits, {} aborts, {} shards checkpointed ({finished} finished)",
                report.records, report.bytes, report.dead_letters, report.commits, report.aborts, report.checkpoints.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { sim, url, direct, kinesis } => {
            let settings = load()?;
            let topology = Topology::load(&settings.topology)?;
            let target = if kinesis {
                let stream = topology.spec().source.kinesis.as_ref().map(|k| k.stream.clone());
                let stream = stream.context("the topology has no source.kinesis section")?;
                huntflow::simulate::Target::Kinesis { client: huntflow::kinesis::connect(&settings).await, stream }
            } else if direct {
                let cluster = huntflow::kafka::Cluster::connect(&settings, &topology)?;
                let producer =
                    huntflow::kafka::EventProducer::new(&cluster, &topology, settings.ingest.delivery_timeout)?;
                huntflow::simulate::Target::Kafka(producer)
            } else {
                let text = std::env::var("HUNTFLOW_SHARD_TOKENS")
                    .context("HUNTFLOW_SHARD_TOKENS is required to post over HTTP")?;
                let tokens = config::parse_token_pairs(&text).map_err(anyhow::Error::msg)?;
                huntflow::simulate::Target::Http { base_url: url, tokens }
            };
            let report =
                huntflow::simulate::run(&topology, target, sim.options(), huntflow::signals::shutdown_token()).await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Broker { port, count } => {
            let settings = load()?;
            let topology = Topology::load(&settings.topology)?;
            let broker = huntflow::kafka::EmbeddedBroker::start(count, port)?;
            broker.create_topics(&topology)?;
            println!("{}", broker.bootstrap());
            huntflow::signals::shutdown_token().cancelled().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { action } => {
            let settings = load()?;
            let topology = Topology::load(&settings.topology)?;
            let bootstrap = settings.brokers.clone().context("topics commands need --brokers (or HUNTFLOW_BROKERS)")?;
            let mut cluster = huntflow::kafka::Cluster::at(bootstrap);
            cluster.set_passthrough(settings.kafka.clone());
            let plan = huntflow::kafka::TopicPlan::from_topology(&topology);
            let timeout = Duration::from_secs(30);
            match action {
                TopicsAction::Create => {
                    let created = huntflow::kafka::create_topics(&cluster, &plan, timeout).await?;
                    println!("created {} topic(s), {} already present", created.len(), plan.len() - created.len());
                    for name in created {
                        println!("  + {name}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                TopicsAction::Check => {
                    let drift = huntflow::kafka::check_topics(&cluster, &plan, timeout).await?;
                    if drift.is_empty() {
                        println!("{} topic(s) match the topology", plan.len());
                        return Ok(ExitCode::SUCCESS);
                    }
                    println!("{} difference(s):", drift.len());
                    for d in drift {
                        println!("  {d}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Bench { which } => bench(which, &load()?).await,
    }
}

async fn bench(which: BenchWhich, settings: &Settings) -> Result<ExitCode> {
    use huntflow::bench;
    match which {
        BenchWhich::Pipeline { events, rounds, workers } => {
            print!("{}", bench::pipeline(settings, events, rounds, &workers).await?);
        }
        BenchWhich::Latency { rate, share, max_events, seconds, probe_ms, window_secs, grace_secs, workers } => {
            let o = bench::LatencyOptions {
                rate,
                share,
                max_events,
                seconds,
                probe_ms,
                window_secs,
                grace_secs,
                workers,
                ..Default::default()
            };
            print!("{}", bench::latency(settings, o).await?);
        }
        BenchWhich::Restart { events, probes, partitions, session_timeout_ms, transaction_timeout_ms } => {
            let o = bench::RestartOptions { events, probes, partitions, session_timeout_ms, transaction_timeout_ms };
            print!("{}", bench::restart_bench(settings, o).await?);
        }
        BenchWhich::Memory { players, events, partitions } => {
            let o = bench::MemoryOptions { players, events: events.unwrap_or(players), partitions };
            print!("{}", bench::memory(settings, o).await?);
        }
        BenchWhich::Kinesis { records, shards } => print!("{}", bench::kinesis(settings, records, shards).await?),
        BenchWhich::Ingest { events } => print!("{}", bench::ingest(settings, events).await?),
        BenchWhich::WindowClose { windows, window_ms, grace_ms } => {
            println!("{}", bench::window_close(windows, window_ms, grace_ms).await?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `config --check`: the effective settings, what the command would bind,
/// then every problem; exit 1 if there is any.
fn check_config(loaded: Result<Settings, config::ConfigError>, role: Option<Role>) -> ExitCode {
    let settings = match loaded {
        Ok(s) => s,
        Err(e) => {
            println!("{e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", settings.describe());
    let report = config::check(&settings, role, &config::process_env());
    for (what, addr) in &report.binds {
        println!("binds: {what} {addr}");
    }
    if let Some(hash) = &report.topology_hash {
        println!("topology hash: {hash}");
    }
    if report.problems.is_empty() {
        println!("settings ok");
        return ExitCode::SUCCESS;
    }
    println!("invalid settings:");
    for p in &report.problems {
        println!("  {p}");
    }
    ExitCode::from(1)
}

fn validate(file: &std::path::Path) -> ExitCode {
    match Topology::load(file) {
        Ok(t) => {
            println!("{}: valid (topology hash {})", file.display(), t.hash());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}
