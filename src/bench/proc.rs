//! Stage workers as child processes (`huntflow worker --stage X`), so a
//! benchmark can SIGKILL one and read its RSS and open files from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{SettingsFile, WorkerFile};
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcError {
    let what = what.into();
    move |source| ProcError::Io { what, source }
}

/// Files a child worker is started with: a settings file naming the
/// brokers, a topology file and worker timeouts.
pub struct WorkerFiles {
    pub dir: PathBuf,
    pub topology: PathBuf,
    pub brokers: String,
    pub session_timeout_ms: u64,
    pub transaction_timeout_ms: u64,
}

impl WorkerFiles {
    /// Writes `topology` into `dir` (created).
    pub fn new(
        dir: &Path,
        topology: &Topology,
        brokers: &str,
        session_ms: u64,
        txn_ms: u64,
    ) -> Result<Self, ProcError> {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let path = dir.join("topology.yaml");
        let yaml = serde_yaml::to_string(topology.spec())
            .map_err(|e| ProcError::Write { path: path.display().to_string(), message: e.to_string() })?;
        std::fs::write(&path, yaml).map_err(io(format!("write {}", path.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            topology: path,
            brokers: brokers.to_owned(),
            session_timeout_ms: session_ms,
            transaction_timeout_ms: txn_ms,
        })
    }

    /// Settings for one worker process with its own state dir and metrics port.
    fn settings(&self, name: &str, state_dir: &Path, metrics_port: u16) -> Result<PathBuf, ProcError> {
        let file = SettingsFile {
            brokers: Some(self.brokers.clone()),
            topology: Some(self.topology.clone()),
            state_dir: Some(state_dir.to_path_buf()),
            worker: WorkerFile {
                session_timeout_ms: Some(self.session_timeout_ms),
                transaction_timeout_ms: Some(self.transaction_timeout_ms),
                metrics_listen: Some(format!("127.0.0.1:{metrics_port}")),
            },
            ..Default::default()
        };
        let path = self.dir.join(format!("{name}.yaml"));
        let yaml = serde_yaml::to_string(&file)
            .map_err(|e| ProcError::Write { path: path.display().to_string(), message: e.to_string() })?;
        std::fs::write(&path, yaml).map_err(io(format!("write {}", path.display())))?;
        Ok(path)
    }
}

fn free_port() -> Result<u16, ProcError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("local addr"))?.port())
}

/// A running `huntflow worker` child.
pub struct ChildWorker {
    child: Child,
    pub name: String,
    metrics_url: String,
    client: reqwest::Client,
}

impl ChildWorker {
    /// Starts `huntflow --config <files>/<name>.yaml worker --stage <stage>` (instance 0).
    pub fn spawn(files: &WorkerFiles, stage: &str, name: &str, state_dir: &Path) -> Result<Self, ProcError> {
        let port = free_port()?;
        let config = files.settings(name, state_dir, port)?;
        let exe = std::env::current_exe().map_err(io("find the huntflow binary"))?;
        let log = std::fs::File::create(files.dir.join(format!("{name}.log"))).map_err(io("create worker log"))?;
        let err = log.try_clone().map_err(io("clone worker log"))?;
        let child = Command::new(exe)
            .arg("--config")
            .arg(&config)
            .args(["worker", "--stage", stage, "--instance", "0"])
            .env_remove("HUNTFLOW_BROKERS")
            .env_remove("HUNTFLOW_STATE_DIR")
            .env_remove("HUNTFLOW_TOPOLOGY")
            .env_remove("HUNTFLOW_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(io("spawn huntflow worker"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            client: reqwest::Client::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sum of `huntflow_stage_records_total` with `outcome` (any when `None`);
    /// `None` while the metrics endpoint does not answer.
    pub async fn records(&self, outcome: Option<&str>) -> Option<f64> {
        let text = self.client.get(&self.metrics_url).send().await.ok()?.text().await.ok()?;
        Some(metric_sum(&text, "huntflow_stage_records_total", outcome))
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.client.get(&self.metrics_url).send().await.ok()?.text().await.ok()?;
        Some(metric_sum(&text, name, None))
    }

    /// Waits until `records(outcome) >= n`, printing progress every 10 s.
    pub async fn wait_records(&self, outcome: Option<&str>, n: f64, timeout: Duration) -> Result<Duration, ProcError> {
        let started = Instant::now();
        let mut said = Instant::now();
        loop {
            let got = self.records(outcome).await.unwrap_or(0.0);
            if got >= n {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(ProcError::Timeout(format!("{}: {got} of {n} records after {timeout:?}", self.name)));
            }
            if said.elapsed() > Duration::from_secs(10) {
                eprintln!("  {}: {got:.0} of {n:.0} records ({:.0} s)", self.name, started.elapsed().as_secs_f64());
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (VmRSS, VmHWM) in bytes and open file descriptors, from /proc.
    pub fn resources(&self) -> Option<(u64, u64, usize)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok()?.count();
        Some((kb("VmRSS:")?, kb("VmHWM:")?, fds))
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a Prometheus text metric's samples, optionally only those whose
/// `outcome` label matches.
pub fn metric_sum(text: &str, name: &str, outcome: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| outcome.is_none_or(|o| l.contains(&format!("outcome=\"{o}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bytes under `dir` (recursive) and how many files.
pub fn dir_size(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => {
                    let (b, n) = dir_size(&e.path());
                    total = (total.0 + b, total.1 + n);
                }
                Ok(m) => total = (total.0 + m.len(), total.1 + 1),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_by_outcome() {
        let text = "# HELP x\nhuntflow_stage_records_total{outcome=\"accepted\",stage=\"claim\"} 10\n\
                    huntflow_stage_records_total{outcome=\"duplicate\",stage=\"claim\"} 2\n\
                    huntflow_stage_records_total_other 5\n";
        assert_eq!(metric_sum(text, "huntflow_stage_records_total", None), 12.0);
        assert_eq!(metric_sum(text, "huntflow_stage_records_total", Some("accepted")), 10.0);
    }
}
