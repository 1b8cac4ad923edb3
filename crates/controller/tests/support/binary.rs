//! The `plexus-controller` binary started whole on a file feed, for the tests
//! that check what it logs, serves and exports as a process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BOUND: Duration = Duration::from_secs(30);

/// A running controller and the addresses from its "listening" log line
/// (`webhook` is `off` when not served).
// Each test binary that includes this file reads only the addresses it needs.
#[allow(dead_code)]
pub struct Controller {
    pub child: Child,
    pub grpc: String,
    pub admin: String,
    pub webhook: String,
}

/// Writes `objects` as the feed file in `dir`, starts the binary on it with
/// ephemeral gRPC and admin ports plus `args` and `env`, and waits (bounded)
/// for it to report where it listens.
pub async fn start(dir: &Path, objects: &str, args: &[&str], env: &[(&str, &str)]) -> Controller {
    let feed = dir.join("objects.yaml");
    std::fs::write(&feed, objects).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus-controller"))
        .arg(format!("--feed=file:{}", feed.display()))
        .args(["--grpc-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0"])
        .args(args)
        .env("PLEXUS_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the controller binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.split(&format!("{name}=")).nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    };
    let (grpc, admin, webhook) = tokio::time::timeout(BOUND, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("plexus-controller listening") {
                return (
                    field(&line, "grpc").unwrap(),
                    field(&line, "admin").unwrap(),
                    field(&line, "webhook").unwrap(),
                );
            }
        }
        panic!("the controller exited before listening");
    })
    .await
    .expect("the controller reports its addresses");
    // Keep draining its logs so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Controller {
        child,
        grpc,
        admin,
        webhook,
    }
}
