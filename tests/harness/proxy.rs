//! An in-process `plexus-proxy` (its `ProxyBuilder`) on 127.0.0.1 ephemeral
//! ports, with a static destinations config; the real binary's command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus_proxy::config::Config;
use plexus_proxy::{Proxy, RunningProxy};
use tokio::net::TcpStream;

/// A static config with one target per `(aliases, backend endpoints)`;
/// the target's name is its first alias and its one backend is "default".
pub fn static_config(targets: &[(&[&str], &[SocketAddr])]) -> String {
    static_config_with(targets, false)
}

/// As [`static_config`]; `meshed` marks every endpoint as running a proxy.
pub fn static_config_with(targets: &[(&[&str], &[SocketAddr])], meshed: bool) -> String {
    let mut yaml = String::from("destinations:\n");
    for (aliases, endpoints) in targets {
        let aliases: Vec<String> = aliases.iter().map(|a| format!("{a:?}")).collect();
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{{ address: \"{e}\", ready: true, meshed: {meshed} }}"))
            .collect();
        yaml.push_str(&format!(
            "  - aliases: [{}]\n    target:\n      routes: {{ default_backend: default }}\n      backends:\n        backends:\n          default: {{ endpoints: [{}] }}\n",
            aliases.join(", "),
            endpoints.join(", ")
        ));
    }
    yaml
}

/// An in-process proxy on 127.0.0.1 ephemeral ports.
pub struct TestProxy {
    env: HashMap<String, String>,
    yaml: Option<String>,
    original_dst: Option<SocketAddr>,
}

pub fn proxy() -> TestProxy {
    let env = [
        ("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0"),
        ("PLEXUS_INBOUND_ADDR", "127.0.0.1:0"),
        ("PLEXUS_ADMIN_ADDR", "127.0.0.1:0"),
        ("PLEXUS_DRAIN_TIMEOUT_MS", "5000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    TestProxy {
        env,
        yaml: None,
        original_dst: None,
    }
}

impl TestProxy {
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.insert(name.to_owned(), value.to_string());
        self
    }

    /// Destinations as the static YAML file (written to a temporary file).
    pub fn static_config(mut self, yaml: impl Into<String>) -> Self {
        self.yaml = Some(yaml.into());
        self
    }

    /// Pretends every accepted connection was redirected from `addr`.
    pub fn original_dst(mut self, addr: SocketAddr) -> Self {
        self.original_dst = Some(addr);
        self
    }

    pub async fn start(mut self) -> RunningProxy {
        static FILES: AtomicUsize = AtomicUsize::new(0);
        let file = self.yaml.as_ref().map(|yaml| {
            let n = FILES.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir()
                .join(format!("plexus-proxy-test-{}-{n}.yaml", std::process::id()));
            std::fs::write(&path, yaml).expect("write static config");
            path
        });
        if let Some(path) = &file {
            self.env
                .insert("PLEXUS_STATIC_CONFIG".into(), path.display().to_string());
        }
        let config = Config::from_env(&self.env).expect("test config");
        let mut builder = Proxy::builder(config);
        if let Some(addr) = self.original_dst {
            builder = builder.original_dst(Arc::new(move |_: &TcpStream| Some(addr)));
        }
        let running = builder.bind().await.expect("proxy starts");
        if let Some(path) = file {
            // Read once at start; nothing needs it any more.
            let _ = std::fs::remove_file(path);
        }
        running
    }
}

/// The real `plexus-proxy` binary on 127.0.0.1 ephemeral ports, reading its
/// destinations from `static_config`, logging at `info`, with no other
/// `PLEXUS_*` variable (none of the test's own environment); start it with
/// [`crate::bins::Process::spawn`], which reads stdout and stderr alike.
pub fn proxy_binary(static_config: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(crate::bins::bin("plexus-proxy"));
    command
        .env_clear()
        .env("PLEXUS_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("PLEXUS_INBOUND_ADDR", "127.0.0.1:0")
        .env("PLEXUS_ADMIN_ADDR", "127.0.0.1:0")
        .env("PLEXUS_STATIC_CONFIG", static_config)
        .env("PLEXUS_LOG", "info");
    command
}

/// Waits (bounded) until the proxy's `/ready` answers 200: with mTLS, once
/// it holds a certificate.
pub async fn until_ready(proxy: &RunningProxy) {
    crate::wait::within(crate::wait::BOUND, "the proxy's /ready", || async {
        match crate::http::admin_get(proxy.admin_addr, "/ready").await.0 {
            200 => Ok(()),
            status => Err(format!("status {status}")),
        }
    })
    .await;
}
