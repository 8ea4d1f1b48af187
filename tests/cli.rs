//! The binary as a user runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn free_port_run(n: u16) -> u16 {
    use rand::Rng;
    loop {
        let base = rand::rng().random_range(20_000..60_000u16);
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_command_serves_other_processes_on_fixed_ports() {
    let port = free_port_run(3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_huntflow"))
        .args(["broker", "--port", &port.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let bootstrap = line.trim().to_owned();
    assert_eq!(bootstrap, format!("127.0.0.1:{port},127.0.0.1:{},127.0.0.1:{}", port + 1, port + 2));

    // Only the first fixed port is given: metadata must lead to the others.
    let first = format!("127.0.0.1:{port}");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &first).create().unwrap();
    producer.send(FutureRecord::to("hunt.events").key("k").payload("hello"), Duration::from_secs(10)).await.unwrap();
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &first).create().unwrap();
    let md = consumer.fetch_metadata(Some("hunt.events"), Duration::from_secs(10)).unwrap();
    let mut ports: Vec<i32> = md.brokers().iter().map(|b| b.port()).collect();
    ports.sort();
    assert_eq!(ports, vec![port as i32, port as i32 + 1, port as i32 + 2]);
    assert_eq!(md.topics()[0].partitions().len(), 32);
    drop(consumer);
    drop(producer);

    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "SIGTERM exits 0");
}

#[test]
fn run_stops_by_itself_accounts_for_every_event_and_verifies() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_huntflow"))
        .args(["run", "--events", "5000", "--no-progress", "--no-live", "--verify", "--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state.path())
        .env("HUNTFLOW_QUERY_LISTEN", "127.0.0.1:0")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let number = |label: &str| -> u64 {
        let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {stdout}"));
        line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(number("posted"), 5000);
    assert_eq!(number("accepted") + number("dead-lettered"), 5000);
    // The events topic also holds ingest's heartbeats (one per partition per second).
    assert!(number("hunt.events") >= number("accepted"));
    assert!(stdout.contains("verify: PASSED"), "{stdout}");
    assert!(stdout.contains("lifetime top-10 per tier:"), "{stdout}");
}

#[test]
fn config_command_never_prints_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_huntflow"))
        .args(["config"])
        .env("HUNTFLOW_KAFKA__SASL_PASSWORD", "hunter2-secret")
        .env("HUNTFLOW_SHARD_TOKENS", "shard-0=abcdefghijklmnopqrstuvwxyz")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("sasl.password") && stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stdout.contains("abcdefghij"), "{stdout}");
}
