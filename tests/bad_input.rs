//! Bad input gets a clear error naming what and where, and nothing breaks (DESIGN.md §5.5).
//!
//! Each test feeds the real binary one kind of bad input: config keys, tokens, peers, state
//! dirs, ports and frames, and checks the message and the exit code, and that a running
//! daemon keeps serving.

use std::io::Write;
use std::time::Duration;

use tandem_tests::{cli, text, wait_for, TestCluster};

#[test]
fn unknown_config_key_names_file_line_and_key() {
    let mut cluster = TestCluster::new("config");
    assert!(cluster.init("a").status.success());
    let path = cluster.node("a").dir.join("tandem.toml");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, "\n[timing]\nnod_timeout_ms = 900").unwrap();
    drop(file);
    let output = cli(&cluster.node("a").dir, &["daemon"]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("line"), "{message}");
    assert!(message.contains("nod_timeout_ms"), "{message}");
    let _ = &mut cluster;
}

#[test]
fn malformed_wrong_and_expired_tokens_are_refused() {
    let cluster = TestCluster::form("tokens", &["a"], &[]);
    let peer = cluster.node("a").addr.clone();
    let dir = cluster.root.join("joiner");
    let join = |token: &str| {
        cli(
            &dir,
            &[
                "join",
                "--name",
                "j",
                "--listen",
                "127.0.0.1:0",
                "--peer",
                &peer,
                "--token",
                token,
            ],
        )
    };

    let output = join("not-a-token");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("token"), "{}", text(&output));

    // Right cluster and CA, wrong secret.
    let good = cluster.token("a");
    let mut forged: Vec<String> = good.split('.').map(str::to_string).collect();
    forged[3] = "0".repeat(forged[3].len());
    let output = join(&forged.join("."));
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("not known"), "{}", text(&output));

    let short = text(&cli(
        &cluster.node("a").dir,
        &["token", "--ttl", "1", "--json"],
    ));
    let reply: serde_json::Value = serde_json::from_str(&short).expect("token json");
    std::thread::sleep(Duration::from_millis(2100));
    let output = join(reply["token"].as_str().unwrap());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("expired"), "{}", text(&output));
    assert!(
        !dir.join("identity.json").exists(),
        "a refused join leaves no state dir"
    );
}

#[test]
fn unreachable_peer_is_named() {
    let root = std::env::temp_dir().join(format!("tandem-unreach-{}", std::process::id()));
    let token = format!(
        "tdm1.{}.{}.{}",
        "ab".repeat(16),
        "cd".repeat(32),
        "ef".repeat(16)
    );
    let port = tandem_tests::free_port("127.0.0.1");
    let peer = format!("127.0.0.1:{port}");
    let output = cli(
        &root,
        &[
            "join",
            "--name",
            "j",
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &peer,
            "--token",
            &token,
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&format!("cannot reach peer {peer}")),
        "{}",
        text(&output)
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn corrupt_and_foreign_state_dirs_are_refused_with_the_path() {
    let mut cluster = TestCluster::new("corrupt");
    assert!(cluster.init("a").status.success());
    assert!(cluster.init("b").status.success());
    let a = cluster.node("a").dir.clone();
    let b = cluster.node("b").dir.clone();

    // A flipped byte in the identity file.
    let identity = a.join("identity.json");
    let original = std::fs::read(&identity).unwrap();
    let corrupt = String::from_utf8(original.clone())
        .unwrap()
        .replacen("\"a\"", "\"x\"", 1);
    std::fs::write(&identity, corrupt).unwrap();
    let output = cli(&a, &["daemon"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&identity.display().to_string()),
        "{}",
        text(&output)
    );
    std::fs::write(&identity, original).unwrap();

    // A certificate from another cluster: a foreign state dir.
    std::fs::copy(b.join("node.crt"), a.join("node.crt")).unwrap();
    let output = cli(&a, &["daemon"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&a.display().to_string()),
        "{}",
        text(&output)
    );

    // A corrupt Raft log.
    let snapshot = std::fs::read_dir(b.join("raft"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, bytes).unwrap();
    let output = cli(&b, &["daemon"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&snapshot.display().to_string()),
        "{}",
        text(&output)
    );

    // Not a state dir at all.
    let output = cli(&cluster.root.join("nothing-here"), &["status"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("nothing-here"), "{}", text(&output));
}

#[test]
fn port_in_use_is_named() {
    let mut cluster = TestCluster::new("port");
    assert!(cluster.init("a").status.success());
    let addr = cluster.node("a").addr.clone();
    let _holder = std::net::TcpListener::bind(&addr).expect("hold the port");
    let output = cli(&cluster.node("a").dir, &["daemon"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains(&format!("cannot listen on {addr}: address already in use")),
        "{}",
        text(&output)
    );
}

#[test]
fn malformed_frames_are_logged_and_the_daemon_keeps_serving() {
    let cluster = TestCluster::form("frames", &["a", "b"], &[]);
    let addr = cluster.node("a").addr.clone();
    // 1. Plain garbage on the cluster port (not even TLS).
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n")
        .unwrap();
    drop(stream);
    // 2. A real cluster member's certificate, then a frame with a bad magic, then a bad checksum.
    let b_dir = cluster.node("b").dir.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(send_over_mtls(
        &b_dir,
        &addr,
        b"XXXX this is not a tandem frame, but long enough for a header",
    ));
    let mut frame = valid_ping_frame(&b_dir);
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    runtime.block_on(send_over_mtls(&b_dir, &addr, &frame));
    let log = wait_for("malformed-frame log lines", Duration::from_secs(10), || {
        let log = cluster.node("a").log();
        (log.contains("bad magic")
            && log.contains("checksum mismatch")
            && log.contains("refused connection"))
        .then_some(log)
    });
    assert!(log.contains("(not a tandem peer?)"), "{log}");
    // Still serving, still a cluster.
    let status = cluster.wait_online("a", 2);
    assert_eq!(status["quorum"], true);
}

/// A ping frame from node b to node a, as the real codec encodes it.
fn valid_ping_frame(b_dir: &std::path::Path) -> Vec<u8> {
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b_dir.join("identity.json")).unwrap()).unwrap();
    let cluster: tandem_core::ClusterId = identity["cluster"].as_str().unwrap().parse().unwrap();
    let frame = tandem_core::codec::Frame {
        from: 2,
        to: 1,
        message: tandem_core::codec::PeerMessage::Ping(tandem_core::codec::Ping {
            seq: 1,
            term: 1,
            lease_remaining_ms: 0,
        }),
    };
    tandem_core::codec::encode(cluster, &frame)
}

async fn send_over_mtls(dir: &std::path::Path, addr: &str, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let node = tandem_linux::pki::NodeMaterial {
        cert_pem: std::fs::read_to_string(dir.join("node.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("node.key")).unwrap(),
    };
    let config = tandem_linux::pki::client_config(&ca, &node).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(tandem_linux::pki::server_name("a"), tcp)
        .await
        .unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[test]
fn a_peer_with_another_clusters_certificate_is_refused_and_logged() {
    let mut cluster = TestCluster::form("foreign", &["a"], &[]);
    assert!(
        cluster.init("x").status.success(),
        "a second, unrelated cluster"
    );
    let a_dir = cluster.node("a").dir.clone();
    let x_dir = cluster.node("x").dir.clone();
    let addr = cluster.node("a").addr.clone();
    // x presents its own cluster's certificate but trusts a's CA, so the handshake reaches a's check.
    let ca_a = std::fs::read_to_string(a_dir.join("ca.crt")).unwrap();
    let x_node = tandem_linux::pki::NodeMaterial {
        cert_pem: std::fs::read_to_string(x_dir.join("node.crt")).unwrap(),
        key_pem: std::fs::read_to_string(x_dir.join("node.key")).unwrap(),
    };
    let config = tandem_linux::pki::client_config(&ca_a, &x_node).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
            .connect(tandem_linux::pki::server_name("a"), tcp)
            .await
        {
            let _ = tls.write_all(b"hello").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let log = wait_for("the refusal in the log", Duration::from_secs(10), || {
        let log = cluster.node("a").log();
        log.contains("not signed by this cluster's CA")
            .then_some(log)
    });
    assert!(log.contains("refused connection from"), "{log}");
    assert!(cluster.node("a").status().is_some(), "a still serves");
    cluster.kill("a");
}
