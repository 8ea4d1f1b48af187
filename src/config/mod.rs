//! Runtime settings (brokers, client settings, paths, ports, tokens).
//!
//! Precedence, lowest first: built-in defaults < the `--config` file <
//! `HUNTFLOW_*` environment variables < command-line flags. Secrets (shard
//! tokens, SASL/SSL passwords) are accepted only from the environment or from
//! files they point to, and are never printed.

mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use secrets::{parse_token_pairs, shard_name, ShardTokens, TokenCheck};

/// librdkafka properties that carry secrets: refused in config files.
pub const SECRET_KAFKA_KEYS: &[&str] =
    &["sasl.password", "sasl.oauthbearer.client.secret", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("invalid settings:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The settings file (`config/<env>.yaml`). Every field is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// Comma-separated bootstrap servers; empty or absent starts the embedded
    /// broker (librdkafka's mock cluster).
    pub brokers: Option<String>,
    /// librdkafka properties passed through to every client (no secrets).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// Path of `topology.yaml`.
    pub topology: Option<PathBuf>,
    /// Directory for local state (RocksDB stores).
    pub state_dir: Option<PathBuf>,
    /// HTTP ingest settings.
    #[serde(default)]
    pub ingest: IngestFile,
    /// File with shard tokens, one `shard_id=token` per line.
    pub shard_tokens_file: Option<PathBuf>,
    /// Leaderboard query API settings.
    #[serde(default)]
    pub query: QueryFile,
    /// Stage worker settings.
    #[serde(default)]
    pub worker: WorkerFile,
    /// Kinesis client settings of `huntflow kinesis-bridge`.
    #[serde(default)]
    pub kinesis: KinesisFile,
}

/// Everything else (credentials, profile, retries) comes from the standard
/// AWS config chain: environment, `~/.aws/config`, web identity, IMDS.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisFile {
    /// Endpoint override, e.g. `http://127.0.0.1:4568` for an emulator;
    /// absent means the region's AWS endpoint.
    pub endpoint_url: Option<String>,
    /// Region override; absent means the AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Consumer-group session timeout in ms: how long a crashed worker's
    /// partitions wait before they move to the others.
    pub session_timeout_ms: Option<u64>,
    /// Kafka transaction timeout in ms; also bounds a commit that hangs.
    pub transaction_timeout_ms: Option<u64>,
    /// Where a `huntflow worker` serves `/metrics` and `/healthz`.
    pub metrics_listen: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryFile {
    /// Address the leaderboard query API binds, e.g. `0.0.0.0:8081`.
    pub listen: Option<String>,
    /// How long (event time, ms) a closed window's leaderboard stays in the
    /// query API's memory after its close (end + grace).
    pub closed_window_retention_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestFile {
    /// Address the ingest HTTP server binds, e.g. `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Events accepted but not yet acknowledged by the broker, across all
    /// requests; past this ingest pushes back with 503.
    pub max_in_flight_events: Option<usize>,
    /// How long a request waits for room in the in-flight budget, in ms.
    pub queue_timeout_ms: Option<u64>,
    /// How long one event may wait for the broker's acknowledgement, in ms.
    pub delivery_timeout_ms: Option<u64>,
}

/// Command-line overrides, the highest precedence.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub brokers: Option<String>,
    pub topology: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

/// Effective settings after every layer is applied and checked.
#[derive(Clone)]
pub struct Settings {
    pub brokers: Option<String>,
    pub kafka: BTreeMap<String, String>,
    pub topology: PathBuf,
    pub state_dir: PathBuf,
    pub ingest: IngestSettings,
    /// Where `serve` (and `run`) answer leaderboard queries.
    pub query_listen: SocketAddr,
    /// Event time a closed window's board stays queryable after its close.
    pub query_closed_window_retention: Duration,
    pub worker_session_timeout: Duration,
    pub worker_transaction_timeout: Duration,
    pub worker_metrics_listen: SocketAddr,
    pub shard_tokens: ShardTokens,
    /// Kinesis endpoint override (`kinesis.endpoint_url`, env `HUNTFLOW_KINESIS_ENDPOINT`).
    pub kinesis_endpoint: Option<String>,
    /// Kinesis region override (`kinesis.region`, env `HUNTFLOW_KINESIS_REGION`).
    pub kinesis_region: Option<String>,
}

#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_in_flight_events: usize,
    pub queue_timeout: Duration,
    pub delivery_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            brokers: None,
            kafka: BTreeMap::new(),
            topology: PathBuf::from("topology/treasure-hunt.yaml"),
            state_dir: PathBuf::from("data"),
            ingest: IngestSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_body_bytes: 8 * 1024 * 1024,
                max_in_flight_events: 200_000,
                queue_timeout: Duration::from_secs(2),
                delivery_timeout: Duration::from_secs(30),
            },
            query_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            query_closed_window_retention: Duration::from_secs(600),
            worker_session_timeout: Duration::from_secs(10),
            worker_transaction_timeout: Duration::from_secs(30),
            worker_metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            shard_tokens: ShardTokens::default(),
            kinesis_endpoint: None,
            kinesis_region: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Settings {
    /// Applies file, environment and flags over the defaults, reporting every
    /// wrong field at once. `env` is passed in so tests need not touch the
    /// process environment.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>, flags: &Overrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: path.display().to_string(), message: e.to_string() })?;
                serde_yaml::from_str::<SettingsFile>(&text)
                    .map_err(|e| ConfigError::Invalid(vec![format!("{}: {e}", path.display())]))?
            }
            None => SettingsFile::default(),
        };
        let mut problems = Vec::new();
        let mut s = Settings::default();

        for key in parsed.kafka.keys().filter(|k| SECRET_KAFKA_KEYS.contains(&k.as_str())) {
            let env_name = format!("HUNTFLOW_KAFKA__{}", key.replace('.', "_").to_uppercase());
            problems.push(format!("kafka.{key}: secrets are not read from config files; set {env_name}"));
        }
        s.kafka = parsed.kafka;
        let mut listen = parsed.ingest.listen;
        let mut query_listen = parsed.query.listen;
        s.brokers = parsed.brokers;
        if let Some(v) = parsed.topology {
            s.topology = v;
        }
        if let Some(v) = parsed.state_dir {
            s.state_dir = v;
        }
        if let Some(v) = parsed.ingest.max_body_bytes {
            s.ingest.max_body_bytes = v;
        }
        if let Some(v) = parsed.ingest.max_in_flight_events {
            s.ingest.max_in_flight_events = v;
        }
        if let Some(v) = parsed.ingest.queue_timeout_ms {
            s.ingest.queue_timeout = Duration::from_millis(v);
        }
        if let Some(v) = parsed.ingest.delivery_timeout_ms {
            s.ingest.delivery_timeout = Duration::from_millis(v);
        }
        let mut retention_ms = parsed.query.closed_window_retention_ms;
        let mut tokens_file = parsed.shard_tokens_file;
        let mut session_ms = parsed.worker.session_timeout_ms;
        let txn_ms = parsed.worker.transaction_timeout_ms;
        let mut metrics_listen = parsed.worker.metrics_listen;

        s.kinesis_endpoint = parsed.kinesis.endpoint_url;
        s.kinesis_region = parsed.kinesis.region;

        // Environment.
        let get = |k: &str| env.get(k).cloned();
        if let Some(v) = get("HUNTFLOW_KINESIS_ENDPOINT") {
            s.kinesis_endpoint = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_KINESIS_REGION") {
            s.kinesis_region = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_BROKERS") {
            s.brokers = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_TOPOLOGY") {
            s.topology = v.into();
        }
        if let Some(v) = get("HUNTFLOW_STATE_DIR") {
            s.state_dir = v.into();
        }
        if let Some(v) = get("HUNTFLOW_INGEST_LISTEN") {
            listen = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_WORKER_SESSION_TIMEOUT_MS") {
            match v.parse() {
                Ok(ms) => session_ms = Some(ms),
                Err(_) => problems.push(format!("HUNTFLOW_WORKER_SESSION_TIMEOUT_MS: `{v}` is not a number of ms")),
            }
        }
        if let Some(v) = get("HUNTFLOW_METRICS_LISTEN") {
            metrics_listen = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_QUERY_LISTEN") {
            query_listen = Some(v);
        }
        if let Some(v) = get("HUNTFLOW_QUERY_CLOSED_WINDOW_RETENTION_MS") {
            match v.parse() {
                Ok(ms) => retention_ms = Some(ms),
                Err(_) => {
                    problems.push(format!("HUNTFLOW_QUERY_CLOSED_WINDOW_RETENTION_MS: `{v}` is not a number of ms"))
                }
            }
        }
        if let Some(v) = get("HUNTFLOW_SHARD_TOKENS_FILE") {
            tokens_file = Some(v.into());
        }
        for (name, value) in env {
            if let Some(key) = name.strip_prefix("HUNTFLOW_KAFKA__") {
                s.kafka.insert(key.to_lowercase().replace('_', "."), value.clone());
            }
        }

        // Flags.
        if let Some(v) = &flags.brokers {
            s.brokers = Some(v.clone());
        }
        if let Some(v) = &flags.topology {
            s.topology = v.clone();
        }
        if let Some(v) = &flags.state_dir {
            s.state_dir = v.clone();
        }
        if let Some(v) = &flags.listen {
            listen = Some(v.clone());
        }

        s.brokers = s.brokers.filter(|b| !b.trim().is_empty());
        if let Some(text) = listen {
            match text.parse() {
                Ok(addr) => s.ingest.listen = addr,
                Err(_) => problems.push(format!("ingest.listen: `{text}` is not an address like 127.0.0.1:8080")),
            }
        }
        if let Some(text) = query_listen {
            match text.parse() {
                Ok(addr) => s.query_listen = addr,
                Err(_) => problems.push(format!("query.listen: `{text}` is not an address like 127.0.0.1:8081")),
            }
        }
        if let Some(text) = metrics_listen {
            match text.parse() {
                Ok(addr) => s.worker_metrics_listen = addr,
                Err(_) => problems.push(format!("worker.metrics_listen: `{text}` is not an address like 0.0.0.0:9464")),
            }
        }
        match session_ms {
            Some(ms) if !(1_000..=300_000).contains(&ms) => {
                problems.push(format!("worker.session_timeout_ms: {ms} is outside 1000..=300000"))
            }
            Some(ms) => s.worker_session_timeout = Duration::from_millis(ms),
            None => {}
        }
        match txn_ms {
            Some(ms) if !(1_000..=900_000).contains(&ms) => {
                problems.push(format!("worker.transaction_timeout_ms: {ms} is outside 1000..=900000"))
            }
            Some(ms) => s.worker_transaction_timeout = Duration::from_millis(ms),
            None => {}
        }
        match retention_ms {
            Some(ms) if ms > 7 * 86_400_000 => {
                problems.push(format!("query.closed_window_retention_ms: {ms} is above 7 days (604800000)"))
            }
            Some(ms) => s.query_closed_window_retention = Duration::from_millis(ms),
            None => {}
        }
        if s.ingest.max_body_bytes < 1024 {
            problems.push("ingest.max_body_bytes: must be at least 1024".into());
        }
        if s.ingest.max_in_flight_events == 0 {
            problems.push("ingest.max_in_flight_events: must be greater than 0".into());
        }
        if s.ingest.delivery_timeout.is_zero() {
            problems.push("ingest.delivery_timeout_ms: must be greater than 0".into());
        }
        s.kinesis_endpoint = s.kinesis_endpoint.filter(|e| !e.trim().is_empty());
        if let Some(e) = &s.kinesis_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                problems.push(format!("kinesis.endpoint_url: `{e}` must start with http:// or https://"));
            }
        }
        if s.kafka.contains_key("bootstrap.servers") {
            problems.push("kafka.bootstrap.servers: set `brokers` instead".into());
        }

        let mut tokens = ShardTokens::default();
        if let Some(path) = tokens_file {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = tokens.add_lines(&text) {
                        problems.push(format!("shard_tokens_file ({}): {e}", path.display()));
                    }
                }
                Err(e) => problems.push(format!("shard_tokens_file: cannot read {}: {e}", path.display())),
            }
        }
        if let Some(v) = get("HUNTFLOW_SHARD_TOKENS") {
            if let Err(e) = tokens.add_lines(&v.replace(',', "\n")) {
                problems.push(format!("HUNTFLOW_SHARD_TOKENS: {e}"));
            }
        }
        s.shard_tokens = tokens;

        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Human-readable effective settings with every secret redacted.
    pub fn describe(&self) -> String {
        let kafka: BTreeMap<&str, &str> = self
            .kafka
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_KAFKA_KEYS.contains(&k.as_str()) || k.contains("password") || k.contains("secret");
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        format!(
            "brokers: {}\nkafka: {:?}\ntopology: {}\nstate_dir: {}\ningest: {:?}\nquery.listen: {}, closed_window_retention: {:?}\nshard_tokens: {} shard(s) <redacted>\nkinesis: endpoint {}, region {}\n",
            self.brokers.as_deref().unwrap_or("<embedded mock cluster>"),
            kafka,
            self.topology.display(),
            self.state_dir.display(),
            self.ingest,
            self.query_listen,
            self.query_closed_window_retention,
            self.shard_tokens.len(),
            self.kinesis_endpoint.as_deref().unwrap_or("<AWS default>"),
            self.kinesis_region.as_deref().unwrap_or("<AWS chain>"),
        )
    }
}

/// The process environment as a map, for `Settings::load`.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().filter(|(k, _)| k.starts_with("HUNTFLOW_")).collect()
}

#[cfg(test)]
mod tests;
