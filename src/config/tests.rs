use std::collections::HashMap;
use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let f = file("brokers: file:9092\nstate_dir: /file\ningest: { listen: 127.0.0.1:1000 }\n");
    let env = HashMap::from([
        ("HUNTFLOW_STATE_DIR".to_string(), "/env".to_string()),
        ("HUNTFLOW_INGEST_LISTEN".to_string(), "127.0.0.1:2000".to_string()),
    ]);
    let flags = Overrides { listen: Some("127.0.0.1:3000".into()), ..Default::default() };
    let s = Settings::load(Some(f.path()), &env, &flags).unwrap();
    assert_eq!(s.brokers.as_deref(), Some("file:9092"));
    assert_eq!(s.state_dir, std::path::PathBuf::from("/env"));
    assert_eq!(s.ingest.listen.port(), 3000);
    assert_eq!(s.topology, std::path::PathBuf::from("topology/treasure-hunt.yaml"));
}

#[test]
fn every_wrong_field_is_reported_at_once_and_secrets_are_refused_in_files() {
    let f = file(
        "kafka: { sasl.password: hunter2, bootstrap.servers: x }\ningest: { listen: nope, max_in_flight_events: 0 }\n",
    );
    let err = Settings::load(Some(f.path()), &HashMap::new(), &Overrides::default()).unwrap_err().to_string();
    for needle in [
        "kafka.sasl.password",
        "HUNTFLOW_KAFKA__SASL_PASSWORD",
        "kafka.bootstrap.servers",
        "ingest.listen",
        "max_in_flight_events",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
    assert!(!err.contains("hunter2"));
}

#[test]
fn secrets_from_env_are_used_but_never_printed() {
    let env = HashMap::from([
        ("HUNTFLOW_KAFKA__SASL_PASSWORD".to_string(), "hunter2".to_string()),
        ("HUNTFLOW_SHARD_TOKENS".to_string(), "shard-0=aaaaaaaaaaaaaaaaaaaa,shard-1=bbbbbbbbbbbbbbbbbbbb".to_string()),
    ]);
    let s = Settings::load(None, &env, &Overrides::default()).unwrap();
    assert_eq!(s.kafka["sasl.password"], "hunter2");
    assert_eq!(s.shard_tokens.check("shard-0", "aaaaaaaaaaaaaaaaaaaa"), TokenCheck::Ok);
    assert_eq!(s.shard_tokens.check("shard-0", "bbbbbbbbbbbbbbbbbbbb"), TokenCheck::OtherShard("shard-1".into()));
    assert_eq!(s.shard_tokens.check("shard-0", "cccccccccccccccccccc"), TokenCheck::Unknown);
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("aaaaaaaa"), "{shown}");
}

#[test]
fn unknown_fields_in_the_settings_file_are_rejected() {
    let f = file("brokrs: x\n");
    let err = Settings::load(Some(f.path()), &HashMap::new(), &Overrides::default()).unwrap_err().to_string();
    assert!(err.contains("unknown field `brokrs`"), "{err}");
}

#[test]
fn check_names_every_problem_for_the_command() {
    let f = file("topology: /nonexistent/topology.yaml\nkafka: { no.such.property: x }\n");
    let s = Settings::load(Some(f.path()), &HashMap::new(), &Overrides::default()).unwrap();
    let env = HashMap::from([
        ("HUNTFLOW_INSTANCE".to_string(), "pod-1".to_string()),
        ("HUNTFLOW_WORKER_METRICS_LISTEN".to_string(), "0.0.0.0:1".to_string()),
    ]);
    let report = check(&s, Some(Role::Worker), &env);
    let all = report.problems.join("\n");
    for needle in
        ["/nonexistent/topology.yaml", "no.such.property", "`pod-1`", "brokers", "HUNTFLOW_WORKER_METRICS_LISTEN"]
    {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }
    assert_eq!(report.binds, vec![("metrics", s.worker_metrics_listen)]);
}

#[test]
fn check_of_ingest_needs_tokens_and_workers_do_not() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let flags = Overrides {
        topology: Some(root.join("topology/treasure-hunt.yaml")),
        brokers: Some("kafka:9092".into()),
        ..Default::default()
    };
    let s = Settings::load(None, &HashMap::new(), &flags).unwrap();
    let worker = check(&s, Some(Role::Worker), &HashMap::new()).problems;
    assert!(worker.is_empty(), "{worker:?}");
    let ingest = check(&s, Some(Role::Ingest), &HashMap::new()).problems.join("\n");
    assert!(ingest.contains("HUNTFLOW_SHARD_TOKENS_FILE"), "{ingest}");
    let bridge = check(&s, Some(Role::KinesisBridge), &HashMap::new()).problems.join("\n");
    assert!(bridge.contains("source.kind is not kinesis"), "{bridge}");
}
