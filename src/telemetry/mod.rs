//! Prometheus metrics. No global registry: every component registers on the
//! registry it is handed, so tests and several components in one process
//! never collide. Label sets are bounded (reason codes, status codes), never
//! player or event ids.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Registers `metric` and returns it; a name clash is a programming error
/// caught by every test, so it panics with the metric's name.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        panic!("metric registration failed: {e}");
    }
    metric
}

/// A registry with what every huntflow process exports besides its own
/// metrics: `process_*` (RSS, open and max fds, CPU seconds, threads, start
/// time; Linux only) and `huntflow_build_info{version} 1`, so dashboards can
/// show which build runs and alerts can compare fds with their limit.
pub fn registry() -> Registry {
    let registry = Registry::new();
    register_process_metrics(&registry);
    registry
}

/// Registers the process collector and `huntflow_build_info` on `registry`.
pub fn register_process_metrics(registry: &Registry) {
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
        panic!("metric registration failed: {e}");
    }
    let info = register(
        registry,
        IntGaugeVec::new(
            Opts::new("huntflow_build_info", "Always 1; labels tell the running build's version."),
            &["version"],
        )
        .expect("valid metric"),
    );
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only when stdout is a terminal.
    #[default]
    Text,
    /// One JSON object per line (for log collectors in Kubernetes).
    Json,
}

/// Starts a tracing subscriber honouring `RUST_LOG` (default `info`), writing
/// to stderr so that stdout carries only reports (bench numbers, `run`'s
/// summary, `broker`'s address). Colour codes only go to a terminal: piped
/// or collected logs stay plain text.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_exports_build_info_and_process_metrics() {
        let registry = registry();
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.iter().any(|n| n == "huntflow_build_info"), "{names:?}");
        #[cfg(target_os = "linux")]
        for name in ["process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"] {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    }
}
