//! The controller and the proxies as the real binaries: spawned with their
//! listeners on free loopback ports, found from their "listening" log
//! line, killed (SIGKILL) when dropped.

use std::net::SocketAddr;
use std::path::Path;

use plexus_tests::bins::{Process, addr_field, bin, controller_status};
use tokio::process::Command;

use plexus_tests::wait::within;

use super::{BOUND, http_get};

/// A loopback address with a free port in 20000..32768: below Linux's default
/// ephemeral range (32768..60999), where neither `bind(0)` nor `connect`
/// picks ports.
pub fn port_below_ephemeral() -> SocketAddr {
    (0..1000)
        .map(|_| rand::random_range(20_000..32_768))
        .find_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .and_then(|listener| listener.local_addr().ok())
        .expect("a free loopback port below the ephemeral range")
}

/// `plexus-controller --feed file:… --grpc-plaintext`.
pub struct Controller {
    pub process: Process,
    /// Its "listening" log line.
    pub listening: String,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Controller {
    /// On free ports below the ephemeral range, so that while a restart test
    /// has the controller down, no other test's outgoing connection can take
    /// one of its ports as a source port (bind would then fail, EADDRINUSE).
    pub async fn start(feed: &Path) -> Self {
        Self::start_on(feed, port_below_ephemeral(), port_below_ephemeral()).await
    }

    /// On given ports (a restart keeps them: proxies know only the address).
    pub async fn start_on(feed: &Path, grpc: SocketAddr, admin: SocketAddr) -> Self {
        let mut command = Command::new(bin("plexus-controller"));
        command
            .env_clear()
            .arg(format!("--feed=file:{}", feed.display()))
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--admin-addr={admin}"))
            // Plaintext keeps the test about discovery; mTLS has its own tests.
            .arg("--grpc-plaintext")
            .env("PLEXUS_LOG", "info");
        let (process, line) =
            Process::spawn(command, "plexus-controller", "plexus-controller listening").await;
        let controller = Self {
            grpc: addr_field(&line, "grpc"),
            admin: addr_field(&line, "admin"),
            listening: line,
            process,
        };
        let admin = controller.admin;
        within(BOUND, "the controller's /ready", || async move {
            let reply = http_get(admin, "admin", "/ready", &[]).await?;
            (reply.status == 200)
                .then_some(())
                .ok_or(reply.status.to_string())
        })
        .await;
        controller
    }

    /// `plexus_controller_watchers{api="destination"}`: open Watch streams
    /// (0 before the first, when the series does not exist yet).
    pub async fn watchers(&self) -> Result<u64, String> {
        let reply = http_get(self.admin, "admin", "/metrics", &[]).await?;
        if reply.status != 200 {
            return Err(format!("/metrics: {}", reply.status));
        }
        let series = "plexus_controller_watchers{api=\"destination\"} ";
        match reply
            .body
            .lines()
            .find_map(|line| line.strip_prefix(series))
        {
            None => Ok(0),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e| format!("{series}{value}: {e}")),
        }
    }

    /// Its `/status` (JSON).
    pub async fn status(&self) -> serde_json::Value {
        controller_status(&self.admin.to_string()).await
    }

    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `plexus-proxy` with the controller as its source of destinations.
pub struct Proxy {
    pub process: Process,
    /// Its "listening" log line.
    pub listening: String,
    /// Where clients send traffic addressed by `Host` (local mode).
    pub outbound: SocketAddr,
}

impl Proxy {
    /// `env`: more `PLEXUS_*` variables.
    pub async fn start(
        name: &str,
        controller: SocketAddr,
        namespace: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(bin("plexus-proxy"));
        command
            .env_clear()
            .env("PLEXUS_CONTROLLER_ADDR", controller.to_string())
            .env("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("PLEXUS_INBOUND_ADDR", "127.0.0.1:0")
            .env("PLEXUS_ADMIN_ADDR", "127.0.0.1:0")
            .env("PLEXUS_POD_NAMESPACE", namespace)
            // One worker: the machine has two cores for everything in the test.
            .env("PLEXUS_WORKER_THREADS", "1")
            .env("PLEXUS_LOG", "info")
            .envs(env.iter().copied());
        let what = format!("plexus-proxy {name}");
        let (process, line) = Process::spawn(command, &what, "proxy listening").await;
        let admin = addr_field(&line, "admin_addr");
        let proxy = Self {
            outbound: addr_field(&line, "outbound_addr"),
            listening: line,
            process,
        };
        within(BOUND, &format!("{what}'s /ready"), || async move {
            let reply = http_get(admin, "admin", "/ready", &[]).await?;
            (reply.status == 200)
                .then_some(())
                .ok_or(reply.status.to_string())
        })
        .await;
        proxy
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}
