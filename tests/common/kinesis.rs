//! A Kinesis emulator for tests: kinesis-local 0.6.2 (the npm build of
//! kinesis-mock), one node process per `KinesisLocal`, on random ports.
//! `.ci/run` installs it and points `HUNTFLOW_KINESIS_LOCAL` at the package;
//! if it is missing, the first test that needs it installs it the same way.
//!
//! The emulator serves plain HTTP/1.1 on one port and HTTPS (HTTP/2 via
//! ALPN) on another. The certificate it ships names no host, so the harness
//! mints a test CA and a `localhost`/`127.0.0.1` server certificate with the
//! `openssl` CLI, once, into `~/.cache/huntflow/kinesis-local/certs/`; every
//! emulator shares them, so setting `SSL_CERT_FILE` to `ca_file` is the same
//! for every test in the process. Delete that directory to mint new ones.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const VERSION: &str = "0.6.2";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries when another process grabbed one of our ports first.
const START_ATTEMPTS: u32 = 3;

pub struct KinesisLocal {
    child: Child,
    /// `http://127.0.0.1:PORT` (HTTP/1.1).
    pub plain_url: String,
    /// `https://localhost:PORT` (TLS, HTTP/2 or HTTP/1.1 by ALPN).
    pub tls_url: String,
    pub plain_port: u16,
    pub tls_port: u16,
    /// PEM of the CA that signed the TLS port's certificate.
    pub ca_file: PathBuf,
    /// The emulator's stdout and stderr.
    pub log_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn install_root() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/huntflow/kinesis-local")
}

/// The package directory (holding `main.js`): `$HUNTFLOW_KINESIS_LOCAL`, or
/// the cache, installing there with npm if missing.
pub fn package_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(p) = std::env::var("HUNTFLOW_KINESIS_LOCAL") {
            return PathBuf::from(p);
        }
        let root = install_root();
        let pkg = root.join("node_modules/kinesis-local");
        if !pkg.join("main.js").exists() {
            std::fs::create_dir_all(&root).expect("create the kinesis-local cache dir");
            let status = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", &format!("kinesis-local@{VERSION}")])
                .current_dir(&root)
                .status()
                .expect("npm runs");
            assert!(status.success(), "installing kinesis-local@{VERSION} with npm failed");
        }
        pkg
    })
    .clone()
}

/// `(ca.pem, server.json)`: the test CA and the emulator's key + certificate
/// in its `{"server": {"key", "cert"}}` format. Minted once, then reused.
fn certs() -> (PathBuf, PathBuf) {
    static CERTS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERTS
        .get_or_init(|| {
            let root = install_root();
            let dir = root.join("certs");
            let (ca, json) = (dir.join("ca.pem"), dir.join("server.json"));
            if !(ca.exists() && json.exists()) {
                std::fs::create_dir_all(&root).expect("create the kinesis-local cache dir");
                // Mint into a scratch dir and rename it into place, so a
                // concurrent test process never sees half the files.
                let tmp = tempfile::Builder::new().prefix(".certs-").tempdir_in(&root).expect("scratch dir");
                mint_certs(tmp.path());
                if std::fs::rename(tmp.path(), &dir).is_err() {
                    assert!(
                        ca.exists() && json.exists(),
                        "{} exists without ca.pem and server.json; delete it",
                        dir.display()
                    );
                }
            }
            (ca, json)
        })
        .clone()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI runs (install openssl)");
    assert!(out.status.success(), "openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate it signed that rustls/webpki accepts:
/// X.509 v3, not a CA, serverAuth, subjectAltName localhost and 127.0.0.1.
fn mint_certs(dir: &Path) {
    // Our own config, so the system openssl.cnf adds nothing.
    std::fs::write(
        dir.join("openssl.cnf"),
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         CN = huntflow test\n\
         [ca_ext]\n\
         basicConstraints = critical,CA:true\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server_ext]\n\
         basicConstraints = critical,CA:false\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid,issuer\n",
    )
    .expect("write openssl.cnf");
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-config", "openssl.cnf", "-x509", "-extensions", "ca_ext",
        "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "3650", "-subj", "/CN=huntflow test CA",
    ]);
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-config", "openssl.cnf", "-new",
        "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
    ]);
    #[rustfmt::skip]
    openssl(dir, &[
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "openssl.cnf", "-extensions", "server_ext", "-out", "server.pem",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let json = serde_json::json!({"server": {"key": read("server.key"), "cert": read("server.pem")}});
    std::fs::write(dir.join("server.json"), json.to_string()).expect("write server.json");
    // Nothing should ever sign with this CA again.
    for f in ["ca.key", "ca.srl", "server.csr", "openssl.cnf"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Two distinct free ports (both listeners held while the second is picked).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("free port");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// POSTs a Kinesis JSON call to the plain port with a well-formed but unsigned
/// SigV4 header (the emulator checks it is there, not what it says); returns
/// the status and body.
pub fn call_plain(port: u16, action: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST / HTTP/1.1\r\n\
         Host: 127.0.0.1:{port}\r\n\
         Content-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: Kinesis_20131202.{action}\r\n\
         X-Amz-Date: 20240101T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=huntflowtest/20240101/us-east-1/kinesis/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=00\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Headers, then Content-Length bytes of body (or to EOF without one).
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response: {head:?}"));
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    loop {
        if length.is_some_and(|len| buf.len() - head_end >= len) {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, String::from_utf8_lossy(&buf[head_end..]).into_owned()))
}

fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl KinesisLocal {
    /// Starts an emulator and waits (up to 60 s) until ListStreams answers
    /// 200 on the plain port.
    pub fn start() -> Self {
        let main_js = package_dir().join("main.js");
        assert!(main_js.exists(), "kinesis-local not found: {} is missing", main_js.display());
        let (ca_file, cert_json) = certs();
        let dir = tempfile::Builder::new().prefix("kinesis-local-").tempdir().expect("tempdir");
        let log_file = dir.path().join("kinesis-local.log");
        for attempt in 1..=START_ATTEMPTS {
            let (plain_port, tls_port) = free_ports();
            let log = std::fs::File::create(&log_file).expect("create the emulator log");
            let mut child = Command::new("node")
                .arg(&main_js)
                // PERSIST_PATH and anything else relative lands in the tempdir.
                .current_dir(dir.path())
                .env("KINESIS_MOCK_CERT_PATH", &cert_json)
                .env("KINESIS_MOCK_PLAIN_PORT", plain_port.to_string())
                .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
                .env("SHARD_LIMIT", "1000")
                .env("LOG_LEVEL", "WARN")
                .env_remove("INITIALIZE_STREAMS")
                .env_remove("SHOULD_PERSIST_DATA")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("node runs (install nodejs)");
            let started = Instant::now();
            let failure = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break format!("exited with {status}");
                }
                match call_plain(plain_port, "ListStreams", "{}") {
                    Ok((200, _)) => {
                        return Self {
                            child,
                            plain_url: format!("http://127.0.0.1:{plain_port}"),
                            tls_url: format!("https://localhost:{tls_port}"),
                            plain_port,
                            tls_port,
                            ca_file,
                            log_file,
                            _dir: dir,
                        };
                    }
                    Ok((status, body)) if started.elapsed() >= START_TIMEOUT => {
                        break format!("after {}s ListStreams still answers {status}: {body}", START_TIMEOUT.as_secs());
                    }
                    Err(e) if started.elapsed() >= START_TIMEOUT => {
                        break format!("after {}s the plain port still fails: {e}", START_TIMEOUT.as_secs());
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            let _ = child.kill();
            let _ = child.wait();
            let tail = log_tail(&log_file, 30);
            if tail.contains("EADDRINUSE") && attempt < START_ATTEMPTS {
                continue;
            }
            panic!(
                "kinesis-local ({}, plain port {plain_port}, TLS port {tls_port}) did not start: {failure}\n\
                 last lines of its output:\n{tail}",
                main_js.display()
            );
        }
        unreachable!("the last attempt panics")
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
