//! Throwaway: checks the kinesis-local harness (delete me).
mod common;

use std::process::Command;
use std::time::Instant;

use common::kinesis::{call_plain, KinesisLocal};

fn curl_tls(url: &str, ca: &std::path::Path) -> String {
    let out = Command::new("curl")
        .arg("--cacert").arg(ca)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2", "-X", "POST",
            "-H", "Content-Type: application/x-amz-json-1.1",
            "-H", "X-Amz-Target: Kinesis_20131202.ListStreams",
            "-H", "X-Amz-Date: 20240101T000000Z",
            "-H", "Authorization: AWS4-HMAC-SHA256 Credential=huntflowtest/20240101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
            "-d", "{}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smoke() {
    for round in 0..3 {
        let t = Instant::now();
        let k = KinesisLocal::start();
        eprintln!("round {round}: started in {:?}: {} {} ca={}", t.elapsed(), k.plain_url, k.tls_url, k.ca_file.display());
        let (st, body) = call_plain(k.plain_port, "ListStreams", "{}").unwrap();
        eprintln!("plain ListStreams: {st} {body}");
        assert_eq!(st, 200);
        let (st, body) = call_plain(k.plain_port, "CreateStream", r#"{"StreamName":"s1","ShardCount":2}"#).unwrap();
        eprintln!("plain CreateStream: {st} {body}");
        assert_eq!(st, 200);
        for url in [format!("{}/", k.tls_url), format!("https://127.0.0.1:{}/", k.tls_port)] {
            let r = curl_tls(&url, &k.ca_file);
            eprintln!("curl {url}: {r}");
            assert_eq!(r, "200 2");
        }
        let log = std::fs::read_to_string(&k.log_file).unwrap();
        eprintln!("log: {} lines", log.lines().count());
    }
    // Parallel starts.
    let t = Instant::now();
    let hs: Vec<_> = (0..4).map(|_| std::thread::spawn(KinesisLocal::start)).collect();
    let ks: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("4 parallel started in {:?}", t.elapsed());
    for k in &ks {
        assert_eq!(call_plain(k.plain_port, "ListStreams", "{}").unwrap().0, 200);
    }
}
