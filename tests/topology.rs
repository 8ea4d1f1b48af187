//! Every invalid topology fixture fails with the expected paths, all at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use huntflow::topology::Topology;

fn fixtures() -> BTreeMap<String, Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topology");
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

#[test]
fn each_invalid_fixture_reports_every_expected_problem_with_its_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topology");
    let expected = fixtures();
    assert!(expected.len() >= 7);
    for (file, wanted) in expected {
        let err = Topology::load(dir.join(&file)).expect_err(&file);
        let problems: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
        for w in &wanted {
            assert!(problems.iter().any(|p| p.starts_with(w.as_str())), "{file}: `{w}` not among {problems:#?}");
        }
        assert_eq!(problems.len(), wanted.len(), "{file}: unexpected extra problems {problems:#?}");
    }
}

#[test]
fn validate_command_exits_1_listing_all_problems_and_0_for_the_shipped_file() {
    let bin = env!("CARGO_BIN_EXE_huntflow");
    let root = env!("CARGO_MANIFEST_DIR");
    let bad = Command::new(bin)
        .args(["topology", "validate", "tests/fixtures/topology/bad-durations-and-partitions.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let out = String::from_utf8_lossy(&bad.stdout);
    for w in &fixtures()["bad-durations-and-partitions.yaml"] {
        assert!(out.contains(w.as_str()), "{w} missing from {out}");
    }
    let good = Command::new(bin)
        .args(["topology", "validate", "topology/treasure-hunt.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stdout));
}
