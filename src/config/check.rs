//! `huntflow config --check [--for COMMAND]`: everything a command would
//! refuse at start-up, found before it starts (in CI, or as a pre-deploy
//! step): settings, topology, librdkafka properties and what the command
//! itself requires. Every problem is reported, not just the first.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::topology::{SourceKind, Topology};

use super::Settings;

/// Every `HUNTFLOW_*` variable huntflow reads (plus `HUNTFLOW_KAFKA__*`): a
/// misspelt one in a manifest would otherwise be ignored without a word.
const KNOWN_ENV: &[&str] = &[
    "HUNTFLOW_CONFIG",
    "HUNTFLOW_LOG_FORMAT",
    "HUNTFLOW_INSTANCE",
    "HUNTFLOW_INSTANCES",
    "HUNTFLOW_ALLOW_TOPOLOGY_CHANGE",
    "HUNTFLOW_BROKERS",
    "HUNTFLOW_TOPOLOGY",
    "HUNTFLOW_STATE_DIR",
    "HUNTFLOW_INGEST_LISTEN",
    "HUNTFLOW_WORKER_SESSION_TIMEOUT_MS",
    "HUNTFLOW_METRICS_LISTEN",
    "HUNTFLOW_QUERY_LISTEN",
    "HUNTFLOW_SHARD_TOKENS",
    "HUNTFLOW_SHARD_TOKENS_FILE",
    "HUNTFLOW_KINESIS_ENDPOINT",
    "HUNTFLOW_KINESIS_REGION",
    // Test harness only.
    "HUNTFLOW_TANSU_BIN",
    "HUNTFLOW_KINESIS_LOCAL",
];

/// The command whose needs are checked on top of the common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Ingest,
    Worker,
    Serve,
    KinesisBridge,
    Topics,
    Run,
}

/// What a check found: problems (empty = valid) and the addresses the
/// command would bind, so probes and scrape targets can be compared.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    /// (what, address), e.g. ("metrics", 0.0.0.0:9464).
    pub binds: Vec<(&'static str, SocketAddr)>,
    pub topology_hash: Option<String>,
}

/// Checks `settings` (already loaded, so every field parsed) for `role`;
/// `env` is the process environment (HUNTFLOW_INSTANCE is read by the CLI).
pub fn check(settings: &Settings, role: Option<Role>, env: &HashMap<String, String>) -> CheckReport {
    let mut report = CheckReport::default();
    let problems = &mut report.problems;
    let mut unknown: Vec<&String> =
        env.keys().filter(|k| !k.starts_with("HUNTFLOW_KAFKA__") && !KNOWN_ENV.contains(&k.as_str())).collect();
    unknown.sort();
    for name in unknown {
        problems.push(format!("{name}: not a variable huntflow reads (misspelt?)"));
    }
    let topology = match Topology::load(&settings.topology) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("topology ({}): {e}", settings.topology.display()));
            None
        }
    };
    report.topology_hash = topology.as_ref().map(|t| t.hash().to_owned());

    // librdkafka rejects unknown properties and values it was not built for
    // (e.g. SASL_SSL without OpenSSL) when they are set, not when read.
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", settings.brokers.as_deref().unwrap_or("127.0.0.1:9092"));
    for (k, v) in &settings.kafka {
        client.set(k, v);
    }
    if let Err(e) = client.create_native_config() {
        problems.push(format!("kafka: {e}"));
    }

    let needs_brokers = |what: &str, problems: &mut Vec<String>| {
        if settings.brokers.is_none() {
            problems.push(format!("brokers: `{what}` needs a shared Kafka cluster; set brokers (HUNTFLOW_BROKERS)"));
        }
    };
    match role {
        Some(Role::Ingest) => {
            if settings.shard_tokens.is_empty() {
                problems.push(
                    "shard_tokens_file: ingest has no shard tokens; set HUNTFLOW_SHARD_TOKENS_FILE (a mounted Secret) \
                     or HUNTFLOW_SHARD_TOKENS"
                        .into(),
                );
            }
            report.binds.push(("http", settings.ingest.listen));
        }
        Some(Role::Worker) => {
            instance(env, "HUNTFLOW_INSTANCE", problems);
            needs_brokers("worker", problems);
            report.binds.push(("metrics", settings.worker_metrics_listen));
        }
        Some(Role::KinesisBridge) => {
            instance(env, "HUNTFLOW_INSTANCE", problems);
            instance(env, "HUNTFLOW_INSTANCES", problems);
            needs_brokers("kinesis-bridge", problems);
            if let Some(t) = &topology {
                if t.spec().source.kind != SourceKind::Kinesis {
                    problems.push(format!(
                        "topology ({}): source.kind is not kinesis, so kinesis-bridge would exit",
                        settings.topology.display()
                    ));
                }
            }
            report.binds.push(("metrics", settings.worker_metrics_listen));
        }
        Some(Role::Serve) => report.binds.push(("http", settings.query_listen)),
        Some(Role::Topics) => needs_brokers("topics", problems),
        Some(Role::Run) => {
            report.binds.push(("ingest", settings.ingest.listen));
            report.binds.push(("query", settings.query_listen));
        }
        None => {}
    }
    report
}

/// An ordinal or count from the environment (the downward API gives text).
fn instance(env: &HashMap<String, String>, name: &str, problems: &mut Vec<String>) {
    if let Some(v) = env.get(name) {
        if v.trim().parse::<u32>().is_err() {
            problems.push(format!("{name}: `{v}` is not a non-negative integer"));
        }
    }
}
