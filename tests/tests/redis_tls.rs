//! TLS to Redis: two real `balint-room` nodes on a `redis-server` that speaks only TLS and asks
//! every client for a certificate (`rediss://`, `--redis-ca-file`, `--redis-cert-file`,
//! `--redis-key-file`), directly and through a `redis-sentinel` that speaks only TLS too
//! (`--redis-tls`). The board and the meeting cross between the nodes as over plain Redis;
//! a node that cannot check Redis's certificate, or that would turn the check off, does not
//! start, and says why.

use std::path::{Path, PathBuf};

use balint_e2e::process::{redis_cli, NodeProcess, RedisProcess, SentinelProcess};
use balint_e2e::YClient;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};

const SECRET: &str = "a shared secret for every node of the test cluster";

/// A certificate authority, Redis's certificate (for 127.0.0.1) and a node's client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let (ca, ca_key) = authority();
        write("ca.pem", ca.pem());
        let server_key = KeyPair::generate().unwrap();
        let server = named(CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap(), "redis");
        write("redis.pem", server.signed_by(&server_key, &ca, &ca_key).unwrap().pem());
        write("redis-key.pem", server_key.serialize_pem());
        let client_key = KeyPair::generate().unwrap();
        let mut client = named(CertificateParams::new(vec!["balint-node".to_owned()]).unwrap(), "balint-node");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write("node.pem", client.signed_by(&client_key, &ca, &ca_key).unwrap().pem());
        write("node-key.pem", client_key.serialize_pem());
        // Another authority, which signed nothing Redis shows.
        write("other-ca.pem", authority().0.pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn redis(&self) -> RedisProcess {
        RedisProcess::start_tls(&self.path("redis.pem"), &self.path("redis-key.pem"), &self.path("ca.pem")).unwrap()
    }
}

/// `params` with `name` as its subject's common name (each certificate its own: a leaf named
/// as its issuer reads as self-signed).
fn named(mut params: CertificateParams, name: &str) -> CertificateParams {
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params
}

fn authority() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = named(CertificateParams::new(Vec::<String>::new()).unwrap(), "Balint Room test authority");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).unwrap(), key)
}

fn tls_url(redis: &RedisProcess) -> String {
    format!("rediss://127.0.0.1:{}", redis.port)
}

fn node(url: &str, tls: &[String], data: &Path) -> anyhow::Result<NodeProcess> {
    let mut args = vec!["--redis-url", url, "--secret", SECRET, "--data-dir", data.to_str().unwrap()];
    args.extend(tls.iter().map(String::as_str));
    NodeProcess::start(&args)
}

async fn create_room(node: &NodeProcess) -> Value {
    let response =
        reqwest::Client::new().post(format!("{}/api/rooms", node.base())).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_redis_that_speaks_only_tls() {
    let pki = Pki::new();
    let redis = pki.redis();
    // Nothing but TLS is answered there.
    assert_ne!(redis_cli(redis.port, None, &["PING"]).unwrap(), "PONG");
    let tls = ["--redis-ca-file", &pki.arg("ca.pem"), "--redis-cert-file", &pki.arg("node.pem"), "--redis-key-file"]
        .iter()
        .map(|s| s.to_string())
        .chain([pki.arg("node-key.pem")])
        .collect::<Vec<_>>();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(&tls_url(&redis), &tls, dir_a.path()).unwrap();
    let b = node(&tls_url(&redis), &tls, dir_b.path()).unwrap();
    let ready = reqwest::get(format!("{}/readyz", a.base())).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    board_and_meeting_cross(&a, &b).await;
}

/// Ada on node A and Ben on node B write in the notes and see each other's words, and a hand
/// raised on B is in the queue A shows.
async fn board_and_meeting_cross(a: &NodeProcess, b: &NodeProcess) {
    let room = create_room(a).await;
    let (id, invite) = (room["room"].as_str().unwrap(), room["invite_token"].as_str().unwrap());
    let mut ada = YClient::join(&a.ws_url(id, invite, "ada")).await.unwrap();
    let mut ben = YClient::join(&b.ws_url(id, invite, "ben")).await.unwrap();
    ada.type_text("written on A. ").await.unwrap();
    ben.wait_until(|c| c.notes().contains("written on A. ")).await.unwrap();
    ben.type_text("and on B.").await.unwrap();
    ada.wait_until(|c| c.notes().contains("and on B.")).await.unwrap();
    ben.command(json!({"type": "raise_hand"})).await.unwrap();
    ada.wait_state(|s| s.queue.len() == 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_find_a_tls_primary_through_a_tls_sentinel() {
    let pki = Pki::new();
    let redis = pki.redis();
    let (cert, key, ca) = (pki.path("redis.pem"), pki.path("redis-key.pem"), pki.path("ca.pem"));
    let sentinel = SentinelProcess::start_tls("balint", redis.port, &cert, &key, &ca).unwrap();
    let sentinels = format!("127.0.0.1:{}", sentinel.port);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &Path| {
        NodeProcess::start(&[
            "--redis-sentinels",
            &sentinels,
            "--redis-sentinel-master",
            "balint",
            "--redis-tls",
            "--redis-ca-file",
            &pki.arg("ca.pem"),
            "--redis-cert-file",
            &pki.arg("node.pem"),
            "--redis-key-file",
            &pki.arg("node-key.pem"),
            "--secret",
            SECRET,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .unwrap()
    };
    let (a, b) = (start(dir_a.path()), start(dir_b.path()));
    board_and_meeting_cross(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_check_redis_or_would_not_does_not_start() {
    let pki = Pki::new();
    let redis = pki.redis();
    let data = tempfile::tempdir().unwrap();
    let plain = redis.url();
    let refused = |tls: &[String], url: &str| {
        let error = node(url, tls, data.path()).err().expect("the node must not start");
        format!("{error:#}")
    };
    let with = |ca: &str, client: bool| {
        let mut args = vec!["--redis-ca-file".to_owned(), pki.arg(ca)];
        if client {
            args.extend(["--redis-cert-file".to_owned(), pki.arg("node.pem")]);
            args.extend(["--redis-key-file".to_owned(), pki.arg("node-key.pem")]);
        }
        args
    };
    let url = tls_url(&redis);
    let insecure = format!("{url}/#insecure");
    let cases: [(&str, Vec<String>, &str, &str); 6] = [
        // Redis's certificate was signed by an authority the node was not told to trust, nor
        // does the system trust it; Redis asks for a client certificate.
        ("another authority", with("other-ca.pem", true), &url, "cannot reach Redis"),
        ("the system's authorities", Vec::new(), &url, "cannot reach Redis"),
        ("no client certificate", with("ca.pem", false), &url, "cannot reach Redis"),
        // The check cannot be turned off.
        ("#insecure", with("ca.pem", true), &insecure, "may not turn the certificate check off"),
        // TLS files with a plain URL are a mistake, said as such.
        ("a plain URL", with("ca.pem", true), &plain, "are for a rediss:// URL"),
        // An unreadable file is named by its flag.
        ("a missing file", with("missing.pem", true), &url, "cannot read --redis-ca-file"),
    ];
    // With Sentinel, the files without --redis-tls: refused rather than ignored.
    let sentinel = [
        "--redis-sentinels",
        "127.0.0.1:1",
        "--redis-sentinel-master",
        "balint",
        "--redis-ca-file",
        &pki.arg("ca.pem"),
        "--secret",
        SECRET,
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    let error = format!("{:#}", NodeProcess::start(&sentinel).err().expect("the node must not start"));
    assert!(error.contains("go with --redis-tls"), "{error}");
    // Each refused start waits out the node's retries (a few seconds): side by side.
    std::thread::scope(|scope| {
        for (case, tls, url, says) in &cases {
            scope.spawn(move || {
                let error = refused(tls, url);
                assert!(error.contains(says), "{case}: {error}");
            });
        }
    });
}
